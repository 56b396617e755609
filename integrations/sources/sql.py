"""`sql` source: usage from any database SQLAlchemy can reach (PostgreSQL tested for real).

The aggregation to buckets runs IN the database: one
``SELECT account, [metric,] bucket, SUM(value), MAX(time) ... GROUP BY account, [metric,] bucket``
over `table` (or a `query`) restricted to the poll's time window, so a poll
returns one row per account, metric and bucket however many raw rows there
are. Rows with a NULL account or value are ignored (anonymous usage).

Time columns may be timestamps (`time_type = "timestamp"`; naive ones are
UTC) or epoch numbers (`"epoch"`, `"epoch_ms"`). The window is
[newest stored - overlap, now), aligned to `bucket`, so each bucket is read
whole and replaces what is stored. Sessions run in UTC. A bad aggregated row
fails the poll (nothing stored), or with `on_error = "skip"` is left out and
told once per account, metric and bucket (integrations.sources.skipped).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from integrations.sources.base import (
    Batch,
    PollContext,
    PollDeadline,
    SourceConfig,
    SourceError,
    SourceSettings,
    SourceType,
    malformed_error,
    read_window,
    register_type,
    window_label,
)
from integrations.sources.records import UsageRecord, id_problem, is_metric_name, time_problem
from integrations.sources.skipped import Malformed, parse_on_error
from rules.config import Secret, Section, redaction
from storage.db import port_problem, redact_url

KEYS = ("url", "url_file", "table", "query", "where", "account_column", "metric_column", "metric",
        "value_column", "time_column", "time_type", "aggregate", "bucket", "statement_timeout", "on_error")
DEFAULT_STATEMENT_TIMEOUT = 300  # seconds: a poll's query that runs longer is cancelled (a hung poll blocks its source)
CONNECT_TIMEOUT = 30  # seconds to open a connection (PostgreSQL, MySQL), at most the statement timeout
TIME_TYPES = ("timestamp", "epoch", "epoch_ms")
AGGREGATES = ("sum", "count", "max")


# ---------------------------------------------------------------- SQL constructs per dialect


class epoch_seconds(FunctionElement[int]):  # noqa: N801 - SQL function style
    """Epoch seconds of a timestamp column (naive timestamps are taken as UTC)."""

    type = sa.BigInteger()
    name = "epoch_seconds"
    inherit_cache = True


@compiles(epoch_seconds)
def _epoch_default(el: Any, compiler: Any, **kw: Any) -> str:
    return f"CAST(EXTRACT(EPOCH FROM {compiler.process(el.clauses, **kw)}) AS BIGINT)"


@compiles(epoch_seconds, "sqlite")
def _epoch_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    return f"CAST(strftime('%s', {compiler.process(el.clauses, **kw)}) AS INTEGER)"


@compiles(epoch_seconds, "mysql")
@compiles(epoch_seconds, "mariadb")
def _epoch_mysql(el: Any, compiler: Any, **kw: Any) -> str:
    return f"UNIX_TIMESTAMP({compiler.process(el.clauses, **kw)})"


@compiles(epoch_seconds, "mssql")
def _epoch_mssql(el: Any, compiler: Any, **kw: Any) -> str:
    return f"DATEDIFF_BIG(SECOND, '1970-01-01', {compiler.process(el.clauses, **kw)})"


class bucket_floor(FunctionElement[int]):  # noqa: N801 - SQL function style
    """Epoch seconds floored to a bucket: floor(t / step) * step (t >= 0)."""

    type = sa.BigInteger()
    name = "bucket_floor"
    inherit_cache = True


def _bucket_args(el: Any, compiler: Any, kw: Any) -> tuple[str, str]:
    t, step = list(el.clauses)
    return compiler.process(t, **kw), compiler.process(step, **kw)


@compiles(bucket_floor)
def _floor_default(el: Any, compiler: Any, **kw: Any) -> str:
    t, s = _bucket_args(el, compiler, kw)
    return f"(CAST(FLOOR({t} / {s}) AS BIGINT) * {s})"


@compiles(bucket_floor, "sqlite")
def _floor_sqlite(el: Any, compiler: Any, **kw: Any) -> str:
    t, s = _bucket_args(el, compiler, kw)
    return f"((CAST({t} AS INTEGER) / {s}) * {s})"


@compiles(bucket_floor, "mysql")
@compiles(bucket_floor, "mariadb")
def _floor_mysql(el: Any, compiler: Any, **kw: Any) -> str:
    t, s = _bucket_args(el, compiler, kw)
    return f"(FLOOR({t} / {s}) * {s})"


@dataclass(frozen=True)
class WideSum:
    """How a dialect sums the groups whose plain SUM passes its type's range: `sum` in a wider
    type, `magnitude` (the sum of absolute values, which bounds every partial sum) compared with
    `limit` to find them, and `refused` telling the database's overflow error."""

    sum: Any
    magnitude: Any
    limit: Any
    refused: Any


