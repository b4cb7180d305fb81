"""`Journal`: the run journal's API.

Every public call is its own short transaction. A process killed between two calls leaves the
journal exactly as the last call left it; killed inside one, the transaction never happened.
That is what lets the engine record ``started`` before a step and ``ok`` / ``failed`` after it,
and lets a re-run see a crash as a step still ``started``. Calls that belong together (a
step's outcome and the item facts it produced) can share one transaction: `Journal.together`.

The statements of the per-step path are built once, with bound parameters (``_Sql``), so a
call costs its round trips, not the building and cache-keying of SQLAlchemy constructs; a
step's history row is copied from its ``steps`` row inside the database.

Writes that first read (upserts, step transitions) take the write lock up front (SQLite
``BEGIN IMMEDIATE``; PostgreSQL ``SELECT ... FOR UPDATE`` plus ``ON CONFLICT`` on the unique
key), so two workers recording the same key never lose an update.

Secrets never go in the journal: JSON arguments are checked by `guard.check_json` (raises
``ValueError`` on credential-looking keys or values; callers must redact first), and error
messages and event texts pass through `coexist.errors.redact`.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from coexist.errors import redact
from coexist.journal import db, schema
from coexist.journal.guard import check_json
from coexist.journal.schema import (
    FINISHED_STEP_STATUSES,
    ITEM_FIELDS,
    ITEM_KINDS,
    LOG_TABLES,
    PASS_KINDS,
    STATE_TABLES,
    VOLATILE_COLUMNS,
    row_dict,
    utcnow,
)

if TYPE_CHECKING:
    from coexist.journal.batch import Batch

EVENT_LEVELS = frozenset({"debug", "info", "warning", "error"})
# Columns copied from `steps` into each `step_history` row.
HISTORY_COPY = (
    "intent",
    "before",
    "after",
    "detail",
    "changed",
    "error_class",
    "error_message",
    "retry_after",
    "next_step",
)


class UnknownStep(LookupError):
    """`step_finished` for a key that was never started."""

    def __init__(self, key: str) -> None:
        super().__init__(f"step {key!r} was never started")


class UnknownItem(LookupError):
    """`update_item` for an item that was never recorded."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"no {kind} item {key!r} in the journal")


