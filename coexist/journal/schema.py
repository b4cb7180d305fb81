"""The journal's tables (SQLAlchemy Core, one `MetaData`).

The journal is what lets any command stop at any moment and run again. Tables:

``runs``          one row per command invocation: command, args, started/finished, status
                  ('running' until finished; a crash leaves 'running' forever, which is honest).
``items``         the things being migrated: ``kind`` 'user' | 'group', ``key`` the stable source
                  object id (unique per kind), names/addresses on both sides, ``batch``,
                  ``phase`` (discover/provision/prestage/cutover/done), ``state``, ``detail`` JSON.
``steps``         the latest state of each step, by its stable ``key``
                  (e.g. ``provision.mailuser:<source id>``): ``name`` (the step type), the item it
                  belongs to, ``intent``, ``before`` / ``after`` (rollback uses ``before``),
                  ``changed``, ``status`` ('started' | 'ok' | 'failed' | 'planned' | 'waiting'),
                  ``attempts`` (every start counts), the error, ``retry_after`` (seconds, as the
                  service said) and ``next_step`` (the command the operator can run next).
``step_history``  append-only copy of every step transition, written in the same transaction as
                  the ``steps`` change, so a re-run never loses what happened before.
``passes``        one row per data pass of one mailbox: ``kind`` 'prestage' | 'cutover' |
                  'trial', the date ``window``, status and ``counts``.
``folder_state``  per (item, folder, kind) checkpoint: delta ``token`` (Graph deltaLink) or
                  ``watermark`` (IMAP UID / date). Saved only *after* the items it covers are
                  journaled, so a checkpoint is never ahead of the data.
``events``        the run log: level, message, item/step it concerns, ``data`` JSON.
``settings``      project-wide locks decided on the first run (e.g. the license SKU).
``writers``       the commands writing to the project right now: command, PID, host, start,
                  run, and the ``token`` their liveness is checked by (`claims`).
``claims``        what each writer holds: ``scope`` ('project', 'groups' or 'user:<key>',
                  unique) and a ``label`` people read. Transient, like ``writers``: rows of a
                  writer that died are removed by the next writer (`coexist.journal.claims`).

Conventions: ids are integer surrogates used only inside the journal; everything the product
reasons about is addressed by natural keys (``kind``/``key``, step ``key``). Timestamps are
timezone-aware UTC (`UTCDateTime`). JSON columns store SQL NULL for ``None``. Allowed values of
the enumerated text columns are checked in Python (the constants below), not by CHECK
constraints, so adding a status never needs a table rebuild on SQLite.

Changing a table means a new Alembic revision under ``migrations/versions`` (the test suite
compares this module with the migrated database).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

# "organisation": one side's organisation, for steps made once per side (grant-access's
# ApplicationImpersonation role assignment); its key is the side ("source" / "target").
ITEM_KINDS = frozenset({"user", "group", "organisation"})
STEP_STATUSES = frozenset({"started", "ok", "failed", "planned", "waiting"})
FINISHED_STEP_STATUSES = STEP_STATUSES - {"started"}
PASS_KINDS = frozenset({"prestage", "cutover", "trial"})

# Deterministic constraint names: Alembic needs names to alter constraints later (and SQLite
# batch migrations need them to rebuild tables).
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A timestamp that goes in and comes out timezone-aware UTC.

    SQLite has no time zone type (it stores the text without offset), PostgreSQL returns
    ``timestamptz`` in the session time zone: both are normalised to UTC here.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the journal stores aware UTC times")
        utc = value.astimezone(UTC)
        # SQLite: store naive UTC text so values sort and compare as text.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def _json() -> sa.JSON:
    # none_as_null: Python None is SQL NULL, not the JSON literal 'null'.
    return sa.JSON(none_as_null=True)


def utcnow() -> datetime:
    return datetime.now(UTC)


metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("command", sa.String(200), nullable=False),
    sa.Column("args", _json()),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
    sa.Column("status", sa.String(20), nullable=False),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(10), nullable=False),
    sa.Column("key", sa.String(200), nullable=False),
    sa.Column("name", sa.String(400)),
    sa.Column("source_address", sa.String(400)),
    sa.Column("target_id", sa.String(200)),
    sa.Column("target_address", sa.String(400)),
    sa.Column("batch", sa.String(200), index=True),
    sa.Column("phase", sa.String(40)),
    sa.Column("state", sa.String(40)),
    sa.Column("detail", _json()),
    sa.Column("created_at", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("kind", "key"),
)

# Columns of `items` a caller may set (everything but the identity and timestamps).
ITEM_FIELDS = frozenset(
    {
        "name",
        "source_address",
        "target_id",
        "target_address",
        "batch",
        "phase",
        "state",
        "detail",
    }
)

steps = sa.Table(
    "steps",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(400), nullable=False, unique=True),
    sa.Column("item_kind", sa.String(10)),
    sa.Column("item_key", sa.String(200), index=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id")),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("intent", _json()),
    sa.Column("before", _json()),
    sa.Column("after", _json()),
    sa.Column("detail", _json()),
    sa.Column("changed", sa.Boolean, nullable=False, default=False),
    sa.Column("status", sa.String(20), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error_class", sa.String(200)),
    sa.Column("error_message", sa.Text),
    sa.Column("retry_after", sa.Float),
    sa.Column("next_step", sa.Text),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
)

step_history = sa.Table(
    "step_history",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("step_id", sa.Integer, sa.ForeignKey("steps.id"), nullable=False, index=True),
    sa.Column("step_key", sa.String(400), nullable=False),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id")),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("intent", _json()),
    sa.Column("before", _json()),
    sa.Column("after", _json()),
    sa.Column("detail", _json()),
    sa.Column("changed", sa.Boolean, nullable=False, default=False),
    sa.Column("error_class", sa.String(200)),
    sa.Column("error_message", sa.Text),
    sa.Column("retry_after", sa.Float),
    sa.Column("next_step", sa.Text),
    sa.Column("at", UTCDateTime, nullable=False),
)

passes = sa.Table(
    "passes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id")),
    sa.Column("item_key", sa.String(200), nullable=False, index=True),
    sa.Column("kind", sa.String(20), nullable=False),
    sa.Column("window", _json()),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("counts", _json()),
    sa.Column("started_at", UTCDateTime, nullable=False),
    sa.Column("finished_at", UTCDateTime),
)

folder_state = sa.Table(
    "folder_state",
    metadata,
    sa.Column("item_key", sa.String(200), primary_key=True),
    sa.Column("folder_id", sa.String(400), primary_key=True),
    sa.Column("kind", sa.String(40), primary_key=True),
    sa.Column("token", sa.Text),
    sa.Column("watermark", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

# One row per source item of a mailbox the movers have seen (`migrate.sync`). Status:
# pending (seen, not copied yet: outside the pass window or not reached), importing (an import
# was sent; a crash here is resolved from the target folder), copied, changed (copied; the
# source changed since), gone (copied; no longer at the source), skipped (never copied: reason).
ITEM_MAP_STATUSES = frozenset({"pending", "importing", "copied", "changed", "gone", "skipped"})

item_map = sa.Table(
    "item_map",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("item_key", sa.String(200), nullable=False),
    sa.Column("source_folder_id", sa.String(400), nullable=False),
    sa.Column("source_item_id", sa.String(400), nullable=False),
    sa.Column("source_change_key", sa.String(200)),
    sa.Column("source_created", sa.String(40)),
    sa.Column("target_folder_id", sa.String(400)),
    sa.Column("target_item_id", sa.String(400)),
    sa.Column("target_change_key", sa.String(200)),
    sa.Column("size", sa.BigInteger),
    sa.Column("kind", sa.String(40)),
    sa.Column("subject", sa.Text),
    # What identifies the item across folders, export/import and copies (migration 0003):
    # "mid:<Message-ID>" (both movers: a message keeps it when it moves, and the copy carries
    # it) or "sk:<PR_SEARCH_KEY>" (`migrate.stores.graph_io.identity_of`).
    sa.Column("source_identity", sa.Text),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("updated_at", UTCDateTime, nullable=False),
    sa.UniqueConstraint("item_key", "source_item_id"),
    sa.Index("ix_item_map_item_key_source_folder_id", "item_key", "source_folder_id"),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("ts", UTCDateTime, nullable=False),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), index=True),
    sa.Column("level", sa.String(10), nullable=False),
    sa.Column("item_key", sa.String(200), index=True),
    sa.Column("step_key", sa.String(400)),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("data", _json()),
)

settings = sa.Table(
    "settings",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("value", _json()),
)

writers = sa.Table(
    "writers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("token", sa.String(64), nullable=False, unique=True),
    sa.Column("command", sa.String(200), nullable=False),
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id")),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("host", sa.String(255), nullable=False),
    sa.Column("started_at", UTCDateTime, nullable=False),
)

claims = sa.Table(
    "claims",
    metadata,
    sa.Column("scope", sa.String(400), primary_key=True),
    sa.Column("writer_id", sa.Integer, sa.ForeignKey("writers.id"), nullable=False, index=True),
    sa.Column("label", sa.String(400)),
    sa.Column("claimed_at", UTCDateTime, nullable=False),
)

# The tables that hold the *state* a re-run must leave unchanged, and the append-only logs
# every run adds to (see `Journal.snapshot`).
STATE_TABLES: tuple[sa.Table, ...] = (items, steps, folder_state, item_map, settings)
LOG_TABLES: tuple[sa.Table, ...] = (runs, passes, step_history, events)

# Columns that differ between two identical runs: surrogate ids, run ids, clocks, counters.
VOLATILE_COLUMNS = frozenset(
    {
        "id",
        "run_id",
        "step_id",
        "attempts",
        "attempt",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "ts",
        "at",
    }
)


def row_dict(row: Any) -> dict[str, Any]:
    """A result row as a plain dict."""
    return dict(row._mapping)