# The limits sit 2^-30 (about 1e-9) below the type's largest value: the wide sum of a group rounds
# (PostgreSQL's CAST(float8 AS numeric) keeps 15 digits, SQLite's total() adds doubles), so a group a
# few ulps under the edge must still count as overflowing, or the "rest" query would fail again.
_FLOAT8_EDGE = sa.literal_column(repr(float.fromhex("0x1.fffffffffffffp+1023") * (1 - 2**-30)), sa.Numeric)
_INT64_EDGE = sa.literal_column(repr(2.0**63 * (1 - 2**-30)), sa.Float)

_WIDE_SUM: dict[str, WideSum] = {
    "postgresql": WideSum(
        sum=lambda c: sa.func.sum(sa.cast(c, sa.Numeric)),
        magnitude=lambda c: sa.func.sum(sa.func.abs(sa.cast(c, sa.Numeric))),
        limit=_FLOAT8_EDGE,
        refused=lambda exc: getattr(exc.orig, "sqlstate", None) == "22003"),
    "sqlite": WideSum(
        sum=lambda c: sa.func.total(c),
        magnitude=lambda c: sa.func.total(sa.func.abs(sa.cast(c, sa.Float))),
        limit=_INT64_EDGE,
        refused=lambda exc: "integer overflow" in str(exc.orig)),
}


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SqlOptions:
    url: Secret
    account_column: str
    time_column: str
    table: str | None = None
    query: str | None = None
    where: str | None = None
    metric_column: str | None = None
    metric: str | None = None
    value_column: str | None = None
    time_type: str = "timestamp"
    aggregate: str = "sum"
    bucket: int = 3600
    statement_timeout: int = DEFAULT_STATEMENT_TIMEOUT  # seconds
    on_error: str = "reject"  # "skip": leave a bad row out (told once), store the rest


def engine_url(url: str) -> URL:
    """The SQLAlchemy URL; a bare postgresql:// uses psycopg 3 (installed with usagebot)."""
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u


def _check_url(section: Section, secret: Secret | None) -> Secret | None:
    if secret is None:
        return None
    key = "url_file" if section.has("url_file") else "url"
    try:
        u = engine_url(secret.reveal())
    except (ArgumentError, ValueError):
        section.problem(key, "cannot be parsed as a SQLAlchemy URL (not shown: it may hold a password); "
                             "expected e.g. 'postgresql://user:pass@host:5432/db'")
        return None
    if port_problem(u) is not None:
        section.problem(key, f"{port_problem(u)} (URL not shown: it may hold a password)")
        return None
    try:
        u.get_dialect().import_dbapi()  # the dialect alone loads without its driver (mysql:// without MySQLdb)
    except (NoSuchModuleError, ImportError) as exc:
        section.problem(key, f"no SQLAlchemy driver for {u.drivername!r} is installed ({exc}); install the "
                             "database's driver package into usagebot's environment")
        return None
    return secret


def parse(section: Section, settings: SourceSettings) -> SqlOptions | None:
    url = _check_url(section, section.secret("url", required=not section.has("url_file")))
    table, query = section.str("table"), section.str("query")
    if (table is None) == (query is None):
        section.problem("table", "give exactly one of table (a table or view name) or query (a SELECT)")
    if query is not None:
        query = query.strip().rstrip(";").strip()
        if not query.lower().startswith(("select", "with")):
            section.problem("query", "must be a SELECT (or WITH ... SELECT) statement")
    account = section.str("account_column", required=True)
    time_col = section.str("time_column", required=True)
    metric_col, metric = section.str("metric_column"), section.str("metric")
    if (metric_col is None) == (metric is None):
        section.problem("metric", "give exactly one of metric (one metric for every row) or metric_column")
    if metric is not None and not is_metric_name(metric):
        section.problem("metric", f"{metric!r} is not a metric name (letters, digits and _ . : -)")
    aggregate = section.str("aggregate", "sum", choices=AGGREGATES) or "sum"
    value_col = section.str("value_column")
    if value_col is None and aggregate != "count":
        section.problem("value_column", f"is required with aggregate = {aggregate!r} (use aggregate = "
                                        "\"count\" to count rows)")
    time_type = section.str("time_type", "timestamp", choices=TIME_TYPES) or "timestamp"
    bucket = section.duration("bucket", 3600, min=60) or 3600
    if 86_400 % bucket:
        section.problem("bucket", "must divide a day (e.g. 1m, 5m, 1h, 1d)")
    timeout = section.duration("statement_timeout", DEFAULT_STATEMENT_TIMEOUT, min=1) or DEFAULT_STATEMENT_TIMEOUT
    if url is None or account is None or time_col is None:
        return None
    return SqlOptions(url=url, account_column=account, time_column=time_col, table=table, query=query,
                      where=section.str("where"), metric_column=metric_col, metric=metric,
                      value_column=value_col, time_type=time_type, aggregate=aggregate, bucket=bucket,
                      statement_timeout=timeout, on_error=parse_on_error(section))


