"""Bulk writes of usage points as set-based operations: every write of usage_points goes through
here: `load_usage` (a file, a backfill), `upsert_usage` (a poll's new day) and `write_points` (the
sources' store path, inside its caller's transaction, replacing or adding).

The rows stay columnar from the parser to the database: each chunk (a columnar CSV read, or records
turned into columns) is coded and added to a storage.usage_columns.UsagePoints; a run of up to
RUN_ROWS records is summed per (account, metric, bucket) and sorted into usage_points' key order
(metric, bucket, account) in numpy; the bookkeeping (usage_first_seen, usage_changes, usage_coverage,
the tiles' marks) is derived from the same columns: one row per (account, metric) with its first and
last bucket, one per (metric, bucket) (usage_changes too when every staged bucket is new and holds one
bucket per pair: a new day's change log is one row per metric, storage.changes reads its accounts). Three staging tables receive them:

- SQLite with a database file: ADBC (adbc-driver-sqlite, Arrow in, C bulk insert) writes them into a
  staging file of their own beside the database, before any transaction of the database is open;
  then ONE transaction (BEGIN IMMEDIATE, the staging file attached) merges them into the database
  with the caller's other writes (`also`, e.g. the accounts of `usagebot ingest`). The staging file
  is never part of the database: a kill -9 at any point leaves the database as it was before or
  with the whole load, and at most a staging file, which the next load deletes (a live load holds
  an flock on its own, so only files of dead loads are deleted).
- PostgreSQL, in-memory SQLite, a caller's open transaction, and small writes: temporary tables
  of the transaction, filled by COPY (CSV text written by pyarrow) or one executemany.

A source's batch of many rows (`replacing_transaction`: a csv drop) is staged the same way (SQLite:
before store_batch's transaction opens; PostgreSQL: in it); in it, the staged rows equal to a stored row are
deleted from the stage (one probe of usage_points' key per row, in key order), so only the rows that
change are merged and marked (usage_changes, the tiles, what the poll reports as changed).

The merge is then one INSERT .. SELECT from a stage already in key order (an append to the B-tree
for new buckets, no sort, no GROUP BY). A load of several runs (SQLite) is merged piece by piece
in key order (merge_pieces): the buckets that one run holds straight from that run's rowid range of
the stage, only the buckets that several runs hold (a run boundary inside a bucket, late rows)
grouped and summed in SQL (PostgreSQL, and more than MAX_PIECES pieces: the whole stage grouped and
summed at once); the bookkeeping is one INSERT .. SELECT each from the small stages (usage_first_seen on
PostgreSQL: only the pairs an anti-join does not find with an earlier bucket). On PostgreSQL a stage whose buckets are
all newer than its metrics' stored ones (a new day, a load into an empty database) is inserted
without ON CONFLICT, in a savepoint that falls back to the upsert if a writer stored one of its keys
meanwhile.

No step imports pandas (pyarrow imports it on the first pa.array / pa.table of Python or numpy
values, Array.to_numpy and take with numpy indices: 0.7-3 s of a poll's first write): the Arrow
arrays are built from numpy buffers (storage.columnar.arrow_array / arrow_strings / arrow_ints);
tests/storage/test_usage_write_no_pandas.py checks every write path in a fresh process.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, IntegrityError

from storage import tiles
from storage.columnar import arrow_array, arrow_strings
from storage.db import write_transaction
from storage.usage_columns import UsagePoints
from storage.usage_values import (
    _CONFLICT,
    _INSERT,
    _KEY,
    _ORDER,
    _SET,
    _SUM,
    MAX_VALUE,
    UsageColumns,
    UsageRecordLike,
    UsageValueError,
    _overflowed,
    overflow_error,
    sum_records,
)

RUN_ROWS = 12_000_000  # records sorted in memory at once (~40 B each while sorting: ~0.5 GB); more = runs
ADBC_MIN_ROWS = 20_000  # below this a staging file costs more than it saves: temporary tables
MAX_PIECES = 10_000  # statements of a merge of several runs (merge_pieces); more: one GROUP BY of the stage
MAX_COMPOUND = 500  # SQLite's SQLITE_MAX_COMPOUND_SELECT: the UNION ALL of a grouped piece's ranges, at most
PG_WORK_MEM = "256MB"  # SET LOCAL for a merge: its ORDER BY sorts the stage in memory
STAGE_SCHEMA = "usage_load"  # the staging file's name once attached
_ROWS, _PAIRS, _BUCKETS = "usage_stage", "usage_stage_pairs", "usage_stage_buckets"


@dataclass(frozen=True)
class Spans:
    """Where each (metric, bucket) of a run lies among its `rows` (in key order: each one slice):
    the i-th is metric `metrics[code[i]]`, bucket `bucket[i]`, rows `start[i]` up to the next
    start (the last: up to `rows`)."""

    metrics: list[str]
    code: np.ndarray
    bucket: np.ndarray
    start: np.ndarray
    rows: int


@dataclass(frozen=True)
class Run:
    """One sorted run of a load as Arrow tables: `rows` (account_id, metric, bucket_start, value),
    unique and in usage_points' key order; `pairs` (metric, account_id, first_bucket, last_bucket)
    in (metric, account) order, None when the load is this one run and each (account, metric) has
    one row (a new day: the rows are the pairs); `buckets` (metric, bucket_start); `spans`: where
    each bucket's rows are (merge_pieces)."""

    rows: pa.Table
    pairs: pa.Table | None
    buckets: pa.Table
    spans: Spans


