"""Alembic environment for usagebot, configured programmatically (no alembic.ini).

`storage.db.alembic_config()` builds the Config; the caller passes an open
SQLAlchemy Connection in `config.attributes["connection"]` (online mode) or
a URL in the "sqlalchemy.url" option (offline SQL generation).
"""

from __future__ import annotations

from alembic import context

from storage.models import metadata

config = context.config


def run_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError(
            "storage/migrations/env.py: no connection given; run migrations through storage.db.migrate(engine)"
        )
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
