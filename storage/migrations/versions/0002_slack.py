"""Slack: user lookup cache, episode messages (threads), delivery steps, feedback, digests, account snoozes.

Revision ID: 0002_slack
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002_slack"
down_revision: str | None = "0001_initial"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_table(
        "slack_users",
        sa.Column("email", sa.String(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=True),
        sa.Column("dm_channel", sa.String(), nullable=True),
        sa.Column("looked_up_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("email"),
    )
    op.create_index("ix_slack_users_user_id", "slack_users", ["user_id"])
    op.create_table(
        "slack_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("episode_id", sa.Integer(), nullable=False),
        sa.Column("destination", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("ts", sa.String(), nullable=False),
        sa.Column("alert", sa.JSON(), nullable=False),
        sa.Column("last_event", sa.String(), nullable=False),
        sa.Column("last_event_at", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["episode_id"], ["alert_episodes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("episode_id", "destination", name="uq_slack_messages_episode_destination"),
    )
    op.create_index("ix_slack_messages_channel_ts", "slack_messages", ["channel", "ts"])
    op.create_table(
        "slack_delivery_steps",
        sa.Column("step", sa.String(), nullable=False),
        sa.Column("channel", sa.String(), nullable=False),
        sa.Column("thread_ts", sa.String(), nullable=True),
        sa.Column("ts", sa.String(), nullable=True),
        sa.Column("attempted_at", sa.BigInteger(), nullable=False),
        sa.Column("done_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("step"),
    )
    op.create_table(
        "slack_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.String(), nullable=False),
        sa.Column("episode_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.String(), nullable=False),
        sa.Column("verdict", sa.String(), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["episode_id"], ["alert_episodes.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("episode_id", "user_id", "verdict", name="uq_slack_feedback_episode_user_verdict"),
    )
    op.create_index("ix_slack_feedback_rule", "slack_feedback", ["rule_id", "at"])
    op.create_table(
        "slack_digest_items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_key", sa.String(), nullable=False),
        sa.Column("owner_email", sa.String(), nullable=False),
        sa.Column("alert", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("digest_key", sa.String(), nullable=True),
        sa.Column("sent_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("item_key", name="uq_slack_digest_items_item_key"),
    )
    op.create_index("ix_slack_digest_items_owner", "slack_digest_items", ["owner_email", "sent_at"])
    op.create_table(
        "slack_account_snoozes",
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("until", sa.BigInteger(), nullable=False),
        sa.Column("snoozed_by", sa.String(), nullable=False),
        sa.Column("snoozed_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )


def downgrade() -> None:
    op.drop_table("slack_account_snoozes")
    op.drop_index("ix_slack_digest_items_owner", table_name="slack_digest_items")
    op.drop_table("slack_digest_items")
    op.drop_index("ix_slack_feedback_rule", table_name="slack_feedback")
    op.drop_table("slack_feedback")
    op.drop_table("slack_delivery_steps")
    op.drop_index("ix_slack_messages_channel_ts", table_name="slack_messages")
    op.drop_table("slack_messages")
    op.drop_index("ix_slack_users_user_id", table_name="slack_users")
    op.drop_table("slack_users")
