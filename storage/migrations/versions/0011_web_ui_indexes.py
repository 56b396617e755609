"""Indexes for the web UI's alert list (newest first, by state or rule) and its owner filter.

Revision ID: 0011_web_ui_indexes
Revises: 0010_slack_requests_seen
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision: str = "0011_web_ui_indexes"
down_revision: str | None = "0010_slack_requests_seen"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_alert_episodes_started", "alert_episodes", ["started_at", "id"], unique=False)
    op.create_index("ix_alert_episodes_status_started", "alert_episodes", ["status", "started_at", "id"],
                    unique=False)
    op.create_index("ix_alert_episodes_rule_started", "alert_episodes", ["rule_id", "started_at", "id"],
                    unique=False)
    op.create_index("ix_accounts_owner_email", "accounts", ["owner_email"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_accounts_owner_email", table_name="accounts")
    op.drop_index("ix_alert_episodes_rule_started", table_name="alert_episodes")
    op.drop_index("ix_alert_episodes_status_started", table_name="alert_episodes")
    op.drop_index("ix_alert_episodes_started", table_name="alert_episodes")
