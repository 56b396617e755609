"""Index alert episodes by account: an incremental cycle loads only its accounts' states.

Revision ID: 0006_episode_account_index
Revises: 0005_usage_read_path
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision: str = "0006_episode_account_index"
down_revision: str | None = "0005_usage_read_path"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index("ix_alert_episodes_account", "alert_episodes", ["account_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_alert_episodes_account", table_name="alert_episodes")