def records_as_columns(records: Iterable[UsageRecordLike]) -> UsageColumns:
    """Records as one UsageColumns chunk (ts floored to whole seconds, values float). A record whose
    ts or value is not a number, or a value that is not finite, raises sum_records' error naming it."""
    recs = records if isinstance(records, list) else list(records)
    ts, values = _numbers(recs)
    try:  # from buffers, not pa.array: that imports pandas (storage.columnar.arrow_strings)
        accounts = arrow_strings([r.account for r in recs])
        metrics = arrow_strings([r.metric for r in recs])
    except (pa.ArrowException, TypeError):
        raise _not_text(recs) from None
    return UsageColumns(accounts, metrics, ts, values)


def _add_records(points: UsagePoints, records: Iterable[UsageRecordLike]) -> None:
    """Records added to `points` as records_as_columns checks and converts them, without its Arrow
    strings: each distinct account and metric is coded once from the Python ids (UsagePoints.add_ids;
    400,000 records of a new day at 100k accounts: ~0.05 s instead of ~0.25 s for the Arrow strings
    and their dictionary encoding)."""
    recs = records if isinstance(records, list) else list(records)
    ts, values = _numbers(recs)
    try:
        points.add_ids([r.account for r in recs], [r.metric for r in recs], ts, values)
    except TypeError:
        raise _not_text(recs) from None


def _numbers(recs: list[UsageRecordLike]) -> tuple[np.ndarray, np.ndarray]:
    """(ts floored to whole seconds as int64, values as finite float64) of the records, or
    sum_records' error naming the first bad one."""
    try:
        ts = _whole_seconds([r.ts for r in recs])
        values = np.fromiter([r.value for r in recs], dtype=np.float64, count=len(recs))  # float() of each
        ok = bool(np.isfinite(values).all())
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        sum_records(recs)  # the row path, only to name the bad record
        raise ValueError("usage records: a ts or value is not a finite number")  # (sum_records raised)
    return ts, values


def _not_text(recs: list[UsageRecordLike]) -> ValueError:
    n, r = next((n, r) for n, r in enumerate(recs) if not (isinstance(r.account, str) and isinstance(r.metric, str)))
    return ValueError(f"usage record #{n} ({r!r}): account and metric must be text")


def _whole_seconds(ts: list[Any]) -> np.ndarray:
    """math.floor of each ts as int64: one numpy conversion when they are all ints (a poll's records:
    400,000 at 100k accounts, 4x faster than math.floor one by one) or all floats (floored exactly in
    float64), math.floor one by one otherwise (raises on what is not a number or out of int64)."""
    col = np.asarray(ts) if ts else np.zeros(0, np.int64)
    if col.dtype.kind in "iub" and col.dtype != np.uint64:
        return col.astype(np.int64)
    if col.dtype.kind == "f" and np.isfinite(col).all() and np.abs(col).max() < 2.0**53:  # ints exact in float64
        return np.floor(col).astype(np.int64)
    return np.fromiter(map(math.floor, ts), dtype=np.int64, count=len(ts))


