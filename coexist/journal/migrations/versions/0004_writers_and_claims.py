"""writers and claims: who is writing to the project right now, and what each one holds.

One writing command at a time per project (or, later, per user): a command registers as a
writer and claims scopes before its first write; the next command is refused while they are
held. See `coexist.journal.claims`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "writers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(64), nullable=False),
        sa.Column("command", sa.String(200), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_writers"),
        sa.UniqueConstraint("token", name="uq_writers_token"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_writers_run_id_runs"),
    )
    op.create_table(
        "claims",
        sa.Column("scope", sa.String(400), nullable=False),
        sa.Column("writer_id", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(400), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", name="pk_claims"),
        sa.ForeignKeyConstraint(["writer_id"], ["writers.id"], name="fk_claims_writer_id_writers"),
    )
    op.create_index("ix_claims_writer_id", "claims", ["writer_id"])


def downgrade() -> None:
    op.drop_index("ix_claims_writer_id", table_name="claims")
    op.drop_table("claims")
    op.drop_table("writers")
