"""Bulk reads of usage points into numpy arrays, without a Python object per row.

A daily evaluation's first (cold) read, a tile build or refresh and a full block read each fetch
millions of (account, bucket, value) rows. Through a DB-API cursor every row becomes a tuple of
Python objects (about 1 µs each: most of such a read); here they arrive as arrays:

- PostgreSQL: the query runs on the caller's own connection, inside its transaction (it sees the
  tile row numbers that transaction assigned, under its advisory lock), and returns one row per
  bucket: the server joins the row numbers and packs the bucket's rows and values into two bytea
  strings of big-endian int8 / float8 (string_agg of int8send / float8send), read by numpy's
  frombuffer in the binary result format: one Python object per bucket, not one libpq message per
  point as a COPY BINARY of the points was. (The ADBC PostgreSQL driver decodes COPY BINARY in C,
  but only on a connection of its own, outside the caller's transaction.)
- SQLite: one range scan of the primary key (metric, bucket, account), no join: SQLite packs each
  bucket's account ids and values into two strings (group_concat); pyarrow splits the ids and finds
  each one's row in the block with a hash lookup (index_in), numpy parses the values: all in C, one
  Python object per bucket, not three per row. Integers print exactly, so each value goes as an
  integer item (value_item: integers as themselves, non-integers scaled by a power of two, exact
  both ways); a value no item carries (a negative value, a tiny non-integer, an integer from 2**63)
  is left out of its bucket's values, so that bucket has fewer values than ids, and only such
  buckets are read again, as rows; a bucket holding every
  account of the block is known by its text alone (no split, no lookup). (Arrow readers of SQLite,
  ADBC or connectorx, link their own copy of SQLite: two copies in one process drop each other's
  POSIX locks on the same file, "How To Corrupt An SQLite Database File" 2.2.1; tried here, the
  service's next commit failed with "locking protocol".) Without a RowIndex, or when an account id holds the separator, the old
  path runs: the table of row numbers joined in SQL, cells and value items packed per bucket.

`cells` is the one entry point: points of one metric in a time range as (cell number, value)
arrays of a block whose rows come from a table (account_id, ord) the connection sees, and, when the
caller has them in memory, the same (id, row number) pairs as a RowIndex (SQLite then needs no join).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection


def pg_bucket_rows(conn: Connection, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """PostgreSQL: the rows of `sql` in binary format (bytea as bytes, no hex text), on the caller's
    connection, inside its transaction."""
    with conn.connection.driver_connection.cursor(binary=True) as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _pg_cells(conn: Connection, metric: str, lo: int, hi: int, step: int, join_table: str
              ) -> tuple[np.ndarray, np.ndarray]:
    """PostgreSQL: cells() as one row per bucket: the server joins the row numbers and packs each
    bucket's rows and values into two bytea strings of big-endian int8 / float8 (string_agg of
    int8send / float8send: the two aggregates of a group see its rows in the same order), which
    numpy reads with frombuffer. A row per point through libpq (COPY BINARY, one message a row)
    cost 0.6-0.9 µs of client CPU a point; this is a Python object per bucket (10k accounts, one
    metric, 882k points: client CPU 0.51-0.76 s -> 0.02-0.12 s, docs/benchmarks.md)."""
    rows = pg_bucket_rows(conn, (
        "SELECT (p.bucket_start - %s)::int8, string_agg(int8send(o.ord::int8), ''::bytea), "
        "string_agg(float8send(p.value::float8), ''::bytea) "
        f"FROM usage_points p JOIN {join_table} o ON o.account_id = p.account_id "
        "WHERE p.metric = %s AND p.bucket_start >= %s AND p.bucket_start < %s "
        "GROUP BY p.bucket_start ORDER BY p.bucket_start"), (int(lo), metric, int(lo), int(hi)))
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    span = hi - lo
    ords = np.frombuffer(b"".join(r[1] for r in rows), dtype=">i8").astype(np.int64)
    vals = np.frombuffer(b"".join(r[2] for r in rows), dtype=">f8").astype(np.float64)
    offs = np.repeat(np.array([r[0] for r in rows], dtype=np.int64),
                     np.array([len(r[1]) // 8 for r in rows], dtype=np.int64))
    return in_bucket_order(ords * span + offs, vals, step, span, offs)


SEP = "\x1f"  # between the account ids of a bucket (ASCII unit separator: not in any sane id)


def arrow_strings(items: Sequence[str]) -> Any:
    """`items` as an Arrow large_string array, built from two buffers (the UTF-8 bytes and their
    offsets) rather than by pa.array: pyarrow's conversion of Python objects imports pandas on its
    first call in a process where pandas is installed (0.7-2.3 s on the bench machine, by its load:
    as long as reading 1M points), which a cold read would otherwise pay."""
    import pyarrow as pa

    data = "".join(items).encode("utf-8")
    if len(data) == sum(map(len, items)):  # every char one byte (ASCII): lengths in chars are bytes
        lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    else:
        lengths = np.fromiter((len(s.encode("utf-8")) for s in items), dtype=np.int64, count=len(items))
    offsets = np.zeros(len(items) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return pa.LargeStringArray.from_buffers(len(items), pa.py_buffer(offsets), pa.py_buffer(data))


def arrow_array(column: np.ndarray) -> Any:
    """An int64 or float64 numpy column as an Arrow array sharing its buffer (pa.array of numpy
    imports pandas, like the conversion arrow_strings avoids)."""
    import pyarrow as pa

    column = np.ascontiguousarray(column)
    kind = {np.dtype(np.int64): pa.int64(), np.dtype(np.float64): pa.float64()}[column.dtype]
    return pa.Array.from_buffers(kind, len(column), [None, pa.py_buffer(column)])


def arrow_ints(arr: Any, null: int | None = None) -> np.ndarray:
    """An Arrow int32 / int64 array as int64 numpy, read from its buffers; nulls become `null` (None:
    nulls are an error). Array.to_numpy and pc.fill_null with a Python value import pandas on first
    use, like pa.array (arrow_strings)."""
    import pyarrow as pa

    width = {pa.int32(): np.int32, pa.int64(): np.int64}.get(arr.type)
    if width is None:
        raise ValueError(f"storage.columnar: Arrow array of {arr.type}, not int32 / int64")
    n = len(arr)
    if not n:
        return np.zeros(0, dtype=np.int64)
    validity, data = arr.buffers()[:2]
    out = np.frombuffer(data, dtype=width, count=n + arr.offset)[arr.offset:].astype(np.int64)
    if arr.null_count:
        if null is None:
            raise ValueError("storage.columnar: an Arrow integer array holds nulls")
        bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), count=n + arr.offset, bitorder="little")
        out[bits[arr.offset:] == 0] = null
    return out


@dataclass
class RowIndex:
    """The rows of a block as the caller holds them: account ids and the row number (ord) of each.

    With it, a SQLite read maps each point's account id to its row in C (pyarrow's hash lookup)
    instead of joining a table of row numbers in SQL (one B-tree seek per point). Built once per
    read (the Arrow array of the ids is made on first use), shared by its range reads."""

    ids: Sequence[str]
    ords: np.ndarray  # int64, ords[i] is the row of ids[i]
    _arrow: Any = field(default=None, repr=False)
    _usable: bool | None = field(default=None, repr=False)
    _joined: tuple[str, np.ndarray] | None = field(default=None, repr=False)

    def arrow(self) -> Any:
        """The ids as an Arrow string array (the value set of the lookup)."""
        if self._arrow is None:
            self._arrow = arrow_strings(list(self.ids))
        return self._arrow

    def joined(self) -> tuple[str, np.ndarray]:
        """The ids SEP-joined in SQLite's order of them (BINARY collation: UTF-8 bytes, the order of
        code points, Python's), and the row number of each in that order: the text of a bucket
        that holds a point of every one of them."""
        if self._joined is None:
            order = sorted(range(len(self.ids)), key=self.ids.__getitem__)
            self._joined = (SEP.join(self.ids[i] for i in order),
                            np.asarray(self.ords, dtype=np.int64)[np.array(order, dtype=np.int64)]
                            if order else np.zeros(0, dtype=np.int64))
        return self._joined

    def usable(self) -> bool:
        """Can the ids be split back out of SEP-joined text? (No id holds SEP.)"""
        if self._usable is None:
            self._usable = not any(SEP in a for a in self.ids)
        return self._usable

    def rows_of(self, ids: Any) -> np.ndarray:
        """Row number of each id (an Arrow string array), -1 for an id not in the index."""
        import pyarrow.compute as pc

        at = arrow_ints(pc.index_in(ids, value_set=self.arrow()), null=-1)
        if not len(self.ords):
            return np.full(len(at), -1, dtype=np.int64)
        return np.where(at >= 0, self.ords[np.maximum(at, 0)], -1)


def _by_id_keys(offs: np.ndarray, ids: Any, vals: np.ndarray, rows: RowIndex, span: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(key, value, offset) of points given by offset of their bucket (in_bucket_order), account id
    (Arrow) and value; other accounts dropped."""
    row = rows.rows_of(ids)
    keep = row >= 0
    return row[keep] * span + offs[keep], vals[keep], offs[keep]