def sorted_runs(chunks: Iterable[Iterable[UsageRecordLike] | UsageColumns], base_step: int) -> Iterator[Run]:
    """The chunks as runs of at most ~RUN_ROWS records each, summed and in key order."""
    points, full, first = UsagePoints(base_step=base_step), None, True
    for chunk in chunks:
        if full is not None:  # a run is yielded once the next chunk shows that it is not the only one
            yield _run(full, only=False)
            full, first = None, False
        if isinstance(chunk, UsageColumns):
            points.add(chunk)
        else:
            _add_records(points, chunk)
        if points.records >= RUN_ROWS:
            full, points = points, UsagePoints(base_step=base_step)
    if full is not None:
        yield _run(full, only=False)
        first = False
    if points.records:
        yield _run(points, only=first)


def _run(points: UsagePoints, only: bool) -> Run:
    """A UsagePoints frozen bucket-major, as a Run (`only`: the load's only run). Every Arrow array
    is built from numpy buffers (pa.array and pa.table of numpy import pandas: 0.7-3 s of the first
    write in a process)."""
    points.freeze(bucket_major=True)
    names, metrics = arrow_strings(points.account_ids), arrow_strings(points.metrics)
    a, m, b = points.account.astype(np.int64), points.metric.astype(np.int64), points.bucket
    rows = _table(account_id=names.take(arrow_array(a)), metric=metrics.take(arrow_array(m)), bucket_start=arrow_array(b),
                  value=arrow_array(points.value))
    edge = np.ones(len(b), dtype=bool)
    edge[1:] = (m[1:] != m[:-1]) | (b[1:] != b[:-1])
    edge_m = m[edge]
    buckets = _table(metric=metrics.take(arrow_array(edge_m)), bucket_start=arrow_array(b[edge]))
    spans = Spans(points.metrics, edge_m, b[edge], np.flatnonzero(edge), len(b))
    if only and bool((edge_m[1:] != edge_m[:-1]).all()):  # one bucket per metric (a new day): the rows,
        return Run(rows, None, buckets, spans)  # unique per key, are one per (account, metric): the pairs
    n_acc = len(points.account_ids)
    seen, first, last = _pair_spans(m * n_acc + a, b, len(points.metrics) * n_acc)
    pairs = None if only and len(seen) == len(b) else _table(
        metric=metrics.take(arrow_array(seen // n_acc)), account_id=names.take(arrow_array(seen % n_acc)),
        first_bucket=arrow_array(first), last_bucket=arrow_array(last))
    return Run(rows, pairs, buckets, spans)


def _table(**columns: pa.Array) -> pa.Table:
    """Arrow arrays as a table (pa.table of a dict imports pandas)."""
    return pa.Table.from_arrays(list(columns.values()), names=list(columns))


def _pair_spans(pair: np.ndarray, b: np.ndarray, n_pairs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct pair codes (ascending: metric, then account rank) of rows in key order, and each
    one's first and last bucket. Dense arrays of n_pairs when they are small beside the rows, else
    one stable sort of the codes (a book of many metrics x many accounts)."""
    if n_pairs <= 4 * len(pair) + 1_000_000:
        first = np.full(n_pairs, np.iinfo(np.int64).max)
        last = np.full(n_pairs, np.iinfo(np.int64).min)
        np.minimum.at(first, pair, b)
        np.maximum.at(last, pair, b)
        seen = np.flatnonzero(last != np.iinfo(np.int64).min)
        return seen, first[seen], last[seen]
    order = np.argsort(pair, kind="stable")  # within a pair the rows keep their bucket order
    ps, bs = pair[order], b[order]
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    ends = np.r_[starts[1:], len(ps)] - 1
    return ps[starts], bs[starts], bs[ends]


Piece = tuple[bool, list[list[int]]]  # (grouped, rowid ranges [lo, hi] of the stage)


def merge_pieces(spans: list[Spans]) -> list[Piece] | None:
    """How to merge a stage of several runs (appended in order: rowids 1.. with no gaps) in key
    order without sorting it all: pieces in usage_points' key order, each rowid ranges of the stage
    to insert as read (grouped False) or to group and sum (True).
    A bucket (metric, bucket) that one run holds is unique in the stage and in key order within
    that run: one range, inserted as read (adjacent ones joined). Consecutive buckets that several
    runs hold (a run boundary inside a bucket, late rows, a file in account order) are one piece of
    each holder's range (a run's rows of such a stretch are contiguous), in run order, grouped and
    summed in SQL. None: more than MAX_PIECES pieces, or a grouped piece of more than MAX_COMPOUND
    ranges (then the whole stage is grouped at once)."""
    entries: list[tuple[str, int, int, int]] = []
    base = 0
    for s in spans:
        ends = np.r_[s.start[1:], s.rows] + base
        entries += zip([s.metrics[c] for c in s.code.tolist()], s.bucket.tolist(), (s.start + base + 1).tolist(),
                       ends.tolist(), strict=True)
        base += s.rows
    entries.sort()
    pieces: list[Piece] = []
    grouped = False
    i = 0
    while i < len(entries):
        j = i + 1
        while j < len(entries) and entries[j][:2] == entries[i][:2]:
            j += 1
        if j - i == 1 and not grouped and pieces and pieces[-1][1][0][1] + 1 == entries[i][2]:
            pieces[-1][1][0][1] = entries[i][3]
        elif j - i == 1:
            pieces.append((False, [[entries[i][2], entries[i][3]]]))
        else:
            if not grouped:
                pieces.append((True, []))
            piece = pieces[-1][1]
            for _, _, lo, hi in entries[i:j]:
                near = next((r for r in piece if r[1] + 1 == lo), None)
                if near is None:
                    piece.append([lo, hi])
                else:
                    near[1] = hi
        grouped = j - i > 1
        if len(pieces) > MAX_PIECES:
            return None
        i = j
    for is_grouped, ranges in pieces:
        if is_grouped:  # a piece meets its runs in key order, not run order: the sum must be in run
            ranges.sort()  # (rowid) order, as one run and the whole-stage GROUP BY add (3+ runs differ)
            if len(ranges) > MAX_COMPOUND:
                return None
    return pieces


# ------------------------------------------------------------------------------------- staging


def _stage_path(engine: Engine) -> Path | None:
    """The database file of a SQLite engine (None: PostgreSQL or in memory)."""
    if engine.dialect.name != "sqlite":
        return None
    database = engine.url.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def _delete_dead_stages(db: Path) -> None:
    """Staging files of loads that died (kill -9) before deleting theirs: a live load holds an flock."""
    try:
        import fcntl
    except ImportError:  # no flock (Windows): leftovers stay; they are never read
        return
    for path in db.parent.glob(f"{db.name}-load-*.stage"):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live load's
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def _stage_file(db: Path) -> Iterator[Path]:
    """A new staging file beside the database, flocked while in use, deleted after."""
    _delete_dead_stages(db)
    path = db.parent / f"{db.name}-load-{uuid.uuid4().hex}.stage"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with contextlib.suppress(ImportError):
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)
        for suffix in ("", "-journal", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def _adbc_stage(path: Path, runs: Iterable[Run]) -> int:
    """Write the runs into the staging file (no journal, no fsync: it is thrown away if anything
    fails); returns how many runs. The driver manager's own API, not its DB-API module (which imports
    pyarrow.dataset: ~2 s of every `usagebot ingest` on this machine)."""
    import adbc_driver_manager as adbc
    import adbc_driver_sqlite

    n = 0
    with adbc_driver_sqlite.connect(str(path)) as db, adbc.AdbcConnection(db) as con:
        for pragma in ("PRAGMA journal_mode = OFF", "PRAGMA synchronous = OFF"):
            with adbc.AdbcStatement(con) as st:
                st.set_sql_query(pragma)
                st.execute_update()
        for run in runs:
            for name, table in _tables(run):
                with adbc.AdbcStatement(con) as st:
                    st.set_options(**{adbc.StatementOptions.INGEST_TARGET_TABLE.value: name,
                                      "adbc.ingest.mode": "adbc.ingest.mode." + ("create" if n == 0 else "append")})
                    st.bind_stream(table.to_reader())
                    st.execute_update()
            n += 1
    return n


def _tables(run: Run) -> list[tuple[str, pa.Table]]:
    """The staging tables of a run and their rows."""
    return [(_ROWS, run.rows), (_BUCKETS, run.buckets)] + ([] if run.pairs is None else [(_PAIRS, run.pairs)])


_TEMP_DDL = {
    _ROWS: "(account_id {t} NOT NULL, metric {t} NOT NULL, bucket_start {i} NOT NULL, value {f} NOT NULL)",
    _PAIRS: "(metric {t} NOT NULL, account_id {t} NOT NULL, first_bucket {i} NOT NULL, last_bucket {i} NOT NULL)",
    _BUCKETS: "(metric {t} NOT NULL, bucket_start {i} NOT NULL)",
}
_TYPES = {"sqlite": {"t": "TEXT", "i": "INTEGER", "f": "REAL"},
          "postgresql": {"t": "varchar", "i": "bigint", "f": "double precision"}}


def _temp_stage(conn: Connection, runs: Iterable[Run]) -> int:
    """Write the runs into temporary tables of the connection's transaction; returns how many runs."""
    dialect = conn.dialect.name
    for name, cols in _TEMP_DDL.items():
        drop = " ON COMMIT DROP" if dialect == "postgresql" else ""
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS temp.{name}" if dialect == "sqlite"
                             else f"DROP TABLE IF EXISTS pg_temp.{name}")
        conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {name} {cols.format(**_TYPES[dialect])}{drop}")
    n = 0
    raw = conn.connection.driver_connection
    for run in runs:
        for name, table in _tables(run):
            if dialect == "sqlite":
                marks = ", ".join("?" * table.num_columns)
                raw.executemany(f"INSERT INTO temp.{name} VALUES ({marks})",
                                zip(*(c.to_pylist() for c in table.columns), strict=True))
            else:
                _copy_csv(raw, name, table)
        n += 1
    return n


