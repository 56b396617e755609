"""Usage tiles: a cache of aggregated usage blocks kept in step with writes (storage/tiles.py).

Revision ID: 0007_usage_tiles
Revises: 0006_episode_account_index
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0007_usage_tiles"
down_revision: str | None = "0006_episode_account_index"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    # Starts empty: tiles are built by the first read that needs them.
    op.create_table(
        "usage_tiles",
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("step", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("tile", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("grp", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("n_rows", sa.Integer(), nullable=False),
        sa.Column("sums", sa.LargeBinary(), nullable=False),
        sa.Column("has", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "step", "tile", "grp"),
    )
    if op.get_bind().dialect.name == "postgresql":
        # tiles are read and rewritten whole: no TOAST compression (pglz costs more than it saves)
        op.execute("ALTER TABLE usage_tiles ALTER COLUMN sums SET STORAGE EXTERNAL, "
                   "ALTER COLUMN has SET STORAGE EXTERNAL")
    op.create_table(
        "usage_tile_sets",
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("step", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("tile", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("read_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "step", "tile"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "usage_tile_rows",
        sa.Column("account_id", sa.String(), nullable=False),
        sa.Column("ord", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
        sa.UniqueConstraint("ord", name="uq_usage_tile_rows_ord"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "usage_tile_dirty",
        sa.Column("metric", sa.String(), nullable=False),
        sa.Column("bucket_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "bucket_start"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("usage_tile_dirty")
    op.drop_table("usage_tile_rows")
    op.drop_table("usage_tile_sets")
    op.drop_table("usage_tiles")