def _sqlite_cells_by_id(raw: Any, metric: str, lo: int, hi: int, step: int, rows: RowIndex
                        ) -> tuple[np.ndarray, np.ndarray]:
    """SQLite, no join: per bucket of [lo, hi), the SEP-joined account ids and the comma-joined
    values (group_concat of value_item()s, in key order: the two lists match item for item); a point
    of a value no item carries is left out of the values (NULL), so its bucket has fewer values than
    ids and is read again as rows, exactly; the others never make a Python object per point. (One aggregate fewer per point
    than counting the odd values apart: 8% of the query, docs/benchmarks.md.) A bucket holding every
    account of `rows` (the usual day of a book) equals RowIndex.joined(): its rows need no split and
    no lookup. `raw` is a sqlite3 connection (the caller's, or a helper's: cells_many). The
    points are (cell, value) in bucket order per cell (in_bucket_order)."""
    import pyarrow.compute as pc

    span = hi - lo
    where = "FROM usage_points p WHERE p.metric = ? AND p.bucket_start >= ? AND p.bucket_start < ?"
    cur = raw.cursor()
    try:
        got = cur.execute(f"SELECT p.bucket_start, group_concat(p.account_id, char(31)), "
                          f"group_concat({_VALUE_ITEM}) {where} GROUP BY p.bucket_start", (metric, lo, hi)).fetchall()
    finally:
        cur.close()
    joined, every = rows.joined()
    dense = [r for r in got if r[1] == joined]
    sparse = [r for r in got if r[1] != joined]
    del got
    parts = pc.split_pattern(arrow_strings([r[1] for r in sparse]), SEP)
    counts = arrow_ints(pc.list_value_length(parts))
    vals = [_values(r[2]) for r in sparse]
    exact = np.array([len(v) for v in vals], dtype=np.int64) == counts
    redo = [int(r[0]) for r, ok in zip(sparse, exact.tolist(), strict=True) if not ok]
    in_exact = np.repeat(exact, counts)  # the points of the buckets whose values all came
    row = rows.rows_of(pc.list_flatten(parts))[in_exact]
    offs = np.repeat(np.array([r[0] for r in sparse], dtype=np.int64) - lo, counts)[in_exact]
    val = np.concatenate([v for v, ok in zip(vals, exact.tolist(), strict=True) if ok] + [np.zeros(0)])
    known = row >= 0  # other accounts dropped
    offs = offs[known]
    keys, val = row[known] * span + offs, val[known]
    d_vals = [_values(r[2]) for r in dense]
    d_ok = [len(v) == len(every) for v in d_vals]
    redo += [int(r[0]) for r, ok in zip(dense, d_ok, strict=True) if not ok]
    d_offs = [int(r[0]) - lo for r, ok in zip(dense, d_ok, strict=True) if ok]
    if d_offs:  # bucket-major keys: every listed account in each such bucket
        keys = np.concatenate([keys, (every[None, :] * span + np.array(d_offs, dtype=np.int64)[:, None]).ravel()])
        offs = np.concatenate([offs, np.repeat(np.array(d_offs, dtype=np.int64), len(every))])
        val = np.concatenate([val, *(v for v, ok in zip(d_vals, d_ok, strict=True) if ok)])
    if not redo:
        return in_bucket_order(keys, val, step, span, offs)
    # buckets holding a value integers cannot carry: their points as rows (exact floats), a few
    # hundred buckets a query (SQLite's limit of bound variables)
    extra: list[Any] = []
    for i in range(0, len(redo), 500):
        some = redo[i:i + 500]
        extra += raw.execute(f"SELECT p.bucket_start, p.account_id, p.value FROM usage_points p WHERE "
                             f"p.metric = ? AND p.bucket_start IN ({', '.join('?' * len(some))})",
                             (metric, *some)).fetchall()
    e_keys, e_val, e_offs = _by_id_keys(np.array([r[0] for r in extra], dtype=np.int64) - lo,
                                        arrow_strings([r[1] for r in extra]),
                                        np.array([r[2] for r in extra], dtype=np.float64), rows, span)
    return in_bucket_order(np.concatenate([keys, e_keys]), np.concatenate([val, e_val]), step, span,
                           np.concatenate([offs, e_offs]))