def _copy_csv(raw: Any, name: str, table: pa.Table) -> None:
    """COPY an Arrow table into a PostgreSQL table as CSV written by pyarrow (floats in their
    shortest round-trip form, strings quoted where needed)."""
    import pyarrow.csv as pacsv

    buf = io.BytesIO()
    pacsv.write_csv(table, buf, pacsv.WriteOptions(include_header=False))
    with raw.cursor() as cur, cur.copy(f"COPY {name} ({', '.join(table.column_names)}) FROM STDIN (FORMAT csv)") as cp:
        cp.write(buf.getbuffer())


# --------------------------------------------------------------------------------------- merge


def _merge(conn: Connection, schema: str, runs: int, pairs_staged: bool, additive: bool = False,
           spans: list[Spans] | None = None) -> int:
    """Merge the staged rows into usage_points (stored values replaced, unchanged rows not
    rewritten; `additive`: the staged values added to the stored ones) and the bookkeeping from the
    staged pairs and buckets; returns rows written. `spans`: each staged run's (SQLite: several runs
    are merged piece by piece, merge_pieces)."""
    dialect = conn.dialect.name
    rows, pairs, buckets = (f"{schema}.{n}" for n in (_ROWS, _PAIRS, _BUCKETS))
    selects = None
    pg_order = "ORDER BY metric, account_id " if dialect == "postgresql" else ""
    if runs == 1:  # unique and already in key order: inserted as read, no sort (PostgreSQL: sorted in its
        # collation, the order every writer locks rows in, so two writers never wait on each other crosswise)
        select = f"SELECT {_KEY}, value FROM {rows} WHERE true " + (f"ORDER BY {_ORDER} " if dialect == "postgresql"
                                                                     else "")
        if not pairs_staged:  # one row per (account, metric): the rows are the pairs
            pairs = f"(SELECT metric, account_id, bucket_start AS first_bucket, bucket_start AS last_bucket FROM {rows})"
        firsts = pairs
        ch = f"SELECT account_id, metric, first_bucket, last_bucket, '', {{now}} FROM {pairs} AS p "
    else:  # runs can share keys: summed across them
        select = f"SELECT {_KEY}, {_SUM[dialect]} FROM {rows} GROUP BY {_ORDER} ORDER BY {_ORDER} "
        selects = _piece_selects(conn, rows, spans) if dialect == "sqlite" and spans else None
        firsts = f"(SELECT metric, account_id, MIN(first_bucket) AS first_bucket FROM {pairs} GROUP BY metric, account_id)"
        ch = (f"SELECT account_id, metric, MIN(first_bucket), MAX(last_bucket), '', {{now}} FROM {pairs} "
              "GROUP BY metric, account_id ORDER BY metric, account_id")
    if dialect == "postgresql":  # the merge's sort in memory (the default 4 MB spilled a day of 40,000 rows)
        conn.exec_driver_sql(f"SET LOCAL work_mem = '{PG_WORK_MEM}'")
    merged = None
    newer = runs == 1 and _all_newer(conn, buckets)
    if newer and not pairs_staged:  # one bucket per pair, all new: a row per (metric, bucket), not per pair
        ch = f"SELECT NULL, metric, bucket_start, bucket_start, '', {{now}} FROM {buckets} "
    if dialect == "postgresql" and newer:
        merged = _append(conn, select)
    written = 0
    if merged is None:
        try:
            with conn.begin_nested():
                for one in selects or [select]:
                    written += max(0, conn.exec_driver_sql(_INSERT + one + _CONFLICT + _SET[(dialect, additive)]).rowcount)
        except (IntegrityError, DataError) as exc:
            if not _overflowed(exc):
                raise
            raise (_added_overflow if additive else _staged_overflow)(conn, dialect, rows) from None
    else:
        written = max(0, merged.rowcount)
    # PostgreSQL: only the pairs not known from an earlier bucket (an anti-join), not an upsert attempt
    # per pair, which locks every conflicting row even when the WHERE then skips it (a day at 10k
    # accounts: 1.08 s -> 0.17 s in EXPLAIN ANALYZE). SQLite probes each pair either way (no gain
    # measured) and an anti-join probes a new pair twice: the plain upsert there.
    known = ("NOT EXISTS (SELECT 1 FROM usage_first_seen f WHERE f.metric = s.metric AND f.account_id = "
             "s.account_id AND f.first_bucket <= s.first_bucket)" if dialect == "postgresql" else "true")
    conn.exec_driver_sql(
        f"INSERT INTO usage_first_seen (metric, account_id, first_bucket) SELECT metric, account_id, first_bucket "
        f"FROM {firsts} AS s WHERE {known} {pg_order}"
        "ON CONFLICT (metric, account_id) DO UPDATE SET first_bucket = excluded.first_bucket "
        "WHERE excluded.first_bucket < usage_first_seen.first_bucket")
    conn.exec_driver_sql(f"INSERT INTO usage_coverage (metric, bucket_start) SELECT DISTINCT metric, bucket_start "
                         f"FROM {buckets} WHERE true ORDER BY metric, bucket_start ON CONFLICT DO NOTHING")
    tiles.mark_written_from(conn, buckets)
    conn.exec_driver_sql("INSERT INTO usage_changes (account_id, metric, bucket_start, last_bucket, source_id, "
                         "changed_at) " + ch.format(now=int(time.time())))
    return written


