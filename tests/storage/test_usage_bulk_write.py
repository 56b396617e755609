"""storage.usage_load: the columnar bulk write path of load_usage and upsert_usage, on SQLite and
PostgreSQL: every staging path (ADBC staging file, temporary tables, several sorted runs, a day whose
rows are their own bookkeeping) stores the same points and bookkeeping; values and ids survive the
staging bit for bit; the SQLite staging file is never left behind by a finished load, and one left by
a killed load is deleted by the next (the kill -9 test of a load, tests/storage/test_usage_layout_kill9.py,
checks that no staging file is left once a load has finished after the kills)."""

from __future__ import annotations

import os
import random
import re
import struct

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage import usage_load
from storage.changes import changed_accounts, read_changes
from storage.db import make_engine, migrate, write_transaction
from storage.usage import UsageValueError, load_usage, upsert_usage, write_points
from tests.storage.test_usage import T0, Rec, rows
from tests.storage.test_usage_load import chunks, layout_intact, random_records, side_tables

DAY = 86_400


def changes(engine: Engine) -> list[tuple]:
    """The change log as one row per account: a wide row (account_id NULL, a write of new buckets)
    read as every account stored in its buckets, as storage.changes.changed_accounts reads it."""
    with engine.connect() as c:
        return sorted(tuple(r) for r in c.execute(sa.text(
            "SELECT account_id, metric, bucket_start, last_bucket FROM usage_changes WHERE account_id IS NOT NULL "
            "UNION ALL SELECT p.account_id, c.metric, p.bucket_start, p.bucket_start FROM usage_changes c "
            "JOIN usage_points p ON p.metric = c.metric AND p.bucket_start BETWEEN c.bucket_start AND c.last_bucket "
            "WHERE c.account_id IS NULL")))


def raw_changes(engine: Engine) -> list[tuple]:
    with engine.connect() as c:
        return sorted((tuple(r) for r in c.execute(sa.text(
            "SELECT account_id, metric, bucket_start, last_bucket FROM usage_changes"))), key=repr)


def state(engine: Engine) -> tuple:
    return rows(engine), side_tables(engine), changes(engine)


def expected_rows(recs: list[Rec]) -> list[tuple]:
    out: dict[tuple, float] = {}
    for r in recs:
        key = (r.account, r.metric, r.ts - r.ts % 60)
        out[key] = out.get(key, 0.0) + r.value
    return sorted((*k, v) for k, v in out.items())


def _fresh(engine: Engine) -> None:
    with engine.begin() as c:
        for t in ("usage_points", "usage_first_seen", "usage_coverage", "usage_changes", "usage_tile_dirty"):
            c.execute(sa.text(f"DELETE FROM {t}"))


@pytest.mark.parametrize("small", [False, True])
def test_several_runs_store_what_one_run_stores(engine: Engine, monkeypatch: pytest.MonkeyPatch,
                                                small: bool) -> None:
    """Runs of a few records (their keys shared across runs: summed in SQL) against one run."""
    recs = random_records(7, n=2000)
    if small:  # the temporary tables (PostgreSQL's path, SQLite in a caller's transaction)
        monkeypatch.setattr(usage_load, "_stage_path", lambda engine: None)
    load_usage(engine, chunks(recs, 300))
    one = state(engine)
    assert one[0] == expected_rows(recs)
    _fresh(engine)
    monkeypatch.setattr(usage_load, "RUN_ROWS", 450)
    load_usage(engine, chunks(recs, 300))
    assert state(engine) == one
    assert layout_intact(engine)


def _book_in(order: str) -> list[Rec]:
    """30 accounts x 2 metrics x 6 days: in time order (day, metric, account: how files are written),
    account order (every run of the load holds every bucket), or in time order with late corrections
    (rows of day 0, one of them a bucket already in the first run: summed across runs)."""
    recs = [Rec(f"acct-{a:02d}", m, T0 + d * DAY, float(a * 7 + d)) for d in range(6) for m in ("calls", "gb")
            for a in range(30)]
    if order == "account":
        recs.sort(key=lambda r: (r.account, r.ts, r.metric))
    if order == "late":
        recs += [Rec("acct-03", "gb", T0 + 30, 0.5), Rec("acct-99", "calls", T0, 2.0)]
    return recs