def _pow2(n: int) -> str:
    """2**n as an exact SQLite REAL expression: integer literals converted (exact for powers of two),
    never a decimal literal (SQLite 3.40's text-to-real conversion is not correctly rounded)."""
    if 0 <= n <= 62:
        return f"CAST({2 ** n} AS REAL)"
    if n > 62:
        return f"(CAST({2 ** 62} AS REAL) * CAST({2 ** (n - 62)} AS REAL))"
    return f"(1.0 / {2 ** -n})"


# A point's value as one int64 item of a group_concat list, exact for every value but a few. A
# non-negative integer value (below 2**63) is itself, as before. A non-integer v is -(q * 16 + j),
# j = 1..15 its tier: v in [2**(52 - 7j), 2**(59 - 7j)) and q = v * 2**(7j), an integer (a double
# in that binade has no bit below 2**(-7j)) below 2**59, so q * 16 + j fits int64; the value is q *
# 2**-(7j). Scaling by a power of two is exact both ways (SQLite multiplies, numpy ldexp), so every
# non-integer double in [2**-53, 2**52) goes as text of integers, parsed in C; the rest (negative
# values, non-integers below 2**-53, integers from 2**63, inf) is NULL, left out of its bucket's
# values, and that bucket is read again as rows. A non-integer's tier is found by a binary search
# of 4 comparisons. Before, any non-integer sent its whole bucket to the rows (a book of
# non-integer values: every bucket; its cold evaluation 2.9x the floor, now 1.5x; docs/benchmarks.md
# "Non-integer values and the PostgreSQL read"). An integer costs one comparison more (v >= 0).
_TIER_BITS = 4
_TIER_BINADES = 7
_TIERS = 15  # 2**_TIER_BITS - 1 tiers of non-integers
_SHIFTS = np.array([_TIER_BINADES * j for j in range(_TIERS + 1)], dtype=np.int32)


