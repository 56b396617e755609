"""Schema migrations: idempotent, and the models match the migrations exactly."""

from __future__ import annotations

import io

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine

from storage.db import alembic_config, current_revision, head_revision, make_engine, migrate
from storage.models import TABLES, metadata


def test_migrate_is_idempotent(engine: Engine) -> None:
    migrate(engine)
    migrate(engine)
    assert current_revision(engine) == head_revision() is not None
    names = set(sa.inspect(engine).get_table_names())
    assert {t.name for t in TABLES} <= names
    assert "alembic_version" in names


def test_models_match_migrations(engine: Engine) -> None:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
        diff = compare_metadata(ctx, metadata)
    assert diff == []


def test_fresh_database_migrates_from_url(db_url: str) -> None:
    eng = make_engine(db_url)
    try:
        assert current_revision(eng) is None
        migrate(eng)
        assert current_revision(eng) == head_revision()
    finally:
        eng.dispose()


def test_downgrade_to_base_and_back(engine: Engine) -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert not {t.name for t in TABLES} & set(sa.inspect(engine).get_table_names())
    migrate(engine)
    assert {t.name for t in TABLES} <= set(sa.inspect(engine).get_table_names())


def test_offline_sql_names_every_table() -> None:
    cfg = alembic_config("postgresql://bot:secret@db/usage")
    out = io.StringIO()
    cfg.output_buffer = out
    command.upgrade(cfg, "head", sql=True)
    script = out.getvalue()
    for t in TABLES:
        assert f"CREATE TABLE {t.name}" in script
