"""Acting from Slack and the attention budget (issue 17): an account's CSM (accounts.csm_email, for
"Assign to CSM") and a Slack user's timezone (slack_users.tz, for quiet hours in the user's own time).

Revision ID: 0012_attention
Revises: 0011_web_ui_indexes
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0012_attention"
down_revision: str | None = "0011_web_ui_indexes"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    with op.batch_alter_table("accounts") as batch:
        batch.add_column(sa.Column("csm_email", sa.String(), nullable=False, server_default=""))
    with op.batch_alter_table("accounts") as batch:
        batch.alter_column("csm_email", server_default=None)  # like the model: set by every write
    with op.batch_alter_table("slack_users") as batch:
        batch.add_column(sa.Column("tz", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("slack_users") as batch:
        batch.drop_column("tz")
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("csm_email")