def _tier_lo(j: int) -> int:
    return 52 - _TIER_BINADES * j  # tier j holds non-integers in [2**_tier_lo(j), 2**(_tier_lo(j) + 7))


def _tier_search(tiers: Sequence[int], v: str) -> str:
    """The item of a non-integer `v` known to lie in the tiers' binades (ascending value order)."""
    if len(tiers) == 1:
        j = tiers[0]
        return f"-{j} - CAST({v} * {_pow2(_TIER_BINADES * j + _TIER_BITS)} AS INTEGER)"
    mid = len(tiers) // 2
    return (f"CASE WHEN {v} < {_pow2(_tier_lo(tiers[mid]))} THEN {_tier_search(tiers[:mid], v)} "
            f"ELSE {_tier_search(tiers[mid:], v)} END")


def value_item(v: str = "p.value") -> str:
    """SQLite: the int64 item carrying the value `v` exactly (decoded by _values), or NULL."""
    return (f"CASE WHEN CAST({v} AS INTEGER) = {v} AND {v} >= 0 THEN CAST({v} AS INTEGER) "
            f"WHEN {v} >= {_pow2(_tier_lo(_TIERS))} AND {v} < {_pow2(52)} "
            f"THEN {_tier_search(range(_TIERS, 0, -1), v)} END")


_VALUE_ITEM = value_item()


