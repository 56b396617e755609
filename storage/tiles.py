"""Usage tiles: aggregated usage kept between reads, so a daily evaluation reads what changed only.

A full evaluation needs every account's last N buckets of every metric. Re-reading them from
usage_points costs one index row per (account, metric, bucket) each cycle, though all but the newest
bucket are unchanged since the day before. Tiles keep the aggregated buckets instead:

- A tile holds TILE_COLS buckets of `step` seconds (tile k = buckets [k * TILE_COLS, (k + 1) *
  TILE_COLS) counted from the epoch) for up to TILE_ROWS accounts (group `grp`): the float64 sums and
  a bit per cell "has a point". Accounts get a permanent row number (usage_tile_rows.ord).
- Every write to usage_points (storage.usage.write_points, load_usage) marks its base buckets in
  usage_tile_dirty in the same transaction, adding the mark or bumping its seq.
- A read first refreshes the metric: for every stored step, the tiles' columns holding a marked
  bucket are recomputed from usage_points, and a mark is deleted only if its seq is still the one
  read (a write committed meanwhile keeps its mark). Tiles the read needs and that do not exist yet
  are built from usage_points (and copied into the block as they are built: they hold every
  account). Then the rest of the block is assembled from the stored tiles.

Reads that build or refresh tiles write, so they run in a write transaction (storage.db
.write_transaction), serialised on PostgreSQL by a transaction-level advisory lock. Order matters for
correctness and is kept: marks are read before row numbers are assigned and before points are read,
so a write that commits in between keeps its mark for the next read. Tiles not read for
IDLE_SECONDS (wall clock) are dropped. The tiles are a cache: deleting every row of the four
tables is always safe.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection

from storage.columnar import RowIndex
from storage.dialect import binary_rows, fetch_batches, param_mark

TILE_COLS = 8  # a new bucket rewrites one tile per group: narrow tiles keep that write small
TILE_ROWS = 4096
IDLE_SECONDS = 14 * 86_400
_PG_LOCK = 7_573_616_701  # pg_advisory_xact_lock key of tile maintenance

_MARK = ("INSERT INTO usage_tile_dirty (metric, bucket_start, seq) {values} "
         "ON CONFLICT (metric, bucket_start) DO UPDATE SET seq = usage_tile_dirty.seq + 1")


def bin_cells(flat: np.ndarray, vals: np.ndarray, n_rows: int, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Points (cell number row * n_cols + column, value) summed per cell: (sums float64, has a
    point bool), both (n_rows, n_cols); cells without a point are 0.0 / False.

    The sum's order: np.bincount adds the points one by one in the order given, 0.0 + v1 + v2 ...;
    every reader (storage.columnar.cells, storage.usage's short read) hands a cell's points in
    ascending bucket_start (columnar.in_bucket_order), as storage.usage_columns.UsagePoints adds
    them, so the direct read, the tiles and the backtest give the same sums, bit for bit."""
    cells = n_rows * n_cols
    sums = np.bincount(flat, weights=vals, minlength=cells).astype(np.float64, copy=False)
    has = np.bincount(flat, minlength=cells) > 0
    return sums.reshape(n_rows, n_cols), has.reshape(n_rows, n_cols)


# ----------------------------------------------------------------------------- writers


def mark_written(conn: Connection, pairs: Iterable[tuple[str, int]]) -> None:
    """Mark (metric, base bucket) pairs written, inside the writer's transaction.

    Marks are written, and deleted by a refresh, in (metric, bucket) order, so a writer and a
    refresh on PostgreSQL take the marks' row locks in the same order (no deadlock)."""
    m = param_mark(conn.dialect.name)
    rows = sorted(set(pairs))
    if rows:
        cur = conn.connection.driver_connection.cursor()
        try:
            cur.executemany(_MARK.format(values=f"VALUES ({m}, {m}, 1)"), rows)
        finally:
            cur.close()