def _grouped_stage_rows(statements: list[str]) -> int | None:
    """How many staged rows the merge into usage_points passed through a GROUP BY (a sort), from
    the rowid ranges each statement reads; None when a statement grouped the whole stage."""
    grouped = 0
    for sql in statements:
        if not sql.startswith("INSERT INTO usage_points") or "GROUP BY" not in sql:
            continue
        ranges = re.findall(r"rowid BETWEEN (\d+) AND (\d+)", sql)
        if not ranges:
            return None
        grouped += sum(int(hi) - int(lo) + 1 for lo, hi in ranges)
    return grouped


@pytest.mark.parametrize(("order", "run_rows", "most_grouped"),
                         [("time", 100, 3 * 30), ("time", 120, 0), ("late", 100, 30 + 3 * 30 + 2),
                          ("account", 100, 360)])
def test_runs_are_merged_bucket_by_bucket_sorting_only_shared_buckets(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, order: str, run_rows: int, most_grouped: int) -> None:
    """A load past RUN_ROWS (SQLite): each run's rows go into usage_points straight from the stage
    in their key order; only the buckets that more than one run holds (a run boundary inside a
    bucket, a late row) are grouped and summed in SQL. Time order, 4 runs of 100 rows: at most one
    shared bucket (30 rows) per boundary; runs cut at day boundaries: none. Stores what one run stores."""
    recs = _book_in(order)
    load_usage(engine, chunks(recs, 20))
    one = state(engine)
    assert one[0] == expected_rows(recs)
    _fresh(engine)
    monkeypatch.setattr(usage_load, "RUN_ROWS", run_rows)
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda c, cur, sql, *a: statements.append(sql))
    load_usage(engine, chunks(recs, 20))
    assert state(engine) == one
    assert layout_intact(engine)
    if engine.dialect.name == "sqlite":
        grouped = _grouped_stage_rows(statements)
        assert grouped is not None and grouped <= most_grouped, grouped


