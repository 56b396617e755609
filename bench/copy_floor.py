"""PostgreSQL: rows of fixed-width columns by COPY BINARY into numpy, one array per column.

The second floor of bench/bench_cold.py (the bucket and value columns of the rows a cold
evaluation reads, without the account ids). This was the service's PostgreSQL read until it began
packing each bucket's points into one row (storage.columnar._pg_cells): libpq hands COPY data one
row per message, so the loop below runs once per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection

COPY_BLOCK = 8 << 20  # bytes of COPY output decoded at a time (bounds the transient buffer)
_PG_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def _pg_record(kinds: Sequence[str]) -> np.dtype:
    """One binary COPY record of 8-byte NOT NULL fields ("i8" int8, "f8" float8), big-endian."""
    fields: list[tuple[str, str]] = [("n", ">i2")]
    for i, kind in enumerate(kinds):
        if kind not in ("i8", "f8"):
            raise ValueError(f"copy_binary: column kind {kind!r} is not 'i8' or 'f8'")
        fields += [(f"len{i}", ">i4"), (f"f{i}", ">" + kind)]
    return np.dtype(fields)


def copy_binary(conn: Connection, select_sql: str, kinds: Sequence[str]) -> list[np.ndarray]:
    """PostgreSQL: the rows of `select_sql` (no bind parameters; literals inlined by the caller) as
    one array per column. `kinds` are "i8" (int8) or "f8" (float8): every column must be of that
    type and NOT NULL (cast in the query). Runs in the caller's transaction."""
    rec = _pg_record(kinds)
    parts: list[list[np.ndarray]] = [[] for _ in kinds]
    raw = conn.connection.driver_connection
    buf = bytearray()
    header_done = False

    def decode(final: bool) -> None:
        nonlocal buf, header_done
        view = memoryview(buf)
        at = 0
        if not header_done:
            if len(buf) < 19:
                if final:
                    raise ValueError("COPY BINARY: truncated header")
                return
            if bytes(view[:11]) != _PG_SIGNATURE:
                raise ValueError("COPY BINARY: not a binary COPY stream")
            ext = int.from_bytes(view[15:19], "big")
            at = 19 + ext
            header_done = True
        whole = (len(buf) - at) // rec.itemsize
        if final:  # the trailer: a field count of -1
            whole = (len(buf) - at - 2) // rec.itemsize
        if whole > 0:
            arr = np.frombuffer(view[at:at + whole * rec.itemsize], dtype=rec)
            if (arr["n"] != len(kinds)).any() or any((arr[f"len{i}"] != 8).any() for i in range(len(kinds))):
                raise ValueError("COPY BINARY: a field is NULL or not 8 bytes wide (cast it in the query)")
            for i, kind in enumerate(kinds):
                parts[i].append(arr[f"f{i}"].astype(np.int64 if kind == "i8" else np.float64))
            at += whole * rec.itemsize
        del view
        buf = buf[at:]

    with raw.cursor() as cur, cur.copy(f"COPY ({select_sql}) TO STDOUT (FORMAT BINARY)") as copy:
        for data in copy:
            buf += data
            if len(buf) >= COPY_BLOCK:
                decode(False)
    decode(True)
    if bytes(buf) != b"\xff\xff":
        raise ValueError("COPY BINARY: the stream does not end with its trailer")
    return [np.concatenate(p) if p else np.zeros(0, dtype=np.int64 if k == "i8" else np.float64)
            for p, k in zip(parts, kinds, strict=True)]



def pg_literal(conn: Connection, value: Any) -> str:
    """A value quoted as an SQL literal by psycopg (COPY takes no bind parameters)."""
    from psycopg import sql

    return sql.Literal(value).as_string(conn.connection.driver_connection)


