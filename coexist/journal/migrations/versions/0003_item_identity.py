"""item_map.source_identity: what identifies a source item across export/import.

The Internet Message-ID (PR_INTERNET_MESSAGE_ID) or, for items without one, the item's
PR_SEARCH_KEY, read at scan time: crash recovery and move detection match copies by it
instead of by createdDateTime and size (which an import re-stamps).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
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
    op.add_column("item_map", sa.Column("source_identity", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("item_map") as batch:
        batch.drop_column("source_identity")
