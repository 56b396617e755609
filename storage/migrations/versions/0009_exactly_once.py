"""Exactly-once: fenced outbox and Slack step claims, one open episode per key, idempotent CRM Tasks,
event-id pruning by event time.

- outbox, slack_delivery_steps: claim_token + lease_until (database clock) (+ claimed_by): a row or a
  post is only ever held by one live deliverer.
- alert_episodes: a unique index on the key of open (pending/firing) episodes. Twins left by two
  concurrent evaluations before this revision are resolved first: every open episode that is not the
  newest episode of its key is resolved (with an audit event saying why), as the lifecycle no longer
  sees it anyway.
- crm_tasks: task_key, the unique key written into each Salesforce Task and looked up on recovery.
- ingested_events: event_at (the event's own time); ids are pruned by it. Rows from before this
  revision get received_at + 1 day (events were accepted at most max_future ahead of their receipt).
- source_status: events_forgotten_before (the pruning horizon: older events are refused).

Revision ID: 0009_exactly_once
Revises: 0008_episode_recovery
Create Date: 2026-11-26
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision: str = "0009_exactly_once"
down_revision: str | None = "0008_episode_recovery"
branch_labels: str | None = None
depends_on: str | None = None

OPEN = "status IN ('pending', 'firing')"
LEGACY_EVENT_MARGIN = 86_400


def _legacy_task_key(rule_id: str, account_id: str, metric: str, discriminator: str, started_at: int) -> str:
    """The key storage.crm.task_key gives (frozen here: a migration must not change with the code)."""
    ident = "\x1f".join([rule_id, account_id, metric, discriminator or "", str(int(started_at))])
    return "usagebot-" + hashlib.sha256(ident.encode()).hexdigest()[:24]


BATCH = 1000  # crm_tasks rows read per query (keyset pages by episode_id: never the whole table at once)


def _backfill_task_keys(conn: sa.Connection) -> None:
    """Every crm_tasks row's task_key from its episode's identity, page by page."""
    last = -1
    while True:
        rows = conn.execute(sa.text(
            "SELECT t.episode_id, e.rule_id, e.account_id, e.metric, e.discriminator, e.started_at "
            "FROM crm_tasks t JOIN alert_episodes e ON e.id = t.episode_id WHERE t.episode_id > :last "
            "ORDER BY t.episode_id LIMIT :n"), {"last": last, "n": BATCH}).all()
        for r in rows:
            conn.execute(sa.text("UPDATE crm_tasks SET task_key = :k WHERE episode_id = :i"),
                         {"k": _legacy_task_key(r[1], r[2], r[3], r[4], r[5]), "i": r[0]})
        if len(rows) < BATCH:
            return
        last = rows[-1][0]


def _resolve_twins() -> None:
    not_latest = (f"{OPEN} AND id NOT IN (SELECT MAX(id) FROM alert_episodes "
                  "GROUP BY rule_id, account_id, metric, discriminator)")
    op.execute(
        "INSERT INTO alert_events (episode_id, event, at, notify, reason, actor, explanation) "
        "SELECT id, 'resolved', COALESCE(last_seen_at, fired_at, started_at), false, "
        "'a twin of a newer episode of the same key (two concurrent evaluations): resolved by the upgrade', "
        f"'migration 0008', '{{}}' FROM alert_episodes WHERE {not_latest}")
    op.execute("UPDATE alert_episodes SET status = 'resolved', "
               f"resolved_at = COALESCE(last_seen_at, fired_at, started_at) WHERE {not_latest}")


def upgrade() -> None:
    for table in ("outbox", "slack_delivery_steps"):
        with op.batch_alter_table(table) as b:
            b.add_column(sa.Column("claim_token", sa.String(), nullable=True))
            b.add_column(sa.Column("lease_until", sa.BigInteger(), nullable=True))
            if table == "outbox":
                b.add_column(sa.Column("claimed_by", sa.String(), nullable=True))

    _resolve_twins()
    op.create_index("uq_alert_episodes_open", "alert_episodes", ["rule_id", "account_id", "metric", "discriminator"],
                    unique=True, postgresql_where=sa.text(OPEN), sqlite_where=sa.text(OPEN))

    with op.batch_alter_table("crm_tasks") as b:
        b.add_column(sa.Column("task_key", sa.String(), nullable=True))
    if not op.get_context().as_sql:  # offline SQL: no rows to read (a fresh database has none)
        _backfill_task_keys(op.get_bind())
    with op.batch_alter_table("crm_tasks") as b:
        b.create_unique_constraint("uq_crm_tasks_task_key", ["task_key"])

    with op.batch_alter_table("ingested_events") as b:
        b.add_column(sa.Column("event_at", sa.BigInteger(), nullable=True))
    op.execute(f"UPDATE ingested_events SET event_at = received_at + {LEGACY_EVENT_MARGIN}")
    with op.batch_alter_table("ingested_events") as b:
        b.alter_column("event_at", existing_type=sa.BigInteger(), nullable=False)
        b.drop_index("ix_ingested_events_received")
        b.create_index("ix_ingested_events_event_at", ["event_at"])
    with op.batch_alter_table("source_status") as b:
        b.add_column(sa.Column("events_forgotten_before", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("source_status") as b:
        b.drop_column("events_forgotten_before")
    with op.batch_alter_table("ingested_events") as b:
        b.drop_index("ix_ingested_events_event_at")
        b.create_index("ix_ingested_events_received", ["received_at"])
        b.drop_column("event_at")
    with op.batch_alter_table("crm_tasks") as b:
        b.drop_constraint("uq_crm_tasks_task_key", type_="unique")
        b.drop_column("task_key")
    op.drop_index("uq_alert_episodes_open", table_name="alert_episodes")
    for table in ("slack_delivery_steps", "outbox"):
        with op.batch_alter_table(table) as b:
            if table == "outbox":
                b.drop_column("claimed_by")
            b.drop_column("lease_until")
            b.drop_column("claim_token")
