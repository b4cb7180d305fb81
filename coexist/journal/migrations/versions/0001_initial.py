"""Initial journal schema: runs, items, steps, step_history, passes, folder_state, events,
settings.

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Revisions spell their tables out instead of importing `coexist.journal.schema`: a revision is
a fixed historical fact, while the schema module moves on. Constraint and index names follow
`schema.NAMING_CONVENTION`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _json(name: str) -> sa.Column:
    return sa.Column(name, sa.JSON(none_as_null=True), nullable=True)


def _step_result_columns() -> list[sa.Column]:
    """Columns `steps` and `step_history` share: what one attempt intended and found."""
    return [
        _json("intent"),
        _json("before"),
        _json("after"),
        _json("detail"),
        sa.Column("changed", sa.Boolean(), nullable=False),
        sa.Column("error_class", sa.String(200), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("retry_after", sa.Float(), nullable=True),
        sa.Column("next_step", sa.Text(), nullable=True),
    ]


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("command", sa.String(200), nullable=False),
        _json("args"),
        _ts("started_at", nullable=False),
        _ts("finished_at"),
        sa.Column("status", sa.String(20), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_runs"),
    )
    op.create_table(
        "items",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(10), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("name", sa.String(400), nullable=True),
        sa.Column("source_address", sa.String(400), nullable=True),
        sa.Column("target_id", sa.String(200), nullable=True),
        sa.Column("target_address", sa.String(400), nullable=True),
        sa.Column("batch", sa.String(200), nullable=True),
        sa.Column("phase", sa.String(40), nullable=True),
        sa.Column("state", sa.String(40), nullable=True),
        _json("detail"),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_items"),
        sa.UniqueConstraint("kind", "key", name="uq_items_kind_key"),
    )
    op.create_index("ix_items_batch", "items", ["batch"])
    op.create_table(
        "steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(400), nullable=False),
        sa.Column("item_kind", sa.String(10), nullable=True),
        sa.Column("item_key", sa.String(200), nullable=True),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(200), nullable=False),
        *_step_result_columns(),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _ts("started_at", nullable=False),
        _ts("finished_at"),
        sa.PrimaryKeyConstraint("id", name="pk_steps"),
        sa.UniqueConstraint("key", name="uq_steps_key"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_steps_run_id_runs"),
    )
    op.create_index("ix_steps_item_key", "steps", ["item_key"])
    op.create_index("ix_steps_status", "steps", ["status"])
    op.create_table(
        "step_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("step_id", sa.Integer(), nullable=False),
        sa.Column("step_key", sa.String(400), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        *_step_result_columns(),
        _ts("at", nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_step_history"),
        sa.ForeignKeyConstraint(["step_id"], ["steps.id"], name="fk_step_history_step_id_steps"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_step_history_run_id_runs"),
    )
    op.create_index("ix_step_history_step_id", "step_history", ["step_id"])
    op.create_table(
        "passes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("item_key", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        _json("window"),
        sa.Column("status", sa.String(20), nullable=False),
        _json("counts"),
        _ts("started_at", nullable=False),
        _ts("finished_at"),
        sa.PrimaryKeyConstraint("id", name="pk_passes"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_passes_run_id_runs"),
    )
    op.create_index("ix_passes_item_key", "passes", ["item_key"])
    op.create_table(
        "folder_state",
        sa.Column("item_key", sa.String(200), nullable=False),
        sa.Column("folder_id", sa.String(400), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("token", sa.Text(), nullable=True),
        sa.Column("watermark", sa.Text(), nullable=True),
        _ts("updated_at", nullable=False),
        sa.PrimaryKeyConstraint("item_key", "folder_id", "kind", name="pk_folder_state"),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), nullable=False),
        _ts("ts", nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("level", sa.String(10), nullable=False),
        sa.Column("item_key", sa.String(200), nullable=True),
        sa.Column("step_key", sa.String(400), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        _json("data"),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name="fk_events_run_id_runs"),
    )
    op.create_index("ix_events_run_id", "events", ["run_id"])
    op.create_index("ix_events_item_key", "events", ["item_key"])
    op.create_table(
        "settings",
        sa.Column("key", sa.String(200), nullable=False),
        _json("value"),
        sa.PrimaryKeyConstraint("key", name="pk_settings"),
    )


def downgrade() -> None:
    for table in (
        "settings",
        "events",
        "folder_state",
        "passes",
        "step_history",
        "steps",
        "items",
        "runs",
    ):
        op.drop_table(table)