def _piece_selects(conn: Connection, rows: str, spans: list[Spans]) -> list[str] | None:
    """SQLite: the SELECTs that merge a stage of several runs piece by piece in key order
    (merge_pieces: a bucket one run holds straight from its rowid range, the buckets several runs
    hold grouped); None (one GROUP BY of the whole stage) when there are too many pieces or the
    stage's rowids are not the runs' rows appended in order."""
    pieces = merge_pieces(spans)
    if pieces is None or conn.exec_driver_sql(f"SELECT max(rowid) FROM {rows}").scalar() != sum(s.rows for s in spans):
        return None
    out = []
    for grouped, ranges in pieces:
        parts = [f"SELECT {_KEY}, value FROM {rows} WHERE rowid BETWEEN {lo} AND {hi} " for lo, hi in ranges]
        out.append(parts[0] if not grouped else
                   f"SELECT {_KEY}, {_SUM['sqlite']} FROM ({'UNION ALL '.join(parts)}) WHERE true GROUP BY {_ORDER} "
                   f"ORDER BY {_ORDER} ")
    return out


def _all_newer(conn: Connection, buckets: str) -> bool:
    """Is every staged bucket after the newest stored bucket of its metric (usage_coverage: one index
    descent per staged metric)? Then no staged key is stored (a new day): see _append."""
    return conn.exec_driver_sql(
        f"SELECT 1 FROM (SELECT metric, MIN(bucket_start) AS lo FROM {buckets} GROUP BY metric) s "
        "WHERE s.lo <= (SELECT MAX(c.bucket_start) FROM usage_coverage c WHERE c.metric = s.metric) LIMIT 1"
    ).first() is None


