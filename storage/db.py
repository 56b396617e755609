"""Engines, URLs and schema migrations.

SQLite (a file under the data directory) is the default; PostgreSQL is used
when a `postgresql://` URL is configured (driver: psycopg 3). The schema is
managed by the Alembic migrations shipped inside this package
(`storage/migrations`), configured here without any alembic.ini.
"""

from __future__ import annotations

import logging
import re
import threading
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_CACHE_KIB = 65_536  # page cache per connection; the default 2 MiB thrashes on bulk upserts
_PG_MIGRATION_LOCK = 0x75736167  # pg_advisory_xact_lock key ("usag"), serialises concurrent migrate() calls


log = logging.getLogger(__name__)


class StorageError(RuntimeError):
    """A database problem reported with a redacted URL and what to do about it."""


class SchemaMismatch(StorageError):
    """The database exists with a usagebot schema, at another revision than this version's."""


class _MigratingOnly(logging.Filter):
    """Alembic's INFO lines ("Context impl SQLiteImpl.", "Running upgrade ...") only while migrating.

    Alembic logs the first two on every MigrationContext, i.e. on every readiness probe that reads the
    schema revision; they are kept for the upgrades migrate() actually runs.
    """

    active = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or bool(getattr(self.active, "on", False))


logging.getLogger("alembic.runtime.migration").addFilter(_MigratingOnly())


BIGINT_MAX = 2 ** 63 - 1  # ids and epoch seconds are BIGINT columns: a larger number is no row's


def bigint_of(text: str, minimum: int = -BIGINT_MAX - 1) -> int | None:
    """The integer a request's text names for a BIGINT column, or None when it is none: ASCII digits
    only ('²' and '٣' are str.isdigit() but int() parses neither), a leading "-" only when minimum is
    negative, within [minimum, BIGINT_MAX] (a larger number fails inside the driver, past any handler)."""
    digits = text[1:] if text.startswith("-") and minimum < 0 else text
    if not (0 < len(digits) <= 19 and digits.isascii() and digits.isdigit()):
        return None
    value = int(text)
    return value if minimum <= value <= BIGINT_MAX else None


def default_url(data_dir: str | Path = "usagebot-data") -> str:
    """SQLite file `<data_dir>/usagebot.db` (the directory is created by make_engine)."""
    return f"sqlite:///{Path(data_dir) / 'usagebot.db'}"


def redact_url(url: str | URL) -> str:
    """The URL with any password replaced by "***" (safe for logs and error messages).

    Works on malformed URLs too (e.g. an unescaped "@" in the password): the
    user info ends at the last "@" before the host.
    """
    text = url.render_as_string(hide_password=False) if isinstance(url, URL) else str(url)
    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*://)([^/?#]*)(.*)$", text, flags=re.DOTALL)
    if m is not None:
        scheme, netloc, rest = m.groups()
        if "@" in netloc:
            userinfo, host = netloc.rsplit("@", 1)
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{host}"
        text = scheme + netloc + rest
    return re.sub(r"(\b(?:password|passwd|pass|pwd)=)[^&#\s]*", r"\1***", text, flags=re.IGNORECASE)


def port_problem(u: URL) -> str | None:
    """A database URL's port out of range (the driver would say so only at the first connect)."""
    return None if u.port is None or 0 < u.port <= 65535 else f"port {u.port} is not between 1 and 65535"


def _normalise(url: str | URL) -> URL:
    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        raise StorageError(
            "database URL cannot be parsed (not shown: it may hold a password); expected e.g. "
            "'sqlite:///usagebot-data/usagebot.db' or 'postgresql://user:pass@host:5432/dbname'"
        ) from None
    problem = port_problem(u)
    if problem is not None:
        raise StorageError(f"database URL {redact_url(url)!r}: {problem}")
    backend = u.get_backend_name()
    if backend in ("postgresql", "postgres"):
        return u.set(drivername="postgresql+psycopg")
    if backend == "sqlite":
        return u
    raise StorageError(
        f"database URL {redact_url(url)!r}: unsupported backend {backend!r}; use sqlite:/// or postgresql://"
    )