def _insert(conn: Connection, table: sa.Table) -> Any:
    """INSERT with the dialect's ON CONFLICT support (SQLite >= 3.24 and PostgreSQL share it)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# Columns `step_started` sets afresh on every start (all but the row's identity and counter).
_STEP_RESTART = tuple(c.name for c in schema.steps.c if c.name not in ("id", "key", "attempts"))


def _arg(name: str, type_: Any = None) -> sa.BindParameter[Any]:
    # Prefixed: a bound parameter may not share a name with a column an INSERT/UPDATE sets.
    return sa.bindparam(f"b_{name}", type_=type_)


class _Sql:
    """The statements of the per-step path, built once with bound parameters.

    SQLAlchemy keys its compiled-statement cache by the statement's structure and memoizes
    that key on the statement object, so executing these costs no construct building and
    no cache-key walk (building them per call was most of a step's journal time). INSERT
    and UPDATE statements take the columns they set from the parameters of each call.
    """

    steps, items, history = schema.steps, schema.items, schema.step_history
    step = sa.select(steps).where(steps.c.key == _arg("key"))
    step_locked = step.with_for_update()  # PostgreSQL row lock; SQLite holds the write lock
    item = sa.select(items).where(items.c.kind == _arg("kind"), items.c.key == _arg("key"))
    item_locked = item.with_for_update()
    set_item = items.update().where(items.c.id == _arg("id"))
    finish_step = steps.update().where(steps.c.key == _arg("key")).returning(*steps.c)
    # One transition of a step into its history, copied by the database from the step row
    # the same transaction just wrote (no read of the row back into Python).
    copy_history = history.insert().from_select(
        ["step_id", "step_key", "run_id", "status", "attempt", "at", *HISTORY_COPY],
        sa.select(
            steps.c.id,
            steps.c.key,
            steps.c.run_id,
            steps.c.status,
            steps.c.attempts,
            _arg("at", schema.UTCDateTime()),
            # (a class body's names are not visible in its generator expressions)
            *(schema.steps.c[name] for name in HISTORY_COPY),
        ).where(steps.c.key == _arg("key")),
    )
    add_event = schema.events.insert().returning(schema.events.c.id)
    _start_step: ClassVar[dict[str, Any]] = {}  # per dialect name

    @classmethod
    def start_step(cls, conn: Connection) -> Any:
        """Insert the step row, or restart it (attempts + 1) when the key is known."""
        name = conn.dialect.name
        if name not in cls._start_step:
            ins = _insert(conn, cls.steps)
            cls._start_step[name] = ins.on_conflict_do_update(
                index_elements=["key"],
                set_={
                    **{col: ins.excluded[col] for col in _STEP_RESTART},
                    "attempts": cls.steps.c.attempts + 1,
                },
            )
        return cls._start_step[name]


@dataclass
class _Shared:
    """The transaction a `Journal.together` block shares, opened by its first write."""

    owner: tuple[int, int | None]  # (thread, asyncio task) that opened the block
    stack: ExitStack  # leaves the block's transaction when the block ends
    conn: Connection | None = None


def _caller() -> tuple[int, int | None]:
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running event loop
        task = None
    return threading.get_ident(), None if task is None else id(task)


# Snapshot row order: state tables by their natural key, logs (not listed) in insertion order.
_SNAPSHOT_ORDER = {
    "items": ("kind", "key"),
    "steps": ("key",),
    "folder_state": ("item_key", "folder_id", "kind"),
    "item_map": ("item_key", "source_item_id"),
    "settings": ("key",),
}


class Journal:
    """The run journal on one database (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._shared: _Shared | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str) -> Journal:
        """Open (creating if needed) the journal at `url` and migrate it to the newest schema."""
        engine = db.make_engine(url)
        try:
            db.upgrade(engine)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def check_writable(self) -> None:
        """Raise the StorageError of an earlier failed write, if any (`db.check_writable`):
        the runner calls it before every tenant write, so a run whose journal can no longer
        be written stops before its next tenant write."""
        db.check_writable(self.engine)

    def revision(self) -> str | None:
        """The Alembic revision the database is at (`db.head_revision()` after `open`)."""
        return db.current_revision(self.engine)

    @contextmanager
    def together(self) -> Iterator[None]:
        """The journal calls made inside share one transaction: all of them land, or none.

        For writes that belong together, e.g. a step's outcome and the item facts it
        produced, or one fact on every user of a batch: one commit instead of one per call.
        The transaction opens with the first write (a block that writes nothing costs
        nothing) and commits when the block ends; an exception out of the block rolls it
        back. Calls inside see the block's own writes. A nested block joins the outer one.

        Synchronous code only: the block holds the write lock, so it must not `await`
        (another task's journal call would wait on it); such a call is refused.
        """
        if self._shared is not None:
            self._shared_conn()  # a nested block: refused from another task, else joins
            yield
            return
        # The first write enters one `db.transaction` on this stack; leaving the block leaves
        # it (commit, or roll back on an exception), as a single call's transaction would.
        with ExitStack() as stack:
            self._shared = _Shared(owner=_caller(), stack=stack)
            try:
                yield
            finally:
                self._shared = None

    def _shared_conn(self, *, open_: bool = False) -> Connection | None:
        """The connection of the `together` block in progress (opened when `open_`)."""
        shared = self._shared
        if shared is None:
            return None
        if _caller() != shared.owner:
            raise RuntimeError(
                "journal call from another task or thread while a Journal.together() block "
                "holds the transaction (an await inside the block?)"
            )
        if shared.conn is None and open_:
            shared.conn = shared.stack.enter_context(db.transaction(self.engine, write=True))
        return shared.conn

    @contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[Connection]:
        shared = self._shared_conn(open_=True)
        if shared is not None:
            yield shared  # inside together(): its one transaction, as that block opened it
            return
        with db.transaction(self.engine, write=True, durable=durable) as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        shared = self._shared_conn()
        if shared is not None:
            yield shared
            return
        with db.transaction(self.engine, write=False) as conn:
            yield conn

    def _all(self, stmt: sa.Select[Any]) -> list[dict[str, Any]]:
        with self._read() as conn:
            return [row_dict(r) for r in conn.execute(stmt)]

    def _one(self, stmt: sa.Select[Any]) -> dict[str, Any] | None:
        with self._read() as conn:
            row = conn.execute(stmt).first()
        return None if row is None else row_dict(row)

    # -- runs ------------------------------------------------------------------------------

    def start_run(self, command: str, args: Mapping[str, Any] | None = None) -> int:
        """Record the start of a command; returns the run id for the calls that follow."""
        check_json(args, "args")
        with self._write() as conn:
            stmt = schema.runs.insert().values(
                command=command, args=args, started_at=utcnow(), status="running"
            )
            return int(conn.execute(stmt.returning(schema.runs.c.id)).scalar_one())

    def finish_run(self, run_id: int, status: str) -> None:
        with self._write() as conn:
            conn.execute(
                schema.runs.update()
                .where(schema.runs.c.id == run_id)
                .values(status=status, finished_at=utcnow())
            )

    def runs(self) -> list[dict[str, Any]]:
        return self._all(sa.select(schema.runs).order_by(schema.runs.c.id))

    # -- items -----------------------------------------------------------------------------

    def upsert_item(self, kind: str, key: str, **fields: Any) -> dict[str, Any]:
        """Create the item or set the given fields on it; other fields are left as they are.

        ``updated_at`` moves only when a value actually changed.
        """
        check_item(kind, fields)
        now = utcnow()
        with self._write() as conn:
            conn.execute(
                _insert(conn, schema.items)
                .values(kind=kind, key=key, created_at=now, updated_at=now, **fields)
                .on_conflict_do_nothing(index_elements=["kind", "key"])
            )
            return self._set_item_fields(conn, kind, key, fields, now)

    def update_item(self, kind: str, key: str, **fields: Any) -> dict[str, Any]:
        """Set fields on an existing item; raises `UnknownItem` when it was never recorded."""
        check_item(kind, fields)
        with self._write() as conn:
            if _item_row(conn, kind, key) is None:
                raise UnknownItem(kind, key)
            return self._set_item_fields(conn, kind, key, fields, utcnow())

    def merge_item(
        self, kind: str, key: str, detail: Mapping[str, Any] | None = None, **fields: Any
    ) -> dict[str, Any]:
        """Set columns and merge keys into the `detail` JSON, in one transaction.

        The read-modify-write of `detail` happens under the write lock, so two
        writers never lose each other's keys, and a no-op writes nothing.
        """
        check_merge(kind, detail, fields)
        with self._write() as conn:
            row = _item_row(conn, kind, key, lock=True)
            if row is None:
                raise UnknownItem(kind, key)
            return _set_item_fields(conn, row, merged_item(row, detail, fields), utcnow())

    @staticmethod
    def _set_item_fields(
        conn: Connection, kind: str, key: str, fields: Mapping[str, Any], now: datetime
    ) -> dict[str, Any]:
        row = _item_row(conn, kind, key, lock=True)
        assert row is not None  # inserted or checked by the caller, inside this transaction
        return _set_item_fields(conn, row, fields, now)

    def get_item(self, kind: str, key: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _item_row(conn, kind, key)

    def items(
        self,
        kind: str | None = None,
        batch: str | None = None,
        state: str | None = None,
        phase: str | None = None,
    ) -> list[dict[str, Any]]:
        stmt = sa.select(schema.items).order_by(schema.items.c.kind, schema.items.c.key)
        for column, value in (("kind", kind), ("batch", batch), ("state", state), ("phase", phase)):
            if value is not None:
                stmt = stmt.where(schema.items.c[column] == value)
        return self._all(stmt)

    # -- steps -----------------------------------------------------------------------------

    def step_started(
        self,
        run_id: int | None,
        step_key: str,
        *,
        item_kind: str | None,
        item_key: str | None,
        name: str,
        intent: Mapping[str, Any] | None,
    ) -> dict[str, Any] | None:
        """Record that a step is about to run; returns its previous record, if any.

        A previous record whose status is still ``started`` means an earlier run died inside
        the step: the runner must re-observe before applying anything. ``attempts`` counts
        every start. The result fields of the previous attempt are cleared on the step row
        (they stay in `history`).
        """
        fresh = start_values(run_id, item_kind, item_key, name, intent)
        with self._write() as conn:
            previous = _step_row(conn, step_key, lock=True)
            conn.execute(_Sql.start_step(conn), {"key": step_key, "attempts": 1, **fresh})
            _append_history(conn, step_key, fresh["started_at"])
        return previous

    def step_finished(
        self,
        step_key: str,
        *,
        status: str,
        before: Any = None,
        after: Any = None,
        changed: bool = False,
        detail: Any = None,
        error_class: str | None = None,
        error_message: str | None = None,
        retry_after: float | None = None,
        next_step: str | None = None,
    ) -> dict[str, Any]:
        """Record a step's outcome; returns the step record as now stored.

        `retry_after` is in seconds, as the service said; `next_step` is the command the
        operator can run next. `error_message` is redacted.
        """
        values = finish_values(
            status,
            before=before,
            after=after,
            changed=changed,
            detail=detail,
            error_class=error_class,
            error_message=error_message,
            retry_after=retry_after,
            next_step=next_step,
        )
        with self._write() as conn:
            # The UPDATE takes the row lock itself (PostgreSQL); no read before it.
            row = conn.execute(_Sql.finish_step, {"b_key": step_key, **values}).first()
            if row is None:
                raise UnknownStep(step_key)
            _append_history(conn, step_key, values["finished_at"])
        return row_dict(row)

    def get_step(self, key: str) -> dict[str, Any] | None:
        with self._read() as conn:
            return _step_row(conn, key)

    def get_steps(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The records of the given step keys that exist, by key (one read per 500 keys)."""
        wanted = sorted(set(keys))
        out: dict[str, dict[str, Any]] = {}
        with self._read() as conn:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                stmt = sa.select(schema.steps).where(schema.steps.c.key.in_(chunk))
                out.update((r.key, row_dict(r)) for r in conn.execute(stmt))
        return out

    def write_batch(self, batch: Batch) -> None:
        """Write a `Batch` of calls in one transaction (see `coexist.journal.batch`).

        An empty batch writes nothing and takes no lock (plan mode fills none).
        """
        if len(batch):
            with self._write() as conn:
                batch.write(conn)

    def steps(
        self, item_key: str | None = None, status: str | None = None, name: str | None = None
    ) -> list[dict[str, Any]]:
        stmt = sa.select(schema.steps).order_by(schema.steps.c.key)
        for column, value in (("item_key", item_key), ("status", status), ("name", name)):
            if value is not None:
                stmt = stmt.where(schema.steps.c[column] == value)
        return self._all(stmt)

    def history(self, step_key: str) -> list[dict[str, Any]]:
        """Every recorded transition of one step, oldest first."""
        stmt = (
            sa.select(schema.step_history)
            .where(schema.step_history.c.step_key == step_key)
            .order_by(schema.step_history.c.id)
        )
        return self._all(stmt)

    # -- events ----------------------------------------------------------------------------

    def event(
        self,
        run_id: int | None,
        level: str,
        message: str,
        *,
        item_key: str | None = None,
        step_key: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> int:
        """Append one line to the run log (message redacted, data checked for secrets)."""
        values = event_values(
            run_id, level, message, item_key=item_key, step_key=step_key, data=data
        )
        with self._write() as conn:
            return int(conn.execute(_Sql.add_event, values).scalar_one())

    def events(
        self,
        run_id: int | None = None,
        *,
        item_key: str | None = None,
        step_key: str | None = None,
        level: str | None = None,
    ) -> list[dict[str, Any]]:
        stmt = sa.select(schema.events).order_by(schema.events.c.id)
        filters = (("run_id", run_id), ("item_key", item_key), ("step_key", step_key))
        for column, value in (*filters, ("level", level)):
            if value is not None:
                stmt = stmt.where(schema.events.c[column] == value)
        return self._all(stmt)

    # -- data passes -----------------------------------------------------------------------

    def pass_started(
        self,
        run_id: int | None,
        item_key: str,
        kind: str,
        window: Mapping[str, Any] | None = None,
    ) -> int:
        """Record the start of a data pass ('prestage' | 'cutover') over one mailbox."""
        if kind not in PASS_KINDS:
            raise ValueError(f"pass kind {kind!r}: expected one of {sorted(PASS_KINDS)}")
        check_json(window, "window")
        with self._write() as conn:
            stmt = schema.passes.insert().values(
                run_id=run_id,
                item_key=item_key,
                kind=kind,
                window=window,
                status="running",
                started_at=utcnow(),
            )
            return int(conn.execute(stmt.returning(schema.passes.c.id)).scalar_one())

    def pass_finished(
        self, pass_id: int, status: str, counts: Mapping[str, Any] | None = None
    ) -> None:
        check_json(counts, "counts")
        with self._write() as conn:
            conn.execute(
                schema.passes.update()
                .where(schema.passes.c.id == pass_id)
                .values(status=status, counts=counts, finished_at=utcnow())
            )

    def passes(self, item_key: str | None = None) -> list[dict[str, Any]]:
        stmt = sa.select(schema.passes).order_by(schema.passes.c.id)
        if item_key is not None:
            stmt = stmt.where(schema.passes.c.item_key == item_key)
        return self._all(stmt)

    # -- checkpoints -----------------------------------------------------------------------

    def get_checkpoint(self, item_key: str, folder_id: str, kind: str) -> dict[str, Any] | None:
        return self._one(
            sa.select(schema.folder_state).where(
                schema.folder_state.c.item_key == item_key,
                schema.folder_state.c.folder_id == folder_id,
                schema.folder_state.c.kind == kind,
            )
        )

    def save_checkpoint(
        self,
        item_key: str,
        folder_id: str,
        kind: str,
        token: str | None = None,
        watermark: str | None = None,
    ) -> None:
        """Save a folder's delta token / watermark.

        Call it only *after* the items it covers are journaled (its own transaction, on
        purpose): a crash in between re-reads a little, it never skips.
        """
        values = {"token": token, "watermark": watermark, "updated_at": utcnow()}
        with self._write() as conn:
            conn.execute(
                _insert(conn, schema.folder_state)
                .values(item_key=item_key, folder_id=folder_id, kind=kind, **values)
                .on_conflict_do_update(
                    index_elements=["item_key", "folder_id", "kind"], set_=values
                )
            )

    def delete_checkpoint(self, item_key: str, folder_id: str, kind: str) -> None:
        """Forget a checkpoint (e.g. the service expired the delta token: start over)."""
        with self._write() as conn:
            conn.execute(
                schema.folder_state.delete().where(
                    schema.folder_state.c.item_key == item_key,
                    schema.folder_state.c.folder_id == folder_id,
                    schema.folder_state.c.kind == kind,
                )
            )

    def checkpoints(self, item_key: str | None = None) -> list[dict[str, Any]]:
        stmt = sa.select(schema.folder_state).order_by(
            schema.folder_state.c.item_key,
            schema.folder_state.c.folder_id,
            schema.folder_state.c.kind,
        )
        if item_key is not None:
            stmt = stmt.where(schema.folder_state.c.item_key == item_key)
        return self._all(stmt)

    # -- item map (source item -> target item) ---------------------------------------------

    def map_item(self, item_key: str, source_item_id: str, **fields: Any) -> None:
        """Create or update one source item's row (see `schema.item_map`)."""
        self.map_items(item_key, [{"source_item_id": source_item_id, **fields}])

    def map_items(
        self, item_key: str, rows: list[Mapping[str, Any]], *, durable: bool = False
    ) -> None:
        """Upsert many rows in one transaction (a delta page is recorded all or nothing).

        Each row names `source_item_id` and the columns to set; columns not named are left
        as they are on an existing row. `durable`: committed to survive an OS crash too
        (`db.transaction`), for marks written before the tenant write they guard.
        """
        self.map_items_of({item_key: rows}, durable=durable)

    def map_items_of(
        self, rows: Mapping[str, list[Mapping[str, Any]]], *, durable: bool = False
    ) -> None:
        """`map_items` for several mailboxes (rows by item key) in one transaction, rows of
        one shape in one executemany whatever their mailbox (the sync's import outcomes of
        mailboxes copied at once). Each mailbox's rows keep their order."""
        now = utcnow()
        runs: list[tuple[_MapShape, list[dict[str, Any]]]] = []
        for item_key, of_key in rows.items():
            for shape, params in _map_runs(item_key, of_key, now):
                if runs and runs[-1][0] == shape:
                    runs[-1][1].extend(params)
                else:
                    runs.append((shape, params))
        if not runs:
            return
        with self._write(durable=durable) as conn:
            for (new, cols), params in runs:
                # One statement per run of rows setting the same columns, sent as one
                # executemany: building a statement costs far more than running it.
                conn.execute(_map_statement(conn.dialect.name, new, cols), params)

    def unmap_item(self, item_key: str, source_item_id: str) -> None:
        with self._write() as conn:
            conn.execute(
                schema.item_map.delete().where(
                    schema.item_map.c.item_key == item_key,
                    schema.item_map.c.source_item_id == source_item_id,
                )
            )

    def mapped(self, item_key: str, source_item_id: str) -> dict[str, Any] | None:
        return self._one(
            sa.select(schema.item_map).where(
                schema.item_map.c.item_key == item_key,
                schema.item_map.c.source_item_id == source_item_id,
            )
        )

    def mapped_many(
        self, item_key: str, source_item_ids: Iterable[str]
    ) -> dict[str, dict[str, Any]]:
        """The rows of these source items that exist, by source item id (one read per 500
        ids instead of one per id: a scan page looks up every item it reports)."""
        ids = list(dict.fromkeys(source_item_ids))
        found: dict[str, dict[str, Any]] = {}
        t = schema.item_map
        with self._read() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                stmt = sa.select(t).where(t.c.item_key == item_key, t.c.source_item_id.in_(chunk))
                for r in conn.execute(stmt):
                    row = row_dict(r)
                    found[str(row["source_item_id"])] = row
        return found

    def mapped_items(
        self,
        item_key: str,
        *,
        folder_id: str | None = None,
        status: str | None = None,
        limit: int | None = None,
        reason_prefix: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of one mailbox, optionally of one source folder / status / with a reason that
        starts with `reason_prefix`, in insertion order."""
        stmt = (
            sa.select(schema.item_map)
            .where(schema.item_map.c.item_key == item_key)
            .order_by(schema.item_map.c.id)
        )
        if folder_id is not None:
            stmt = stmt.where(schema.item_map.c.source_folder_id == folder_id)
        if status is not None:
            stmt = stmt.where(schema.item_map.c.status == status)
        if reason_prefix is not None:
            # autoescape: a "%" or "_" in the prefix is matched as itself, not as a wildcard.
            stmt = stmt.where(schema.item_map.c.reason.startswith(reason_prefix, autoescape=True))
        if limit is not None:
            stmt = stmt.limit(limit)
        return self._all(stmt)

    def skipped_items(self, item_key: str) -> list[dict[str, Any]]:
        return self.mapped_items(item_key, status="skipped")

    def item_map_counts(self, item_key: str) -> dict[str, dict[str, int]]:
        """Per source folder: rows per status and `bytes` copied (target-side bytes)."""
        t = schema.item_map
        stmt = (
            sa.select(
                t.c.source_folder_id,
                t.c.status,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(t.c.size), 0),
            )
            .where(t.c.item_key == item_key)
            .group_by(t.c.source_folder_id, t.c.status)
        )
        out: dict[str, dict[str, int]] = {}
        with self._read() as conn:
            for folder, status, count, size in conn.execute(stmt):
                per = out.setdefault(folder, {})
                per[status] = int(count)
                per[f"{status}_bytes"] = int(size)
        return out

    # -- settings --------------------------------------------------------------------------

    def get_setting(self, key: str) -> Any:
        """The stored value, or None when the setting was never set."""
        row = self._one(sa.select(schema.settings.c.value).where(schema.settings.c.key == key))
        return None if row is None else row["value"]

    def set_setting(self, key: str, value: Any) -> None:
        check_json(value, key)
        with self._write() as conn:
            conn.execute(
                _insert(conn, schema.settings)
                .values(key=key, value=value)
                .on_conflict_do_update(index_elements=["key"], set_={"value": value})
            )

    def lock_setting(self, key: str, value: Any) -> Any:
        """Store `value` unless the setting already has one; return the stored value.

        For choices the first run makes for the life of the project (the license SKU).
        """
        check_json(value, key)
        with self._write() as conn:
            conn.execute(
                _insert(conn, schema.settings)
                .values(key=key, value=value)
                .on_conflict_do_nothing(index_elements=["key"])
            )
            return conn.execute(
                sa.select(schema.settings.c.value).where(schema.settings.c.key == key)
            ).scalar()

    # -- whole-journal views ---------------------------------------------------------------

    def snapshot(self, *, include_logs: bool = False) -> dict[str, list[dict[str, Any]]]:
        """Every state table as plain data in natural-key order, without volatile columns.

        Volatile means different between two identical runs: surrogate ids, run ids,
        timestamps, attempt counters (`schema.VOLATILE_COLUMNS`). The append-only logs (runs,
        passes, step_history, events) grow on every run by design, so they are left out unless
        `include_logs`; with them, a snapshot compares the *content* of what was logged, in the
        order it was logged. Equal snapshots before and after a re-run mean it changed nothing.
        """
        tables = STATE_TABLES + (LOG_TABLES if include_logs else ())
        out: dict[str, list[dict[str, Any]]] = {}
        with self._read() as conn:
            for table in tables:
                cols = [c for c in table.c if c.name not in VOLATILE_COLUMNS]
                order = [table.c[name] for name in _SNAPSHOT_ORDER.get(table.name, ("id",))]
                stmt = sa.select(*cols).order_by(*order)
                out[table.name] = [row_dict(r) for r in conn.execute(stmt)]
        return out


_MAP_FIELDS = frozenset(
    c.name for c in schema.item_map.c if c.name not in {"id", "item_key", "updated_at"}
)


_MapShape = tuple[bool, tuple[str, ...]]  # (a new row: upsert, else update; columns set)


def _map_runs(
    item_key: str, rows: list[Mapping[str, Any]], now: datetime
) -> list[tuple[_MapShape, list[dict[str, Any]]]]:
    """`map_items`' rows as runs of consecutive rows of one shape, each row's bound values:
    order is kept, so a row named twice ends as if each call were its own statement."""
    runs: list[tuple[_MapShape, list[dict[str, Any]]]] = []
    for row in rows:
        fields = {k: v for k, v in row.items() if k != "source_item_id"}
        _check_map_fields(fields)
        values = {**fields, "updated_at": now}
        # A row without `source_folder_id` is an update of a known row; one with it, new.
        shape = ("source_folder_id" in fields, tuple(sorted(values)))
        params = {f"b_{k}": v for k, v in values.items()}
        params.update(b_item_key=item_key, b_source_item_id=row["source_item_id"])
        if runs and runs[-1][0] == shape:
            runs[-1][1].append(params)
        else:
            runs.append((shape, [params]))
    return runs


@functools.lru_cache(maxsize=256)
def _map_statement(dialect: str, new: bool, cols: tuple[str, ...]) -> Any:
    """The item_map upsert (`new`) or update setting `cols`, over bound parameters."""
    t = schema.item_map
    values = {c: _arg(c, t.c[c].type) for c in cols}
    key = _arg("item_key", t.c.item_key.type)
    source_id = _arg("source_item_id", t.c.source_item_id.type)
    if not new:
        return t.update().where(t.c.item_key == key, t.c.source_item_id == source_id).values(values)
    insert = postgresql.insert(t) if dialect == "postgresql" else sqlite.insert(t)
    stmt = insert.values(item_key=key, source_item_id=source_id, **values)
    return stmt.on_conflict_do_update(
        index_elements=["item_key", "source_item_id"],
        set_={c: stmt.excluded[c] for c in cols},
    )


def _check_map_fields(fields: Mapping[str, Any]) -> None:
    unknown = set(fields) - _MAP_FIELDS
    if unknown:
        raise TypeError(f"unknown item_map fields {sorted(unknown)}")
    status = fields.get("status")
    if status is not None and status not in schema.ITEM_MAP_STATUSES:
        raise ValueError(
            f"item_map status {status!r}: expected one of {sorted(schema.ITEM_MAP_STATUSES)}"
        )


def start_values(
    run_id: int | None,
    item_kind: str | None,
    item_key: str | None,
    name: str,
    intent: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """A step row's columns as `step_started` sets them (checked; results cleared)."""
    check_json(intent, "intent")
    return {
        "run_id": run_id,
        "item_kind": item_kind,
        "item_key": item_key,
        "name": name,
        "intent": intent,
        "before": None,
        "after": None,
        "detail": None,
        "changed": False,
        "status": "started",
        "error_class": None,
        "error_message": None,
        "retry_after": None,
        "next_step": None,
        "started_at": utcnow(),
        "finished_at": None,
    }


def finish_values(
    status: str,
    *,
    before: Any,
    after: Any,
    changed: bool,
    detail: Any,
    error_class: str | None,
    error_message: str | None,
    retry_after: float | None,
    next_step: str | None,
) -> dict[str, Any]:
    """A step row's columns as `step_finished` sets them (checked; the message redacted)."""
    if status not in FINISHED_STEP_STATUSES:
        raise ValueError(
            f"step status {status!r}: expected one of {sorted(FINISHED_STEP_STATUSES)}"
        )
    for label, value in (("before", before), ("after", after), ("detail", detail)):
        check_json(value, label)
    return {
        "status": status,
        "before": before,
        "after": after,
        "changed": changed,
        "detail": detail,
        "error_class": error_class,
        "error_message": None if error_message is None else redact(error_message),
        "retry_after": retry_after,
        "next_step": next_step,
        "finished_at": utcnow(),
    }


def merged_item(
    row: Mapping[str, Any], detail: Mapping[str, Any] | None, fields: Mapping[str, Any]
) -> dict[str, Any]:
    """What `merge_item` sets on `row`: the fields, and `detail` merged into its JSON."""
    changes = dict(fields)
    if detail:
        current = row.get("detail") or {}
        merged = {**current, **detail}
        if merged != current:
            changes["detail"] = merged
    return changes


def check_item(kind: str, fields: Mapping[str, Any]) -> None:
    if kind not in ITEM_KINDS:
        raise ValueError(f"item kind {kind!r}: expected one of {sorted(ITEM_KINDS)}")
    unknown = set(fields) - ITEM_FIELDS
    if unknown:
        raise TypeError(f"unknown item fields {sorted(unknown)}; allowed: {sorted(ITEM_FIELDS)}")
    check_json(fields.get("detail"), "detail")


def check_merge(kind: str, detail: Mapping[str, Any] | None, fields: Mapping[str, Any]) -> None:
    """The checks of a `merge_item` call: the item's kind and fields, and the `detail` keys."""
    check_item(kind, fields)
    check_json(detail, "detail")


def event_values(
    run_id: int | None,
    level: str,
    message: str,
    *,
    item_key: str | None,
    step_key: str | None,
    data: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """An `events` row as `event` writes it (checked; the message redacted)."""
    if level not in EVENT_LEVELS:
        raise ValueError(f"event level {level!r}: expected one of {sorted(EVENT_LEVELS)}")
    check_json(data, "data")
    return {
        "ts": utcnow(),
        "run_id": run_id,
        "level": level,
        "item_key": item_key,
        "step_key": step_key,
        "message": redact(message),
        "data": data,
    }


def _item_row(
    conn: Connection, kind: str, key: str, *, lock: bool = False
) -> dict[str, Any] | None:
    stmt = _Sql.item_locked if lock else _Sql.item
    row = conn.execute(stmt, {"b_kind": kind, "b_key": key}).first()
    return None if row is None else row_dict(row)


def _set_item_fields(
    conn: Connection, row: dict[str, Any], fields: Mapping[str, Any], now: datetime
) -> dict[str, Any]:
    """Write the fields that differ from `row` (read under the lock); none: no write."""
    changes = {name: value for name, value in fields.items() if row[name] != value}
    if not changes:
        return row
    conn.execute(_Sql.set_item, {"b_id": row["id"], "updated_at": now, **changes})
    return {**row, **changes, "updated_at": now}


def _step_row(conn: Connection, key: str, *, lock: bool = False) -> dict[str, Any] | None:
    row = conn.execute(_Sql.step_locked if lock else _Sql.step, {"b_key": key}).first()
    return None if row is None else row_dict(row)


def _append_history(conn: Connection, key: str, at: datetime) -> None:
    """Copy the step row as this transaction left it into the append-only history."""
    conn.execute(_Sql.copy_history, {"b_key": key, "b_at": at})
