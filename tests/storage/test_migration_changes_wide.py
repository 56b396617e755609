"""Migration 0017: usage_changes.account_id nullable (a write of new buckets records one row per
(metric, bucket)); its downgrade expands such rows into one row per stored account, so an older
version's scheduler still re-evaluates them. SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from storage.db import alembic_config, migrate
from storage.usage import upsert_usage
from tests.storage.test_usage import T0, Rec

DAY = 86_400


def test_the_downgrade_names_every_account_of_a_wide_change(engine: Engine) -> None:
    migrate(engine)
    upsert_usage(engine, [Rec(f"a{i}", "calls", T0, 1.0) for i in range(5)])  # new buckets: one wide row
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT account_id FROM usage_changes")).scalars().all() == [None]
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0016_crm_parked")
    with engine.connect() as conn:
        got = conn.execute(sa.text("SELECT account_id, metric, bucket_start, last_bucket FROM usage_changes "
                                   "ORDER BY account_id")).all()
    assert [tuple(r) for r in got] == [(f"a{i}", "calls", T0, T0) for i in range(5)]
    migrate(engine)  # and up again