def mark_written_from(conn: Connection, table: str) -> None:
    """Mark every (metric, bucket_start) of a staging table written."""
    conn.exec_driver_sql(_MARK.format(
        values=f"SELECT DISTINCT metric, bucket_start, 1 FROM {table} WHERE true ORDER BY metric, bucket_start"))


# ----------------------------------------------------------------------------- reads


def read_tiles(
    conn: Connection, metric: str, step: int, start: int, end: int, rows: Sequence[str] | None
) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(rows, sums, has, first_col) of `rows` x buckets [start, end), from the tiles.

    rows None = every account whose first point of the metric (usage_first_seen) is before `end`,
    sorted. sums float64 and has bool, shape (len(rows), n_cols); cells without a point stay 0 /
    False. first_col: the column of each row's first-ever point (0 = before the block, n_cols =
    never). `conn` must be in a write transaction (storage.db.write_transaction).
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK})")
        # small, planned-for-many-rows queries: JIT compiling them costs more than running them
        conn.exec_driver_sql("SET LOCAL jit = off")
        # the reads join usage_points to usage_tile_rows, numbered in this very transaction: analyzed
        # while empty (the cache emptied, then autovacuum), the table is planned as one row, and a
        # nested loop scans the whole range once per account (10k accounts: a cold read of 31 s ran
        # for over 12 minutes); every join here is of many rows, hashed or merged
        conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
    m = param_mark(conn.dialect.name)
    dirty = list(conn.exec_driver_sql(
        f"SELECT bucket_start, seq FROM usage_tile_dirty WHERE metric = {m} ORDER BY bucket_start", (metric,)))
    accounts, first, ords, n_ords = _series(conn, metric)  # after the marks: see the module docstring
    index = RowIndex(accounts, ords)  # the metric's accounts: the only ones with points of it
    if dirty:
        _refresh(conn, metric, dirty, n_ords, index)
    n_cols = (end - start) // step
    if rows is None:
        sel = np.flatnonzero(first < end)
        rows = [accounts[i] for i in sel.tolist()]
        known = np.ones(len(sel), dtype=bool)
    else:
        rows = list(rows)
        pos = {a: i for i, a in enumerate(accounts)}
        sel = np.fromiter((pos.get(a, -1) for a in rows), dtype=np.int64, count=len(rows))
        known = sel >= 0
    at = np.where(known, sel, 0)
    first_col = np.full(len(rows), n_cols, dtype=np.int64)
    row_ords = np.full(len(rows), -1, dtype=np.int64)
    if len(accounts):
        first_col[known] = np.maximum(0, (first[at[known]] - start) // step)
        row_ords[known] = ords[at[known]]
    sums = np.zeros((len(rows), n_cols))
    has = np.zeros((len(rows), n_cols), dtype=bool)
    if n_cols == 0 or not rows:
        return rows, sums, has, first_col
    k0, k1 = start // step // TILE_COLS, (end // step - 1) // TILE_COLS
    block = _Block(start // step, row_ords, sums, has)
    built = _ensure(conn, metric, step, k0, k1, n_ords, index, start // step, block)
    _touch(conn, metric, step, k0, k1)
    _assemble(conn, metric, step, k0, k1, block, built)
    return rows, sums, has, first_col


@dataclass
class _Block:
    """The block a read fills: columns from bucket column c0, rows numbered `ord_of` (-1: none)."""

    c0: int
    ord_of: np.ndarray
    sums: np.ndarray
    has: np.ndarray

    def copy_tile(self, k: int, s: np.ndarray, h: np.ndarray, local: np.ndarray | None = None,
                  where: np.ndarray | None = None) -> None:
        """Copy tile k's cells into the block: rows `local` of the tile into block rows `where`
        (None: every numbered row, the tile holding every row number)."""
        n_cols = self.sums.shape[1]
        lo, hi = max(self.c0, k * TILE_COLS), min(self.c0 + n_cols, (k + 1) * TILE_COLS)
        if hi <= lo:
            return
        if where is None:
            where = np.flatnonzero(self.ord_of >= 0)
            local = self.ord_of[where]
        t = k * TILE_COLS
        self.sums[where, lo - self.c0:hi - self.c0] = s[local, lo - t:hi - t]
        self.has[where, lo - self.c0:hi - self.c0] = h[local, lo - t:hi - t]


def _series(conn: Connection, metric: str) -> tuple[list[str], np.ndarray, np.ndarray, int]:
    """The metric's accounts (sorted), their first stored bucket and tile row number, and how many
    row numbers exist; accounts without a number get the next ones (only here, under the tile lock,
    so numbers are always 0..n-1)."""
    m = param_mark(conn.dialect.name)
    got: list[tuple[Any, ...]] = []
    for batch in fetch_batches(conn, "SELECT f.account_id, f.first_bucket, COALESCE(o.ord, -1) FROM usage_first_seen f "
                               f"LEFT JOIN usage_tile_rows o ON o.account_id = f.account_id WHERE f.metric = {m}",
                               [metric]):
        got.extend(batch)
    columns = list(zip(*got, strict=True)) or [(), (), ()]
    accounts = list(columns[0])
    if accounts != sorted(accounts):  # Python's order, not a collation's
        got.sort(key=lambda r: r[0])
        columns = list(zip(*got, strict=True))
        accounts = list(columns[0])
    del got
    first = np.array(columns[1], dtype=np.int64)
    ords = np.array(columns[2], dtype=np.int64)
    n_ords = int(conn.exec_driver_sql("SELECT COALESCE(MAX(ord), -1) + 1 FROM usage_tile_rows").scalar_one())
    new = np.flatnonzero(ords < 0)
    if len(new):
        ords[new] = n_ords + np.arange(len(new))
        cur = conn.connection.driver_connection.cursor()
        try:
            cur.executemany(f"INSERT INTO usage_tile_rows (account_id, ord) VALUES ({m}, {m})",
                            [(accounts[i], int(ords[i])) for i in new.tolist()])
        finally:
            cur.close()
        n_ords += len(new)
    return accounts, first, ords, n_ords


def _aggregate(conn: Connection, metric: str, step: int, c_lo: int, c_hi: int, n_ords: int,
               index: RowIndex | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sums and has of every numbered account in bucket columns [c_lo, c_hi), from usage_points
    (read as columns: storage.columnar; `index` holds the metric's accounts and their row numbers)."""
    from storage import columnar

    flat, vals = columnar.cells(conn, metric, c_lo * step, c_hi * step, step, "usage_tile_rows", index)
    return bin_cells(flat, vals, n_ords, c_hi - c_lo)


def _group_rows(grp: int, n_ords: int) -> int:
    return max(0, min(TILE_ROWS, n_ords - grp * TILE_ROWS))


def _has_bytes(n_rows: int) -> int:
    return (n_rows * TILE_COLS + 7) // 8


def _valid(n_rows: int, has: bytes) -> int:
    """The tile's valid-columns mask (bit c: column c was read). A tile built by a read starting
    inside it holds only the columns from that start on: its `has` blob ends with one byte more,
    the mask; a blob without it (every tile of a full span) holds every column."""
    if len(has) == _has_bytes(n_rows) + 1:
        return has[-1]
    return _mask(0, TILE_COLS)


def _decode(n_rows: int, sums: bytes, has: bytes) -> tuple[np.ndarray, np.ndarray]:
    if len(sums) != n_rows * TILE_COLS * 8 or len(has) not in (_has_bytes(n_rows), _has_bytes(n_rows) + 1):
        raise ValueError(f"usage tile of {n_rows} rows holds {len(sums)} bytes, not {n_rows} x {TILE_COLS} "
                         "float64: written with another tile width? Empty the usage tile tables "
                         "(docs/operations.md, 'Usage tiles'); the next read rebuilds them")
    s = np.frombuffer(sums, dtype=np.float64).reshape(n_rows, TILE_COLS)
    h = np.unpackbits(np.frombuffer(has, dtype=np.uint8), count=n_rows * TILE_COLS).reshape(n_rows, TILE_COLS)
    return s, h.astype(bool)


def _mask(t_lo: int, t_hi: int) -> int:
    """The valid-columns mask of tile columns [t_lo, t_hi)."""
    return ((1 << t_hi) - 1) & ~((1 << t_lo) - 1)


def _write(conn: Connection, rows: list[tuple[str, int, int, int, np.ndarray, np.ndarray]], valid: int | None = None) -> None:
    """Upsert tiles (metric, step, tile, grp, sums, has) holding the columns of the `valid` mask
    (None: all of them)."""
    _upsert(conn, [(metric, step, tile, grp, len(sums), np.ascontiguousarray(sums, dtype=np.float64).tobytes(),
                    _has_blob(has, valid)) for metric, step, tile, grp, sums, has in rows])


def _has_blob(has: np.ndarray, valid: int | None) -> bytes:
    """A tile's `has` blob: its packed bits, plus the valid-columns mask byte of a partial tile."""
    bits = np.packbits(has, axis=None).tobytes()
    return bits if valid in (None, _mask(0, TILE_COLS)) else bits + bytes([valid])


def _upsert(conn: Connection, params: list[tuple[Any, ...]]) -> None:
    """Upsert tile rows given as prepared (metric, step, tile, grp, n_rows, sums, has) tuples, in one
    executemany (the blobs may be memoryviews into the caller's arrays: bound without a copy here)."""
    if not params:
        return
    m = param_mark(conn.dialect.name)
    sql = (f"INSERT INTO usage_tiles (metric, step, tile, grp, n_rows, sums, has) VALUES ({m}, {m}, {m}, {m}, "
           f"{m}, {m}, {m}) ON CONFLICT (metric, step, tile, grp) DO UPDATE SET n_rows = excluded.n_rows, "
           "sums = excluded.sums, has = excluded.has")
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.executemany(sql, params)
    finally:
        cur.close()


def _tile_rows(metric: str, step: int, k: int, groups: Sequence[int], sums: np.ndarray, has: np.ndarray,
               valid: int) -> list[tuple[Any, ...]]:
    """The upsert tuples of tile `k`'s `groups`, from its (n_ords, TILE_COLS) sums and has: each
    group's payload is a slice of one contiguous buffer (the rows of a group are consecutive), and
    the bits of every group are packed in one call where each group starts on a byte (TILE_ROWS *
    TILE_COLS a multiple of 8: always with the shipped sizes)."""
    n_ords = len(sums)
    sums = np.ascontiguousarray(sums, dtype=np.float64)
    row_bytes = TILE_COLS * 8
    flat = memoryview(sums.reshape(-1).view(np.uint8))
    packed = np.packbits(has, axis=None) if (TILE_ROWS * TILE_COLS) % 8 == 0 else None
    tail = b"" if valid == _mask(0, TILE_COLS) else bytes([valid])
    out: list[tuple[Any, ...]] = []
    for g in groups:
        r0 = g * TILE_ROWS
        n = _group_rows(g, n_ords)
        if packed is not None:
            b0 = r0 * TILE_COLS // 8
            bits = packed[b0:b0 + _has_bytes(n)].tobytes() + tail
        else:
            bits = _has_blob(has[r0:r0 + n], valid)
        out.append((metric, step, k, g, n, flat[r0 * row_bytes:(r0 + n) * row_bytes], bits))
    return out


def _refresh(conn: Connection, metric: str, dirty: list[Any], n_ords: int, index: RowIndex | None = None) -> None:
    """Recompute the stored tiles' columns holding a marked bucket; delete the marks read."""
    m = param_mark(conn.dialect.name)
    buckets = np.array([int(b) for b, _ in dirty], dtype=np.int64)
    stored: dict[int, set[int]] = {}
    for step, tile in conn.exec_driver_sql(
            f"SELECT DISTINCT step, tile FROM usage_tiles WHERE metric = {m}", (metric,)):
        stored.setdefault(int(step), set()).add(int(tile))
    for step, tiles in stored.items():
        cols = np.unique(buckets // step)
        for k in sorted(set((cols // TILE_COLS).tolist()) & tiles):
            in_k = cols[(cols // TILE_COLS) == k]
            c_lo, c_hi = int(in_k.min()), int(in_k.max()) + 1
            sums, has = _aggregate(conn, metric, step, c_lo, c_hi, n_ords, index)
            t_lo, t_hi = c_lo - k * TILE_COLS, c_hi - k * TILE_COLS
            for grp, n_rows, s_blob, h_blob in list(binary_rows(conn,
                    f"SELECT grp, n_rows, sums, has FROM usage_tiles WHERE metric = {m} AND step = {m} "
                    f"AND tile = {m}", (metric, step, k))):
                grp, n_rows = int(grp), int(n_rows)
                size = _group_rows(grp, n_ords)
                s, h = _decode(n_rows, s_blob, h_blob)
                valid = _valid(n_rows, h_blob) | _mask(t_lo, t_hi)  # the recomputed columns are valid now
                s2 = np.zeros((size, TILE_COLS))
                h2 = np.zeros((size, TILE_COLS), dtype=bool)
                s2[:n_rows], h2[:n_rows] = s, h  # accounts numbered since: nothing stored for them yet
                r0 = grp * TILE_ROWS
                s2[:, t_lo:t_hi] = sums[r0:r0 + size]
                h2[:, t_lo:t_hi] = has[r0:r0 + size]
                _write(conn, [(metric, step, k, grp, s2, h2)], valid)
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.executemany(f"DELETE FROM usage_tile_dirty WHERE metric = {m} AND bucket_start = {m} AND seq = {m}",
                        [(metric, int(b), int(seq)) for b, seq in dirty])
    finally:
        cur.close()


def _ensure(conn: Connection, metric: str, step: int, k0: int, k1: int, n_ords: int,
            index: RowIndex | None = None, c_start: int | None = None, block: _Block | None = None) -> set[int]:
    """Build the tiles [k0, k1] x every group that do not exist yet, or that lack a column of the
    read from bucket column `c_start` on (None: the tiles' whole width). Returns the tiles read
    here: the read saw every numbered account's points, so each is copied into `block` as it is
    built, rather than read back from the blobs just written (a cold build: every tile).

    The first tile of a read starting inside it is built from `c_start` on only (a partial tile, its
    valid-columns mask stored with it: _valid): aligned to TILE_COLS from the epoch, the tiles of a
    cold read of 29-94 days otherwise read 7% more points than the read needs (the demo book's 4
    metrics at 10k accounts: 2,189,892 points for 2,050,371; now exactly these). A later read that
    needs an earlier column of it rebuilds it from that read's start."""
    m = param_mark(conn.dialect.name)
    have: dict[int, set[int]] = {}
    lo_of = {k: (max(0, c_start - k * TILE_COLS) if c_start is not None else 0) for k in range(k0, k1 + 1)}
    for tile, grp, n_rows, has_len, last in conn.exec_driver_sql(
            f"SELECT tile, grp, n_rows, length(has), substr(has, length(has), 1) FROM usage_tiles "
            f"WHERE metric = {m} AND step = {m} AND tile >= {m} AND tile <= {m}", (metric, step, k0, k1)):
        k, needed = int(tile), _mask(lo_of[int(tile)], TILE_COLS)
        # a partial tile's `has` ends with its valid-columns mask (_valid)
        valid = _mask(0, TILE_COLS) if int(has_len) == _has_bytes(int(n_rows)) else bytes(last)[0]
        if valid & needed == needed:
            have.setdefault(k, set()).add(int(grp))
    groups = range((n_ords + TILE_ROWS - 1) // TILE_ROWS)
    todo = [(k, [g for g in groups if g not in have.get(k, ())]) for k in range(k0, k1 + 1)]
    todo = [(k, missing) for k, missing in todo if missing]
    from storage import columnar

    # the tiles' points read at once where the database allows (a cold start builds them all)
    spans = [((k * TILE_COLS + lo_of[k]) * step, (k + 1) * TILE_COLS * step) for k, _ in todo]
    read = columnar.cells_many(conn, metric, spans, step, "usage_tile_rows", index)
    built: set[int] = set()
    for (k, missing), (flat, vals) in zip(todo, read, strict=True):
        t_lo = lo_of[k]
        if t_lo:  # the cells of a partial tile (TILE_COLS - t_lo columns), moved to their columns in the tile
            flat = flat + (flat // (TILE_COLS - t_lo) + 1) * t_lo
        sums, has = bin_cells(flat, vals, n_ords, TILE_COLS)
        del flat, vals
        if block is not None:
            block.copy_tile(k, sums, has)
        built.add(k)
        # one executemany a tile (not one for the whole read: the payloads would all stay in memory)
        _upsert(conn, _tile_rows(metric, step, k, missing, sums, has, _mask(t_lo, TILE_COLS)))
    return built


def _touch(conn: Connection, metric: str, step: int, k0: int, k1: int) -> None:
    """Note the tiles read now; drop the metric's tiles idle for IDLE_SECONDS."""
    m = param_mark(conn.dialect.name)
    now = int(time.time())
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.executemany(f"INSERT INTO usage_tile_sets (metric, step, tile, read_at) VALUES ({m}, {m}, {m}, {m}) "
                        "ON CONFLICT (metric, step, tile) DO UPDATE SET read_at = excluded.read_at",
                        [(metric, step, k, now) for k in range(k0, k1 + 1)])
        idle = list(conn.exec_driver_sql(
            f"SELECT step, tile FROM usage_tile_sets WHERE metric = {m} AND read_at < {m}",
            (metric, now - IDLE_SECONDS)))
        for table in ("usage_tiles", "usage_tile_sets"):
            cur.executemany(f"DELETE FROM {table} WHERE metric = {m} AND step = {m} AND tile = {m}",
                            [(metric, int(s), int(k)) for s, k in idle])
    finally:
        cur.close()


def _assemble(conn: Connection, metric: str, step: int, k0: int, k1: int, block: _Block,
              built: Set[int] = frozenset()) -> None:
    """Copy the stored tiles [k0, k1] not in `built` (already copied) into the block."""
    ord_of = block.ord_of
    pos = np.flatnonzero(ord_of >= 0)
    stored = [k for k in range(k0, k1 + 1) if k not in built]
    if not len(pos) or not stored:
        return
    grp_of = ord_of[pos] // TILE_ROWS
    order = np.argsort(grp_of, kind="stable")
    groups, starts = np.unique(grp_of[order], return_index=True)
    bounds = [*starts.tolist(), len(order)]
    members = {int(g): (pos[order[bounds[i]:bounds[i + 1]]], ord_of[pos[order[bounds[i]:bounds[i + 1]]]]
                        - int(g) * TILE_ROWS) for i, g in enumerate(groups)}
    m = param_mark(conn.dialect.name)
    sql = (f"SELECT tile, grp, n_rows, sums, has FROM usage_tiles WHERE metric = {m} AND step = {m} "
           f"AND tile IN ({', '.join(str(k) for k in stored)}) "
           f"AND grp IN ({', '.join(str(int(g)) for g in groups)})")
    for tile, grp, n_rows, s_blob, h_blob in binary_rows(conn, sql, (metric, step)):
        where, local = members[int(grp)]
        s, h = _decode(int(n_rows), s_blob, h_blob)
        kept = local < int(n_rows)  # numbered after the tile was written: no point there yet
        block.copy_tile(int(tile), s, h, local[kept], where[kept])