def test_merge_pieces_joins_what_one_run_holds_and_groups_what_runs_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two runs of metric 'calls': run 1 holds buckets 0, 60 (rows 1-3, 4-5), run 2 buckets 60, 120
    (rows 6-7, 8-10): bucket 0 straight from run 1, bucket 60 grouped from both runs (rows 4-7: run
    1's last rows and run 2's first are adjacent rowids), bucket 120 straight from run 2; past
    MAX_PIECES: None (the whole stage grouped at once)."""
    runs = [usage_load.Spans(["calls"], np.array([0, 0]), np.array([0, 60]), np.array([0, 3]), 5),
            usage_load.Spans(["calls"], np.array([0, 0]), np.array([60, 120]), np.array([0, 2]), 5)]
    assert usage_load.merge_pieces(runs) == [(False, [[1, 3]]), (True, [[4, 7]]), (False, [[8, 10]])]
    # two metrics, runs in time order: each metric's buckets run by run (key order), no join across runs
    timed = [usage_load.Spans(["calls", "gb"], np.array([0, 1]), np.array([0, 0]), np.array([0, 2]), 4),
             usage_load.Spans(["calls", "gb"], np.array([0, 1]), np.array([60, 60]), np.array([0, 2]), 4)]
    assert usage_load.merge_pieces(timed) == [(False, [[1, 2]]), (False, [[5, 6]]), (False, [[3, 4]]),
                                              (False, [[7, 8]])]
    monkeypatch.setattr(usage_load, "MAX_PIECES", 2)
    assert usage_load.merge_pieces(timed) is None


@pytest.mark.parametrize("max_pieces", [1, 10_000])
def test_too_many_pieces_group_the_whole_stage_and_store_the_same(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, max_pieces: int) -> None:
    recs = _book_in("late")
    load_usage(engine, chunks(recs, 20))
    one = state(engine)
    _fresh(engine)
    monkeypatch.setattr(usage_load, "RUN_ROWS", 100)
    monkeypatch.setattr(usage_load, "MAX_PIECES", max_pieces)
    load_usage(engine, chunks(recs, 20))
    assert state(engine) == one


def test_a_new_day_is_its_own_bookkeeping(engine: Engine) -> None:
    """One bucket per (account, metric), new accounts among them: first seen, coverage and the change
    log are derived from the rows themselves (no pairs staged), the same as for a mixed write."""
    history = [Rec(f"acct-{i:03d}", m, T0 + d * DAY, float(i + d)) for i in range(30) for m in ("calls", "gb")
               for d in range(3)]
    upsert_usage(engine, history)
    day = [Rec(f"acct-{i:03d}", m, T0 + 3 * DAY, float(i)) for i in range(25, 40) for m in ("calls", "gb")]
    _fresh_changes(engine)
    upsert_usage(engine, day)
    pts, (first, cov), ch = state(engine)
    assert pts == expected_rows(history + day)
    assert ("calls", "acct-039", T0 + 3 * DAY) in first and ("gb", "acct-025", T0) in first
    assert ("calls", T0 + 3 * DAY) in cov
    assert ch == sorted((r.account, r.metric, r.ts, r.ts) for r in day)
    # all of the day's buckets are new: one change row per (metric, bucket), not one per account
    assert raw_changes(engine) == [(None, "calls", T0 + 3 * DAY, T0 + 3 * DAY), (None, "gb", T0 + 3 * DAY, T0 + 3 * DAY)]
    cs = read_changes(engine)
    assert changed_accounts(engine, cs, "calls", before=T0 + 4 * DAY, since=T0) == {r.account for r in day}
    assert changed_accounts(engine, cs, "calls", before=T0 + 3 * DAY, since=T0) == set()  # not before `before`
    assert changed_accounts(engine, cs, "gb", before=T0 + 9 * DAY, since=T0 + 4 * DAY) == set()  # nor from `since`


def test_a_day_into_a_stored_bucket_keeps_a_row_per_account(engine: Engine) -> None:
    """A bucket that already holds rows (a second poll of the same day, late data) is not all new:
    its change rows name the accounts, so only they are re-evaluated."""
    upsert_usage(engine, [Rec(f"acct-{i:03d}", "calls", T0 + d * DAY, 1.0) for i in range(20) for d in range(2)])
    _fresh_changes(engine)
    upsert_usage(engine, [Rec("acct-003", "calls", T0 + DAY, 5.0), Rec("acct-007", "calls", T0 + DAY, 6.0)])
    assert raw_changes(engine) == [("acct-003", "calls", T0 + DAY, T0 + DAY), ("acct-007", "calls", T0 + DAY, T0 + DAY)]
    assert changed_accounts(engine, read_changes(engine), "calls", before=T0 + 2 * DAY, since=T0) == {"acct-003", "acct-007"}


def _fresh_changes(engine: Engine) -> None:
    with engine.begin() as c:
        c.execute(sa.text("DELETE FROM usage_changes"))


def test_values_and_ids_survive_the_staging_bit_for_bit(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random doubles (every exponent) and ids with quotes, commas, newlines and non-ASCII, through
    the staging file and through the temporary tables (COPY csv on PostgreSQL)."""
    rnd = random.Random(3)
    ids = ['plain', 'with,comma', 'with "quotes"', "new\nline", "tab\tand 'single'", "é ü 中文 🙂", " lead", "\\back"]
    recs = []
    for i in range(3000):
        v = struct.unpack("d", struct.pack("Q", rnd.getrandbits(64)))[0]
        while v != v or abs(v) > 1e300:
            v = struct.unpack("d", struct.pack("Q", rnd.getrandbits(64)))[0]
        recs.append(Rec(ids[i % len(ids)], f"m{i % 3}", T0 + 60 * i, v))
    for staging_file in (True, False):
        if not staging_file:
            monkeypatch.setattr(usage_load, "_stage_path", lambda engine: None)
        _fresh(engine)
        load_usage(engine, [recs])
        assert rows(engine) == expected_rows(recs)


