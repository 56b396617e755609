"""storage.columnar: usage points reach numpy as (cell, value) arrays equal to a plain SELECT's rows,
on SQLite (group_concat of value items parsed in C, the few values no item carries as rows; with a
RowIndex the account ids are mapped to rows by pyarrow instead of a join) and PostgreSQL (a row per
bucket of packed int8 / float8 bytes read by numpy, in the caller's transaction), whatever the values and the block sizes; the RowIndex read and
the joined read give the same cells and, through the tiles, the same blocks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.engine import Engine

import storage.columnar as columnar
from integrations.sources.records import UsageRecord
from storage.db import write_transaction
from storage.usage import upsert_usage

DAY = 86_400
T0 = 1_790_000_000 // DAY * DAY
VALUES = [0.0, 1.0, 7.0, 2.5, 1e-300, 2.0**53, 2.0**53 + 2, 1.5e300, 123456789.0, 0.1]


def _book(n_accounts: int = 40, n_days: int = 12) -> list[UsageRecord]:
    rng = np.random.default_rng(7)
    out = []
    for i in range(n_accounts):
        for d in range(n_days):
            if rng.random() < 0.8:
                v = VALUES[(i * 7 + d) % len(VALUES)] if i % 3 == 0 else float(rng.integers(0, 10**6))
                out.append(UsageRecord(f"acct-{i:03d}", "api_calls", T0 + d * DAY, v))
    out.append(UsageRecord("acct-001", "events", T0, 5.0))  # another metric: left out
    return out


def _cells(engine: Engine, ids: list[str], lo: int, hi: int, index: bool = False, metric: str = "api_calls",
           step: int = DAY) -> tuple[np.ndarray, np.ndarray]:
    """cells() of `ids` (row k = ids[k]), sorted by (cell, value); index: pass the RowIndex too."""
    rows = columnar.RowIndex(ids, np.arange(len(ids), dtype=np.int64)) if index else None
    with write_transaction(engine) as conn:
        conn.exec_driver_sql("CREATE TEMPORARY TABLE col_ids (account_id varchar PRIMARY KEY, ord bigint NOT NULL)")
        raw = conn.connection.driver_connection
        mark = "?" if engine.dialect.name == "sqlite" else "%s"
        raw.cursor().executemany(f"INSERT INTO col_ids VALUES ({mark}, {mark})", [(a, k) for k, a in enumerate(ids)])
        flat, vals = columnar.cells(conn, metric, lo, hi, step, "col_ids", rows)
        conn.exec_driver_sql("DROP TABLE col_ids")
    order = np.lexsort((vals, flat))
    return flat[order], vals[order]


def _expected(records: list[UsageRecord], ids: list[str], lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    ords = {a: k for k, a in enumerate(ids)}
    n_cols = (hi - lo) // DAY
    pts = sorted((ords[r.account] * n_cols + (r.ts - lo) // DAY, r.value) for r in records
                 if r.metric == "api_calls" and r.account in ords and lo <= r.ts < hi)
    return np.array([p[0] for p in pts], dtype=np.int64), np.array([p[1] for p in pts], dtype=np.float64)


@pytest.mark.parametrize("index", [False, True])
def test_cells_are_the_rows_of_a_plain_select(engine: Engine, index: bool) -> None:
    records = _book()
    upsert_usage(engine, records, base_step=DAY)
    ids = [f"acct-{i:03d}" for i in range(0, 40, 2)][::-1]  # some accounts, in another order
    lo, hi = T0 + 2 * DAY, T0 + 10 * DAY
    flat, vals = _cells(engine, ids, lo, hi, index)
    want_flat, want_vals = _expected(records, ids, lo, hi)
    assert flat.dtype == np.int64 and vals.dtype == np.float64
    np.testing.assert_array_equal(flat, want_flat)
    np.testing.assert_array_equal(vals, want_vals)  # exactly: no value goes through a decimal text
    assert {2.5, 2.0**53 + 2, 1.5e300, 0.1} <= set(vals.tolist())


@pytest.mark.parametrize("index", [False, True])
def test_an_empty_range_gives_empty_arrays(engine: Engine, index: bool) -> None:
    upsert_usage(engine, _book(), base_step=DAY)
    flat, vals = _cells(engine, ["acct-000"], T0 - 10 * DAY, T0, index)
    assert flat.dtype == np.int64 and vals.dtype == np.float64 and flat.size == vals.size == 0


ODD = [0.5, -2.25, 1e-300, 2.0**53 + 2, 2.0**63, -1.5e300, 0.1, -7.0]  # not int64 integers, or beyond int64


def _random_book(seed: int) -> list[UsageRecord]:
    """Several metrics, accounts with gaps (days without a point, late starts), ids of any length and
    a few odd characters, integer values mostly, some non-integer or huge ones in a few buckets."""
    rng = np.random.default_rng(seed)
    ids = [f"{'x' * int(rng.integers(0, 9))}acct,{i}é" for i in range(30)] + ["", "a b", "Z"]
    out = []
    for metric in ("calls", "events", "seats"):
        for acct in ids:
            first = int(rng.integers(0, 15))
            for d in range(first, 30):
                if rng.random() < 0.3:
                    continue  # a gap
                odd = d % 7 == 3 and rng.random() < 0.5
                v = float(rng.choice(ODD)) if odd else float(rng.integers(-5, 10**7))
                out.append(UsageRecord(acct, metric, T0 + d * DAY + int(rng.integers(0, 24)) * 3600, v))
    return out


@pytest.mark.parametrize("seed", [1, 2])
def test_the_row_index_read_equals_the_joined_read(engine: Engine, seed: int) -> None:
    """New path (ids mapped by pyarrow) against the old (SQL join), on a random book, per metric,
    step and range, for a subset of accounts in another order (rows of other accounts left out)."""
    records = _random_book(seed)
    upsert_usage(engine, records)
    ids = sorted({r.account for r in records})
    rng = np.random.default_rng(seed)
    some = [ids[int(i)] for i in rng.permutation(len(ids))[: len(ids) * 2 // 3]]
    seen: set[float] = set()
    for metric in ("calls", "events", "seats"):
        for step, lo, hi in ((DAY, T0, T0 + 30 * DAY), (3600, T0 + 5 * DAY, T0 + 9 * DAY), (7 * DAY, T0, T0 + 28 * DAY)):
            new = _cells(engine, some, lo, hi, True, metric, step)
            old = _cells(engine, some, lo, hi, False, metric, step)
            assert new[0].size > 0
            np.testing.assert_array_equal(new[0], old[0])
            np.testing.assert_array_equal(new[1], old[1])
            seen |= set(new[1].tolist())
    assert len(seen & set(ODD)) >= 4  # buckets holding odd values were read (again, as rows) exactly


def _spy_reader_threads(monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """The names of the threads that run the SQLite RowIndex reads (filled as they run)."""
    import threading

    threads: set[str] = set()
    by_id = columnar._sqlite_cells_by_id

    def spy(*args: object) -> tuple[np.ndarray, np.ndarray]:
        threads.add(threading.current_thread().name)
        return by_id(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(columnar, "_sqlite_cells_by_id", spy)
    return threads


@pytest.mark.parametrize("seed", [3])
def test_blocks_through_the_tiles_are_the_same_on_every_path(engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                                             seed: int) -> None:
    """The tiles built by the RowIndex read, on helper threads (SQLite file) or one by one, hold what
    the joined read builds: equal blocks."""
    import threading

    from storage.usage import load_block

    upsert_usage(engine, _random_book(seed))
    threads = _spy_reader_threads(monkeypatch)
    monkeypatch.setattr(columnar, "idle_cores", lambda: 2.0)  # helpers whatever the machine's load
    blocks = {}
    for usable, n_threads in ((True, 2), (True, 1), (False, 2)):
        monkeypatch.setattr(columnar.RowIndex, "usable", lambda self, u=usable: u)
        monkeypatch.setattr(columnar, "READ_THREADS", n_threads)
        with engine.begin() as c:
            for t in ("usage_tiles", "usage_tile_rows", "usage_tile_sets", "usage_tile_dirty"):
                c.exec_driver_sql(f"DELETE FROM {t}")
        blocks[usable, n_threads] = [load_block(engine, m, DAY, T0, T0 + 32 * DAY) for m in ("calls", "events", "seats")]
    for variant in ((True, 1), (False, 2)):
        for a, b in zip(blocks[True, 2], blocks[variant], strict=True):
            assert a.account_ids == b.account_ids and len(a.account_ids) > 20
            np.testing.assert_array_equal(a.values, b.values)
            assert np.isnan(a.values).any() and (a.values == 0).any()  # gaps: missing and zero cells both
    if engine.dialect.name == "sqlite":  # the 4-5 tiles of each block were read by the helper threads
        assert any(t.startswith("usagebot-read") for t in threads) and threading.current_thread().name in threads


def test_an_id_holding_the_separator_takes_the_joined_read(engine: Engine) -> None:
    ids = ["plain", f"odd{columnar.SEP}id"]
    upsert_usage(engine, [UsageRecord(a, "api_calls", T0 + d * DAY, 3.0 + k) for k, a in enumerate(ids)
                          for d in range(3)], base_step=DAY)
    assert not columnar.RowIndex(ids, np.arange(2)).usable()
    flat, vals = _cells(engine, ids, T0, T0 + 3 * DAY, True)
    np.testing.assert_array_equal(flat, [0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(vals, [3.0, 3.0, 3.0, 4.0, 4.0, 4.0])


def test_an_in_memory_database_reads_its_tiles_on_its_one_connection() -> None:
    """In-memory SQLite (one connection shared by all: StaticPool) cannot lend helper connections:
    the tiles are read one span after the other, with the same blocks as a file database gives."""
    from storage.db import make_engine, migrate
    from storage.usage import load_block

    engine = make_engine("sqlite://")
    migrate(engine)
    records = _random_book(4)
    upsert_usage(engine, records)
    with write_transaction(engine) as conn:
        assert not columnar._parallel(conn, columnar.RowIndex(["a"], np.arange(1)), 5)
    cached = load_block(engine, "calls", DAY, T0, T0 + 32 * DAY)
    direct = load_block(engine, "calls", DAY, T0, T0 + 32 * DAY, cached=False)
    assert cached.account_ids == direct.account_ids and len(cached.account_ids) > 20
    np.testing.assert_array_equal(cached.values, direct.values)
    engine.dispose()


@pytest.mark.parametrize("items", [[], ["a"], ["", "acct-1", ""], ["café", "账户-7", "plain", "e\u0301", "🙂x"]])
def test_arrow_strings_hold_the_items(items: list[str]) -> None:
    """The buffer-built Arrow array equals the items, ASCII or not (byte offsets, not char counts)."""
    got = columnar.arrow_strings(items)
    assert len(got) == len(items) and got.null_count == 0
    assert [got[i].as_py() for i in range(len(items))] == items


def test_arrow_ints_read_offsets_and_nulls() -> None:
    """Sliced int32 / int64 arrays with nulls read from their buffers (null -> the fill value)."""
    import pyarrow.compute as pc

    values = columnar.arrow_strings(["b", "x", "a", "c", "y", "a"])
    at = pc.index_in(values, value_set=columnar.arrow_strings(["a", "b", "c"]))  # int32, nulls for x, y
    np.testing.assert_array_equal(columnar.arrow_ints(at, null=-1), [1, -1, 0, 2, -1, 0])
    np.testing.assert_array_equal(columnar.arrow_ints(at.slice(3), null=-7), [2, -7, 0])
    with pytest.raises(ValueError, match="nulls"):
        columnar.arrow_ints(at)
    lengths = pc.list_value_length(pc.split_pattern(columnar.arrow_strings(["a,b", "c", "d,e,f"]), ","))
    np.testing.assert_array_equal(columnar.arrow_ints(lengths.slice(1)), [1, 3])
    assert columnar.arrow_ints(lengths.slice(3)).size == 0


def test_non_ascii_ids_read_the_same_through_the_row_index(engine: Engine) -> None:
    """Account ids of multi-byte characters: the RowIndex read (buffer-built Arrow ids) maps every
    point to the same cell as the joined read."""
    ids = ["acct-ü", "账户-1", "plain", "🙂", "é-long-" + "x" * 40]
    upsert_usage(engine, [UsageRecord(a, "api_calls", T0 + d * DAY, float(k * 10 + d)) for k, a in enumerate(ids)
                          for d in range(4) if (k + d) % 3], base_step=DAY)
    new = _cells(engine, ids[::-1], T0, T0 + 4 * DAY, True)
    old = _cells(engine, ids[::-1], T0, T0 + 4 * DAY, False)
    assert new[0].size > 10
    np.testing.assert_array_equal(new[0], old[0])
    np.testing.assert_array_equal(new[1], old[1])


def test_a_cold_read_imports_no_pandas(tmp_path: Path) -> None:
    """Reading the tiles of a SQLite book (RowIndex, helper threads) in a fresh process converts no
    Python object with pyarrow: where pandas is installed, that conversion imports it on first use
    (1-2 s, measured inside the cold evaluation: docs/benchmarks.md)."""
    import subprocess
    import sys

    from storage.db import make_engine, migrate

    pytest.importorskip("pandas")  # nothing to detect where it is not installed
    url = f"sqlite:///{tmp_path}/cold.db"
    engine = make_engine(url)
    migrate(engine)
    upsert_usage(engine, [UsageRecord(f"a{i}", "calls", T0 + d * DAY, float(i + d)) for i in range(50)
                          for d in range(20)])
    engine.dispose()
    code = f"""
