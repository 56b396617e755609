"""Shared fixtures: every test that uses `db_url` or `engine` runs on SQLite and on PostgreSQL.

- `db_url`: a fresh, empty database per test: a temp SQLite file, or, on the
  session's throwaway PostgreSQL server (tests/pg.py), a new empty schema that
  the URL makes the default (search_path), which is as good as a new database
  and 50x faster to create.
- `engine`: a storage engine on `db_url` with the migrations applied.

Without PostgreSQL binaries the PostgreSQL half is skipped (with the reason),
except under CI=true where it fails. `-m "not postgresql"` runs SQLite only.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from tests.dbs import migrated_engine
from tests.pg import PgServer, PgUnavailable, start_server

# pyarrow's to_numpy imports pandas lazily (the columnar CSV reader), and pandas' C extensions crash
# the interpreter (SIGSEGV in the GC) when first imported while freezegun has replaced datetime: a
# test that freezes time and reads a CSV alone (`pytest tests/bot/cli/test_demo.py`) died with signal 11.
# Imported here, before any test freezes time. (Outside the tests nothing freezes datetime.)
try:
    import pandas  # noqa: F401
except ImportError:  # pandas is a test/bench extra
    pass


def _secrets_restored() -> Iterator[None]:
    """The secrets known before, restored after (rules.config.redaction is process-wide)."""
    from rules.config.redaction import REDACTOR

    snap = REDACTOR.snapshot()
    yield
    REDACTOR.restore(snap)


@pytest.fixture(autouse=True)
def _secret_registry() -> Iterator[None]:
    """Each test starts with the secrets known before it: the secrets of one test's config must not
    mask another test's messages."""
    yield from _secrets_restored()


@pytest.fixture(autouse=True, scope="module")
def _module_secret_registry() -> Iterator[None]:
    """The same per module: a module-scoped fixture's secrets (a running service's config) are known
    to each of its tests and forgotten after the module. Without it the per-test snapshot, taken after
    that fixture ran, kept them for every later module: a browser test's session_secret of 40 "b"s
    masked a later test's "bbbb" (an autouse fixture runs before the other fixtures of its scope)."""
    yield from _secrets_restored()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: runs against the throwaway PostgreSQL server")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    try:
        server = start_server()
    except PgUnavailable as exc:
        reason = str(exc)
    else:
        reason = ""
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but PostgreSQL is unavailable: {reason}", pytrace=False)
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'usagebot.db'}"
        return
    server: PgServer = request.getfixturevalue("pg_server")
    url = server.fresh_schema()
    try:
        yield url
    finally:
        server.drop_schema(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    with migrated_engine(db_url) as eng:
        yield eng
