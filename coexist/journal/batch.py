"""`Batch`: many journal writes written in one transaction, a few statements per table.

For rounds that journal hundreds of records at once (provision's read-back of every target
address, a mark on every user of a batch). A `Batch` takes the same write calls as `Journal`
(`step_started`, `step_finished`, `merge_item`, `event`), checks each when it is made (the same
errors, raised at the same call), and keeps them in order; `Journal.write_batch` writes them in
one transaction: it reads the rows the calls touch once, applies the calls to them in order,
and writes the results with one executemany per table. The journal ends exactly as if each
call had been its own transaction (the tests compare the two), except that nothing is written
before `write_batch`, and nothing at all if it fails. The calls return nothing: a batch is for
writes whose results nobody reads back in the meantime.

Nothing a tenant write depends on may wait in a batch: a step's ``started`` record goes to
the `Journal` itself before its first write (see `coexist.engine.runner`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coexist.journal import schema
from coexist.journal.schema import row_dict, utcnow
from coexist.journal.store import (
    HISTORY_COPY,
    UnknownItem,
    UnknownStep,
    check_merge,
    event_values,
    finish_values,
    merged_item,
    start_values,
)

# Keys per IN (...) list: far below SQLite's and PostgreSQL's bound-parameter limits.
_CHUNK = 500


@dataclass
class Batch:
    """Journal writes kept in order until `Journal.write_batch` writes them (module docstring)."""

    _ops: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self._ops)

    def step_started(
        self,
        run_id: int | None,
        step_key: str,
        *,
        item_kind: str | None,
        item_key: str | None,
        name: str,
        intent: Mapping[str, Any] | None,
    ) -> None:
        """`Journal.step_started`, written with the batch."""
        values = start_values(run_id, item_kind, item_key, name, intent)
        self._ops.append(("start", {"key": step_key, **values}))

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
    ) -> None:
        """`Journal.step_finished`, written with the batch (`UnknownStep` when written)."""
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
        self._ops.append(("finish", {"key": step_key, **values}))

    def merge_item(
        self, kind: str, key: str, detail: Mapping[str, Any] | None = None, **fields: Any
    ) -> None:
        """`Journal.merge_item`, written with the batch (`UnknownItem` when written)."""
        check_merge(kind, detail, fields)
        op = {"kind": kind, "key": key, "detail": detail, "fields": fields, "at": utcnow()}
        self._ops.append(("merge", op))

    def event(
        self,
        run_id: int | None,
        level: str,
        message: str,
        *,
        item_key: str | None = None,
        step_key: str | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> None:
        """`Journal.event`, written with the batch."""
        values = event_values(
            run_id, level, message, item_key=item_key, step_key=step_key, data=data
        )
        self._ops.append(("event", values))

    def write(self, conn: Connection) -> None:
        """Write every call, in order, on `conn` (inside the caller's write transaction)."""
        _Writer(conn, self._ops).write()


_STEP_COLUMNS = tuple(c.name for c in schema.steps.c if c.name != "id")
_ITEM_COLUMNS = (*sorted(schema.ITEM_FIELDS), "updated_at")


class _Writer:
    """One batch's write: read the touched rows, apply the calls in order, write the results."""

    def __init__(self, conn: Connection, ops: list[tuple[str, dict[str, Any]]]) -> None:
        self.conn = conn
        self.ops = ops
        self.steps: dict[str, dict[str, Any]] = {}  # key -> row as the calls leave it
        self.new_steps: dict[str, None] = {}  # keys with no row before this batch (ordered)
        self.changed_steps: dict[str, None] = {}
        self.history: list[dict[str, Any]] = []
        self.items: dict[tuple[str, str], dict[str, Any]] = {}
        self.changed_items: dict[tuple[str, str], None] = {}
        self.events: list[dict[str, Any]] = []

    def write(self) -> None:
        self._read()
        for kind, op in self.ops:
            getattr(self, f"_{kind}")(op)
        self._write_steps()
        self._write_items()
        if self.events:
            self.conn.execute(schema.events.insert(), self.events)

    def _read(self) -> None:
        """The rows the calls touch, under the write lock (PostgreSQL: row locks)."""
        step_keys = sorted({op["key"] for kind, op in self.ops if kind in ("start", "finish")})
        t = schema.steps
        for keys in _chunks(step_keys):
            stmt = sa.select(t).where(t.c.key.in_(keys)).with_for_update()
            self.steps.update((r.key, row_dict(r)) for r in self.conn.execute(stmt))
        kinds: dict[str, set[str]] = {}
        for kind, op in self.ops:
            if kind == "merge":
                kinds.setdefault(op["kind"], set()).add(op["key"])
        i = schema.items
        for item_kind, item_keys in sorted(kinds.items()):
            for keys in _chunks(sorted(item_keys)):
                stmt = sa.select(i).where(i.c.kind == item_kind, i.c.key.in_(keys))
                rows = self.conn.execute(stmt.with_for_update())
                self.items.update(((r.kind, r.key), row_dict(r)) for r in rows)

    def _start(self, op: dict[str, Any]) -> None:
        key = op["key"]
        row = self.steps.get(key)
        if row is None:
            row = self.steps[key] = {"id": None, "key": key, "attempts": 0}
            self.new_steps[key] = None
        row.update(op, attempts=row["attempts"] + 1)
        self.changed_steps[key] = None
        self._transition(row, op["started_at"])

    def _finish(self, op: dict[str, Any]) -> None:
        row = self.steps.get(op["key"])
        if row is None:
            raise UnknownStep(op["key"])
        row.update(op)
        self.changed_steps[op["key"]] = None
        self._transition(row, op["finished_at"])

    def _transition(self, row: dict[str, Any], at: Any) -> None:
        """The step's history row as this call leaves it (`step_id` filled in when written)."""
        copy = {name: row[name] for name in HISTORY_COPY}
        self.history.append(
            {
                "step_key": row["key"],
                "run_id": row["run_id"],
                "status": row["status"],
                "attempt": row["attempts"],
                "at": at,
                **copy,
            }
        )

    def _merge(self, op: dict[str, Any]) -> None:
        ident = (op["kind"], op["key"])
        row = self.items.get(ident)
        if row is None:
            raise UnknownItem(op["kind"], op["key"])
        merged = merged_item(row, op["detail"], op["fields"])
        changes = {name: value for name, value in merged.items() if row[name] != value}
        if changes:
            row.update(changes, updated_at=op["at"])
            self.changed_items[ident] = None

    def _event(self, op: dict[str, Any]) -> None:
        self.events.append(op)

    def _write_steps(self) -> None:
        t = schema.steps
        new = [{c: self.steps[k][c] for c in _STEP_COLUMNS} for k in self.new_steps]
        if new:
            self.conn.execute(t.insert(), new)
            for keys in _chunks(list(self.new_steps)):
                stmt = sa.select(t.c.key, t.c.id).where(t.c.key.in_(keys))
                for key, ident in self.conn.execute(stmt):
                    self.steps[key]["id"] = ident
        known = [
            {"b_id": self.steps[k]["id"], **{c: self.steps[k][c] for c in _STEP_COLUMNS}}
            for k in self.changed_steps
            if k not in self.new_steps
        ]
        if known:
            self.conn.execute(t.update().where(t.c.id == sa.bindparam("b_id")), known)
        if self.history:
            rows = [{"step_id": self.steps[h["step_key"]]["id"], **h} for h in self.history]
            self.conn.execute(schema.step_history.insert(), rows)

    def _write_items(self) -> None:
        if not self.changed_items:
            return
        t = schema.items
        rows = [
            {"b_id": self.items[k]["id"], **{c: self.items[k][c] for c in _ITEM_COLUMNS}}
            for k in self.changed_items
        ]
        self.conn.execute(t.update().where(t.c.id == sa.bindparam("b_id")), rows)


def _chunks(keys: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    for key in keys:
        chunk.append(key)
        if len(chunk) == _CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
