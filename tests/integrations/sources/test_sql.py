"""sql source: reads a raw events table of the test database (PostgreSQL and SQLite), aggregating IN SQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from bot.service.polling import poll_source
from integrations.sources.base import PollContext, SourceError
from integrations.sources.sql import SqlSource
from tests.integrations.sources.helpers import HOUR, T0, config_problems, points, source_config, told_once


def _events_table(engine: Engine, epoch: bool = False) -> sa.Table:
    md = sa.MetaData()
    t = sa.Table("raw_events", md,
                 sa.Column("id", sa.Integer, primary_key=True),
                 sa.Column("acct", sa.String),
                 sa.Column("kind", sa.String),
                 sa.Column("qty", sa.Float),
                 sa.Column("at", sa.BigInteger if epoch else sa.DateTime(timezone=False)))
    md.create_all(engine)
    return t


def _at(ts: int, epoch: bool) -> object:
    return ts if epoch else datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)


def _insert(engine: Engine, t: sa.Table, rows: list[tuple[str, str, float, int]], epoch: bool = False) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(t), [{"acct": a, "kind": k, "qty": q, "at": _at(ts, epoch)} for a, k, q, ts in rows])


def _source(db_url: str, extra: str = "", time_type: str = "timestamp") -> SqlSource:
    return SqlSource(source_config(f"""
