"""Acting from Slack and the attention budget (issue 17): a Slack user's timezone (slack_users.tz, for
quiet hours in the user's own time). The account's CSM (accounts.csm_email) came with 0012.

Revision ID: 0013_attention
Revises: 0012_crm_account_facts
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0013_attention"
down_revision: str | None = "0012_crm_account_facts"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("slack_users") as batch:
        batch.add_column(sa.Column("tz", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slack_users") as batch:
        batch.drop_column("tz")
