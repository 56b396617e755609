"""Raw floors: the least work that reads (or writes) the rows, against which bench_scale compares.

Columnar read floor (read_columnar_floor; the floor bench_scale and bench_daily compare with)
    The same rows as the row read floor below, read by connectorx straight into Arrow columns
    (no Python object per row): 0.3-0.5x the row floor's time.

Row read floor (read_floor)
    The rows an evaluation needs (the same metrics and the same time ranges as
    bot.service.pipeline.load_blocks_for), read from the same database with the
    plainest fast query through the driver's own cursor

        SELECT account_id, bucket_start, value FROM usage_points
        WHERE metric = ? AND bucket_start >= ? AND bucket_start < ?

    into three numpy arrays per metric (account ids as an object array,
    int64 bucket starts, float64 values). No aggregation into buckets, no
    missing-data logic, no ORM. Each metric's arrays are dropped before the
    next metric is read, so the floor's memory is one metric's rows.

Write floor
    The same rows inserted with a plain executemany INSERT on SQLite, COPY on
    PostgreSQL, into an empty table with the same columns, key and indexes as
    usage_points (read from storage.models), without upsert semantics
    (duplicates would fail) and without the engine's bookkeeping tables.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from rules.engine import BlockKey, history_needed
from rules.model import Rule
from storage.models import UsagePoint

FETCH_ROWS = 100_000
IN_CHUNK = 1_000  # account ids per IN (...) list when reading only some accounts
INSERT_CHUNK = 50_000  # rows per transaction of the write floor on SQLite
_FIRST, _SECOND, _THIRD = itemgetter(0), itemgetter(1), itemgetter(2)


def ranges_for(rules: Iterable[Rule], now: int) -> dict[BlockKey, tuple[int, int]]:
    """[start, end) per (metric, bucket) exactly as bot.service.pipeline.load_blocks_for computes it."""
    out: dict[BlockKey, tuple[int, int]] = {}
    for (metric, step), history in history_needed(list(rules)).items():
        end = (now // step) * step
        out[(metric, step)] = (((end - history) // step) * step, end)
    return out


@dataclass
class Rows:
    """One metric's rows as arrays (no aggregation, no missing-data logic)."""

    account_ids: np.ndarray  # object (str)
    bucket_start: np.ndarray  # int64
    values: np.ndarray  # float64

    def __len__(self) -> int:
        return int(self.values.size)


@dataclass
class FloorResult:
    rows: int = 0
    seconds: float = 0.0
    cpu: float = 0.0  # the reading process's CPU time (all its threads), where measured
    per_metric: dict[str, int] = field(default_factory=dict)
    value_sum: float = 0.0  # proves every value was read; compare with SUM(value) in SQL


def _placeholder(engine: Engine) -> str:
    name = engine.dialect.name
    if name == "sqlite":
        return "?"
    if name == "postgresql":
        return "%s"
    raise ValueError(f"bench.raw_floor: unsupported database dialect {name!r}; use SQLite or PostgreSQL")


def _fetch(cursor: object, out: Rows | None) -> Rows:
    ids: list[np.ndarray] = [] if out is None else [out.account_ids]
    stamps: list[np.ndarray] = [] if out is None else [out.bucket_start]
    values: list[np.ndarray] = [] if out is None else [out.values]
    while True:
        batch = cursor.fetchmany(FETCH_ROWS)  # type: ignore[attr-defined]
        if not batch:
            break
        n = len(batch)
        ids.append(np.fromiter(map(_FIRST, batch), dtype=object, count=n))
        stamps.append(np.fromiter(map(_SECOND, batch), dtype=np.int64, count=n))
        values.append(np.fromiter(map(_THIRD, batch), dtype=np.float64, count=n))
    if not values:
        return Rows(np.empty(0, dtype=object), np.empty(0, dtype=np.int64), np.empty(0))
    return Rows(np.concatenate(ids), np.concatenate(stamps), np.concatenate(values))