[[sources]]
id = "warehouse"
type = "sql"
url = "${{WAREHOUSE_URL}}"
table = "raw_events"
account_column = "acct"
metric_column = "kind"
value_column = "qty"
time_column = "at"
time_type = "{time_type}"
bucket = "1h"
overlap = "2h"
backfill = "1d"
{extra}
""", {"WAREHOUSE_URL": db_url}))


@pytest.mark.parametrize("epoch", [False, True], ids=["timestamp", "epoch"])
def test_aggregates_buckets_in_the_database(engine: Engine, db_url: str, epoch: bool) -> None:
    t = _events_table(engine, epoch)
    raw = [("acme", "api_calls", 1.0, T0 + i * 60) for i in range(120)]  # 2 hours of minute events
    raw += [("globex", "api_calls", 5.0, T0 + 10), ("globex", "events", 2.0, T0 + HOUR + 5), (None, "x", 1, T0)]
    _insert(engine, t, raw, epoch)
    src = _source(db_url, time_type="epoch" if epoch else "timestamp")
    statements: list[str] = []
    sa.event.listen(src.engine, "before_cursor_execute",
                    lambda conn, cur, stmt, *a: statements.append(stmt))
    try:
        [batch] = list(src.poll(PollContext("warehouse", T0 + 3 * HOUR)))
    finally:
        src.close()
    # one row per account, metric and hour came back, not the 123 raw rows
    got = {(r.account, r.metric, r.ts): r.value for r in batch.totals}
    assert got == {("acme", "api_calls", T0): 60.0, ("acme", "api_calls", T0 + HOUR): 60.0,
                   ("globex", "api_calls", T0): 5.0, ("globex", "events", T0 + HOUR): 2.0}
    select = [s for s in statements if "GROUP BY" in s]
    assert select and "sum(" in select[0].lower()
    assert batch.watermark == T0 + HOUR + 59 * 60  # the newest raw timestamp


def test_late_rows_within_the_overlap_replace_their_bucket(engine: Engine, db_url: str) -> None:
    t = _events_table(engine)
    _insert(engine, t, [("acme", "api_calls", 1.0, T0 + 60), ("acme", "api_calls", 1.0, T0 + HOUR + 60)])
    src = _source(db_url)
    try:
        assert poll_source(engine, src, T0 + 2 * HOUR).ok
        _insert(engine, t, [("acme", "api_calls", 3.0, T0 + 120)])  # arrives late, for the first hour
        report = poll_source(engine, src, T0 + 2 * HOUR + 300)
    finally:
        src.close()
    assert report.ok and report.changed == {("acme", "api_calls")}
    assert points(engine) == {("acme", "api_calls", T0): 4.0, ("acme", "api_calls", T0 + HOUR): 1.0}


def test_a_bucket_whose_sum_passes_a_float64_is_refused_told_once_and_the_rest_stored(
        engine: Engine, db_url: str) -> None:
    """acme's hour sums 1e308 + 1e308 in the database (SQLite: inf; PostgreSQL refuses the float
    SUM, so the query is asked again summing as NUMERIC): only that bucket is refused, named with the
    window; globex's bucket of the same poll is stored and the poll goes on. After a restart the
    overlap re-reads the bucket: refused again, not told again, and the later rows are stored."""
    t = _events_table(engine)
    _insert(engine, t, [("acme", "api_calls", 1e308, T0 + 60), ("acme", "api_calls", 1e308, T0 + 120),
                        ("globex", "api_calls", 3.0, T0 + 60)])
    src = _source(db_url)
    try:
        first = poll_source(engine, src, T0 + HOUR)
    finally:
        src.close()
    assert first.ok and points(engine) == {("globex", "api_calls", T0): 3.0}
    assert ("NUMERIC" in src.last_statement) == (engine.dialect.name == "postgresql")
    _insert(engine, t, [("globex", "api_calls", 4.0, T0 + HOUR + 60)])
    src = _source(db_url)  # a restart
    try:
        again = poll_source(engine, src, T0 + 2 * HOUR)
    finally:
        src.close()
    told_once(engine, first, again, "warehouse", "2 bucket row(s) of window 2026-10-31T01:00:00Z to 2026-11-01T01:00:00Z")
    assert points(engine) == {("globex", "api_calls", T0): 3.0, ("globex", "api_calls", T0 + HOUR): 4.0}


def _poll_once(engine: Engine, db_url: str, now: int):  # type: ignore[no-untyped-def]
    src = _source(db_url)
    try:
        return poll_source(engine, src, now), src.last_statement
    finally:
        src.close()


def test_an_overflowing_bucket_leaves_the_other_buckets_of_its_window_bit_for_bit(
        engine: Engine, db_url: str) -> None:
    """PostgreSQL refuses the window's float8 SUM for acme's bucket; the buckets read beside it keep
    their float8 sums bit for bit (CAST(float8 AS numeric) would keep 15 digits: 1.2345678901234567
    -> 1.23456789012346, 0.1 + 0.2 -> 0.3), so nothing is flagged changed and nothing flips back
    when the bad bucket leaves the overlap."""
    t = _events_table(engine)
    _insert(engine, t, [("globex", "api_calls", 1.2345678901234567, T0 + 60),
                        ("initech", "api_calls", 1234567890123456789.0, T0 + 60),
                        ("umbrella", "api_calls", 0.1, T0 + 60), ("umbrella", "api_calls", 0.2, T0 + 120)])
    alone, _ = _poll_once(engine, db_url, T0 + HOUR)
    before = points(engine)
    assert alone.ok and before[("umbrella", "api_calls", T0)] == 0.1 + 0.2 != 0.3
    _insert(engine, t, [("acme", "api_calls", 1e308, T0 + 60), ("acme", "api_calls", 1e308, T0 + 120)])
    beside, statement = _poll_once(engine, db_url, T0 + HOUR + 60)
    assert beside.ok and beside.changed == set()
    assert points(engine) == before  # bit for bit; acme's bucket refused
    assert ("NUMERIC" in statement) == (engine.dialect.name == "postgresql")


def test_an_overflowing_bucket_with_a_null_metric_is_set_apart_too(engine: Engine, db_url: str) -> None:
    """A NULL metric is a group of its own: the overflowing group is matched IS NOT DISTINCT FROM,
    so its rows are kept out of the plain SUM (with `=` the second read would fail again)."""
    t = _events_table(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(t), [{"acct": "acme", "kind": None, "qty": 1e308, "at": _at(T0 + 60, False)},
                                    {"acct": "acme", "kind": None, "qty": 1e308, "at": _at(T0 + 120, False)}])
    _insert(engine, t, [("globex", "api_calls", 0.1, T0 + 60), ("globex", "api_calls", 0.2, T0 + 120)])
    report, _ = _poll_once(engine, db_url, T0 + HOUR)
    assert report.ok, report.error
    assert points(engine) == {("globex", "api_calls", T0): 0.1 + 0.2}


def test_an_integer_sum_past_int64_is_stored_as_a_float_and_the_rest_bit_for_bit(
        engine: Engine, db_url: str) -> None:
    """SQLite's SUM of an INTEGER column raises "integer overflow" past 2^63 (the whole poll failed,
    at every poll): acme's bucket now comes back as its float64 sum (total()), and globex's exact
    integer sum 2^53 + 2 stays what SUM gives (total() adds doubles on SQLite < 3.43: 2^53)."""
    md = sa.MetaData()
    t = sa.Table("raw_events", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("acct", sa.String),
                 sa.Column("kind", sa.String), sa.Column("qty", sa.BigInteger), sa.Column("at", sa.DateTime()))
    md.create_all(engine)
    _insert(engine, t, [("acme", "api_calls", 2**62, T0 + 60), ("acme", "api_calls", 2**62, T0 + 120),
                        ("globex", "api_calls", 2**53, T0 + 60), ("globex", "api_calls", 1, T0 + 61),
                        ("globex", "api_calls", 1, T0 + 62)])
    report, _ = _poll_once(engine, db_url, T0 + HOUR)
    assert report.ok, report.error
    assert points(engine) == {("acme", "api_calls", T0): 2.0**63, ("globex", "api_calls", T0): float(2**53 + 2)}
    assert float(2**53 + 2) != 2.0**53


def test_a_narrow_float_column_past_its_range_is_summed_wide_not_stuck(engine: Engine, db_url: str) -> None:
    """PostgreSQL `real` (float4): its SUM overflows at 3.4e38, far under float8's edge, so no group is set
    apart and the plain SUM of the rest fails again; every group is then summed in the wider type and
    stored (6e38 is a finite float64), instead of every poll failing for good (a reviewer's repro)."""
    md = sa.MetaData()
    t = sa.Table("raw_events", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("acct", sa.String),
                 sa.Column("kind", sa.String), sa.Column("qty", sa.REAL), sa.Column("at", sa.DateTime()))
    md.create_all(engine)
    _insert(engine, t, [("acme", "api_calls", 3e38, T0 + 60), ("acme", "api_calls", 3e38, T0 + 120),
                        ("globex", "api_calls", 2.0, T0 + 60)])
    report, _ = _poll_once(engine, db_url, T0 + HOUR)
    assert report.ok, report.error
    stored = points(engine)
    assert stored[("globex", "api_calls", T0)] == 2.0
    assert stored[("acme", "api_calls", T0)] == pytest.approx(6e38, rel=1e-6)  # float4 inputs: 7 digits


def test_count_aggregate_with_a_query_and_a_constant_metric(engine: Engine, db_url: str) -> None:
    t = _events_table(engine)
    _insert(engine, t, [("acme", "login", 0, T0 + 1), ("acme", "login", 0, T0 + 2), ("acme", "other", 0, T0 + 3)])
    cfg = source_config(f"""
[[sources]]
id = "logins"
type = "sql"
url = "{db_url}"
query = "SELECT acct, at FROM raw_events WHERE kind = 'login';"
account_column = "acct"
time_column = "at"
metric = "logins"
aggregate = "count"
bucket = "1d"
""")
    src = SqlSource(cfg)
    try:
        [batch] = list(src.poll(PollContext("logins", T0 + HOUR)))
    finally:
        src.close()
    assert [(r.account, r.metric, r.ts, r.value) for r in batch.totals] == [("acme", "logins", T0, 2.0)]


# A query that never ends (SQLite and PostgreSQL): an unbounded recursive CTE.
ENDLESS = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT 'acme' AS acct, x AS at FROM r"


def _endless(db_url: str, extra: str = "") -> SqlSource:
    """A source whose query never ends, cancelled after 1 s."""
    return SqlSource(source_config(f"""
[[sources]]
id = "slow"
type = "sql"
url = "${{WAREHOUSE_URL}}"
query = "{ENDLESS}"
account_column = "acct"
time_column = "at"
time_type = "epoch"
metric = "api_calls"
aggregate = "count"
statement_timeout = "1s"
{extra}
""", {"WAREHOUSE_URL": db_url}))


def test_a_query_past_statement_timeout_is_cancelled_and_said_so(engine: Engine, db_url: str) -> None:
    """A hung warehouse query must not hold the source's poll (and its scheduler thread) forever."""
    import time

    src = _endless(db_url)
    started = time.monotonic()
    try:
        with pytest.raises(SourceError) as exc:
            list(src.poll(PollContext("slow", T0)))
        took = time.monotonic() - started
        # the source stays usable: the next statement on the same engine runs normally
        with src.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1")).scalar_one() == 1
    finally:
        src.close()
    assert "ran past statement_timeout (1s) and was cancelled" in str(exc.value)
    assert took < 30  # cancelled by the database, not by the test's patience


def test_query_errors_name_the_source_and_never_the_password(pg_server) -> None:  # type: ignore[no-untyped-def]
    url = pg_server.url("postgres").replace("postgres@", "postgres:hunter2@")
    src = _source(url)
    try:
        with pytest.raises(SourceError) as exc:
            list(src.poll(PollContext("warehouse", T0)))
    finally:
        src.close()
    msg = str(exc.value)
    assert msg.startswith("source 'warehouse': query on postgresql+psycopg://postgres:***@127.0.0.1")
    assert "raw_events" in msg and "hunter2" not in msg


def test_config_problems() -> None:
    problems = "\n".join(config_problems("""
[[sources]]
id = "w"
type = "sql"
url = "not a url at all"
table = "t"
query = "DELETE FROM t"
account_column = "a"
time_column = "t"
aggregate = "avg"
bucket = "7m"
statement_timeout = "0s"
""", {}))
    assert "sources[0].url: cannot be parsed as a SQLAlchemy URL (not shown: it may hold a password)" in problems
    assert "sources[0].table: give exactly one of table" in problems
    assert "sources[0].query: must be a SELECT" in problems
    assert "sources[0].metric: give exactly one of metric" in problems
    assert "sources[0].aggregate: must be one of sum, count, max (got 'avg')" in problems
    assert "sources[0].bucket: must divide a day" in problems
    assert "sources[0].statement_timeout:" in problems
    assert "not a url at all" not in problems
    missing_driver = "\n".join(config_problems(
        '[[sources]]\nid = "w"\ntype = "sql"\nurl = "oracle+nodriver://u:p@h/db"\ntable = "t"\n'
        'account_column = "a"\ntime_column = "t"\nmetric = "m"\nvalue_column = "v"\n'))
    assert "no SQLAlchemy driver for 'oracle+nodriver' is installed" in missing_driver
    for url, says in (("mysql://u:hunter2@h/db", "no SQLAlchemy driver for 'mysql' is installed (No module named"),
                      ("postgresql://u:hunter2@h:99999/db", "port 99999 is not between 1 and 65535")):
        # a known dialect without its driver (MySQLdb) and a port out of range passed the check
        found = "\n".join(config_problems(
            f'[[sources]]\nid = "w"\ntype = "sql"\nurl = "{url}"\ntable = "t"\n'
            'account_column = "a"\ntime_column = "t"\nmetric = "m"\nvalue_column = "v"\n'))
        assert f"sources[0].url: {says}" in found and "hunter2" not in found, found
