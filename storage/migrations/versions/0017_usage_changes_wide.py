"""usage_changes.account_id nullable: one row per (metric, bucket) for a write of new buckets.

A new day at 100,000 accounts x 4 metrics wrote 400,000 change rows (a fifth of the day's upsert and
half its WAL, docs/benchmarks.md); a write whose buckets are all newer than the stored ones now
writes one row per (metric, bucket) with account_id NULL, read as "every account stored in these
buckets" (storage.changes). The downgrade expands such rows back into one row per account.

Revision ID: 0017_usage_changes_wide
Revises: 0016_crm_parked
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0017_usage_changes_wide"
down_revision: str | None = "0016_crm_parked"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("usage_changes") as batch:
        batch.alter_column("account_id", existing_type=sa.String(), nullable=True)


def downgrade() -> None:
    op.execute("INSERT INTO usage_changes (account_id, metric, bucket_start, last_bucket, source_id, changed_at) "
               "SELECT DISTINCT p.account_id, c.metric, c.bucket_start, c.last_bucket, c.source_id, c.changed_at "
               "FROM usage_changes c JOIN usage_points p ON p.metric = c.metric "
               "AND p.bucket_start BETWEEN c.bucket_start AND c.last_bucket WHERE c.account_id IS NULL")
    op.execute("DELETE FROM usage_changes WHERE account_id IS NULL")
    with op.batch_alter_table("usage_changes") as batch:
        batch.alter_column("account_id", existing_type=sa.String(), nullable=False)