def read_rows(
    engine: Engine, metric: str, start: int, end: int, account_ids: Sequence[str] | None = None
) -> Rows:
    """Rows of `metric` with bucket_start in [start, end) (of the given accounts only, if any)."""
    ph = _placeholder(engine)
    sql = (
        "SELECT account_id, bucket_start, value FROM usage_points "
        f"WHERE metric = {ph} AND bucket_start >= {ph} AND bucket_start < {ph}"
    )
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        if account_ids is None:
            cur.execute(sql, (metric, start, end))
            return _fetch(cur, None)
        rows: Rows | None = None
        ids = list(account_ids)
        for i in range(0, len(ids), IN_CHUNK):
            part = ids[i : i + IN_CHUNK]
            cur.execute(f"{sql} AND account_id IN ({', '.join([ph] * len(part))})", (metric, start, end, *part))
            rows = _fetch(cur, rows)
        return rows if rows is not None else _fetch(cur, None)
    finally:
        raw.close()


def read_floor(
    engine: Engine, ranges: Mapping[BlockKey, tuple[int, int]], account_ids: Sequence[str] | None = None
) -> FloorResult:
    """Read every range's rows into arrays, one metric at a time; time it."""
    out = FloorResult()
    t0 = time.perf_counter()
    for (metric, _step), (start, end) in ranges.items():
        rows = read_rows(engine, metric, start, end, account_ids)
        out.per_metric[metric] = out.per_metric.get(metric, 0) + len(rows)
        out.rows += len(rows)
        out.value_sum += float(rows.values.sum())
        del rows
    out.seconds = time.perf_counter() - t0
    return out


# ---------------------------------------------------------------------------- writes


def create_points_table(engine: Engine, name: str) -> sa.Table:
    """An empty table shaped like usage_points (same columns, primary key and indexes, as declared in
    storage.models) for write comparisons; dropped first if it exists."""
    if not name.isidentifier():
        raise ValueError(f"bench.raw_floor: table name {name!r} must be a plain identifier")
    source: sa.Table = UsagePoint.__table__  # type: ignore[attr-defined]
    metadata = sa.MetaData()
    columns = [sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable, autoincrement=False)
               for c in source.columns]
    table = sa.Table(name, metadata, *columns, **{k: v for k, v in source.kwargs.items() if k.startswith("sqlite_")})
    for k, index in enumerate(sorted(source.indexes, key=lambda ix: ix.name or "")):
        sa.Index(f"ix_{name}_{k}", *(table.c[c.name] for c in index.columns), unique=index.unique)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    return table


def insert_plain(engine: Engine, table: str, rows: Sequence[tuple[str, str, int, float]]) -> float:
    """Write floor: insert `rows` into `table` (executemany on SQLite, COPY on PostgreSQL); seconds taken."""
    raw = engine.raw_connection()
    t0 = time.perf_counter()
    try:
        cur = raw.cursor()
        if engine.dialect.name == "sqlite":
            sql = f"INSERT INTO {table} (account_id, metric, bucket_start, value) VALUES (?, ?, ?, ?)"
            for i in range(0, len(rows), INSERT_CHUNK):
                cur.execute("BEGIN")
                cur.executemany(sql, rows[i : i + INSERT_CHUNK])
                cur.execute("COMMIT")
        else:
            with cur.copy(f"COPY {table} (account_id, metric, bucket_start, value) FROM STDIN") as copy:  # type: ignore[attr-defined]
                for row in rows:
                    copy.write_row(row)
            raw.commit()
    finally:
        raw.close()
    return time.perf_counter() - t0


