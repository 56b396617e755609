"""usage_points keyed bucket-major (issue 15): primary key (metric, bucket_start, account_id), no
other index. A new bucket for every account is then an append at the end of the table's one B-tree
instead of one random leaf page per row (the old key began with account_id); the covering index
(metric, bucket_start, account_id, value) had the same order and is now the table itself.

The points are copied in the new key order into a new table, which then replaces the old one, in the
migration's transaction (a kill mid-way leaves the old table as it was). Takes about as long as a
first load of the same rows (docs/operations.md, "Usage storage layout").

Revision ID: 0014_usage_bucket_major
Revises: 0013_attention
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0014_usage_bucket_major"
down_revision: str | None = "0013_attention"
branch_labels: str | None = None
depends_on: str | None = None

_COLUMNS = "account_id, metric, bucket_start, value"


def _columns() -> list[sa.Column]:
    return [
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
    ]


def _rebuild(key: list[str], name: str | None) -> None:
    """Copy usage_points into a new table with primary key `key` (rows in key order), then swap."""
    op.create_table("usage_points_new", *_columns(), sa.PrimaryKeyConstraint(*key, name=name),
                    sqlite_with_rowid=False)
    op.execute(f"INSERT INTO usage_points_new ({_COLUMNS}) SELECT {_COLUMNS} FROM usage_points "
               f"ORDER BY {', '.join(key)}")
    op.drop_table("usage_points")
    op.rename_table("usage_points_new", "usage_points")


def upgrade() -> None:
    op.drop_index("ix_usage_points_metric_bucket_cover", table_name="usage_points")
    _rebuild(["metric", "bucket_start", "account_id"], "pk_usage_points")


def downgrade() -> None:
    # the PostgreSQL name of 0001's primary key (PostgreSQL names it after the table it was created on)
    _rebuild(["account_id", "metric", "bucket_start"], "usage_points_pkey")
    op.create_index("ix_usage_points_metric_bucket_cover", "usage_points",
                    ["metric", "bucket_start", "account_id", "value"])
