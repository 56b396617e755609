"""crm_record_state.parked: the field values Salesforce refused for good (or after too many failures),
which the CRM sync no longer sends until they change or `usagebot crm retry` clears them.

Revision ID: 0016_crm_parked
Revises: 0015_notice_keys_json
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0016_crm_parked"
down_revision: str | None = "0015_notice_keys_json"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("crm_record_state") as batch:
        batch.add_column(sa.Column("parked", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("crm_record_state") as batch:
        batch.drop_column("parked")