def read_tile_floor(engine: Engine, ranges: Mapping[BlockKey, tuple[int, int]]) -> FloorResult:
    """The floor of the cached read path: the stored usage tiles (storage/tiles.py) covering each
    range, read with one plain SELECT per (metric, step) and decoded into arrays (values and the
    has-a-point bits), without the refresh, the row selection or the missing-data logic.

    rows = tiles read; value_sum = the sum of every cell read."""
    from storage import tiles

    ph = _placeholder(engine)
    out = FloorResult()
    t0 = time.perf_counter()
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        for (metric, step), (start, end) in ranges.items():
            k0, k1 = start // step // tiles.TILE_COLS, (end // step - 1) // tiles.TILE_COLS
            sql = (f"SELECT n_rows, sums, has FROM usage_tiles WHERE metric = {ph} AND step = {ph} "
                   f"AND tile >= {ph} AND tile <= {ph}")
            if engine.dialect.name == "postgresql":  # bytea as raw bytes, as storage.tiles reads it
                cur.execute(sql, (metric, step, k0, k1), binary=True)
            else:
                cur.execute(sql, (metric, step, k0, k1))
            for n_rows, sums, has in cur:
                values = np.frombuffer(sums, dtype=np.float64).reshape(n_rows, tiles.TILE_COLS)
                bits = np.unpackbits(np.frombuffer(has, dtype=np.uint8), count=n_rows * tiles.TILE_COLS)
                assert bits.size == values.size
                out.value_sum += float(values.sum())
                out.rows += 1
                out.per_metric[metric] = out.per_metric.get(metric, 0) + 1
    finally:
        raw.close()
    out.seconds = time.perf_counter() - t0
    return out


# ------------------------------------------------------------------- columnar read floor


def connectorx_url(db_url: str) -> str:
    """The connectorx connection string of a SQLAlchemy URL (sqlite:///path, postgresql[+driver]://...)."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        return f"sqlite://{Path(url.database or '').resolve()}"
    if url.get_backend_name() == "postgresql":
        return url.set(drivername="postgresql").set(query={}).render_as_string(hide_password=False)
    raise ValueError(f"bench.raw_floor: unsupported database {url.get_backend_name()!r}; use SQLite or PostgreSQL")


def read_columnar_floor(db_url: str, ranges: Mapping[BlockKey, tuple[int, int]], table: str = "usage_points",
                        protocol: str | None = None) -> FloorResult:
    """The columnar read floor: every range's rows (the same query as `read_rows`) read by connectorx
    straight into Arrow columns (Rust, no Python object per row), one metric at a time; timed.
    `table` may be schema-qualified (a PostgreSQL scratch schema).

    On SQLite the read runs in a child process (timed there): connectorx links its own copy of
    SQLite, and two copies in one process drop each other's POSIX locks on the same file
    (storage/columnar.py)."""
    if connectorx_url(db_url).startswith("sqlite"):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            return pool.submit(_columnar_floor, db_url, dict(ranges), table, protocol).result()
    return _columnar_floor(db_url, ranges, table, protocol)


def _columnar_floor(db_url: str, ranges: Mapping[BlockKey, tuple[int, int]], table: str,
                    protocol: str | None) -> FloorResult:
    import connectorx as cx

    conn = connectorx_url(db_url)
    out = FloorResult()
    t0, c0 = time.perf_counter(), time.process_time()
    for (metric, _step), (start, end) in ranges.items():
        if "'" in metric:
            raise ValueError(f"bench.raw_floor: metric {metric!r} cannot be quoted")
        sql = (f"SELECT account_id, bucket_start, value FROM {table} "
               f"WHERE metric = '{metric}' AND bucket_start >= {int(start)} AND bucket_start < {int(end)}")
        kwargs = {"protocol": protocol} if protocol else {}
        rows = cx.read_sql(conn, sql, return_type="arrow", **kwargs)
        n = rows.num_rows
        out.per_metric[metric] = out.per_metric.get(metric, 0) + n
        out.rows += n
        values = rows.column("value").to_numpy()
        out.value_sum += float(np.nansum(values))
        del rows, values
    out.seconds, out.cpu = time.perf_counter() - t0, time.process_time() - c0
    return out