def _append(conn: Connection, select: str) -> Any:
    """PostgreSQL: new keys inserted without ON CONFLICT (a speculative insertion and its extra WAL
    record per row: a day at 10k accounts 2.60 -> 1.14 s in EXPLAIN ANALYZE), in a savepoint; None
    when a writer committed one of the keys meanwhile (unique violation): the caller then upserts."""
    try:
        with conn.begin_nested():
            return conn.exec_driver_sql(_INSERT + select)
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) != "23505":  # unique_violation
            raise
        return None


def _added_overflow(conn: Connection, dialect: str, table: str) -> UsageValueError:
    """The error naming a bucket whose stored value plus the staged one is not finite."""
    total = "p.value::numeric + s.value::numeric" if dialect == "postgresql" else "p.value + s.value"
    r = conn.exec_driver_sql(
        f"SELECT s.account_id, s.metric, s.bucket_start, p.value FROM {table} s JOIN usage_points p ON "
        "p.metric = s.metric AND p.bucket_start = s.bucket_start AND p.account_id = s.account_id "
        f"WHERE abs({total}) > {MAX_VALUE!r} ORDER BY s.metric, s.bucket_start, s.account_id LIMIT 1").first()
    if r is None:
        return UsageValueError("usage write: a bucket total is not a finite number; nothing was stored")
    return overflow_error("usage write", r[0], r[1], int(r[2]), stored=float(r[3]))