import sys
from storage.db import make_engine
from storage.usage import load_block
block = load_block(make_engine("{url}"), "calls", {DAY}, {T0}, {T0} + 20 * {DAY})
assert len(block.account_ids) == 50 and block.values[block.account_ids.index("a3"), 4] == 7.0
print("pandas" in sys.modules)
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_a_saturated_machine_reads_on_one_connection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No helper connections when no core is idle (the load average at or above the cores): the spans
    are read one after the other on the caller's connection, with the same blocks."""
    import threading

    from storage.db import make_engine, migrate
    from storage.usage import load_block

    engine = make_engine(f"sqlite:///{tmp_path}/busy.db")
    migrate(engine)
    upsert_usage(engine, _random_book(5))
    threads = _spy_reader_threads(monkeypatch)
    blocks = []
    for idle in (0.4, 2.0):
        monkeypatch.setattr(columnar, "idle_cores", lambda i=idle: i)
        with write_transaction(engine) as conn:
            assert columnar._parallel(conn, columnar.RowIndex(["a"], np.arange(1)), 5) is (idle >= 1)
            conn.exec_driver_sql("DELETE FROM usage_tiles")
        blocks.append(load_block(engine, "calls", DAY, T0, T0 + 32 * DAY))
        if idle < 1:
            assert threads == {threading.current_thread().name}
    assert blocks[0].account_ids == blocks[1].account_ids and len(blocks[0].account_ids) > 20
    np.testing.assert_array_equal(blocks[0].values, blocks[1].values)
    assert any(t.startswith("usagebot-read") for t in threads)
    engine.dispose()


