"""Replay protection for signed Slack requests: the requests already handled (storage/slack.py).

Revision ID: 0010_slack_requests_seen
Revises: 0009_exactly_once
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0010_slack_requests_seen"
down_revision: str | None = "0009_exactly_once"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "slack_requests_seen",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("request_ts", sa.BigInteger(), nullable=False),
        sa.Column("seen_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_slack_requests_seen_request_ts", "slack_requests_seen", ["request_ts"])


def downgrade() -> None:
    op.drop_index("ix_slack_requests_seen_request_ts", table_name="slack_requests_seen")
    op.drop_table("slack_requests_seen")
