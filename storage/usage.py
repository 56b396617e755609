"""Usage series: idempotent bulk upserts and aggregated blocks for the engine.

Points are stored at a base bucket (`base_step`, default one minute) as
integer epoch seconds. Every write also maintains two small tables in the
same transaction: usage_first_seen (earliest bucket per account and metric)
and usage_coverage (buckets in which any account has a point), so a read
needs no scan of history. Reads of every account (or of many) go through the
usage tiles (storage/tiles.py: aggregated buckets kept between reads; every
write here marks its buckets for them). Other reads stream the raw points of
the range in batches (primary-key seeks per stored bucket for a short list of
accounts, or a range scan of the primary key) and aggregate them with numpy.

usage_points is keyed bucket-major, (metric, bucket_start, account_id), its only
B-tree (storage.models.UsagePoint): a delivery of new buckets is an append.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from rules.gcpause import gc_paused
from rules.model import MetricBlock
from storage import columnar, dialect, tiles
from storage.db import write_transaction
from storage.models import UsageCoverage, UsageFirstSeen, UsagePoint
from storage.usage_load import ADBC_MIN_ROWS, bulk_write
from storage.usage_values import (
    UsageColumns as UsageColumns,  # re-exported for the readers that import it here
)
from storage.usage_values import UsageRecordLike
from storage.usage_values import UsageValueError as UsageValueError  # re-exported
from storage.usage_values import check_totals as check_totals  # re-exported (storage.sources)

UPSERT_CHUNK = 50_000
_IN_LIMIT = 5_000  # above this many requested accounts, filter rows in Python instead of SQL IN (...)

usage_points: sa.Table = UsagePoint.__table__  # type: ignore[attr-defined]
first_seen: sa.Table = UsageFirstSeen.__table__  # type: ignore[attr-defined]
coverage: sa.Table = UsageCoverage.__table__  # type: ignore[attr-defined]
_c = usage_points.c


def write_points(conn: Connection, rows: list[tuple[str, str, int, float]] | UsageColumns,
                 additive: bool = False) -> None:
    """Upsert (account, metric, bucket_start, value) rows inside the caller's transaction: tuples,
    or a UsageColumns whose ts are the bucket starts (no Python object per row).

    additive False replaces a stored value, True adds to it (a sum that is not finite raises
    UsageValueError naming the bucket and its stored value; the caller's transaction stays usable).
    The same bulk path as load_usage and upsert_usage (storage.usage_load.bulk_write: the rows as
    columns, sorted into key order, staged in temporary tables, one merge, usage_first_seen,
    usage_coverage, the tiles' marks and usage_changes from the stage); rows must be unique per key.
    """
    if not len(rows):
        return
    _check_dialect(conn.dialect.name)
    if isinstance(rows, UsageColumns):
        bulk_write(conn, [rows], base_step=1, additive=additive)
        return
    accounts, metrics_, buckets, values = zip(*rows, strict=True)
    chunk = UsageColumns(columnar.arrow_strings(accounts), columnar.arrow_strings(metrics_),  # no pandas import
                         np.asarray(buckets, dtype=np.int64), np.asarray(values, dtype=np.float64))
    bulk_write(conn, [chunk], base_step=1, additive=additive)  # base_step 1: the buckets stay as given


def upsert_usage(engine: Engine, records: Iterable[UsageRecordLike], base_step: int = 60) -> int:
    """Write usage points; returns the number of (account, metric, bucket) rows written.

    Each record's ts is floored to `base_step`; records with the same
    (account, metric, bucket) within this call are summed, then stored with
    INSERT .. ON CONFLICT DO UPDATE SET value = excluded.value (rows whose
    value is unchanged are not rewritten), so loading the same data again
    changes nothing. One transaction and one bulk merge for the whole call (storage.usage_load:
    the records become columns, summed and sorted in numpy, staged in bulk, merged by one
    INSERT .. SELECT in key order).
    """

    if base_step <= 0:
        raise ValueError(f"base_step must be a positive number of seconds, got {base_step}")
    recs = records if isinstance(records, list) else list(records)
    if not recs:
        return 0
    _check_dialect(engine.dialect.name)
    return bulk_write(engine, [recs], base_step, small=len(recs) < ADBC_MIN_ROWS)[0]


def _check_dialect(dialect: str) -> None:
    if dialect not in ("sqlite", "postgresql"):
        raise ValueError(f"storage.usage: unsupported database dialect {dialect!r}")


def load_usage(
    engine: Engine | Connection, chunks: Iterable[Iterable[UsageRecordLike] | UsageColumns], base_step: int = 60,
    also: Callable[[Connection], Any] | None = None,
) -> int:
    """Store a large load (a backfill, a big file) in ONE transaction; returns the rows written.

    Pass a Connection (of a storage.db.write_transaction) to load inside the caller's transaction,
    e.g. with the accounts of the same command: all of it is stored, or none.

    `also(conn)`, when given, runs inside the load's transaction (the accounts of `usagebot ingest`):
    stored together with the load, or not at all.

    A chunk is an iterable of records or a UsageColumns (a columnar CSV read). Same meaning as
    one upsert_usage() call over all the chunks together: ts floored to
    `base_step`, records of the same (account, metric, bucket) summed across the WHOLE load
    (not per chunk), stored values replaced, unchanged rows not rewritten. If iterating `chunks`
    raises (a bad row in a file), nothing of the load (nor of `also`) is stored.

    Columnar end to end (storage.usage_load): the chunks are coded and summed in numpy and sorted
    into the primary-key order (metric, bucket, account), in runs of up to usage_load.RUN_ROWS
    records (memory: ~40 B a record of a run while it is sorted); the rows and their bookkeeping
    (one row per account and metric, one per metric and bucket) are staged in bulk (SQLite: ADBC
    into a staging file beside the database; PostgreSQL: COPY into temporary tables), then merged by
    one INSERT .. SELECT each (the buckets of a load newer than the stored ones are an append to the
    table's only B-tree; several runs on SQLite: one per stretch of buckets, usage_load.merge_pieces). Readers keep seeing the previous snapshot (SQLite, and PostgreSQL's MVCC);
    other writers of the same points wait for the load.
    """

    if base_step <= 0:
        raise ValueError(f"base_step must be a positive number of seconds, got {base_step}")
    _check_dialect(engine.dialect.name)
    written = bulk_write(engine, chunks, base_step, also=also)[1]
    if isinstance(engine, Engine):
        checkpoint(engine)
    return written


def checkpoint(engine: Engine) -> None:
    """SQLite: give the WAL of a big load back to the file system (nothing to do on PostgreSQL)."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")


def in_chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of at most `size` consecutive items (feeds load_usage from one long iterator)."""
    if size < 1:
        raise ValueError(f"chunk size must be >= 1, got {size}")
    it = iter(items)
    while chunk := list(_take(it, size)):
        yield chunk


def _take(it: Iterator[Any], n: int) -> Iterator[Any]:
    for _ in range(n):
        try:
            yield next(it)
        except StopIteration:
            return


# ---------------------------------------------------------------------------- reads


def usage_range(engine: Engine, metric: str | None = None) -> tuple[int, int] | None:
    """(min bucket_start, max bucket_start) over all points (of `metric`), None when empty."""
    q = sa.select(sa.func.min(_c.bucket_start), sa.func.max(_c.bucket_start))
    if metric is not None:
        q = q.where(_c.metric == metric)
    with engine.connect() as conn:
        lo, hi = conn.execute(q).one()
    return None if lo is None else (int(lo), int(hi))


def accounts_with_usage(engine: Engine, metric: str | None = None) -> list[str]:
    """Accounts that have any stored point (of `metric`), sorted; from usage_first_seen."""
    fs = first_seen.c
    q = sa.select(fs.account_id).distinct().order_by(fs.account_id)
    if metric is not None:
        q = q.where(fs.metric == metric)
    with engine.connect() as conn:
        return list(conn.execute(q).scalars())


def metrics(engine: Engine) -> list[str]:
    """The metrics that have any stored point, sorted.

    From usage_coverage (one row per metric and bucket, kept in step by every write; points are never
    deleted), not usage_points: DISTINCT over the points scanned them all, 1.0 s of every `/usage`
    answer and account page at 10k accounts and 11.9 s at 100k (bench/bench_web.py)."""
    cv = coverage.c
    with engine.connect() as conn:
        return list(conn.execute(sa.select(cv.metric).distinct().order_by(cv.metric)).scalars())


def _check_range(metric: str, step: int, start: int, end: int) -> int:
    if step <= 0:
        raise ValueError(f"load_block({metric!r}): step must be positive seconds, got {step}")
    if start % step or end % step:
        raise ValueError(
            f"load_block({metric!r}): start {start} and end {end} must be multiples of step {step} "
            f"(aligned buckets); e.g. start={start - start % step}"
        )
    if end < start:
        raise ValueError(f"load_block({metric!r}): end {end} is before start {start}")
    return (end - start) // step


def _accounts_in_range(conn: Connection, metric: str, start: int, end: int) -> list[str]:
    """Accounts with a point of the metric in [start, end), sorted (a range scan of the primary key)."""
    q = (
        sa.select(_c.account_id)
        .where(_c.metric == metric, _c.bucket_start >= start, _c.bucket_start < end)
        .distinct()
        .order_by(_c.account_id)
    )
    return list(conn.execute(q).scalars())


def _observed_columns(conn: Connection, metric: str, step: int, start: int, end: int) -> np.ndarray:
    """Bool per column: does ANY account (whole table) have a point for the metric in it?

    Read from usage_coverage (a few rows per bucket), not from the points themselves.
    """
    n = (end - start) // step
    cov = coverage.c
    b = (cov.bucket_start // step) * step
    q = sa.select(b.label("b")).where(cov.metric == metric, cov.bucket_start >= start,
                                       cov.bucket_start < end).distinct()
    cols = np.fromiter((int(x) for x in conn.execute(q).scalars()), dtype=np.int64)
    observed = np.zeros(n, dtype=bool)
    observed[(cols - start) // step] = True
    return observed


def _first_columns(conn: Connection, metric: str, start: int, step: int, ids: list[str],
                   index: dict[str, int], n_cols: int) -> np.ndarray:
    """Column of each row's first-ever point (n_cols = never seen; 0 = before the block)."""
    fs = first_seen.c
    if conn.dialect.name == "postgresql":  # probes per account (see _fill_short)
        q: Any = sa.text("SELECT f.account_id, f.first_bucket FROM unnest(CAST(:ids AS text[])) AS a(id) "
                         "JOIN usage_first_seen f ON f.metric = :metric AND f.account_id = a.id"
                         ).bindparams(ids=list(ids), metric=metric)
    else:
        q = sa.select(fs.account_id, fs.first_bucket).where(fs.metric == metric, fs.account_id.in_(ids))
    first_col = np.full(len(ids), n_cols, dtype=np.int64)
    for acc, first in conn.execute(q):
        i = index.get(acc)
        if i is not None:
            first_col[i] = max(0, (int(first) - start) // step)
    return first_col


_READ_IDS = "usage_read_ids"  # per-connection temporary table: account id -> row number of the block
_READ_IDS_DDL = {
    "sqlite": f"CREATE TEMP TABLE IF NOT EXISTS {_READ_IDS} (account_id TEXT PRIMARY KEY, ord INTEGER NOT NULL) "
              "WITHOUT ROWID",
    "postgresql": f"CREATE TEMPORARY TABLE IF NOT EXISTS {_READ_IDS} (account_id varchar PRIMARY KEY, "
                  "ord bigint NOT NULL)",
}


def _stage_row_numbers(conn: Connection, ids: Sequence[str]) -> None:
    """Put (account id, row number) of `ids` into the connection's temporary table."""
    dialect = conn.dialect.name
    conn.exec_driver_sql(_READ_IDS_DDL[dialect])
    conn.exec_driver_sql(f"DELETE FROM {_READ_IDS}")
    raw = conn.connection.driver_connection
    if dialect == "sqlite":
        raw.executemany(f"INSERT INTO {_READ_IDS} VALUES (?, ?)", ((a, i) for i, a in enumerate(ids)))
    else:
        with raw.cursor() as cur:
            with cur.copy(f"COPY {_READ_IDS} (account_id, ord) FROM STDIN") as copy:
                for i, a in enumerate(ids):
                    copy.write_row((a, i))
            cur.execute(f"ANALYZE {_READ_IDS}")


SEEK_RATIO = 8  # one key seek costs about 8 rows of a range scan (SQLite, 30k accounts: 2.3 vs 0.27 µs)


def _seek_cheaper(conn: Connection, metric: str, n_ids: int) -> bool:
    """Is reading `n_ids` accounts by key seeks (one per account and stored bucket) cheaper than
    scanning every account's points of the range? The rows of the range scale with the accounts
    of the metric (usage_first_seen), the seeks with n_ids; both with the buckets."""
    fs = first_seen.c
    need = n_ids * SEEK_RATIO  # counted up to this many only: O(n_ids), not O(accounts of the metric)
    some = sa.select(fs.account_id).where(fs.metric == metric).limit(need).subquery()
    return int(conn.execute(sa.select(sa.func.count()).select_from(some)).scalar_one()) >= need


def _fill_short(
    conn: Connection, metric: str, step: int, start: int, end: int, ids: list[str]
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """A short list of accounts: for every stored bucket of the range (usage_coverage), one primary-key
    seek (metric, bucket, account) per account, so the cost follows the accounts asked for, not the
    book; ids are mapped to rows in Python. (flat cell indices, values, first columns); the points
    of a cell in ascending bucket_start (columnar.in_bucket_order), like every other read."""
    n_cols = (end - start) // step
    index = {a: i for i, a in enumerate(ids)}
    if conn.dialect.name == "sqlite":  # CROSS JOIN: SQLite keeps the coverage rows as the outer loop
        sql = ("SELECT p.account_id, p.bucket_start, p.value FROM usage_coverage c CROSS JOIN usage_points p "
               "ON p.metric = c.metric AND p.bucket_start = c.bucket_start "
               f"WHERE c.metric = ? AND c.bucket_start >= ? AND c.bucket_start < ? "
               f"AND p.account_id IN ({', '.join('?' * len(ids))})")
        params: list[Any] = [metric, start, end, *ids]
    else:  # one index descent per (bucket, account): a nested loop over the coverage rows and the ids
        sql = ("SELECT p.account_id, p.bucket_start, p.value FROM usage_coverage c CROSS JOIN LATERAL "
               "(SELECT account_id, bucket_start, value FROM usage_points q WHERE q.metric = c.metric "
               "AND q.bucket_start = c.bucket_start AND q.account_id = ANY(%s::text[])) AS p "
               "WHERE c.metric = %s AND c.bucket_start >= %s AND c.bucket_start < %s")
        params = [list(ids), metric, start, end]
    keys: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    offs: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]
    vals: list[np.ndarray] = [np.zeros(0)]
    for batch in dialect.fetch_batches(conn, sql, params):
        r = np.fromiter(map(index.__getitem__, [row[0] for row in batch]), dtype=np.int64, count=len(batch))
        offs.append(np.fromiter([row[1] for row in batch], dtype=np.int64, count=len(batch)) - start)
        keys.append(r * (end - start) + offs[-1])
        vals.append(np.fromiter([row[2] for row in batch], dtype=np.float64, count=len(batch)))
    flat, value = columnar.in_bucket_order(np.concatenate(keys), np.concatenate(vals), step, end - start,
                                           np.concatenate(offs))  # the sum's order
    return [flat], [value], _first_columns(conn, metric, start, step, ids, index, n_cols)


def _fill_joined(
    conn: Connection, metric: str, step: int, start: int, end: int, ids: list[str]
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Many accounts (or every account): the row number of each id sits in a temporary table,
    and the database joins it to a range scan of the primary key (metric, bucket), returning each
    point's cell number (row * n_cols + column) and value: no per-row string work in Python,
    and rows of ids not asked for never leave the database. (SQLite maps the ids in pyarrow
    instead of the join: storage.columnar.RowIndex; the table still serves the first columns.)"""
    n_cols = (end - start) // step
    _stage_row_numbers(conn, ids)
    mark = dialect.param_mark(conn.dialect.name)
    flat, vals = columnar.cells(conn, metric, start, end, step, _READ_IDS,
                                columnar.RowIndex(ids, np.arange(len(ids), dtype=np.int64)))
    first_col = np.full(len(ids), n_cols, dtype=np.int64)
    q = (f"SELECT o.ord, f.first_bucket FROM usage_first_seen f JOIN {_READ_IDS} o "
         f"ON o.account_id = f.account_id WHERE f.metric = {mark}")
    for batch in dialect.fetch_batches(conn, q, [metric]):
        rows = np.fromiter([row[0] for row in batch], dtype=np.int64, count=len(batch))
        first = np.fromiter([row[1] for row in batch], dtype=np.int64, count=len(batch))
        first_col[rows] = np.maximum(0, (first - start) // step)
    conn.exec_driver_sql(f"DELETE FROM {_READ_IDS}")
    return [flat], [vals], first_col


def _tiled(ids: list[str] | None, cached: bool) -> bool:
    """Reads of every account, or of more than _IN_LIMIT, go through the tiles (when cached)."""
    return cached and (ids is None or len(ids) > _IN_LIMIT)


@gc_paused()
def _fill(
    conn: Connection, metric: str, step: int, start: int, end: int, ids: list[str] | None, observed: np.ndarray,
    cached: bool = False,
) -> MetricBlock:
    """Aggregate raw points (or read the tiles) into the block, then apply the missing-data rules.

    ids None = every account with a point of the metric in [start, end), sorted. cached: read
    through storage.tiles (`conn` must then be a write transaction).
    """
    n_cols = len(observed)
    if ids is not None:
        if len(set(ids)) != len(ids):
            dupes = sorted(a for a, k in Counter(ids).items() if k > 1)
            raise ValueError(f"load_block({metric!r}): duplicate account ids requested: {dupes[:10]}")
        if not ids or n_cols == 0:
            return MetricBlock(metric, start, step, list(ids), np.full((len(ids), n_cols), np.nan))
    if _tiled(ids, cached):  # candidates when ids is None: every account seen before the end (as below)
        rows, sums, has, first_col = tiles.read_tiles(conn, metric, step, start, end, ids)
    else:
        if ids is None:  # candidates: every account seen before the end; those without a point in range are dropped
            fs = first_seen.c
            rows = sorted(conn.execute(sa.select(fs.account_id).where(fs.metric == metric, fs.first_bucket < end))
                          .scalars())
            if not rows or n_cols == 0:
                return MetricBlock(metric, start, step, [], np.full((0, n_cols), np.nan))
        else:
            rows = ids
        if ids is not None and len(rows) <= _IN_LIMIT and _seek_cheaper(conn, metric, len(rows)):
            flats, vals, first_col = _fill_short(conn, metric, step, start, end, rows)
        else:
            flats, vals, first_col = _fill_joined(conn, metric, step, start, end, rows)
        sums, has = tiles.bin_cells(np.concatenate(flats) if flats else np.zeros(0, dtype=np.int64),
                                    np.concatenate(vals) if vals else np.zeros(0), len(rows), n_cols)
    if ids is None:  # keep the accounts with a point in the range
        keep = has.any(axis=1)
        if keep.all():
            ids = list(rows)
        else:
            ids = [a for a, k in zip(rows, keep.tolist(), strict=True) if k]
            sums, has, first_col = sums[keep], has[keep], first_col[keep]
    # sums is 0.0 where there is no point: that stays where the account was onboarded and the bucket
    # delivered (observed), every other cell without a point is missing (NaN); sums is ours to modify
    zero = (np.arange(n_cols)[None, :] >= first_col[:, None]) & observed[None, :]
    zero |= has
    sums[~zero] = np.nan
    return MetricBlock(metric, start, step, ids, sums)


def _connect(engine: Engine, tiled: bool) -> Any:
    return write_transaction(engine) if tiled else engine.connect()


def load_block(
    engine: Engine,
    metric: str,
    step: int,
    start: int,
    end: int,
    account_ids: Sequence[str] | None = None,
    cached: bool = True,
) -> MetricBlock:
    """Usage of `metric` per account in buckets [start, end) of `step` seconds.

    Rows: `account_ids` in the given order, else every account with a point of
    the metric in the range, sorted. Cells are NaN (not observed) in columns
    where no account at all has a point, NaN before an account's first-ever
    point for the metric (not onboarded yet), 0.0 in observed columns where the
    account has no point, else the sum of its points in the bucket.

    Reads of every account or of more than a few thousand go through the usage tiles
    (storage/tiles.py: refreshed from the writes since the last read, built when missing) unless
    `cached` is False (a one-off read of a throwaway database); the result is the same.
    """
    _check_range(metric, step, start, end)
    ids = list(account_ids) if account_ids is not None else None
    tiled = _tiled(ids, cached)
    with _connect(engine, tiled) as conn:
        observed = _observed_columns(conn, metric, step, start, end)
        return _fill(conn, metric, step, start, end, ids, observed, cached=tiled)


def load_blocks(
    engine: Engine,
    metric: str,
    step: int,
    start: int,
    end: int,
    account_ids: Sequence[str] | None = None,
    chunk_accounts: int = 5000,
    cached: bool = True,
) -> Iterator[MetricBlock]:
    """Like load_block, one block per chunk of `chunk_accounts` accounts (same row order overall)."""
    _check_range(metric, step, start, end)
    if chunk_accounts <= 0:
        raise ValueError(f"load_blocks({metric!r}): chunk_accounts must be positive, got {chunk_accounts}")
    with engine.connect() as conn:
        observed = _observed_columns(conn, metric, step, start, end)
        ids = list(account_ids) if account_ids is not None else _accounts_in_range(conn, metric, start, end)
    for i in range(0, len(ids), chunk_accounts):
        chunk = ids[i : i + chunk_accounts]
        tiled = _tiled(chunk, cached)
        with _connect(engine, tiled) as conn:
            yield _fill(conn, metric, step, start, end, chunk, observed, cached=tiled)
