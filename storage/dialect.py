"""SQL helpers shared by the storage modules, for SQLite and PostgreSQL alike: the dialect's INSERT
(for ON CONFLICT upserts) and raw DB-API reads (parameter marks, batched and binary cursors) where
SQLAlchemy's row objects would cost too much (bulk usage reads, storage.usage and storage.tiles)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

FETCH_BATCH = 50_000  # rows per fetchmany() when reading usage (bounds memory)


def dialect_insert(conn: Connection, table: sa.Table) -> Any:
    """INSERT of the connection's dialect, which has on_conflict_do_update / on_conflict_do_nothing."""
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(table)


def param_mark(dialect: str) -> str:
    """The DB-API parameter marker of the driver: sqlite3 "?", psycopg "%s"."""
    return "?" if dialect == "sqlite" else "%s"


def fetch_batches(conn: Connection, sql: str, params: Sequence[Any]) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of one query in batches of FETCH_BATCH, straight from the DB-API cursor."""
    cur = conn.connection.driver_connection.cursor()
    try:
        cur.execute(sql, params)
        while True:
            batch = cur.fetchmany(FETCH_BATCH)
            if not batch:
                return
            yield batch
    finally:
        cur.close()


def read_cells(conn: Connection, sql: str, params: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """A query returning (cell number, value) rows, as two arrays (int64 cells, float64 values)."""
    flats: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for batch in fetch_batches(conn, sql, params):
        flats.append(np.fromiter([r[0] for r in batch], dtype=np.int64, count=len(batch)))
        vals.append(np.fromiter([r[1] for r in batch], dtype=np.float64, count=len(batch)))
    if not flats:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    return np.concatenate(flats), np.concatenate(vals)


def binary_rows(conn: Connection, sql: str, params: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
    """Rows of one query, one at a time; on PostgreSQL in binary format (bytea as raw bytes, not
    hex text twice their size)."""
    cur = conn.connection.driver_connection.cursor()
    try:
        if conn.dialect.name == "postgresql":
            cur.execute(sql, params, binary=True)
        else:
            cur.execute(sql, params)
        while (row := cur.fetchone()) is not None:
            yield row
    finally:
        cur.close()