def _stage_files(db_url: str) -> list[str]:
    db = db_url.removeprefix("sqlite:///")
    folder, name = os.path.split(db)
    return sorted(f for f in os.listdir(folder) if f.startswith(f"{name}-load-"))


def test_the_staging_file_is_deleted_and_a_dead_loads_file_too(tmp_path) -> None:  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'u.db'}"
    engine = make_engine(url)
    migrate(engine)
    first, second = random_records(1, n=500), random_records(2, n=500)
    load_usage(engine, [first])
    assert _stage_files(url) == []  # a finished load leaves none
    dead = tmp_path / "u.db-load-0123.stage"
    dead.write_bytes(b"left by a load killed with -9")
    live = tmp_path / "u.db-load-4567.stage"
    import fcntl

    with open(live, "wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # a load still running holds its file
        load_usage(engine, [second])
        assert _stage_files(url) == ["u.db-load-4567.stage"]
    stored = {(a, m, b): v for a, m, b, v in expected_rows(first)}
    stored.update({(a, m, b): v for a, m, b, v in expected_rows(second)})  # the second load replaces
    assert rows(engine) == sorted((*k, v) for k, v in stored.items())


@pytest.mark.parametrize("run_rows", [10**9, 3])
def test_a_total_past_the_largest_float_names_its_bucket_and_stores_nothing(
        engine: Engine, monkeypatch: pytest.MonkeyPatch, run_rows: int) -> None:
    """Two finite values of one bucket that add up to inf, in one run (summed in numpy) or in two
    runs (summed by the database): the error names the bucket; nothing of the load is stored."""
    from storage.usage import UsageValueError

    monkeypatch.setattr(usage_load, "RUN_ROWS", run_rows)
    recs = [Rec("a", "calls", T0, 1e308), Rec("b", "calls", T0, 1.0), Rec("c", "calls", T0, 2.0),
            Rec("a", "calls", T0 + 30, 1e308)]
    with pytest.raises(UsageValueError, match=r"account 'a', metric 'calls'.*nothing was stored"):
        load_usage(engine, chunks(recs, 1))
    assert rows(engine) == [] and changes(engine) == []


def test_a_record_whose_account_is_not_text_is_named(engine: Engine) -> None:
    with pytest.raises(ValueError, match=r"usage record #1 .*account and metric must be text"):
        upsert_usage(engine, [Rec("a", "calls", T0, 1.0), Rec(7, "calls", T0, 1.0)])  # type: ignore[arg-type]
    assert rows(engine) == []


def tile_marks(engine: Engine) -> list[tuple]:
    with engine.connect() as c:
        return sorted(tuple(r) for r in c.execute(sa.text("SELECT metric, bucket_start FROM usage_tile_dirty")))


@pytest.mark.parametrize("additive", [False, True])
def test_write_points_is_the_same_write_as_upsert_usage(engine: Engine, additive: bool) -> None:
    """storage.usage.write_points (the sources' store path, in the caller's transaction) stores the
    points and the bookkeeping (first seen, coverage, change log, tile marks) that upsert_usage stores
    for the same rows; additive adds to the stored values, replace replaces them."""
    history = random_records(11, n=1500)
    more = random_records(12, n=800) + [Rec("acct-new", "calls", T0 - 5 * DAY, 7.0)]  # earlier: lowers first seen
    summed = expected_rows(more)
    out = []
    for via_write_points in (False, True):
        _fresh(engine)
        upsert_usage(engine, history)
        if via_write_points:
            with write_transaction(engine) as conn:
                write_points(conn, [tuple(r) for r in summed], additive=additive)
        elif additive:
            _fresh(engine)
            upsert_usage(engine, history + more)  # the same totals: history + more per bucket
        else:
            upsert_usage(engine, more)
        out.append((rows(engine), side_tables(engine), tile_marks(engine)))
    assert out[0] == out[1]
    stored = dict(((a, m, b), v) for a, m, b, v in rows(engine))
    base = {(a, m, b): v for a, m, b, v in expected_rows(history)}
    for a, m, b, v in summed:
        assert stored[(a, m, b)] == (base.get((a, m, b), 0.0) + v if additive else v)
    assert ("calls", "acct-new", T0 - 5 * DAY) in side_tables(engine)[0]


def test_write_points_adds_past_the_largest_float_names_the_bucket_and_its_stored_value(engine: Engine) -> None:
    upsert_usage(engine, [Rec("a", "calls", T0, 1.5e308)])
    with pytest.raises(UsageValueError, match=r"account 'a', metric 'calls'.*stored 1\.5e\+308"):
        with write_transaction(engine) as conn:
            write_points(conn, [("a", "calls", T0, 1.0e308)], additive=True)
    assert rows(engine) == [("a", "calls", T0, 1.5e308)]


def test_a_new_days_append_falls_back_to_the_upsert_when_a_key_is_stored(engine: Engine,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The append path (PostgreSQL: every staged bucket newer than the stored ones, inserted without
    ON CONFLICT) when a writer stored one of the keys after the check: the unique violation rolls
    back to the savepoint and the upsert stores the day as if the path did not exist."""
    upsert_usage(engine, [Rec(f"acct-{i}", "calls", T0, 1.0) for i in range(50)])
    monkeypatch.setattr(usage_load, "_all_newer", lambda conn, buckets: True)  # the check raced with a writer
    day = [Rec(f"acct-{i}", "calls", T0 + (DAY if i % 2 else 0), 2.0) for i in range(60)]
    upsert_usage(engine, day)
    expected = {(f"acct-{i}", "calls", T0): 1.0 for i in range(50)}
    expected.update({(r.account, r.metric, r.ts): r.value for r in day})
    assert rows(engine) == sorted((*k, v) for k, v in expected.items())


@pytest.mark.parametrize("ts", [
    [T0, T0 + 59, T0 + 61], [T0 + 0.5, -0.5, -60.25, 1.0e9 + 0.999], [True, False, 3], [T0, T0 + 0.75],
    [2**53 + 1, 2**53 + 3], [2**62, -(2**62)],
])
def test_records_ts_are_floored_to_whole_seconds_as_math_floor_does(ts: list) -> None:
    """records_as_columns' one-step conversion (all ints, all floats) gives math.floor of each ts,
    mixed and large ints included (float64 would round 2**53 + 1)."""
    import math

    cols = usage_load.records_as_columns([Rec("a", "calls", t, 1.0) for t in ts])
    assert cols.ts.tolist() == [math.floor(t) for t in ts]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), "x", None])
def test_a_record_whose_ts_is_not_a_number_is_named(bad: object) -> None:
    with pytest.raises(ValueError, match=r"usage record #1 \(Rec\(account='b'.*ts must be epoch seconds"):
        usage_load.records_as_columns([Rec("a", "calls", T0, 1.0), Rec("b", "calls", bad, 1.0)])


def test_a_ts_past_int64_is_refused() -> None:
    with pytest.raises(ValueError, match="a ts or value is not a finite number"):
        usage_load.records_as_columns([Rec("a", "calls", T0, 1.0), Rec("b", "calls", 2**70, 1.0)])


def test_records_make_the_runs_their_columns_make() -> None:
    """sorted_runs codes a list of records from its Python ids (UsagePoints.add_ids), not through
    records_as_columns' Arrow strings: the same rows, pairs and buckets, ids of any text included."""
    rng = random.Random(5)
    ids = ["b", "a", "é", "acct-10", "acct-9", "ü-ß", "A"]
    recs = [Rec(rng.choice(ids), rng.choice(["calls", "events", "a.b"]), T0 + rng.randrange(5) * 60 + rng.randrange(60),
                float(rng.randrange(100))) for _ in range(500)]
    by_records = list(usage_load.sorted_runs([recs], 60))
    by_columns = list(usage_load.sorted_runs([usage_load.records_as_columns(recs)], 60))
    assert len(by_records) == len(by_columns) == 1
    got, want = by_records[0], by_columns[0]
    assert got.rows.equals(want.rows) and got.buckets.equals(want.buckets)
    assert got.pairs is not None and want.pairs is not None and got.pairs.equals(want.pairs)
    assert sorted(zip(*(c.to_pylist() for c in got.rows.columns), strict=True)) == expected_rows(recs)


def test_a_run_with_one_bucket_per_metric_stages_its_rows_as_the_pairs() -> None:
    """A new day (one bucket per metric, the buckets of the metrics may differ) stages no pairs: each
    row is one (account, metric); a second bucket of one metric stages each pair's first and last."""
    day = [Rec(f"acct-{i}", "calls", T0, 1.0) for i in range(5)] + [Rec(f"acct-{i}", "events", T0 + 60, 2.0)
                                                                    for i in range(3)]
    assert next(usage_load.sorted_runs([day], 60)).pairs is None
    run = next(usage_load.sorted_runs([[*day, Rec("acct-0", "calls", T0 + 120, 3.0)]], 60))
    assert run.pairs is not None
    pairs = sorted(zip(*(c.to_pylist() for c in run.pairs.columns), strict=True))
    assert pairs == sorted([("calls", f"acct-{i}", T0, T0 + (120 if i == 0 else 0)) for i in range(5)]
                           + [("events", f"acct-{i}", T0 + 60, T0 + 60) for i in range(3)])


@pytest.mark.parametrize("bad", [7, None, ("a",), ["x"]])
def test_a_record_whose_id_is_not_text_is_named_by_every_write_path(engine: Engine, bad: object) -> None:
    """Hashable or not, an account or metric that is not text is named by its record number, by the
    upsert of a day (a list of records coded from its Python ids) as by records_as_columns."""
    recs = [Rec("a", "calls", T0, 1.0), Rec("b", bad, T0, 1.0)]  # type: ignore[arg-type]
    for write in (lambda: upsert_usage(engine, recs), lambda: usage_load.records_as_columns(recs)):
        with pytest.raises(ValueError, match=r"usage record #1 .*account and metric must be text"):
            write()
    assert rows(engine) == []


def test_a_bucket_three_runs_hold_is_summed_in_run_order(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key that three runs hold, the first of them joining its piece after the other two (run 1's
    row of it comes before a bucket runs 2 and 3 share): summed in run order, as one run sums it
    (0.1 + 0.2 + 0.3 = 0.6000000000000001), not in the order the piece met its runs (0.6)."""
    recs = [Rec("C", "aa", T0, 1.0), Rec("A", "gb", T0, 0.1),
            Rec("B", "calls", T0 + 5 * DAY, 1.0), Rec("A", "gb", T0, 0.2),
            Rec("B", "calls", T0 + 5 * DAY, 2.0), Rec("A", "gb", T0, 0.3)]
    load_usage(engine, chunks(recs, 2))
    one = state(engine)
    assert ("A", "gb", T0, 0.1 + 0.2 + 0.3) in one[0]
    _fresh(engine)
    monkeypatch.setattr(usage_load, "RUN_ROWS", 2)
    load_usage(engine, chunks(recs, 2))
    assert state(engine) == one


def test_a_piece_of_more_runs_than_a_compound_select_takes_groups_the_whole_stage(
        engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """One bucket held by 520 runs, each run also holding a bucket of its own between them: the
    piece's 520 ranges are more terms than SQLite's compound SELECT takes (500): the whole stage is
    grouped instead (before: "too many terms in compound SELECT")."""
    recs = [r for k in range(520) for r in (Rec("A", "aa", T0 + k * DAY, 1.0), Rec("A", "zz", T0, float(k)))]
    load_usage(engine, chunks(recs, 2))
    one = state(engine)
    _fresh(engine)
    monkeypatch.setattr(usage_load, "RUN_ROWS", 2)
    load_usage(engine, chunks(recs, 2))
    assert state(engine) == one
