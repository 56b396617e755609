"""Alerts people can trust (issue 11): episodes keep the usual level frozen when they opened and
the resolve hold; first evaluations are recorded; outbox rows are unique per notifier (kind) and key; usage changes
keep the last bucket written, so a backfill of months is re-evaluated.

Revision ID: 0008_episode_recovery
Revises: 0007_usage_tiles
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0008_episode_recovery"
down_revision: str | None = "0007_usage_tiles"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("alert_episodes") as batch:
        batch.add_column(sa.Column("reference", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("clear_count", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("recovering_since", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("cleared_at", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("held", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("alert_episodes") as batch:
        batch.alter_column("clear_count", server_default=None)
        batch.alter_column("held", server_default=None)
    op.create_table(
        "first_evaluations",
        sa.Column("scope", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("first_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", "subject"),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("outbox") as batch:
        batch.drop_constraint("uq_outbox_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_outbox_kind_key", ["kind", "idempotency_key"])
    op.add_column("usage_changes", sa.Column("last_bucket", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_changes") as batch:
        batch.drop_column("last_bucket")
    with op.batch_alter_table("outbox") as batch:
        batch.drop_constraint("uq_outbox_kind_key", type_="unique")
        batch.create_unique_constraint("uq_outbox_idempotency_key", ["idempotency_key"])
    op.drop_table("first_evaluations")
    with op.batch_alter_table("alert_episodes") as batch:
        batch.drop_column("held")
        batch.drop_column("cleared_at")
        batch.drop_column("recovering_since")
        batch.drop_column("clear_count")
        batch.drop_column("reference")