def _sqlite_on_connect(dbapi_conn: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event own transactions (pysqlite's implicit BEGIN skips SELECTs).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    mode = conn.get_execution_options().get("sqlite_begin", "")
    conn.exec_driver_sql("BEGIN IMMEDIATE" if mode == "IMMEDIATE" else "BEGIN")


def write_transaction(engine: Engine) -> AbstractContextManager[Connection]:
    """A transaction that reads, then writes based on what it read.

    On SQLite it takes the write lock up front (BEGIN IMMEDIATE), so two
    writers queue on the busy timeout instead of one failing when it upgrades
    its read snapshot; on PostgreSQL it is an ordinary transaction (use row
    locks where needed).
    """
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_begin="IMMEDIATE").begin()
    return engine.begin()


def db_clock(dialect: str) -> sa.ColumnElement[int]:
    """The database server's clock as int epoch seconds, for leases shared by several processes.

    Leases that several replicas compare (outbox and Slack step claims) are written and checked
    with this clock, never a replica's own: one clock, so a replica whose clock runs ahead cannot
    take what another still holds. SQLite databases are local files: the machine's clock.
    """
    if dialect == "postgresql":  # clock_timestamp(): the time now, not the transaction's start
        return sa.cast(sa.func.floor(sa.extract("epoch", sa.func.clock_timestamp())), sa.BigInteger)
    return sa.cast(sa.func.strftime("%s", "now"), sa.BigInteger)


def make_engine(url: str | URL) -> Engine:
    """An Engine for a SQLite or PostgreSQL URL.

    SQLite: WAL journal, foreign keys on, 30 s busy timeout; the file's
    directory is created if missing. PostgreSQL: psycopg 3 driver, whether the
    URL says `postgresql://`, `postgres://` or `postgresql+psycopg://`.
    """
    u = _normalise(url)
    if u.get_backend_name() == "sqlite":
        database = u.database or ""
        in_memory = database in ("", ":memory:") or database.startswith("file::memory:")
        if in_memory:
            engine = sa.create_engine(
                u, poolclass=StaticPool, connect_args={"check_same_thread": False}
            )
        else:
            Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(u, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        sa.event.listen(engine, "connect", _sqlite_on_connect)
        sa.event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return sa.create_engine(u, pool_pre_ping=True)


def alembic_config(engine_or_url: Engine | str | URL | None = None) -> Config:
    """An Alembic Config pointing at the migrations shipped in this package.

    For offline SQL (`alembic.command.upgrade(cfg, "head", sql=True)`) pass a
    URL; `migrate()` passes a live connection instead.
    """
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    if engine_or_url is not None:
        url = engine_or_url.url if isinstance(engine_or_url, Engine) else _normalise(engine_or_url)
        # ConfigParser interpolation: "%" must be doubled.
        cfg.set_main_option("sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def migrate(engine: Engine) -> tuple[str | None, str | None]:
    """Bring the schema to the newest revision (alembic upgrade head). Idempotent.

    Returns (revision before, revision after); logs one INFO line when it upgraded.
    """
    cfg = alembic_config()
    where = redact_url(engine.url)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            before = _revision(conn)
            head = head_revision()
            if before == head:
                return before, head
            cfg.attributes["connection"] = conn
            _MigratingOnly.active.on = True
            try:
                command.upgrade(cfg, "head")
            finally:
                _MigratingOnly.active.on = False
        log.info("database %s migrated from %s to %s", where, before or "an empty database", head,
                 extra={"event": "migrated", "from_revision": before, "to_revision": head})
        return before, head
    except OperationalError as exc:
        raise StorageError(
            f"cannot migrate database {where}: {' '.join(str(exc.orig).split())}; check that the server is running and the URL "
            "(host, port, database, user) is right"
        ) from None
    except CommandError as exc:
        raise StorageError(
            f"cannot migrate database {where}: {exc}; the database may have been migrated by a newer "
            "usagebot version than this one"
        ) from None


def _revision(conn: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(conn).get_current_revision()


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (None before the first migrate)."""
    with engine.connect() as conn:
        return _revision(conn)


def known_revisions() -> list[str]:
    """Every revision shipped with this package, oldest first."""
    from alembic.script import ScriptDirectory

    return [s.revision for s in reversed(list(ScriptDirectory.from_config(alembic_config()).walk_revisions()))]


def require_sqlite_file(url: str | URL, why: str) -> URL:
    """The URL, when it is not SQLite or its file exists; StorageError otherwise (a typo in --db must be a
    clear error, not a new empty database). `why`: what the command does instead of creating one."""
    u = _normalise(url)
    if u.get_backend_name() == "sqlite":
        where, database = redact_url(url), u.database or ""
        if database in ("", ":memory:") or database.startswith("file::memory:"):
            raise StorageError(f"database {where}: an in-memory database holds nothing to read")
        if not Path(database).expanduser().is_file():
            raise StorageError(
                f"no database at {Path(database).expanduser()} (from {where}); {why}. Check --db, "
                "$USAGEBOT_DB_URL or [storage] url; a new database is created by `usagebot db upgrade`, "
                "`usagebot ingest` or `usagebot serve`")
    return u


def open_existing(url: str | URL) -> Engine:
    """An Engine on a database that already exists and is migrated; never creates or migrates one.

    For commands that only read (`crm status`, `slack feedback`, `db current`, dry runs): a typo in
    --db must be a clear error, not a new empty database. Raises StorageError saying what to do.
    """
    u = require_sqlite_file(url, "this command only reads and never creates one")
    where = redact_url(url)
    engine = make_engine(u)
    try:
        rev = current_revision(engine)
        head = head_revision()
        if rev is None:
            raise StorageError(f"database {where} has no usagebot schema (never migrated); create it with "
                               f"`usagebot db upgrade --db ...` or check the URL")
        if rev != head:
            newer = rev not in known_revisions()
            raise SchemaMismatch(
                f"database {where} is at schema revision {rev}, this usagebot expects {head}: "
                + ("it was migrated by a newer usagebot version" if newer else "run `usagebot db upgrade`"))
    except BaseException:
        engine.dispose()
        raise
    return engine


def head_revision() -> str | None:
    """The newest revision shipped with this package."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()