# ---------------------------------------------------------------------------- source


def _run(dbapi_conn: Any, *statements: str) -> None:
    cur = dbapi_conn.cursor()
    try:
        for sql in statements:
            cur.execute(sql)
    finally:
        cur.close()
    if hasattr(dbapi_conn, "commit"):
        dbapi_conn.commit()


def _session_postgresql(timeout: int) -> Any:
    """Every connection: UTC, and the server cancels a statement running past `timeout` seconds."""
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        _run(dbapi_conn, "SET TIME ZONE 'UTC'", f"SET statement_timeout = {int(timeout) * 1000}")
    return on_connect


def _session_mysql(timeout: int, mariadb: bool) -> Any:
    """UTC, and the statement time limit: MySQL's max_execution_time (ms), MariaDB's max_statement_time (s)."""
    limit = f"SET SESSION max_statement_time = {int(timeout)}" if mariadb else \
        f"SET SESSION max_execution_time = {int(timeout) * 1000}"

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        _run(dbapi_conn, "SET time_zone = '+00:00'", limit)
    return on_connect


def sqlite_deadline(engine: Engine, timeout: int, clock: Callable[[], float] = time.monotonic) -> None:
    """SQLite has no statement timeout: a progress handler interrupts a statement running past
    `timeout` seconds of `clock` (sqlite3 raises OperationalError "interrupted"). The handler reads
    the clock every 10,000 virtual-machine instructions (a test's clock that counts its calls makes
    the limit a count of instructions: the same on a loaded machine)."""

    def before(conn: Any, _cursor: Any, _stmt: Any, _params: Any, _context: Any, _many: bool) -> None:
        deadline = clock() + timeout
        conn.connection.dbapi_connection.set_progress_handler(lambda: int(clock() > deadline), 10_000)

    def after(conn: Any, *_args: Any) -> None:
        dbapi = getattr(getattr(conn, "connection", None), "dbapi_connection", None)
        if dbapi is not None:  # None once SQLAlchemy has invalidated the connection after an error
            dbapi.set_progress_handler(None, 0)

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    sa.event.listen(engine, "handle_error", lambda ctx: after(ctx.connection) if ctx.connection is not None else None)


