"""Source cursors, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from storage.cursors import SourceCursor, get_cursor, list_cursors, save_cursor


def test_success_then_error_keeps_position(engine: Engine) -> None:
    assert get_cursor(engine, "billing-api") is None
    save_cursor(engine, "billing-api", cursor="page-7", watermark=1_700_000_000, now=100)
    assert get_cursor(engine, "billing-api") == SourceCursor(
        "billing-api", "page-7", 1_700_000_000, last_success_at=100, last_error=None, updated_at=100)

    saved = save_cursor(engine, "billing-api", now=160, error="HTTP 503 from https://billing.example.com")
    got = get_cursor(engine, "billing-api")
    assert got == saved
    assert got == SourceCursor("billing-api", "page-7", 1_700_000_000, last_success_at=100,
                               last_error="HTTP 503 from https://billing.example.com", updated_at=160)

    save_cursor(engine, "billing-api", cursor="page-8", watermark=1_700_000_600, now=220)
    got = get_cursor(engine, "billing-api")
    assert got is not None and got.last_error is None and got.last_success_at == 220 and got.cursor == "page-8"


def test_error_before_any_success_and_listing(engine: Engine) -> None:
    save_cursor(engine, "b-src", now=5, error="x" * 5000)
    save_cursor(engine, "a-src", watermark=42, now=6)
    b = get_cursor(engine, "b-src")
    assert b is not None and b.cursor is None and b.watermark is None and b.last_success_at is None
    assert b.last_error is not None and len(b.last_error) == 2000
    assert [c.source_id for c in list_cursors(engine)] == ["a-src", "b-src"]
    assert get_cursor(engine, "a-src") == SourceCursor("a-src", None, 42, 6, None, 6)