def _fractional_book(seed: int, n_accounts: int = 60, n_days: int = 20) -> list[UsageRecord]:
    """Non-integer values in every bucket: tenths, thirds, products of non-dyadic fractions, values
    of every magnitude from 2**-53 to 2**52 (each binade of value_item's tiers), a few integers."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_accounts):
        for d in range(n_days):
            if rng.random() < 0.15:
                continue
            kind = (i + d) % 4
            if kind == 0:
                v = int(rng.integers(1, 10**5)) / 10
            elif kind == 1:
                v = float(rng.integers(1, 1000)) / 3
            elif kind == 2:
                v = float(np.ldexp(1.0 + rng.random(), int(rng.integers(-53, 52))))
            else:
                v = float(rng.integers(0, 10**9))
            out.append(UsageRecord(f"acct-{i:03d}", "api_calls", T0 + d * DAY, v))
    return out


def _statements(engine: Engine) -> list[str]:
    """The SQL statements SQLite runs on the pool's connections from now on (sqlite3 trace callback)."""
    import sqlalchemy as sa

    seen: list[str] = []

    @sa.event.listens_for(engine, "connect")
    def _trace(dbapi_conn: object, _record: object) -> None:
        dbapi_conn.set_trace_callback(seen.append)  # type: ignore[attr-defined]

    engine.dispose()  # new connections: traced
    return seen