def _staged_overflow(conn: Connection, dialect: str, table: str) -> UsageValueError:
    """The error naming a bucket of the load whose total across the chunks is not finite."""
    total = "SUM(value::numeric)" if dialect == "postgresql" else "SUM(value)"  # numeric: no overflow
    r = conn.exec_driver_sql(f"SELECT account_id, metric, bucket_start FROM {table} GROUP BY {_KEY} "
                             f"HAVING abs({total}) > {MAX_VALUE!r} ORDER BY {_KEY} LIMIT 1").first()
    if r is None:
        return UsageValueError("usage load: a bucket total is not a finite number; nothing was stored")
    return overflow_error("usage load", r[0], r[1], int(r[2]))


@contextlib.contextmanager
def _attached_transaction(engine: Engine, path: Path) -> Iterator[Connection]:
    """A write transaction (BEGIN IMMEDIATE) of `engine` with the staging file attached
    (SQLite attaches only outside a transaction: attached first, detached after)."""
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        raw.execute(f"ATTACH DATABASE ? AS {STAGE_SCHEMA}", (str(path),))
        try:
            with conn.execution_options(sqlite_begin="IMMEDIATE").begin():
                yield conn
        finally:
            raw.execute(f"DETACH DATABASE {STAGE_SCHEMA}")


def _temp_schema(conn: Connection) -> str:
    return "temp" if conn.dialect.name == "sqlite" else "pg_temp"


def bulk_write(target: Engine | Connection, chunks: Iterable[Iterable[UsageRecordLike] | UsageColumns],
               base_step: int, also: Callable[[Connection], Any] | None = None,
               small: bool = False, additive: bool = False) -> tuple[int, int]:
    """Store the chunks (see the module docstring) in ONE transaction, with `also(conn)` run in it;
    returns (rows staged, rows written). `small`: the caller knows the write is small (temporary
    tables, no staging file). A Connection target writes inside the caller's transaction (temporary
    tables; storage.usage.write_points). `additive`: the values are added to the stored ones (a
    sum past the largest float64 raises UsageValueError naming the bucket and its stored value)."""
    if isinstance(target, Connection):
        return _in_transaction(target, sorted_runs(chunks, base_step), also, additive)
    path = None if small else _stage_path(target)
    if path is None:
        with write_transaction(target) as conn:
            return _in_transaction(conn, sorted_runs(chunks, base_step), also, additive)
    with _stage_file(path) as stage:
        counted = _counted(sorted_runs(chunks, base_step))
        runs = _adbc_stage(stage, counted)
        with _attached_transaction(target, stage) as conn:
            if also is not None:
                also(conn)
            if not runs:
                return 0, 0
            return counted.rows, _merge(conn, STAGE_SCHEMA, runs, counted.pairs, additive, counted.spans)


@dataclass(frozen=True)
class Replaced:
    """What replace_changed wrote: how many rows, and each (account, metric) written with its
    earliest written bucket."""

    written: int
    first_changed: list[tuple[str, str, int]]


