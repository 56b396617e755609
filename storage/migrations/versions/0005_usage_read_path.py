"""Faster usage reads: covering index, first-seen and coverage tables (backfilled).

Revision ID: 0005_usage_read_path
Revises: 0004_service
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005_usage_read_path"
down_revision: str | None = "0004_service"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.drop_index("ix_usage_points_metric_bucket", table_name="usage_points")
    op.create_index("ix_usage_points_metric_bucket_cover", "usage_points",
                    ["metric", "bucket_start", "account_id", "value"], unique=False)
    op.create_table(
        "usage_first_seen",
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("first_bucket", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "account_id"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "usage_coverage",
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("metric", "bucket_start"),
        sqlite_with_rowid=False,
    )
    op.execute("INSERT INTO usage_first_seen (metric, account_id, first_bucket) "
               "SELECT metric, account_id, MIN(bucket_start) FROM usage_points GROUP BY metric, account_id")
    op.execute("INSERT INTO usage_coverage (metric, bucket_start) "
               "SELECT DISTINCT metric, bucket_start FROM usage_points")


def downgrade() -> None:
    op.drop_table("usage_coverage")
    op.drop_table("usage_first_seen")
    op.drop_index("ix_usage_points_metric_bucket_cover", table_name="usage_points")
    op.create_index("ix_usage_points_metric_bucket", "usage_points", ["metric", "bucket_start"], unique=False)
