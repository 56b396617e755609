"""A migrated engine for a test database URL, disposed afterwards (the `engine` fixture and the tests
that need a second database of their own)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import Engine

from storage.db import make_engine, migrate


@contextmanager
def migrated_engine(url: str) -> Iterator[Engine]:
    eng = make_engine(url)
    migrate(eng)
    try:
        yield eng
    finally:
        eng.dispose()