class SqlSource:
    def __init__(self, config: SourceConfig, engine: Engine | None = None) -> None:
        self.id = config.id
        self.settings = config.settings
        self.o: SqlOptions = config.options
        self.engine = engine or self._make_engine()
        self.last_statement = ""  # the SQL of the last poll (for logs and tests)

    def _make_engine(self) -> Engine:
        """The source's engine: sessions in UTC, each statement limited to `statement_timeout`
        (PostgreSQL, MySQL/MariaDB, SQLite; other databases: their driver's own limits)."""
        u = engine_url(self.o.url.reveal())
        backend, timeout = u.get_backend_name(), self.o.statement_timeout
        if backend == "sqlite":
            eng = sa.create_engine(u)
            sqlite_deadline(eng, timeout)
            return eng
        connect_args: dict[str, Any] = {}
        if backend in ("postgresql", "mysql", "mariadb"):
            connect_args["connect_timeout"] = min(CONNECT_TIMEOUT, timeout)
        eng = sa.create_engine(u, pool_pre_ping=True, pool_size=1, max_overflow=1, connect_args=connect_args)
        if backend == "postgresql":
            sa.event.listen(eng, "connect", _session_postgresql(timeout))
        elif backend in ("mysql", "mariadb"):
            sa.event.listen(eng, "connect", _session_mysql(timeout, backend == "mariadb"))
        return eng

    def close(self) -> None:
        self.engine.dispose()

    def _from(self) -> Any:
        o = self.o
        names = [o.account_column, o.time_column]
        names += [c for c in (o.metric_column, o.value_column) if c]
        cols = [sa.column(c) for c in dict.fromkeys(names)]
        if o.query is not None:
            return sa.text(o.query).columns(*cols).subquery("usage_src")
        schema, _, name = (o.table or "").rpartition(".")
        return sa.table(name, *cols, schema=schema or None).alias("usage_src")

    def statement(self, start: int, end: int, dialect: str, part: str = "all") -> sa.Select[Any]:
        """The aggregate query for the window [start, end) (epoch seconds). `part` (after the
        database refused a SUM past its type's range, see `_rows`): "overflowing", only the groups
        whose SUM passes the range, summed in a wider type; "rest", every other group with the plain
        SUM (the same values as "all" gives for them); "wide", every group summed in the wider type."""
        o = self.o
        src = self._from()
        tcol = src.c[o.time_column]
        if o.time_type == "timestamp":
            t: Any = epoch_seconds(tcol)
        elif o.time_type == "epoch_ms":
            t = tcol.op("/")(sa.literal_column("1000"))
        else:
            t = tcol
        b = bucket_floor(t, sa.literal_column(str(o.bucket))).label("bucket_start")
        acct = src.c[o.account_column].label("account")
        column: Any = src.c[str(o.value_column)] if o.value_column else None
        value: Any = sa.func.count() if o.aggregate == "count" else getattr(sa.func, o.aggregate)(column)
        wide = _WIDE_SUM.get(dialect)
        if part in ("overflowing", "wide") and wide is not None:
            value = wide.sum(column)
        cols: list[Any] = [acct]
        group: list[Any] = [src.c[o.account_column]]
        if o.metric_column:
            cols.append(src.c[o.metric_column].label("metric"))
            group.append(src.c[o.metric_column])
        cols += [b, value.label("value"), sa.func.max(t).label("newest")]
        if o.time_type == "timestamp" and dialect != "sqlite":  # index-friendly: compare the column itself
            lo, hi = datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC)
            conds = [tcol >= sa.bindparam("w_start", lo, type_=sa.DateTime(timezone=True)),
                     tcol < sa.bindparam("w_end", hi, type_=sa.DateTime(timezone=True))]
        elif o.time_type == "timestamp":
            conds = [t >= sa.bindparam("w_start", start, type_=sa.BigInteger()),
                     t < sa.bindparam("w_end", end, type_=sa.BigInteger())]
        else:
            k = 1000 if o.time_type == "epoch_ms" else 1
            conds = [tcol >= sa.bindparam("w_start", start * k, type_=sa.BigInteger()),
                     tcol < sa.bindparam("w_end", end * k, type_=sa.BigInteger())]
        conds.append(src.c[o.account_column].is_not(None))
        if o.value_column:
            conds.append(src.c[o.value_column].is_not(None))
        if o.where:
            conds.append(sa.text(f"({o.where})"))
        if part == "rest" and wide is not None:
            big = self.statement(start, end, dialect, "overflowing").cte("overflowing")
            same = [big.c.account == src.c[o.account_column], big.c.bucket_start == b]
            if o.metric_column:  # a NULL metric is a group too
                same.append(big.c.metric.is_not_distinct_from(src.c[o.metric_column]))
            conds.append(~sa.exists().where(*same))
        stmt = sa.select(*cols).where(*conds).group_by(*group, b)
        if part == "overflowing" and wide is not None:
            stmt = stmt.having(wide.magnitude(column) >= wide.limit)
        return stmt

    def _rows(self, start: int, end: int) -> list[Any]:
        """The aggregated rows of the window. A database whose SUM refuses to pass its type's range
        (PostgreSQL float8: 22003 numeric_value_out_of_range; SQLite INTEGER: "integer overflow")
        fails the whole query for one bucket, so the window is then read in two parts: the
        overflowing groups summed in a wider type (PostgreSQL NUMERIC: past the largest float64 they
        come back as inf and only they are refused by the store; SQLite total(): the float64 sum)
        and every other group with the plain SUM, bit for bit the values of a window without the
        bad bucket. SQLite's sum of REAL returns inf itself."""
        dialect = self.engine.dialect.name
        stmt = self.statement(start, end, dialect)
        self.last_statement = str(stmt.compile(dialect=self.engine.dialect))
        try:
            with self.engine.connect() as conn:
                return conn.execute(stmt).all()
        except sa.exc.DBAPIError as exc:
            wide = _WIDE_SUM.get(dialect)
            if wide is None or self.o.aggregate != "sum" or not wide.refused(exc):
                raise
        over, rest = (self.statement(start, end, dialect, part) for part in ("overflowing", "rest"))
        self.last_statement = str(rest.compile(dialect=self.engine.dialect))
        try:
            with self.engine.connect() as conn:
                if dialect == "postgresql":  # both parts see one snapshot: a bucket fixed in between is not read twice
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    return [*conn.execute(over).all(), *conn.execute(rest).all()]
        except sa.exc.DBAPIError as again:
            if not wide.refused(again):
                raise
        # a column type narrower than the limits (PostgreSQL real: a float4 SUM overflows at 3.4e38, far under
        # float8's edge, so no group is set apart and "rest" fails again): every group summed in the wider type
        with self.engine.connect() as conn:
            return conn.execute(self.statement(start, end, dialect, "wide")).all()

    def _read(self, start: int, end: int) -> tuple[list[Any], int]:
        """The window's aggregated rows (as one page, for read_window). A query the database cancels
        at statement_timeout raises PollDeadline: the failed poll stores a window half as long for
        the next one, so a source behind by more than one query can read catches up over polls
        instead of running the same too-long query until it is fixed by hand."""
        try:
            return self._rows(start, end), 1
        except SQLAlchemyError as exc:
            reason = redaction.clip(" ".join(str(getattr(exc, "orig", None) or exc).split()), 300)
            timed_out = _timed_out(exc)
            if timed_out:
                reason = f"it ran past statement_timeout ({self.o.statement_timeout}s) and was cancelled ({reason})"
            error = PollDeadline if timed_out else SourceError
            raise error(f"source {self.id!r}: query on {redact_url(self.engine.url)} failed: "
                        f"{redact_url(reason)}") from None

    def poll(self, ctx: PollContext) -> Iterator[Batch]:
        rows, read = read_window(ctx, self.settings.overlap, self.settings.backfill, self.o.bucket, 1, self._read)
        start, end = read.start, read.end
        records: list[UsageRecord] = []
        bad = Malformed()
        newest_ts: int | None = None
        for r in rows:
            metric = str(r.metric) if self.o.metric_column else str(self.o.metric)
            bucket = int(r.bucket_start)
            # a row is keyed by its account, metric and bucket, not its value: the SUM of a bucket still
            # filling changes every poll and would be told again each time
            key = ("row", repr(r.account), metric, bucket)
            try:
                when = f"{datetime.fromtimestamp(bucket, UTC):%Y-%m-%dT%H:%MZ}"
            except (OverflowError, OSError, ValueError):  # refused below, named here
                when = f"epoch second {bucket}"
            where = f"account {repr(str(r.account))[:80]}, bucket {when}"
            if not is_metric_name(metric):
                bad.add(where, f"metric {metric!r} is not a metric name (letters, digits and _ . : -)", *key)
                continue
            try:
                value = float(r.value)
            except (TypeError, ValueError):
                bad.add(f"{where}, metric {metric}", f"value {r.value!r} is not a number", *key)
                continue
            if value < 0 or value != value:  # (inf: a bucket past the largest float64, refused by the store)
                bad.add(f"{where}, metric {metric}", f"value {value:g} is negative or not a number", *key)
                continue
            why = id_problem(str(r.account), "account") or time_problem(int(r.bucket_start))
            if why is not None:
                bad.add(f"{where}, metric {metric}", why, *key)
                continue
            records.append(UsageRecord(str(r.account), metric, int(r.bucket_start), value))
            n = int(float(r.newest))
            newest_ts = n if newest_ts is None else max(newest_ts, n)
        if bad.problems and self.o.on_error == "reject":
            raise malformed_error(self.id, bad.problems, "bad aggregated row(s)")
        watermark = ctx.watermark
        if newest_ts is not None:
            newest_ts = min(newest_ts, ctx.now)
            watermark = newest_ts if watermark is None else max(watermark, newest_ts)
        yield Batch(cursor=read.cursor(watermark), watermark=watermark, totals=records,
                    label=f"{len(rows)} bucket row(s) of {window_label(start, end)}", skipped=bad.items,
                    behind=read.behind())


def _timed_out(exc: SQLAlchemyError) -> bool:
    """Whether the database cancelled the statement for running too long (PostgreSQL 57014
    query_canceled, MySQL 3024 / MariaDB 1969, SQLite's interrupted progress handler)."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) == "57014":
        return True
    args = getattr(orig, "args", ())
    if args and args[0] in (3024, 1969):
        return True
    return "interrupted" in str(orig or "")


def build(config: SourceConfig) -> SqlSource:
    return SqlSource(config)


register_type(SourceType("sql", KEYS, parse, build))