def test_a_book_of_non_integer_values_reads_without_reading_rows_again(engine: Engine) -> None:
    """SQLite: every bucket holds non-integer values, yet no bucket is read again as rows (its
    values go as value_item()s, exact); the cells equal a plain SELECT's rows bit for bit, through
    the RowIndex read and the joined read alike."""
    if engine.dialect.name != "sqlite":
        pytest.skip("the group_concat read is SQLite's")
    records = _fractional_book(5)
    upsert_usage(engine, records, base_step=DAY)
    ids = [f"acct-{i:03d}" for i in range(60)][::-1]
    lo, hi = T0, T0 + 20 * DAY
    want_flat, want_vals = _expected(records, ids, lo, hi)
    assert (want_vals != np.floor(want_vals)).mean() > 0.5  # mostly non-integers
    seen = _statements(engine)
    for index in (True, False):
        flat, vals = _cells(engine, ids, lo, hi, index)
        np.testing.assert_array_equal(flat, want_flat)
        assert vals.tobytes() == want_vals.tobytes()
    assert any("group_concat" in s for s in seen)
    assert not [s for s in seen if "bucket_start IN (" in s]  # no bucket read again as rows


def test_values_no_item_carries_are_read_again_exactly(engine: Engine) -> None:
    """Negative values, tiny non-integers, integers from 2**63 and huge values take the rows' read:
    exact, beside items of every tier in the same buckets."""
    odd = [-0.5, -1e-3, -7.0, 1e-300, 2.0**-60, 2.0**63, 2.0**62 + 2048, 1.5e300, -2.0**60]
    tiers = [float(np.ldexp(1.0 + k / 7, e)) for k, e in enumerate(range(-53, 59, 3))]
    records = [UsageRecord(f"a{i:02d}", "api_calls", T0 + d * DAY, (odd + tiers)[(i + d) % (len(odd) + len(tiers))])
               for i in range(20) for d in range(10)]
    upsert_usage(engine, records, base_step=DAY)
    ids = [f"a{i:02d}" for i in range(20)]
    want_flat, want_vals = _expected(records, ids, T0, T0 + 10 * DAY)
    for index in (True, False):
        flat, vals = _cells(engine, ids, T0, T0 + 10 * DAY, index)
        np.testing.assert_array_equal(flat, want_flat)
        assert vals.tobytes() == want_vals.tobytes()
    assert set(odd) <= set(want_vals.tolist())