@contextlib.contextmanager
def replacing_transaction(engine: Engine, points: UsagePoints | None
                          ) -> Iterator[tuple[Connection, Callable[[Connection], Replaced] | None]]:
    """A write transaction of `engine` (storage.db.write_transaction) and, when `points` (summed,
    frozen) are at least ADBC_MIN_ROWS rows on a SQLite file or on PostgreSQL, the function that
    writes the rows of `points` that differ from the stored ones (replace_changed) after staging them
    in bulk (as bulk_write stages: no Python object per row; SQLite: by ADBC into a staging file
    before the transaction opens; PostgreSQL: COPY into temporary tables of the transaction) and
    comparing them with the stored rows in SQL. None: the caller compares and writes itself (an
    in-memory SQLite database, a small write)."""
    many = points is not None and len(points) >= ADBC_MIN_ROWS
    path = _stage_path(engine) if many else None
    if points is not None and path is not None:
        with _stage_file(path) as stage:
            run = _run(points, only=True)
            _adbc_stage(stage, [run])
            with _attached_transaction(engine, stage) as conn:
                yield conn, lambda c: _replace_staged(c, STAGE_SCHEMA, run.rows.num_rows, run.pairs is not None)
        return
    with write_transaction(engine) as conn:
        if points is None or not many or engine.dialect.name != "postgresql":
            yield conn, None
            return

        def replace(c: Connection) -> Replaced:
            run = _run(points, only=True)
            _temp_stage(c, [run])
            try:
                return _replace_staged(c, _temp_schema(c), run.rows.num_rows, run.pairs is not None)
            finally:
                for name in _TEMP_DDL:
                    c.exec_driver_sql(f"DROP TABLE IF EXISTS {_temp_schema(c)}.{name}")

        yield conn, replace


def _replace_staged(conn: Connection, schema: str, staged: int, pairs_staged: bool) -> Replaced:
    """Drop the staged rows equal to a stored row (same key, same value: what is stored stays as
    it is, and is not marked changed), then merge the rest (storage.usage_load._merge: replaced,
    with their bookkeeping). The stage is one run in key order, so each probe of usage_points'
    key follows the last (a re-poll of 1,000,000 unchanged rows on SQLite: 0.85 s against 4.75 s
    to read them back as Python tuples and compare in numpy)."""
    rows, pairs, buckets = (f"{schema}.{n}" for n in (_ROWS, _PAIRS, _BUCKETS))
    dropped = conn.exec_driver_sql(
        f"DELETE FROM {rows} WHERE EXISTS (SELECT 1 FROM usage_points p WHERE p.metric = {rows}.metric "
        f"AND p.bucket_start = {rows}.bucket_start AND p.account_id = {rows}.account_id "
        f"AND p.value = {rows}.value)").rowcount
    if dropped >= staged:
        return Replaced(0, [])
    if dropped:  # the bookkeeping stages again, from the rows left
        for name in (pairs, buckets):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE TABLE {pairs} AS SELECT metric, account_id, MIN(bucket_start) AS first_bucket, "
                             f"MAX(bucket_start) AS last_bucket FROM {rows} GROUP BY metric, account_id "
                             "ORDER BY metric, account_id")
        conn.exec_driver_sql(f"CREATE TABLE {buckets} AS SELECT DISTINCT metric, bucket_start FROM {rows} "
                             "ORDER BY metric, bucket_start")
        pairs_staged = True
    first = (f"SELECT account_id, metric, first_bucket FROM {pairs}" if pairs_staged
             else f"SELECT account_id, metric, bucket_start FROM {rows}")
    changed = [(a, m, int(b)) for a, m, b in conn.exec_driver_sql(first)]
    _merge(conn, schema, 1, pairs_staged)
    return Replaced(staged - dropped, changed)


def _in_transaction(conn: Connection, runs: Iterable[Run], also: Callable[[Connection], Any] | None,
                    additive: bool = False) -> tuple[int, int]:
    if also is not None:
        also(conn)
    counted = _counted(runs)
    n = _temp_stage(conn, counted)
    written = _merge(conn, _temp_schema(conn), n, counted.pairs, additive, counted.spans) if n else 0
    for name in _TEMP_DDL:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {_temp_schema(conn)}.{name}")
    return counted.rows, written


class _counted:  # noqa: N801 - used like a generator
    """Runs passed through, their rows counted (whether any staged its pairs, and each one's spans)."""

    def __init__(self, runs: Iterable[Run]) -> None:
        self.runs, self.rows, self.pairs = runs, 0, False
        self.spans: list[Spans] = []

    def __iter__(self) -> Iterator[Run]:
        for run in self.runs:
            self.rows += run.rows.num_rows
            self.pairs |= run.pairs is not None
            self.spans.append(run.spans)
            yield run
