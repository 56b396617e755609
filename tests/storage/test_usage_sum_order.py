"""One summation order for the points of a bucket, on every read path.

A rule bucket coarser than the stored base step sums several stored points; float addition is not
associative (0.1 + 0.7 + 1e-3 depends on the order), and PostgreSQL returns rows in no set order
(a rewritten row moves to the end of the heap; a hash join keeps no order), so each path must add
the points of a bucket in one defined order: ascending bucket_start, from 0.0 (storage.tiles
.bin_cells). The direct read (short key seeks and the joined range read), the cold tile build, the
warm tile read, the tile refresh after late corrections and the backtest's in-memory UsagePoints
give the same blocks, bit for bit, on random books of fractional values. SQLite and PostgreSQL.
"""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from integrations.sources.records import UsageRecord
from storage import tiles
from storage import usage as U
from storage.db import write_transaction
from storage.usage import load_block, upsert_usage, write_points
from storage.usage_columns import UsagePoints

DAY = 86_400
T0 = 1_790_000_000 // DAY * DAY
FRACTIONS = (0.1, 0.7, 1e-3, 0.3, 2.2, 1 / 3)  # not dyadic: sums of them depend on the order


def _value(rng: np.random.Generator) -> float:
    """Mostly fractions like 0.1, some integers (SQLite reads integer buckets by another path)."""
    if rng.random() < 0.2:
        return float(rng.integers(0, 1000))
    return float(rng.choice(FRACTIONS)) * float(rng.integers(1, 50))


