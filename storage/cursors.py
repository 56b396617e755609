"""Source cursors: where each usage source left off, and its last success/error."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from storage.db import write_transaction
from storage.error_text import stored_error
from storage.models import SourceCursorRow

cursors_table: sa.Table = SourceCursorRow.__table__  # type: ignore[attr-defined]
_c = cursors_table.c


@dataclass(frozen=True)
class SourceCursor:
    source_id: str
    cursor: str | None
    watermark: int | None
    last_success_at: int | None
    last_error: str | None
    updated_at: int


def _to_cursor(r: Any) -> SourceCursor:
    return SourceCursor(
        source_id=r.source_id, cursor=r.cursor,
        watermark=None if r.watermark is None else int(r.watermark),
        last_success_at=None if r.last_success_at is None else int(r.last_success_at),
        last_error=r.last_error, updated_at=int(r.updated_at),
    )


def get_cursor(engine: Engine, source_id: str) -> SourceCursor | None:
    with engine.connect() as conn:
        r = conn.execute(sa.select(cursors_table).where(_c.source_id == source_id)).one_or_none()
    return None if r is None else _to_cursor(r)


def list_cursors(engine: Engine) -> list[SourceCursor]:
    with engine.connect() as conn:
        return [_to_cursor(r) for r in conn.execute(sa.select(cursors_table).order_by(_c.source_id))]


def save_cursor(
    engine: Engine,
    source_id: str,
    cursor: str | None = None,
    watermark: int | None = None,
    now: int | None = None,
    error: str | None = None,
) -> SourceCursor:
    """Record a poll of `source_id`.

    Success (error is None): cursor and watermark are set as given,
    last_success_at = now and last_error cleared. Failure: last_error is set
    and the previous cursor/watermark are kept (unless new ones are given),
    so the next poll resumes where the last good one ended.
    """
    at = int(time.time()) if now is None else int(now)
    with write_transaction(engine) as conn:
        prev = conn.execute(sa.select(cursors_table).where(_c.source_id == source_id)).one_or_none()
        if error is None:
            values: dict[str, Any] = {
                "cursor": cursor, "watermark": watermark, "last_success_at": at, "last_error": None,
            }
        else:
            values = {
                "cursor": cursor if cursor is not None else (prev.cursor if prev else None),
                "watermark": watermark if watermark is not None else (prev.watermark if prev else None),
                "last_success_at": prev.last_success_at if prev else None,
                "last_error": stored_error(error),
            }
        values["updated_at"] = at
        ins: Any = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(cursors_table)
        conn.execute(
            ins.values(source_id=source_id, **values)
            .on_conflict_do_update(index_elements=[_c.source_id], set_=values)
        )
    return SourceCursor(source_id=source_id, **values)
