"""Account facts from Salesforce: the second owner, ARR and renewal on accounts; the pulled CRM
facts and the incremental pull's cursor (issue 17).

Revision ID: 0012_crm_account_facts
Revises: 0011_web_ui_indexes
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012_crm_account_facts"
down_revision: str | None = "0011_web_ui_indexes"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as b:
        b.add_column(sa.Column("csm_email", sa.String(), nullable=False, server_default=""))
        b.add_column(sa.Column("arr", sa.Float(), nullable=True))
        b.add_column(sa.Column("renewal_at", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("accounts") as b:  # the default only filled the existing rows
        b.alter_column("csm_email", server_default=None)
    op.create_table(
        "crm_account_facts",
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("sf_id", sa.String(), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("modstamp", sa.String(), nullable=False),
        sa.Column("pulled_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_table(
        "crm_pull_cursor",
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("modstamp", sa.String(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("crm_pull_cursor")
    op.drop_table("crm_account_facts")
    with op.batch_alter_table("accounts") as b:
        b.drop_column("renewal_at")
        b.drop_column("arr")
        b.drop_column("csm_email")
