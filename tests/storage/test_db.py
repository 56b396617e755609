"""URLs, engines and connection behaviour."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from storage.db import StorageError, default_url, make_engine, migrate, redact_url, write_transaction
from tests.pg import free_port


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://bot:s3cret@db.internal:5432/usage", "postgresql://bot:***@db.internal:5432/usage"),
    ("postgresql+psycopg://bot:p@ss:w0rd@db/usage", "postgresql+psycopg://bot:***@db/usage"),
    ("postgresql://db/usage?user=bot&password=s3cret&sslmode=require",
     "postgresql://db/usage?user=bot&password=***&sslmode=require"),
    ("postgresql://bot@db/usage", "postgresql://bot@db/usage"),
    ("sqlite:///usagebot-data/usagebot.db", "sqlite:///usagebot-data/usagebot.db"),
    ("not a url, pass=hunter2", "not a url, pass=***"),
])
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_redact_url_object_and_default_url(tmp_path: Path) -> None:
    eng = make_engine("postgres://bot:s3cret@localhost/usage")  # no connection is made
    assert eng.dialect.driver == "psycopg" and eng.url.get_backend_name() == "postgresql"
    assert redact_url(eng.url) == "postgresql+psycopg://bot:***@localhost/usage"
    assert default_url(tmp_path) == f"sqlite:///{tmp_path / 'usagebot.db'}"
    assert default_url() == "sqlite:///usagebot-data/usagebot.db"


def test_bad_urls_are_reported_without_secrets() -> None:
    with pytest.raises(StorageError, match=r"mysql://u:\*\*\*@h/db.: unsupported backend .mysql.") as e:
        make_engine("mysql://u:topsecret@h/db")
    assert "topsecret" not in str(e.value)
    with pytest.raises(StorageError, match="cannot be parsed") as e:
        make_engine("::::topsecret")
    assert "topsecret" not in str(e.value)


def test_unreachable_server_message_hides_password() -> None:
    eng = make_engine(f"postgresql://bot:topsecret@127.0.0.1:{free_port()}/usage?connect_timeout=2")
    with pytest.raises(StorageError, match=r"cannot migrate database .*bot:\*\*\*@127\.0\.0\.1.*server is running") as e:
        migrate(eng)
    assert "topsecret" not in str(e.value)


def test_sqlite_file_settings(tmp_path: Path) -> None:
    eng = make_engine(default_url(tmp_path / "nested" / "dir"))
    assert (tmp_path / "nested" / "dir").is_dir()
    with eng.connect() as c:
        assert c.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert c.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert c.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    mem = make_engine("sqlite://")
    migrate(mem)
    with mem.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM accounts").scalar() == 0


def test_transactions_roll_back_and_foreign_keys_hold(engine: Engine) -> None:
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as c:
        c.execute(sa.text("INSERT INTO alert_events (episode_id, event, at, notify, reason, explanation) "
                          "VALUES (12345, 'fired', 1, false, '', '{}')"))
    with pytest.raises(RuntimeError), engine.begin() as c:
        c.execute(sa.text("INSERT INTO source_cursors (source_id, updated_at) VALUES ('s', 1)"))
        raise RuntimeError("abort")
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM source_cursors")).scalar() == 0


def test_concurrent_read_then_write_transactions(engine: Engine) -> None:
    """Writers that read first queue up instead of failing (SQLite BEGIN IMMEDIATE, PG row lock)."""
    with engine.begin() as c:
        c.execute(sa.text("INSERT INTO source_cursors (source_id, watermark, updated_at) VALUES ('s', 0, 0)"))
    lock = " FOR UPDATE" if engine.dialect.name == "postgresql" else ""
    errors: list[BaseException] = []

    def bump() -> None:
        try:
            for _ in range(10):
                with write_transaction(engine) as c:
                    w = c.execute(sa.text(f"SELECT watermark FROM source_cursors WHERE source_id = 's'{lock}")).scalar()
                    c.execute(sa.text("UPDATE source_cursors SET watermark = :w WHERE source_id = 's'"), {"w": w + 1})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT watermark FROM source_cursors")).scalar() == 30
