"""The cold build of the usage tiles (storage/tiles.py): blocks built from the tiles equal the direct
(raw, joined) reads on random books, cold and warm, with gaps, late corrections, partial first tiles,
several metrics and bucket sizes; the block of a cold build comes from the points read, not from the
blobs just written; a process killed while it writes the tiles leaves none, and the next reads
rebuild them and read the same blocks. SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
import os
import signal

import numpy as np
import pytest
from sqlalchemy.engine import Engine

from integrations.sources.records import UsageRecord
from storage import columnar, tiles
from storage import usage as U
from storage.db import make_engine, write_transaction
from storage.usage import load_block, upsert_usage, write_points
from tests.storage.test_usage_tiles import spy_spans

DAY = 86_400
T0 = 1_790_000_000 // DAY * DAY
TABLES = ("usage_tiles", "usage_tile_rows", "usage_tile_sets", "usage_tile_dirty")


def _empty_tiles(engine: Engine) -> None:
    with engine.begin() as c:
        for t in TABLES:
            c.exec_driver_sql(f"DELETE FROM {t}")


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as c:
        return int(c.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def _book(rng: np.random.Generator, n_accounts: int, days: int) -> list[UsageRecord]:
    """Accounts starting on random days, gaps of a day or more, several points a day (hourly), three
    metrics, integer values mostly and a few non-integer ones (read again as rows on SQLite); most
    days hold every started account."""
    out = []
    for metric in ("calls", "gb", "seats"):
        for i in range(n_accounts):
            first = int(rng.integers(0, days // 2)) if i % 3 else 0
            for d in range(first, days):
                if rng.random() < 0.08:
                    continue  # a gap
                for _ in range(int(rng.integers(1, 3))):
                    # non-integer values like 0.1: every read adds a bucket's points in bucket order
                    # (tests/storage/test_usage_sum_order.py), so sums of them are the same bit for bit
                    v = float(rng.integers(0, 10**6)) if rng.random() > 0.01 else float(rng.integers(0, 400)) / 10
                    out.append(UsageRecord(f"acct-{i:03d}", metric, T0 + d * DAY + int(rng.integers(0, 24)) * 3600, v))
    return out


def _reads(rng: np.random.Generator, days: int, ids: list[str]) -> list[tuple[str, int, int, int, list[str] | None]]:
    """(metric, step, start, end, ids) reads: days and hours and weeks, starting anywhere (a partial
    first tile), every account or a subset in another order."""
    out: list[tuple[str, int, int, int, list[str] | None]] = []
    for metric in ("calls", "gb", "seats"):
        lo = int(rng.integers(0, days // 3))
        out.append((metric, DAY, T0 + lo * DAY, T0 + days * DAY, None))
        some = [ids[int(i)] for i in rng.permutation(len(ids))[: len(ids) // 2]]
        out.append((metric, DAY, T0 + (lo + 1) * DAY, T0 + (days - 1) * DAY, some))
        h0 = int(rng.integers(0, (days - 3) * 24))
        out.append((metric, 3600, T0 + h0 * 3600, T0 + (h0 + 50) * 3600, None))
        w0 = -(-T0 // (7 * DAY)) * 7 * DAY  # weeks from the epoch
        out.append((metric, 7 * DAY, w0, w0 + (days - 7) // 7 * 7 * DAY, None))
    return out


def _direct(engine: Engine, reads: list[tuple[str, int, int, int, list[str] | None]]) -> list[U.MetricBlock]:
    return [load_block(engine, m, s, a, b, account_ids=ids, cached=False) for m, s, a, b, ids in reads]


def _assert_same(got: list[U.MetricBlock], want: list[U.MetricBlock]) -> None:
    for g, w in zip(got, want, strict=True):
        assert g.account_ids == w.account_ids
        np.testing.assert_array_equal(g.values, w.values)


@pytest.mark.parametrize(("seed", "cols", "rows"), [(1, 3, 4), (2, 8, 5), (3, 8, 4096), (4, 5, 7)])
def test_tile_built_blocks_equal_raw_reads_on_random_books(engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                                           seed: int, cols: int, rows: int) -> None:
    monkeypatch.setattr(tiles, "TILE_COLS", cols)
    monkeypatch.setattr(tiles, "TILE_ROWS", rows)
    monkeypatch.setattr(U, "_IN_LIMIT", 2)
    rng = np.random.default_rng(seed)
    days, n = 40, 23
    upsert_usage(engine, _book(rng, n, days))
    ids = [f"acct-{i:03d}" for i in range(n)]
    reads = _reads(rng, days, ids)
    want = _direct(engine, reads)
    assert any(np.isnan(w.values).any() and (w.values == 0).any() for w in want)  # gaps of both kinds
    _assert_same([load_block(engine, m, s, a, b, account_ids=i) for m, s, a, b, i in reads], want)  # cold
    _assert_same([load_block(engine, m, s, a, b, account_ids=i) for m, s, a, b, i in reads], want)  # warm
    # late corrections: old days rewritten, added to, new accounts; then cold again from nothing
    late = [UsageRecord(ids[int(rng.integers(0, n))], str(rng.choice(["calls", "gb"])),
                        T0 + int(rng.integers(0, days)) * DAY + 7200, float(rng.integers(0, 50))) for _ in range(30)]
    late += [UsageRecord(f"new-{k}", "calls", T0 + (days - 5 + k) * DAY, 3.0) for k in range(3)]
    upsert_usage(engine, late)
    with write_transaction(engine) as conn:
        write_points(conn, [(r.account, r.metric, r.ts - 3600, 1.5) for r in late[:10]], additive=True)
    want = _direct(engine, reads)
    _assert_same([load_block(engine, m, s, a, b, account_ids=i) for m, s, a, b, i in reads], want)  # refreshed
    _empty_tiles(engine)
    _assert_same([load_block(engine, m, s, a, b, account_ids=i) for m, s, a, b, i in reads], want)  # cold again


def test_a_cold_build_reads_no_tile_back(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The block of a cold build is filled from the points read (every tile built then holds every
    row), not by decoding the blobs it has just written; a warm read decodes them."""
    monkeypatch.setattr(tiles, "TILE_ROWS", 4)
    rng = np.random.default_rng(5)
    upsert_usage(engine, _book(rng, 11, 30))
    decoded: list[int] = []
    decode = tiles._decode

    def spy(n_rows: int, sums: bytes, has: bytes) -> tuple[np.ndarray, np.ndarray]:
        decoded.append(n_rows)
        return decode(n_rows, sums, has)

    monkeypatch.setattr(tiles, "_decode", spy)
    want = load_block(engine, "calls", DAY, T0 + 3 * DAY, T0 + 30 * DAY, cached=False)
    cold = load_block(engine, "calls", DAY, T0 + 3 * DAY, T0 + 30 * DAY)
    n_tiles = ((T0 + 30 * DAY) // DAY - 1) // tiles.TILE_COLS - (T0 + 3 * DAY) // DAY // tiles.TILE_COLS + 1
    assert decoded == [] and _count(engine, "usage_tiles") == n_tiles * 3  # x 3 groups written
    warm = load_block(engine, "calls", DAY, T0 + 3 * DAY, T0 + 30 * DAY)
    assert len(decoded) == n_tiles * 3
    for got in (cold, warm):
        assert got.account_ids == want.account_ids
        np.testing.assert_array_equal(got.values, want.values)


def test_full_buckets_and_odd_values_read_the_same(engine: Engine) -> None:
    """Buckets holding a point of every account (read without split or lookup) and buckets where one
    value is not an int64 integer (read again as rows) give the cells of a plain SELECT."""
    ids = [f"a{i}" for i in range(9)]
    recs = [UsageRecord(a, "m", T0 + d * DAY, float(i * 10 + d)) for i, a in enumerate(ids) for d in range(6)]
    recs = [r for r in recs if not (r.account == "a7" and r.ts == T0 + 5 * DAY)]  # one bucket not full
    odd = [UsageRecord("a3", "m", T0 + 2 * DAY, 0.25), UsageRecord("a5", "m", T0 + 4 * DAY, 2.0**70)]
    upsert_usage(engine, recs, base_step=DAY)
    upsert_usage(engine, odd, base_step=DAY)  # replaces two points of full buckets
    want = {(ids.index(r.account), (r.ts - T0) // DAY): r.value for r in recs + odd}  # the last write wins
    index = columnar.RowIndex(ids, np.arange(len(ids), dtype=np.int64)[::-1].copy())  # rows in another order
    with write_transaction(engine) as conn:
        conn.exec_driver_sql("CREATE TEMPORARY TABLE ids_t (account_id varchar PRIMARY KEY, ord bigint NOT NULL)")
        mark = "?" if engine.dialect.name == "sqlite" else "%s"
        conn.connection.driver_connection.cursor().executemany(
            f"INSERT INTO ids_t VALUES ({mark}, {mark})", [(a, int(o)) for a, o in zip(ids, index.ords, strict=True)])
        flat, vals = columnar.cells(conn, "m", T0, T0 + 6 * DAY, DAY, "ids_t", index)
    got = {(len(ids) - 1 - int(f) // 6, int(f) % 6): float(v) for f, v in zip(flat, vals, strict=True)}
    assert len(flat) == len(want) and got == want


def _killed_in_tile_write(url: str) -> None:
    """Child: a cold read of every metric whose process is SIGKILLed inside its second write of tile
    rows (after the first executemany ran, before the read's transaction commits)."""
    engine = make_engine(url)
    upsert = tiles._upsert
    calls = [0]

    def killing(conn, params):  # type: ignore[no-untyped-def]
        upsert(conn, params)
        calls[0] += 1
        if calls[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    tiles._upsert = killing  # type: ignore[assignment]
    tiles.TILE_ROWS = 4
    load_block(engine, "calls", DAY, T0 + 2 * DAY, T0 + 30 * DAY)
    os._exit(0)  # not reached


def test_kill_9_during_the_tile_write_leaves_no_tile_and_the_next_reads_rebuild_them(
        engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tiles, "TILE_ROWS", 4)
    upsert_usage(engine, _book(np.random.default_rng(6), 13, 30))
    engine.dispose()
    child = multiprocessing.get_context("fork").Process(target=_killed_in_tile_write, args=(db_url,))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL
    assert _count(engine, "usage_tiles") == 0 and _count(engine, "usage_tile_rows") == 0  # rolled back
    want = load_block(engine, "calls", DAY, T0 + 2 * DAY, T0 + 30 * DAY, cached=False)
    spans = spy_spans(monkeypatch)
    for warm in (False, True):  # rebuilt (every tile read), then warm (read from the tiles only)
        got = load_block(engine, "calls", DAY, T0 + 2 * DAY, T0 + 30 * DAY)
        assert (spans == []) == warm
        spans.clear()
        assert got.account_ids == want.account_ids
        np.testing.assert_array_equal(got.values, want.values)
    n_tiles = ((T0 + 30 * DAY) // DAY - 1) // tiles.TILE_COLS - (T0 + 2 * DAY) // DAY // tiles.TILE_COLS + 1
    assert _count(engine, "usage_tiles") == n_tiles * 4  # x 4 groups of 13 accounts


def test_a_failed_tile_write_fails_the_read_and_stores_nothing(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """An error while the tiles are written (disk full, say) rolls the whole read back: no tile and no
    row number is left, and the next read builds them."""
    upsert_usage(engine, _book(np.random.default_rng(7), 9, 20))
    upsert = tiles._upsert

    def failing(conn, params):  # type: ignore[no-untyped-def]
        upsert(conn, params)
        raise OSError("injected: disk full")

    monkeypatch.setattr(tiles, "_upsert", failing)
    with pytest.raises(OSError, match="injected"):
        load_block(engine, "gb", DAY, T0, T0 + 20 * DAY)
    assert _count(engine, "usage_tiles") == 0 and _count(engine, "usage_tile_rows") == 0
    monkeypatch.setattr(tiles, "_upsert", upsert)
    got = load_block(engine, "gb", DAY, T0, T0 + 20 * DAY)
    want = load_block(engine, "gb", DAY, T0, T0 + 20 * DAY, cached=False)
    assert got.account_ids == want.account_ids
    np.testing.assert_array_equal(got.values, want.values)


@pytest.mark.postgresql
def test_a_cold_read_after_the_row_numbers_were_analyzed_empty_joins_without_a_nested_loop(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: usage_tile_rows analyzed while empty (the cache emptied, then autovacuum) is
    planned as one row; the cold read's join of usage_points to the row numbers it has just assigned
    must still not be a nested loop (a scan of the whole range per account)."""
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL's planner")
    upsert_usage(engine, _book(np.random.default_rng(8), 60, 20))
    _empty_tiles(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:  # as autovacuum would
        c.exec_driver_sql("VACUUM ANALYZE usage_tile_rows")
        c.exec_driver_sql("ANALYZE usage_points")
        # the catalog as a bench run found it (reltuples 0 over the pages of the rows deleted):
        # VACUUM truncates a table this small to no page, which the planner does not trust as empty
        c.exec_driver_sql("UPDATE pg_class SET reltuples = 0, relpages = 141 WHERE oid = 'usage_tile_rows'::regclass")
    plans: list[str] = []
    fetch = columnar.pg_bucket_rows

    def explained(conn, sql, params):  # type: ignore[no-untyped-def]
        plans.append("\n".join(r[0] for r in conn.connection.driver_connection.execute("EXPLAIN " + sql, params)))
        return fetch(conn, sql, params)

    monkeypatch.setattr(columnar, "pg_bucket_rows", explained)
    got = load_block(engine, "calls", DAY, T0, T0 + 20 * DAY)
    assert plans and not any("Nested Loop" in p for p in plans), plans
    want = load_block(engine, "calls", DAY, T0, T0 + 20 * DAY, cached=False)
    assert got.account_ids == want.account_ids
    np.testing.assert_array_equal(got.values, want.values)
