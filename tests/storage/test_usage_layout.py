"""The bucket-major usage layout (migration 0014): usage_points keyed (metric, bucket_start, account_id).

Every read sees exactly the data it saw in the old account-major layout (the migration moves every
point; reads before and after it are identical, on SQLite and PostgreSQL); a new bucket for every
account is an append (a few pages written, not one per row); short reads by key seeks equal the
range scan; a load's bookkeeping from its witness rows equals the bookkeeping from all its rows.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from storage import usage
from storage.db import alembic_config, current_revision, head_revision, make_engine, migrate
from storage.usage import (
    accounts_with_usage,
    load_block,
    load_usage,
    metrics,
    upsert_usage,
    usage_range,
)
from tests.storage.test_usage import T0, Rec, rows

DAY = 86_400


def book(seed: int, n_accounts: int = 30, days: int = 6) -> list[Rec]:
    """Minute points (some summed into one bucket), non-integer values, accounts onboarded late."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_accounts):
        first = int(rng.integers(0, days // 2)) * DAY
        for _ in range(int(rng.integers(5, 60))):
            ts = T0 + first + int(rng.integers(0, (days * DAY - first) // 60)) * 60 + int(rng.integers(0, 60))
            value = float(rng.integers(0, 500)) if rng.random() < 0.7 else float(rng.normal(100, 40))
            out.append(Rec(f"acct-{i:03d}", str(rng.choice(["calls", "gb"])), ts, value))
    return out


def every_read(engine: Engine) -> dict[str, object]:
    """What the readers of usage see: blocks (all accounts, a few, one; tiles and raw), ranges, lists."""
    out: dict[str, object] = {"range": usage_range(engine), "metrics": metrics(engine),
                              "accounts": accounts_with_usage(engine)}
    for metric in ("calls", "gb"):
        for step in (3600, DAY):
            start, end = T0 - DAY, T0 + 7 * DAY
            for label, ids in (("all", None), ("few", ["acct-003", "nobody", "acct-017", "acct-001"]),
                               ("one", ["acct-005"])):
                for cached in (True, False):
                    b = load_block(engine, metric, step, start, end, ids, cached=cached)
                    out[f"{metric}/{step}/{label}/{cached}"] = (b.account_ids, np.nan_to_num(b.values, nan=-1.0))
    return out


def assert_same(a: dict[str, object], b: dict[str, object]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], tuple) and len(a[k]) == 2 and isinstance(a[k][1], np.ndarray):
            assert a[k][0] == b[k][0], k
            assert np.array_equal(a[k][1], b[k][1]), k
        else:
            assert a[k] == b[k], k


def layout(engine: Engine) -> tuple[list[str], list[str]]:
    insp = sa.inspect(engine)
    return (insp.get_pk_constraint("usage_points")["constrained_columns"],
            sorted(i["name"] for i in insp.get_indexes("usage_points")))


def _to(engine: Engine, revision: str, down: bool) -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        (command.downgrade if down else command.upgrade)(cfg, revision)


def test_migration_moves_every_point_and_every_read_stays_identical(engine: Engine) -> None:
    _to(engine, "0013_attention", down=True)
    assert layout(engine) == (["account_id", "metric", "bucket_start"], ["ix_usage_points_metric_bucket_cover"])
    upsert_usage(engine, book(1))
    load_usage(engine, [book(2)[:400], book(2)[400:]])
    before_rows, before = rows(engine), every_read(engine)
    assert len(before_rows) > 500

    _to(engine, "head", down=False)
    assert current_revision(engine) == head_revision()
    assert layout(engine) == (["metric", "bucket_start", "account_id"], [])
    assert rows(engine) == before_rows
    assert_same(every_read(engine), before)
    # and back down: the old layout holds the same points
    _to(engine, "0013_attention", down=True)
    assert layout(engine)[0] == ["account_id", "metric", "bucket_start"]
    assert rows(engine) == before_rows
    migrate(engine)


def test_short_reads_by_seeks_equal_the_range_scan(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    upsert_usage(engine, book(3, n_accounts=60))
    rng = np.random.default_rng(4)
    asks = [["acct-010"], ["nobody"], [f"acct-{int(i):03d}" for i in rng.permutation(60)[:7]] + ["ghost"],
            [f"acct-{i:03d}" for i in range(59, -1, -1)]]
    for ids in asks:
        for metric, step in (("calls", 3600), ("gb", DAY), ("calls", 60)):
            start, end = T0 - DAY, T0 + 7 * DAY
            monkeypatch.setattr(usage, "SEEK_RATIO", 0)  # always the per-bucket key seeks
            seek = load_block(engine, metric, step, start, end, ids, cached=False)
            monkeypatch.setattr(usage, "SEEK_RATIO", 10**9)  # always the range scan joined to the ids
            scan = load_block(engine, metric, step, start, end, ids, cached=False)
            assert seek.account_ids == scan.account_ids == ids
            assert np.array_equal(np.isnan(seek.values), np.isnan(scan.values))
            # the same points, summed in another order: SQLite's scan reads the integer-valued points of a
            # cell before the others (storage.columnar), the seeks read them in bucket order
            np.testing.assert_allclose(seek.values, scan.values, rtol=1e-13, equal_nan=True)


def test_a_new_bucket_for_every_account_is_an_append(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """SQLite: the WAL frames (pages) one new day for 3,000 accounts writes. Account-major, each row
    went to its own leaf page (one per account: ~1,500 frames here); bucket-major it is an append."""
    engine = make_engine(f"sqlite:///{tmp_path / 'wal.db'}")
    migrate(engine)
    ids = [f"acct-{i:05d}" for i in range(3000)]
    load_usage(engine, [[Rec(a, "calls", T0 + d * DAY, float(d + k)) for k, a in enumerate(ids)]
                        for d in range(40)])
    db = engine.url.database
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        page = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
    assert os.path.getsize(f"{db}-wal") == 0
    upsert_usage(engine, [Rec(a, "calls", T0 + 40 * DAY, 1.0) for a in ids])
    frames = os.path.getsize(f"{db}-wal") // (page + 24)
    assert 0 < frames < 300, frames  # the day's rows (~3,000 x ~25 B) and the change log fill ~50 pages


def test_a_runs_bookkeeping_equals_that_of_all_its_rows() -> None:
    """A load's bookkeeping rows (one per account and metric with its first and last bucket, one per
    metric and bucket: storage.usage_load) derived from the sorted columns equal those computed over
    every row (they replaced the witness rows: the same tables, without a second pass over the rows)."""
    import pyarrow as pa

    from storage.usage import UsageColumns
    from storage.usage_columns import UsagePoints
    from storage.usage_load import _run

    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(1, 400))
        a, m = rng.integers(0, 9, n), rng.integers(0, 3, n)
        b = rng.integers(-5, 40, n) * 60
        points = UsagePoints()
        points.add(UsageColumns(pa.array([f"a{x}" for x in a.tolist()]), pa.array([f"m{x}" for x in m.tolist()]),
                                b.astype(np.int64), np.ones(n)))
        run = _run(points, only=False)
        lo, hi, cov = _books(a, m, b)
        p = run.pairs.to_pydict()
        got = list(zip(p["account_id"], p["metric"], p["first_bucket"], p["last_bucket"], strict=True))
        assert sorted(got) == sorted((f"a{x}", f"m{y}", lo[(x, y)], hi[(x, y)]) for x, y in lo)
        assert [(mm, bb) for mm, bb in zip(p["metric"], p["account_id"], strict=True)] == sorted(
            zip(p["metric"], p["account_id"], strict=True))  # in (metric, account) order
        bk = run.buckets.to_pydict()
        assert list(zip(bk["metric"], bk["bucket_start"], strict=True)) == sorted((f"m{y}", z) for y, z in cov)
        r = run.rows.to_pydict()
        keys = list(zip(r["metric"], r["bucket_start"], r["account_id"], strict=True))
        assert keys == sorted(set(keys))  # unique, in usage_points' key order


def _books(a: np.ndarray, m: np.ndarray, b: np.ndarray) -> tuple[dict, dict, set]:
    """MIN and MAX bucket per (a, m), and the distinct (m, b): what the load's bookkeeping computes."""
    lo: dict = {}
    hi: dict = {}
    for x, y, z in zip(a.tolist(), m.tolist(), b.tolist(), strict=True):
        lo[(x, y)] = min(lo.get((x, y), z), z)
        hi[(x, y)] = max(hi.get((x, y), z), z)
    return lo, hi, set(zip(m.tolist(), b.tolist(), strict=True))


def test_pair_spans_dense_and_sorted_agree() -> None:
    """The first and last bucket per (metric, account) pair, from dense arrays or from a sort of the
    pair codes (a book of many metrics x many accounts), are the same."""
    from storage.usage_load import _pair_spans

    rng = np.random.default_rng(9)
    for _ in range(20):
        n = int(rng.integers(1, 300))
        m, b, a = (np.sort(rng.integers(0, 5, n)), rng.integers(0, 30, n) * 60, rng.integers(0, 50, n))
        order = np.lexsort((a, b, m))  # rows in key order (metric, bucket, account)
        pair, bb = (m * 50 + a)[order], b[order]
        dense = _pair_spans(pair, bb, 250)
        by_sort = _pair_spans(pair, bb, 10**9)
        for x, y in zip(dense, by_sort, strict=True):
            assert x.tolist() == y.tolist()
