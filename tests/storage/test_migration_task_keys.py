"""Migration 0009: every crm_tasks row stored before it gets the task key its episode's identity
gives (storage.crm.task_key), read in pages (more rows than one page here); SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine

from storage.crm import task_key
from storage.db import alembic_config, migrate

ROWS = 2_345  # more than two of the migration's pages (BATCH = 1000)
START = 1_762_128_000


def _to(engine: Engine, revision: str) -> None:
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def _zero(kind: sa.types.TypeEngine) -> object:
    return False if isinstance(kind, sa.Boolean) else "" if isinstance(kind, sa.String) else "{}" if isinstance(
        kind, sa.JSON) else 0


def test_every_task_row_gets_its_key_across_pages(engine: Engine) -> None:
    migrate(engine)
    _to(engine, "0008_episode_recovery")
    episodes = [{"id": i + 1, "rule_id": f"drop:{i % 7}", "account_id": f"acct:{i}", "metric": "api_calls",
                 "discriminator": "" if i % 3 else "80", "status": "firing", "started_at": START + i,
                 "consecutive": 1, "once": False, "severity": "warning", "last_explanation": {},
                 "rule_hash": "h"} for i in range(ROWS)]
    table = sa.Table("alert_episodes", sa.MetaData(), autoload_with=engine)  # as of 0008
    for e in episodes:  # the other required columns of that revision: a zero of their type
        e.update({c.name: _zero(c.type) for c in table.columns
                  if not c.nullable and c.server_default is None and c.name not in e})
    with engine.begin() as conn:
        conn.execute(table.insert(), episodes)
        conn.execute(sa.text(
            "INSERT INTO crm_tasks (episode_id, account_id, rule_id, status, subject, attempts, first_attempt_at, "
            "updated_at) VALUES (:id, :account_id, :rule_id, 'created', 's', 1, 0, 0)"), episodes)
    migrate(engine)
    with engine.connect() as conn:
        got = dict(conn.execute(sa.text("SELECT episode_id, task_key FROM crm_tasks")).all())
    assert got == {e["id"]: task_key(e["rule_id"], e["account_id"], e["metric"], e["discriminator"], e["started_at"])
                   for e in episodes}
