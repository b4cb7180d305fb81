"""item_map: source item -> target item per mailbox, for delta passes without duplicates.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "item_map",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_key", sa.String(200), nullable=False),
        sa.Column("source_folder_id", sa.String(400), nullable=False),
        sa.Column("source_item_id", sa.String(400), nullable=False),
        sa.Column("source_change_key", sa.String(200), nullable=True),
        sa.Column("source_created", sa.String(40), nullable=True),
        sa.Column("target_folder_id", sa.String(400), nullable=True),
        sa.Column("target_item_id", sa.String(400), nullable=True),
        sa.Column("target_change_key", sa.String(200), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("kind", sa.String(40), nullable=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_item_map"),
        sa.UniqueConstraint(
            "item_key", "source_item_id", name="uq_item_map_item_key_source_item_id"
        ),
    )
    op.create_index(
        "ix_item_map_item_key_source_folder_id", "item_map", ["item_key", "source_folder_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_item_map_item_key_source_folder_id", table_name="item_map")
    op.drop_table("item_map")
