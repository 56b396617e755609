"""Usage tiles (storage/tiles.py): cached reads must equal direct reads after any sequence of writes,
on SQLite and PostgreSQL, through every write path (upserts, additive writes, bulk loads)."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage import tiles
from storage import usage as U
from storage.db import write_transaction
from storage.usage import in_chunks, load_block, load_blocks, load_usage, upsert_usage, write_points
from tests.storage.test_usage import Rec

DAY = 86_400
T0 = 1_790_000_000 - 1_790_000_000 % DAY


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny tiles, so a few accounts and days span several tiles and groups, and any list of more
    than two accounts reads through the tiles."""
    monkeypatch.setattr(tiles, "TILE_COLS", 3)
    monkeypatch.setattr(tiles, "TILE_ROWS", 4)
    monkeypatch.setattr(U, "_IN_LIMIT", 2)


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as c:
        return int(c.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one())


def _same(engine: Engine, metric: str, step: int, start: int, end: int, ids: list[str] | None) -> None:
    cached = load_block(engine, metric, step, start, end, account_ids=ids)
    direct = load_block(engine, metric, step, start, end, account_ids=ids, cached=False)
    assert cached.account_ids == direct.account_ids
    np.testing.assert_array_equal(cached.values, direct.values)


def spy_spans(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The [lo, hi) spans of usage_points the tiles read from now on (filled as they are read)."""
    from storage import columnar

    spans: list[tuple[int, int]] = []
    many = columnar.cells_many

    def spy(conn, metric, got, *args, **kwargs):  # type: ignore[no-untyped-def]
        spans.extend(got)
        return many(conn, metric, got, *args, **kwargs)

    monkeypatch.setattr(columnar, "cells_many", spy)
    return spans


def _random_writes(rng: np.random.Generator, n_accounts: int, days: int, n: int) -> list[Rec]:
    return [Rec(f"acct-{int(rng.integers(0, n_accounts)):03d}", str(rng.choice(["calls", "events"])),
                T0 + int(rng.integers(0, days)) * DAY + int(rng.integers(0, 24)) * 3600,
                float(rng.integers(0, 100))) for _ in range(n)]


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_cached_reads_equal_direct_reads_through_every_write_path(engine: Engine, small_tiles: None,
                                                                    seed: int) -> None:
    rng = np.random.default_rng(seed)
    days = 20
    # a first bulk load into the empty table (index dropped and rebuilt), a few accounts only
    load_usage(engine, in_chunks(_random_writes(rng, 6, days, 80), 30))
    for round_ in range(8):
        # new accounts keep arriving (rows appended to partly filled groups, then new groups),
        # and late data lands in old days that tiles already hold
        n_acc = 6 + 3 * round_
        kind = round_ % 4
        recs = _random_writes(rng, n_acc, days, 25)
        if kind == 0:
            upsert_usage(engine, recs)  # replaces sums
        elif kind == 1:
            with write_transaction(engine) as conn:  # adds (push events, as storage.sources does)
                write_points(conn, [(r.account, r.metric, r.ts - r.ts % 60, r.value) for r in recs], additive=True)
        elif kind == 2:
            load_usage(engine, in_chunks(recs, 7))  # staged merge into a non-empty table
        else:
            upsert_usage(engine, recs[:5])
            upsert_usage(engine, [Rec(r.account, r.metric, r.ts, 0.0) for r in recs[5:10]])  # corrections to 0
        for metric in ("calls", "events"):
            end = T0 + int(rng.integers(3, days + 2)) * DAY
            for step, start in ((DAY, end - 10 * DAY), (3600, end - 5 * DAY), (DAY, T0 - 4 * DAY)):
                _same(engine, metric, step, start, end, None)
                ids = sorted({f"acct-{int(k):03d}" for k in rng.integers(0, n_acc + 2, size=6)})
                _same(engine, metric, step, start, end, ids[::-1])  # any order, unknown accounts too
        assert _count(engine, "usage_tile_dirty") <= 2 * days * 24  # marks of the last writes only
    chunked = list(load_blocks(engine, "calls", DAY, T0, T0 + days * DAY, chunk_accounts=5))
    whole = load_block(engine, "calls", DAY, T0, T0 + days * DAY, cached=False)
    assert [a for b in chunked for a in b.account_ids] == whole.account_ids
    np.testing.assert_array_equal(np.vstack([b.values for b in chunked]), whole.values)


def test_reads_use_the_tiles_and_writes_invalidate_them(engine: Engine, small_tiles: None) -> None:
    ids = [f"a{k}" for k in range(10)]
    upsert_usage(engine, [Rec(a, "m", T0 + d * DAY, float(k * 10 + d)) for k, a in enumerate(ids) for d in range(7)])
    assert _count(engine, "usage_tile_dirty") == 7
    block = load_block(engine, "m", DAY, T0, T0 + 7 * DAY)
    assert block.values[3, 4] == 34.0
    assert _count(engine, "usage_tile_dirty") == 0  # every mark consumed
    assert _count(engine, "usage_tiles") == 3 * 3  # 3 tiles of 3 days x 3 groups of 4 accounts
    assert _count(engine, "usage_tile_rows") == 10
    # a change behind storage.usage's back is not seen: the read really comes from the tiles
    with engine.begin() as c:
        c.execute(sa.text("UPDATE usage_points SET value = 999 WHERE account_id = 'a3' AND bucket_start = :b"),
                  {"b": T0 + 4 * DAY})
    assert load_block(engine, "m", DAY, T0, T0 + 7 * DAY).values[3, 4] == 34.0
    assert load_block(engine, "m", DAY, T0, T0 + 7 * DAY, cached=False).values[3, 4] == 999.0
    # a write through storage.usage marks its bucket; the next read recomputes that column
    upsert_usage(engine, [Rec("a9", "m", T0 + 4 * DAY, 5.0)])
    again = load_block(engine, "m", DAY, T0, T0 + 7 * DAY)
    assert again.values[3, 4] == 999.0 and again.values[9, 4] == 5.0


def test_a_write_during_a_refresh_keeps_its_mark(engine: Engine, small_tiles: None) -> None:
    """A mark is deleted only if its seq is the one the refresh read: a write committed between
    the refresh's read of the marks and their deletion is recomputed by the next read."""
    upsert_usage(engine, [Rec(f"a{k}", "m", T0 + d * DAY, 1.0) for k in range(5) for d in range(3)])
    load_block(engine, "m", DAY, T0, T0 + 3 * DAY)  # tiles built
    upsert_usage(engine, [Rec("a1", "m", T0 + DAY, 2.0)])
    with engine.connect() as c:
        seen = list(c.exec_driver_sql("SELECT bucket_start, seq FROM usage_tile_dirty"))
    upsert_usage(engine, [Rec("a1", "m", T0 + DAY, 3.0)])  # the same bucket written again: seq bumped
    with write_transaction(engine) as conn:
        tiles._refresh(conn, "m", seen, 5)  # the refresh that read the older seq
    with engine.connect() as c:
        assert list(c.exec_driver_sql("SELECT bucket_start, seq FROM usage_tile_dirty")) == [(T0 + DAY, 2)]
    assert load_block(engine, "m", DAY, T0, T0 + 3 * DAY).values[1, 1] == 3.0
    assert _count(engine, "usage_tile_dirty") == 0


def test_idle_tiles_are_dropped(engine: Engine, small_tiles: None, monkeypatch: pytest.MonkeyPatch) -> None:
    upsert_usage(engine, [Rec(f"a{k}", "m", T0 + d * DAY, 1.0) for k in range(5) for d in range(9)])
    load_block(engine, "m", DAY, T0, T0 + 9 * DAY)

    def tiles_of(first_day: int, last_day: int) -> list[int]:
        return list(range((T0 // DAY + first_day) // 3, (T0 // DAY + last_day) // 3 + 1))

    assert _count(engine, "usage_tile_sets") == len(tiles_of(0, 8))
    clock = [tiles.time.time() + tiles.IDLE_SECONDS + 60]
    monkeypatch.setattr(tiles.time, "time", lambda: clock[0])
    block = load_block(engine, "m", DAY, T0 + 6 * DAY, T0 + 9 * DAY)  # reads the last tile(s) only
    assert block.values.sum() == 15.0
    with engine.connect() as c:
        kept = sorted(r[0] for r in c.exec_driver_sql("SELECT DISTINCT tile FROM usage_tiles"))
    assert kept == tiles_of(6, 8) and len(kept) < len(tiles_of(0, 8))


def test_empty_and_unknown(engine: Engine, small_tiles: None) -> None:
    empty = load_block(engine, "m", DAY, T0, T0 + 3 * DAY)
    assert empty.account_ids == [] and empty.values.shape == (0, 3)
    upsert_usage(engine, [Rec("a", "m", T0, 1.0)])
    block = load_block(engine, "m", DAY, T0, T0 + 3 * DAY, account_ids=["x", "a", "y"])
    assert np.isnan(block.values[0]).all() and np.isnan(block.values[2]).all()
    assert block.values[1, 0] == 1.0 and np.isnan(block.values[1, 1])  # day 1 delivered by nobody
    assert load_block(engine, "m", DAY, T0, T0, account_ids=["x", "a", "y"]).values.shape == (3, 0)
    nothing = load_block(engine, "other", DAY, T0, T0 + 3 * DAY, account_ids=["x", "a", "y"])  # no such metric
    assert nothing.values.shape == (3, 3) and np.isnan(nothing.values).all()


def test_tile_tables_are_a_cache(engine: Engine) -> None:
    """Emptying the four tables loses nothing: the next read rebuilds what it needs."""
    upsert_usage(engine, [Rec(f"a{k}", "m", T0 + d * DAY, float(k + d)) for k in range(8) for d in range(4)])
    before = load_block(engine, "m", DAY, T0, T0 + 4 * DAY)
    with engine.begin() as c:
        for t in ("usage_tiles", "usage_tile_sets", "usage_tile_rows", "usage_tile_dirty"):
            c.execute(sa.text(f"DELETE FROM {t}"))
    after = load_block(engine, "m", DAY, T0, T0 + 4 * DAY)
    assert after.account_ids == before.account_ids
    np.testing.assert_array_equal(after.values, before.values)


def test_concurrent_writers_and_readers_lose_no_write(engine: Engine, small_tiles: None) -> None:
    """Writers (upserts, loads) and cached readers at once, in threads: once all are done, a
    cached read equals a direct one (no write lost between a refresh's read of the marks and
    their deletion), and nobody failed (no deadlock between marks and refreshes)."""
    import threading

    rng = np.random.default_rng(7)
    upsert_usage(engine, _random_writes(rng, 12, 10, 200))
    load_block(engine, "calls", DAY, T0, T0 + 10 * DAY)
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer(seed: int) -> None:
        r = np.random.default_rng(seed)
        try:
            for i in range(12):
                recs = _random_writes(r, 16, 10, 15)
                if i % 3 == 2:
                    load_usage(engine, in_chunks(recs, 5))
                else:
                    upsert_usage(engine, recs)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    def reader() -> None:
        try:
            while not stop.is_set():
                load_block(engine, "calls", DAY, T0, T0 + 10 * DAY)
                load_block(engine, "events", 3600, T0 + DAY, T0 + 4 * DAY)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    writers = [threading.Thread(target=writer, args=(s,)) for s in (1, 2)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert errors == []
    _same(engine, "calls", DAY, T0, T0 + 10 * DAY, None)
    _same(engine, "events", 3600, T0 + DAY, T0 + 4 * DAY, None)


def test_writers_of_the_same_new_accounts_in_opposite_orders_do_not_deadlock(engine: Engine) -> None:
    """Two writers adding the same new accounts, one in reverse order, each wait for the other's rows
    only in one order: the bookkeeping rows (first seen, coverage) are written in key order (in the
    rows' order, CI saw 'deadlock detected ... relation usage_first_seen' on PostgreSQL)."""
    import threading

    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def writer(day: int, reverse: bool) -> None:
        try:
            for r in range(15):  # other buckets than the other writer's: only the bookkeeping rows are shared
                recs = [Rec(f"new-{r:03d}-{i:02d}", m, T0 + (day - r) * DAY, 1.0)
                        for i in range(20) for m in ("calls", "events")]
                barrier.wait(timeout=30)
                upsert_usage(engine, recs[::-1] if reverse else recs)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=writer, args=(day, rev)) for day, rev in ((30, False), (60, True))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _count(engine, "usage_first_seen") == 15 * 20 * 2


def test_a_tile_of_another_width_is_reported() -> None:
    """Tiles written with another TILE_COLS (a changed constant) are refused with what to do."""
    rows, cols = 3, tiles.TILE_COLS * 2
    sums = np.zeros((rows, cols)).tobytes()
    has = np.packbits(np.zeros((rows, cols), dtype=bool)).tobytes()
    with pytest.raises(ValueError, match="another tile width.*Empty the usage tile tables"):
        tiles._decode(rows, sums, has)
    s, h = tiles._decode(rows, np.ones((rows, tiles.TILE_COLS)).tobytes(),
                         np.packbits(np.ones((rows, tiles.TILE_COLS), dtype=bool)).tobytes())
    assert s.shape == h.shape == (rows, tiles.TILE_COLS) and s.sum() == h.sum() == rows * tiles.TILE_COLS


def test_a_read_starting_inside_a_tile_reads_from_its_start(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first tile of a cold read that starts inside it is built from the read's start on (no point
    before it is read); a later read starting earlier in that tile rebuilds it; a write into it
    refreshes it; every block equals the direct read."""

    monkeypatch.setattr(tiles, "TILE_COLS", 4)
    monkeypatch.setattr(tiles, "TILE_ROWS", 3)
    monkeypatch.setattr(U, "_IN_LIMIT", 2)
    base = T0 // DAY // 4 * 4 * DAY  # a tile boundary
    ids = [f"a{i}" for i in range(7)]
    upsert_usage(engine, [Rec(a, "m", base + d * DAY, float(i * 100 + d)) for i, a in enumerate(ids)
                          for d in range(16) if (i + d) % 5])
    spans = spy_spans(monkeypatch)
    _same(engine, "m", DAY, base + 6 * DAY, base + 16 * DAY, None)  # starts at column 2 of tile 1
    assert spans[0] == (base + 6 * DAY, base + 8 * DAY) and all(lo % (4 * DAY) == base % (4 * DAY)
                                                                 for lo, _ in spans[1:])
    spans.clear()
    _same(engine, "m", DAY, base + 6 * DAY, base + 16 * DAY, None)  # the tiles as built serve it again
    assert spans == []
    _same(engine, "m", DAY, base + 5 * DAY, base + 12 * DAY, ids[1:])  # needs column 1: rebuilt from there
    assert spans == [(base + 5 * DAY, base + 8 * DAY)]
    upsert_usage(engine, [Rec("a3", "m", base + 4 * DAY, 5.5), Rec("a8", "m", base + 7 * DAY, 2.0)])
    spans.clear()
    for start in (4, 5, 7):  # the written columns (one of them not read so far) and a new account
        _same(engine, "m", DAY, base + start * DAY, base + 16 * DAY, None)
    assert spans == []  # column 0 was recomputed by the refresh of the write: valid, no rebuild
    with engine.connect() as c:  # the leading tile now holds every column: stored without a mask byte
        lengths = {int(n): int(h) for n, h in c.exec_driver_sql(
            "SELECT n_rows, length(has) FROM usage_tiles WHERE tile = ?" if engine.dialect.name == "sqlite" else
            "SELECT n_rows, length(has) FROM usage_tiles WHERE tile = %s", (base // DAY // 4 + 1,))}
    assert lengths and all(h == (n * 4 + 7) // 8 for n, h in lengths.items())