def _values(text: str | bytes | int | None) -> np.ndarray:
    """A group_concat list of value_item() items as the float64 values they carry, exactly."""
    items = _ints(text)
    out = items.astype(np.float64)  # the integers: exact (each is a double's value)
    odd = items < 0
    if odd.any():
        code = -items[odd]
        q = (code >> _TIER_BITS).astype(np.float64)  # exact: at most 53 significant bits
        out[odd] = np.ldexp(q, -_SHIFTS[code & ((1 << _TIER_BITS) - 1)])
    return out


def _sqlite_cells(conn: Connection, select: str, where: str, params: Sequence[Any]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """SQLite: the (key or cell, value) points of `select ... where`, packed by SQLite itself.

    sqlite3 makes a tuple and two Python objects of every row; here SQLite concatenates the cells and
    the values of each bucket into two strings of integers (group_concat, in the primary key's
    (metric, bucket) order, so no sort), which numpy parses in C. Values go as value_item()s (exact
    for integers and nearly every non-integer); the few others are read as rows by a second scan of
    the key range that returns only them."""
    from storage import dialect

    cur = conn.connection.driver_connection.cursor()
    flats: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    try:
        cur.execute(f"SELECT group_concat({select}), group_concat({_VALUE_ITEM}) {where} "
                    f"AND {_VALUE_ITEM} IS NOT NULL GROUP BY p.bucket_start", tuple(params))
        while (row := cur.fetchone()) is not None:
            cell = _ints(row[0])
            value = _values(row[1])
            if len(cell) != len(value):  # pragma: no cover - the two lists come from the same rows
                raise ValueError("storage.columnar: cells and values differ in length")
            flats.append(cell)
            vals.append(value)
    finally:
        cur.close()
    flat, val = dialect.read_cells(conn, f"SELECT {select}, p.value {where} AND {_VALUE_ITEM} IS NULL", params)
    flats.append(flat)
    vals.append(val)
    return np.concatenate(flats), np.concatenate(vals)


def _ints(text: str | bytes | int | None) -> np.ndarray:
    """A comma-separated list of integers (group_concat's output) as int64, parsed in C."""
    if text is None:
        return np.zeros(0, dtype=np.int64)
    if isinstance(text, int):  # a one-item list: SQLite returns it as text, but be sure
        return np.array([text], dtype=np.int64)
    data = text.encode() if isinstance(text, str) else text
    # np.fromstring's text mode is the only C parser of a separated list in numpy (not deprecated)
    return np.fromstring(data, dtype=np.int64, sep=",")


def in_bucket_order(key: np.ndarray, vals: np.ndarray, step: int, span: int, offs: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Points given as key = row * span + (bucket_start - lo), span = hi - lo (the block's row and the
    point's offset in seconds from the block's start `lo`, a multiple of `step`) as (cell, value)
    arrays, cell = row * n_cols + (bucket_start - lo) // step, ordered so that the points of each
    cell come in ascending bucket_start: the one order in which every read path adds a cell's points
    (storage.tiles.bin_cells adds them in the order given; float addition depends on it, and
    PostgreSQL returns rows in no set order). Only a read whose cells can hold several points (a
    point off a cell's start) is sorted, stably by each point's offset bucket_start - lo (`offs`
    when the caller has them, else from the key): the points then come in bucket order (cells in no
    order, each cell's points ascending), and rows that arrive in bucket-ordered runs (SQLite's
    classes of buckets, each read in key order) are merged by timsort, not sorted from scratch (2M
    points in three runs: 0.05 s against 0.63-0.75 s for argsort of the key, bench machine under
    load; docs/benchmarks.md "One summation order")."""
    flat = key // step  # not np.divmod: its remainder is ~5x the floor division (no libdivide)
    if (flat * step != key).any():
        if offs is None:
            offs = key - key // span * span
        order = np.argsort(offs, kind="stable")
        return flat[order], vals[order]
    return flat, vals


def cells(conn: Connection, metric: str, lo: int, hi: int, step: int, join_table: str,
          rows: RowIndex | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Points of `metric` with bucket_start in [lo, hi) of the accounts in `join_table`, as
    (cell number int64, value float64) arrays of a block of (hi - lo) // step columns, one row per
    account: cell = ord * n_cols + (bucket - lo) // step, where `join_table` (account_id, ord) is a
    table the connection sees (a temporary one, or usage_tile_rows). Points of other accounts are
    left out. Several base buckets may fall in one cell: their points come in ascending
    bucket_start (in_bucket_order), the order in which callers sum them (storage.tiles.bin_cells).
    `rows`, the same (account_id, ord) pairs in memory, lets SQLite skip the join (see the module
    docstring); the result is the same either way."""
    dialect = conn.dialect.name
    # each point's key (row, offset of its bucket): in_bucket_order makes it a cell, in bucket order
    key = f"o.ord * {int(hi - lo)} + (p.bucket_start - {int(lo)})"
    # CROSS JOIN: SQLite keeps the range scan of usage_points' key (metric, bucket, account) as the outer
    # loop and looks each account up in `join_table` (led by the table of ids, it would scan the range
    # once per id); PostgreSQL plans the join from its statistics either way
    join = "CROSS JOIN" if dialect == "sqlite" else "JOIN"
    source = f"FROM usage_points p {join} {join_table} o ON o.account_id = p.account_id "
    if dialect == "postgresql":
        return _pg_cells(conn, metric, lo, hi, step, join_table)
    if dialect == "sqlite" and rows is not None and rows.usable():
        return _sqlite_cells_by_id(conn.connection.driver_connection, metric, lo, hi, step, rows)
    if dialect == "sqlite":
        keys, vals = _sqlite_cells(conn, key, source + "WHERE p.metric = ? AND p.bucket_start >= ? "
                                   "AND p.bucket_start < ?", [metric, lo, hi])
        return in_bucket_order(keys, vals, step, hi - lo)
    raise ValueError(f"storage.columnar: unsupported database dialect {dialect!r}")


READ_THREADS = 2  # SQLite range reads running at once in cells_many (sqlite3 releases the GIL while stepping)


def idle_cores() -> float:
    """Cores this process may use minus the 1-minute load average (negative: more runnable tasks
    than cores)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores - os.getloadavg()[0]


def _parallel(conn: Connection, rows: RowIndex | None, n_spans: int) -> bool:
    """Can cells_many read on helper connections? A SQLite file (not one in memory: a single
    connection), a usable RowIndex, more than one span, and a core idle beside this process's own:
    on a saturated machine helpers only compete for the same cores (2 cores at load 6-7.6, 30k
    accounts: the cold evaluation took 36.0 / 29.9 s with one reader, 39.2 / 34.6 s with two, and
    ~100 MB more memory; docs/benchmarks.md)."""
    from sqlalchemy.pool import SingletonThreadPool, StaticPool

    if conn.dialect.name != "sqlite" or rows is None or n_spans < 2 or READ_THREADS < 2:
        return False
    if idle_cores() < 1:
        return False
    if isinstance(conn.engine.pool, StaticPool | SingletonThreadPool):  # one connection for all
        return False
    database = conn.engine.url.database or ""
    return database not in ("", ":memory:") and "mode=memory" not in database and not database.startswith(
        "file::memory:") and rows.usable()


def cells_many(conn: Connection, metric: str, spans: Sequence[tuple[int, int]], step: int, join_table: str,
               rows: RowIndex | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """cells() of each [lo, hi) span, in order, yielded one by one.

    On a SQLite file, READ_THREADS helper connections of the engine's pool read the spans at once
    (the cold build of many tiles; it uses idle cores: on a machine already loaded it gains nothing,
    docs/benchmarks.md "The cold read without a join"). Each helper's query
    is its own read snapshot, and that snapshot is the caller's: the caller holds the write lock
    (storage.db.write_transaction: BEGIN IMMEDIATE), so no write commits meanwhile, and the caller
    itself writes no usage_points (only tiles). Elsewhere the spans are read one by one on `conn`."""
    if not _parallel(conn, rows, len(spans)):
        for lo, hi in spans:
            yield cells(conn, metric, lo, hi, step, join_table, rows)
        return
    from concurrent.futures import ThreadPoolExecutor

    assert rows is not None
    rows.arrow()  # built once here, not raced by the helpers
    rows.joined()
    engine = conn.engine

    def read(span: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        helper = engine.raw_connection()
        try:
            return _sqlite_cells_by_id(helper.driver_connection, metric, span[0], span[1], step, rows)
        finally:
            helper.close()  # back to the pool (rolled back: it only read)

    with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="usagebot-read") as pool:
        yield from pool.map(read, spans)
