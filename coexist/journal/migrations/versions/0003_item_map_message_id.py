"""item_map.internet_message_id: a message's identity across folders and copies.

A source message keeps its Internet Message-ID when it moves (its Graph id does not), and the
fallback mover sets it on the copy it creates: moves at the source and copies a killed pass
left behind are recognised by it instead of by delivery time, subject or size.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("item_map", sa.Column("internet_message_id", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("item_map", "internet_message_id")