def test_value_items_carry_every_double_of_their_range_exactly() -> None:
    """value_item() in SQLite and _values in numpy, on random doubles of every binade the items
    cover and at the edges of each tier: the same bits back, and NULL exactly where no tier fits."""
    import sqlite3

    rng = np.random.default_rng(11)
    edges = [float(np.ldexp(1.0, e)) for e in range(-54, 61)]
    edges += [float(np.nextafter(x, 0)) for x in edges] + [float(np.nextafter(x, np.inf)) for x in edges]
    vals = np.concatenate([np.ldexp(1.0 + rng.random(20_000), rng.integers(-56, 62, 20_000)), edges,
                           rng.integers(0, 2**62, 500).astype(np.float64), [0.0, 0.1, 1 / 3, 2.5, 1e300, np.inf],
                           -np.ldexp(1.0 + rng.random(200), rng.integers(-10, 62, 200))])
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE p (value REAL)")
    con.executemany("INSERT INTO p VALUES (?)", [(float(v),) for v in vals])
    got = con.execute(f"SELECT {columnar.value_item('value')}, value FROM p").fetchall()
    carried = np.array([v for i, v in got if i is not None])
    back = columnar._values(",".join(str(i) for i, _ in got if i is not None))
    assert back.tobytes() == carried.tobytes()
    for i, v in got:
        integer = float(v).is_integer() and 0 <= v < 2.0**63
        fits = integer or 2.0**-53 <= v < 2.0**52
        assert (i is not None) == fits, v