def _book(rng: np.random.Generator, n: int, days: int) -> list[UsageRecord]:
    """Several hourly points a day per account (two metrics), some buckets of two records (summed at
    the write), gaps, accounts starting late; in random order."""
    out = []
    for metric in ("calls", "gb"):
        for i in range(n):
            first = int(rng.integers(0, days // 2)) if i % 3 else 0
            for d in range(first, days):
                if rng.random() < 0.1:
                    continue
                for h in rng.choice(24, size=int(rng.integers(1, 6)), replace=False).tolist():
                    ts = T0 + d * DAY + h * 3600
                    out.append(UsageRecord(f"a{i:02d}", metric, ts, _value(rng)))
                    if rng.random() < 0.1:
                        out.append(UsageRecord(f"a{i:02d}", metric, ts + 30, _value(rng)))  # same minute
    return [out[k] for k in rng.permutation(len(out)).tolist()]


def _corrections(rng: np.random.Generator, n: int, days: int, k: int) -> list[tuple[str, str, int, float]]:
    """Additive corrections (write_points additive=True) of random stored or new hourly buckets."""
    got: dict[tuple[str, str, int], float] = {}
    while len(got) < k:
        key = (f"a{int(rng.integers(0, n)):02d}", str(rng.choice(["calls", "gb"])),
               T0 + int(rng.integers(days // 2, days)) * DAY + int(rng.integers(0, 24)) * 3600)
        got[key] = _value(rng)
    return [(a, m, b, v) for (a, m, b), v in got.items()]


def _in_bucket_order(engine: Engine, metric: str, step: int, start: int, end: int
                     ) -> dict[tuple[str, int], float]:
    """The defined sum: per (account, column), 0.0 plus the stored points in ascending bucket_start.
    Asserts that the read has cells whose sum in the opposite order differs (the test means something)."""
    with engine.connect() as c:
        rows = list(c.exec_driver_sql(
            f"SELECT account_id, bucket_start, value FROM usage_points WHERE metric = '{metric}' "
            f"AND bucket_start >= {int(start)} AND bucket_start < {int(end)}"))
    rows.sort(key=lambda r: (r[0], int(r[1])))
    out: dict[tuple[str, int], float] = {}
    back: dict[tuple[str, int], float] = {}
    for acc, bucket, value in rows:
        key = (acc, (int(bucket) - start) // step)
        out[key] = out.get(key, 0.0) + float(value)
    for acc, bucket, value in reversed(rows):
        key = (acc, (int(bucket) - start) // step)
        back[key] = back.get(key, 0.0) + float(value)
    if step >= DAY:  # hourly points: several to most day and week cells
        assert sum(out[k] != back[k] for k in out) > len(out) // 50, "order-dependent sums in the book"
    return out


def _bits(block: U.MetricBlock) -> bytes:
    return np.ascontiguousarray(block.values, dtype=np.float64).tobytes()


def _assert_bitwise(name: str, got: U.MetricBlock, want: U.MetricBlock) -> None:
    assert got.account_ids == want.account_ids, name
    if _bits(got) != _bits(want):
        diff = np.flatnonzero(got.values.view(np.uint64) != want.values.view(np.uint64))
        i = int(diff[0])
        raise AssertionError(f"{name}: {len(diff)} cells differ in their bits, e.g. "
                             f"{got.values.flat[i]!r} != {want.values.flat[i]!r}")


READS = [("calls", DAY), ("gb", DAY), ("calls", 7 * DAY), ("gb", 6 * 3600)]


def _check(engine: Engine, points: UsagePoints, days: int, ids: list[str], label: str) -> None:
    """Every path's block of every read equals the defined sum, bit for bit."""
    for metric, step in READS:
        start = -(-T0 // step) * step
        end = (T0 + days * DAY) // step * step
        ref = _in_bucket_order(engine, metric, step, start, end)
        assert ref, "the book has points in the read"
        direct = load_block(engine, metric, step, start, end, cached=False)  # joined range read
        for (acc, col), want in ref.items():
            got = direct.values[direct.account_ids.index(acc), col]
            assert got.tobytes() == np.float64(want).tobytes(), (label, metric, step, acc, col, got, want)
        _assert_bitwise(f"{label} {metric}/{step}: tiles", load_block(engine, metric, step, start, end), direct)
        _assert_bitwise(f"{label} {metric}/{step}: tiles again", load_block(engine, metric, step, start, end), direct)
        _assert_bitwise(f"{label} {metric}/{step}: UsagePoints", points.block(metric, step, start, end), direct)
        some = [a for a in ids if a in direct.account_ids][::2]
        short = load_block(engine, metric, step, start, end, account_ids=some, cached=False)  # key seeks
        sub = load_block(engine, metric, step, start, end, account_ids=some)  # over _IN_LIMIT: the tiles
        rows = [direct.account_ids.index(a) for a in some]
        want_sub = U.MetricBlock(metric, start, step, some, direct.values[rows])
        _assert_bitwise(f"{label} {metric}/{step}: short read", short, want_sub)
        _assert_bitwise(f"{label} {metric}/{step}: tiles of some accounts", sub, want_sub)


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_every_read_path_sums_a_buckets_points_in_bucket_order(engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                                               seed: int) -> None:
    monkeypatch.setattr(tiles, "TILE_COLS", 4)  # several tiles, a partial first one
    monkeypatch.setattr(tiles, "TILE_ROWS", 8)  # several groups
    monkeypatch.setattr(U, "_IN_LIMIT", 2)  # reads of a few accounts go through the tiles too
    rng = np.random.default_rng(seed)
    n, days = 20, 30
    ids = [f"a{i:02d}" for i in range(n)]
    book = _book(rng, n, days)
    upsert_usage(engine, book)
    first = _corrections(rng, n, days, 40)
    with write_transaction(engine) as conn:  # rewritten rows: PostgreSQL puts their new versions last
        write_points(conn, first, additive=True)
    points = UsagePoints()
    points.add(book)
    points.add([UsageRecord(a, m, b, v) for a, m, b, v in first])
    points.freeze()
    _check(engine, points, days, ids, "cold")
    second = _corrections(rng, n, days, 40)
    with write_transaction(engine) as conn:  # the tiles' marked columns are recomputed (a refresh)
        write_points(conn, second, additive=True)
    again = UsagePoints()
    again.add(book)
    again.add([UsageRecord(a, m, b, v) for a, m, b, v in first])
    again.add([UsageRecord(a, m, b, v) for a, m, b, v in second])
    again.freeze()
    _check(engine, again, days, ids, "refreshed")
