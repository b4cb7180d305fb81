"""Who writes to a project right now: writers and the scopes they claim, in the journal.

Two commands writing to one project at once were not prevented: two `provision` runs of the
same users both proceeded, and the loser marked users `failed: name already used` that the
winner had just created (issue 10). Now a command that writes first *registers as a writer*
and *claims* what it will write, in one journal transaction, before its first write:

    ``project``            the whole project: conflicts with every other claim
    ``groups``             the groups `coexist groups` copies
    ``enqueue``            a queueing command's project-wide decisions (`coexist.worker`)
    ``user:<source id>``   one user (`user_scope`)
    ``playbook:<batch>``   a playbook run on a batch, for the whole run (`playbook_scope`)
    ``batch:<batch>``      a command whose selection takes in users of the batch
                           (`batch_scope`; the session claims it, `coexist.runtime`)

No two writers hold one scope, and nobody holds anything while another holds ``project`` -
except ``playbook:`` and ``batch:`` scopes, which stand apart: ``playbook:B`` conflicts only
with ``playbook:B`` and ``batch:B``, and ``batch:B`` only with ``playbook:B`` and itself. A playbook run
holds its batch for hours (waits, checklists, queued jobs), and the commands it runs step by
step must still claim ``project``, ``enqueue`` or their users beside it (each under its own
writer, as when an operator types them). An operator's command on users of that batch
(`coexist cutover --batch wave3` at 2 a.m. beside the wave3 runbook) is refused naming the
run, and a run cannot start while such a command works on its batch. The run's own step
commands are not refused: they run inside it (`acting_for`: the writers a context acts
for), and a queue worker's jobs claim only their user (the command that queued them made
the batch claim; a run's enqueue step is one of its own commands, and its jobs carry the
run's id: `coexist.worker` refuses the jobs of a held batch that do not, queued before the
run). Users of no batch are held by no run.
A command that cannot claim is refused with `coexist.errors.Busy` (exit code 2) naming the
holder: its command, PID, host, how long it has been running, and the users in conflict. It
never waits in line: a queue would need a timeout nobody can choose well (a prestage runs
for hours), and an operator who sees who holds the project decides better (wait, or find
the process). A refused command has written nothing, so no user is ever marked failed
because another run did the work.

**What commands claim today** (`coexist.runtime`): every command that writes to the journal
or the tenants claims ``project`` - discover, rediscover, groups, provision, prestage,
cutover, rollback, retry (through those), confirm. Per-user claims exist and are tested
here, but commands do not use them yet, because several decisions a run makes span users
and assume no other writer: provision reserves target addresses against the recorded plans
of *its* users (two batches could reserve one address), prestage counts free licence seats
for its batch, match mode and `confirm` keep one target per user across the project. Each
of those needs its own short project-wide claim before commands can claim just their users;
the many `coexist worker` processes of issue 16 do: each job claims only its user
(``user:<source id>``), and the command that queued the jobs made the decisions spanning
users first under ``enqueue`` (selection, licence seats counted with the seats of every
user whose prestage job still waits in the queue), so it runs beside working workers while
no inline writer holds ``project``. A writer can claim and release scopes for as long as it
lives.

A `coexist playbook run` holds ``playbook:<batch>`` for its whole run (one run per batch,
`coexist.playbook`), beside the claims its step commands make as they run. Every writing
command that selects users also claims ``batch:<B>`` for each batch its selection takes in
(`coexist.runtime.batch_claim`, from its run's arguments), with its ``project`` or
``enqueue`` claim; verify-credentials and credentials request / revoke claim only those.

**Claim nothing** (run beside a writer): status, permissions, batch export, preflight and
every ``--plan`` run (they write nothing), verify-mailflow (sends probes, records nothing),
batch import (it writes only batch labels, which a running command has already read when
it selected its users; but it is refused, before it writes, when it would move users into
or out of a batch a playbook run holds, or set credentials of its users: `runbook_refusal`),
init and the sandbox commands. `coexist retry` retries the users of free batches and reports
those of held ones (`runbook_refused`).

**A writer that dies frees its claims with it**, with no expiry to wait out and no PID
guessing. Each writer holds a liveness token the operating system or the database server
drops when the process goes, however it goes (SIGKILL included):

* SQLite: an exclusive ``flock`` on its own file ``<journal>-writers/<token>.lock``. The
  kernel releases it when the process exits. SQLite in WAL mode requires every process
  using the database to be on one host (https://www.sqlite.org/wal.html, "all processes
  using a database must be on the same host computer"), so the lock is seen by every
  possible writer, containers sharing the directory included. POSIX only (``fcntl``).
* PostgreSQL: a session-level advisory lock ``(class, writer id)`` on the writer's own
  connection, which the server releases when the connection ends (PostgreSQL docs,
  "Advisory Locks"). Checked through ``pg_locks`` (two int4 keys show as ``classid``,
  ``objid``, ``objsubid = 2``), so it works across hosts. The connection asks the server
  for TCP keepalives (``tcp_keepalives_*``, PostgreSQL docs "Connection Settings"), so a
  writer whose *host* vanished is noticed in about two minutes, not the system's hours.

A writer whose token is gone is dead: the next writer to claim deletes its rows in the same
transaction (``runs`` keeps its run as 'running', which is honest). Claim transactions are
serialised (SQLite ``BEGIN IMMEDIATE``; PostgreSQL ``pg_advisory_xact_lock``), so two
writers never both see a scope free; a claim waits at most 30 s for another one's (SQLite's
busy timeout, PostgreSQL ``lock_timeout``), so a writer stopped inside its claim transaction
(Ctrl-Z) fails the next claimer with a journal error instead of hanging it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from coexist.errors import Busy
from coexist.journal import db, schema
from coexist.journal.schema import row_dict, utcnow

PROJECT = "project"
GROUPS = "groups"
# The project-wide decisions of a command that queues its users' jobs (`coexist.worker`):
# one enqueuing command at a time, beside the workers' user claims, never beside ``project``.
ENQUEUE = "enqueue"

# A playbook run's hold on its batch (`coexist.playbook`): conflicts only with itself and
# with commands working on users of the batch (BATCH_PREFIX).
PLAYBOOK_PREFIX = "playbook:"
# A command's selection takes in users of the batch: conflicts only with its playbook scope.
BATCH_PREFIX = "batch:"

# Advisory lock keys (PostgreSQL). Writers hold (class, writer id) with two int4 keys; claim
# transactions serialise on one bigint key. Neither space overlaps db._PG_MIGRATION_LOCK.
_PG_WRITER_CLASS = 0x636C6D73  # "clms"
_PG_CLAIMS_LOCK = 0x636C6169_0000_0001
# Seconds a claim waits for another writer's claim transaction (SQLite: its busy timeout).
_PG_CLAIM_WAIT_S = 30
# Server-side TCP keepalives for the writer's connection (seconds; user-settable GUCs).
_PG_KEEPALIVES = {
    "tcp_keepalives_idle": 60,
    "tcp_keepalives_interval": 10,
    "tcp_keepalives_count": 6,
}
# Scopes per IN (...) query: well under SQLite's and psycopg's parameter limits.
_CHUNK = 500
# Users named in a refusal before "and N more".
_SHOWN = 5

# Tokens of the live writers of this process on in-memory SQLite journals (only this process
# can open such a database, so this set is the whole truth for it).
_IN_PROCESS: set[str] = set()


def user_scope(key: str) -> str:
    """The scope of one user, by its stable source id."""
    return f"user:{key}"


def playbook_scope(batch: str) -> str:
    """The scope a playbook run holds on its batch for the whole run."""
    return f"{PLAYBOOK_PREFIX}{batch}"


def batch_scope(batch: str) -> str:
    """The scope of a command whose selection takes in users of `batch`."""
    return f"{BATCH_PREFIX}{batch}"


# The writers (ids) whose playbook holds this context acts for: a playbook run's own step
# commands claim their batch beside the run's lock. A context variable, so it follows the
# steps into the event loop each command runs (asyncio copies the context into its tasks)
# and nowhere else: another thread of the process (a worker) starts from its own.
_ACTING_FOR: ContextVar[frozenset[int]] = ContextVar("coexist_acting_for", default=frozenset())


@contextmanager
def acting_for(writer: Writer) -> Iterator[None]:
    """Inside this block, claims made in this context are not refused by `writer`'s
    playbook scopes (the run's own steps)."""
    if writer.id is None:
        raise ValueError("acting_for: the writer holds nothing yet")
    token = _ACTING_FOR.set(_ACTING_FOR.get() | {writer.id})
    try:
        yield
    finally:
        _ACTING_FOR.reset(token)


@dataclass(frozen=True)
class Holder:
    """A live writer, as a refused command names it."""

    id: int
    command: str
    pid: int
    host: str
    started_at: datetime
    run_id: int | None
    selection: str = ""  # what its run was asked to work on: "--batch wave1", "--users (3)"

    def describe(self, now: datetime | None = None) -> str:
        running = _duration((now or utcnow()) - self.started_at)
        run = f", run {self.run_id}" if self.run_id else ""
        what = f" {self.selection}" if self.selection else ""
        return (
            f"{self.command}{what} (PID {self.pid} on {self.host}, running for {running} "
            f"since {self.started_at:%Y-%m-%d %H:%M:%S} UTC{run})"
        )

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        return {
            "command": self.command,
            "pid": self.pid,
            "host": self.host,
            "started_at": self.started_at.isoformat(),
            "running_s": int(((now or utcnow()) - self.started_at).total_seconds()),
            "run_id": self.run_id,
            "selection": self.selection,
        }


def _selection(args: Any) -> str:
    """A run's selection as its command line said it (`runs.args`), short."""
    if not isinstance(args, dict):
        return ""
    if args.get("batch"):
        return f"--batch {args['batch']}"
    users = args.get("users")
    if isinstance(users, list) and users:
        return f"--users {users[0]}" if len(users) == 1 else f"--users ({len(users)} users)"
    return ""


def _duration(delta: timedelta) -> str:
    seconds = max(0, int(delta.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


class _Liveness(Protocol):
    """How a writer proves it is alive, and how others see that it no longer is."""

    def hold(self, token: str) -> None:
        """Take this writer's token before its row is written."""

    def registered(self, conn: Connection, writer_id: int) -> None:
        """Called in the transaction that wrote this writer's row."""

    def transaction(self, *, serialised: bool) -> contextlib.AbstractContextManager[Connection]:
        """A write transaction; `serialised`: one at a time across all writers (claims)."""

    def alive(self, conn: Connection, rows: list[dict[str, Any]]) -> set[int]:
        """The ids of the writers in `rows` whose token is still held."""

    def drop(self) -> None:
        """Give up the token (also what the OS or server does when the process dies)."""


class _FileLiveness:
    """SQLite: each writer holds ``flock(LOCK_EX)`` on its own file next to the journal.

    ``flock`` locks belong to the open file description: they conflict across processes and
    across descriptors of one process, and go when the descriptor is closed or the process
    ends (flock(2)).
    """

    def __init__(self, engine: Engine, directory: Path) -> None:
        self.engine = engine
        self.directory = directory
        self._fd: int | None = None
        self._path: Path | None = None

    def hold(self, token: str) -> None:
        # A full or read-only disk here is the journal's storage failing: StorageError.
        with db.storage_boundary(self.engine, write=True):
            self.directory.mkdir(mode=0o700, exist_ok=True)
            path = self.directory / f"{token}.lock"
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else holds it
        self._fd, self._path = fd, path

    def registered(self, conn: Connection, writer_id: int) -> None:
        return None

    def transaction(self, *, serialised: bool) -> contextlib.AbstractContextManager[Connection]:
        return db.transaction(self.engine, write=True)  # BEGIN IMMEDIATE: always one at a time

    def alive(self, conn: Connection, rows: list[dict[str, Any]]) -> set[int]:
        return {r["id"] for r in rows if self._held(r["token"])}

    def _held(self, token: str) -> bool:
        path = self.directory / f"{token}.lock"
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            # We got the lock: its writer is gone. Its row goes in this transaction.
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return False
        finally:
            os.close(fd)

    def drop(self) -> None:
        if self._fd is None:
            return
        if self._path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        os.close(self._fd)
        self._fd = self._path = None


class _InProcessLiveness:
    """In-memory SQLite: the database lives and dies with this process."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._token: str | None = None

    def hold(self, token: str) -> None:
        _IN_PROCESS.add(token)
        self._token = token

    def registered(self, conn: Connection, writer_id: int) -> None:
        return None

    def transaction(self, *, serialised: bool) -> contextlib.AbstractContextManager[Connection]:
        return db.transaction(self.engine, write=True)

    def alive(self, conn: Connection, rows: list[dict[str, Any]]) -> set[int]:
        return {r["id"] for r in rows if r["token"] in _IN_PROCESS}

    def drop(self) -> None:
        if self._token is not None:
            _IN_PROCESS.discard(self._token)
            self._token = None


class _AdvisoryLiveness:
    """PostgreSQL: the writer's own connection holds a session advisory lock on its id."""

    def __init__(self, engine: Engine) -> None:
        self.conn = engine.connect()
        for name, value in _PG_KEEPALIVES.items():
            # A server without TCP_KEEPIDLE & co. refuses non-zero values ("Connection
            # Settings"); the lock still works there, only a vanished host is noticed later.
            with contextlib.suppress(sa.exc.DBAPIError), self.conn.begin():
                self.conn.exec_driver_sql(f"SET {name} = {int(value)}")

    def hold(self, token: str) -> None:
        return None  # the lock needs the writer's id: `registered`

    def registered(self, conn: Connection, writer_id: int) -> None:
        # Session-level: it outlives this transaction (even a rollback) and goes with the
        # connection (PostgreSQL docs, "Advisory Locks").
        conn.execute(
            sa.text("SELECT pg_advisory_lock(:c, :w)"), {"c": _PG_WRITER_CLASS, "w": writer_id}
        )

    @contextmanager
    def transaction(self, *, serialised: bool) -> Iterator[Connection]:
        with db.storage_boundary(self.conn.engine, write=True), self.conn.begin():
            if serialised:
                # Bounded like SQLite's busy timeout: a writer stopped inside its claim
                # transaction (Ctrl-Z) fails the next claimer instead of hanging it.
                self.conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{_PG_CLAIM_WAIT_S}s'")
                self.conn.execute(
                    sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_CLAIMS_LOCK}
                )
            yield self.conn

    def alive(self, conn: Connection, rows: list[dict[str, Any]]) -> set[int]:
        held = conn.execute(
            sa.text(
                "SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND objsubid = 2 AND classid = CAST(:c AS oid)"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"c": _PG_WRITER_CLASS},
        )
        live = {int(oid) for (oid,) in held}
        return {r["id"] for r in rows if r["id"] in live}

    def drop(self) -> None:
        # Closing the DBAPI connection (not returning it to the pool) ends the server session,
        # which releases the advisory lock whatever state the connection was in.
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            self.conn.invalidate()
        self.conn.close()


def _liveness(engine: Engine) -> _Liveness:
    if engine.dialect.name == "postgresql":
        return _AdvisoryLiveness(engine)
    database = engine.url.database
    if database in (None, "", ":memory:"):
        return _InProcessLiveness(engine)
    journal = Path(str(database))
    return _FileLiveness(engine, journal.with_name(journal.name + "-writers"))


class Writer:
    """One process writing to a project: registered on its first claim, gone on `close`.

    Use `Writer.open` (claims at once, refuses with `Busy`), then `claim` / `release` more
    scopes as the work goes, and `close` (or ``with``) when done.
    """

    def __init__(self, engine: Engine, command: str) -> None:
        self.engine = engine
        self.command = command
        self.token = uuid.uuid4().hex
        self.id: int | None = None
        self._closed = False
        self._life = _liveness(engine)
        try:
            self._life.hold(self.token)
        except BaseException:
            self._life.drop()
            raise

    @classmethod
    def open(cls, engine: Engine, command: str, scopes: Mapping[str, str]) -> Writer:
        """Register `command` as a writer holding `scopes` (scope -> label), or raise `Busy`."""
        writer = cls(engine, command)
        try:
            writer.claim(scopes)
        except BaseException:
            writer.close()
            raise
        return writer

    def __enter__(self) -> Writer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def claim(self, scopes: Mapping[str, str]) -> None:
        """Hold `scopes` (scope -> label people read) too, or raise `Busy` holding nothing new."""
        with self._life.transaction(serialised=True) as conn:
            me = self.id if self.id is not None else self._register(conn)
            others = _live_others(conn, self._life, me)
            conflicts = _conflicts(conn, me, set(scopes), others)
            if conflicts:
                raise _refusal(conflicts, others)
            mine = _scopes_of(conn, me, scopes)
            now = utcnow()
            fresh = [
                {"scope": s, "writer_id": me, "label": label, "claimed_at": now}
                for s, label in scopes.items()
                if s not in mine
            ]
            if fresh:
                conn.execute(schema.claims.insert(), fresh)
        self.id = me

    def release(self, scopes: Iterable[str]) -> None:
        """Stop holding `scopes` (a worker's finished user); the writer stays registered."""
        if self.id is None:
            return
        c = schema.claims.c
        with self._life.transaction(serialised=False) as conn:
            for chunk in _chunks(sorted(set(scopes))):
                conn.execute(
                    schema.claims.delete().where(c.writer_id == self.id, c.scope.in_(chunk))
                )

    def note_run(self, run_id: int) -> None:
        """Record the run this writer journals into (named in refusals)."""
        if self.id is None:
            return
        with self._life.transaction(serialised=False) as conn:
            conn.execute(
                schema.writers.update().where(schema.writers.c.id == self.id).values(run_id=run_id)
            )

    def close(self) -> None:
        """Release every claim and unregister. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.id is not None:
                with self._life.transaction(serialised=False) as conn:
                    _delete_writers(conn, [self.id])
        except Exception:  # whatever it is: database, disk, a storage error
            # The journal cannot be written (the reason the command stops, most likely), and
            # close runs in `finally` blocks: raising here would hide that error. Nothing is
            # lost: the token goes below all the same, so the next writer deletes these rows.
            pass
        finally:
            self._life.drop()

    def _register(self, conn: Connection) -> int:
        stmt = schema.writers.insert().values(
            token=self.token,
            command=self.command,
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=utcnow(),
        )
        writer_id = int(conn.execute(stmt.returning(schema.writers.c.id)).scalar_one())
        self._life.registered(conn, writer_id)
        return writer_id


def _chunks(items: list[str]) -> Iterator[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _live_others(conn: Connection, life: _Liveness, me: int) -> dict[int, Holder]:
    """The other writers that are alive; the rows of dead ones are deleted on the way."""
    w, runs = schema.writers, schema.runs
    stmt = sa.select(w, runs.c.args).outerjoin(runs, runs.c.id == w.c.run_id).where(w.c.id != me)
    rows = [row_dict(r) for r in conn.execute(stmt)]
    if not rows:
        return {}
    alive = life.alive(conn, rows)
    _delete_writers(conn, [r["id"] for r in rows if r["id"] not in alive])
    return {r["id"]: _holder(r, _selection(r["args"])) for r in rows if r["id"] in alive}


def _delete_writers(conn: Connection, ids: list[int]) -> None:
    if ids:
        conn.execute(schema.claims.delete().where(schema.claims.c.writer_id.in_(ids)))
        conn.execute(schema.writers.delete().where(schema.writers.c.id.in_(ids)))


def _conflicts(
    conn: Connection, me: int, wanted: set[str], others: dict[int, Holder]
) -> list[dict[str, Any]]:
    """Claims of live other writers that stand in the way of `wanted`."""
    if not others or not wanted:
        return []
    c = schema.claims.c
    cols = sa.select(c.scope, c.label, c.writer_id).where(c.writer_id != me)
    # Playbook and batch scopes stand apart: they meet only each other (module docstring).
    runs = {s for s in wanted if s.startswith(PLAYBOOK_PREFIX)}
    marks = {s for s in wanted if s.startswith(BATCH_PREFIX)}
    plain = wanted - runs - marks
    rows: list[sa.Row[Any]] = []
    if PROJECT in plain:
        rows += conn.execute(
            cols.where(
                c.scope.not_like(f"{PLAYBOOK_PREFIX}%"), c.scope.not_like(f"{BATCH_PREFIX}%")
            )
        )
    elif plain:
        for chunk in _chunks(sorted(plain | {PROJECT})):
            rows += conn.execute(cols.where(c.scope.in_(chunk)))
    met = [s for r in runs for s in (r, batch_scope(r[len(PLAYBOOK_PREFIX) :]))]
    for chunk in _chunks(sorted(met)):
        rows += conn.execute(cols.where(c.scope.in_(chunk)))
    # A run's own steps are not kept out by the run (`acting_for`); one writer at a time
    # holds a scope, a ``batch:`` one too (in practice their ``project`` or ``enqueue``
    # claims already keep two such commands apart).
    mine = _ACTING_FOR.get()
    held = sorted(playbook_scope(m[len(BATCH_PREFIX) :]) for m in marks)
    for chunk in _chunks(held):
        rows += conn.execute(cols.where(c.scope.in_(chunk), c.writer_id.not_in(sorted(mine))))
    for chunk in _chunks(sorted(marks)):
        rows += conn.execute(cols.where(c.scope.in_(chunk)))
    return [row_dict(r) for r in rows if r.writer_id in others]


def _scopes_of(conn: Connection, me: int, scopes: Iterable[str]) -> set[str]:
    c = schema.claims.c
    held: set[str] = set()
    for chunk in _chunks(sorted(scopes)):
        held |= set(
            conn.execute(sa.select(c.scope).where(c.writer_id == me, c.scope.in_(chunk))).scalars()
        )
    return held


def _refusal(conflicts: list[dict[str, Any]], others: dict[int, Holder]) -> Busy:
    """One sentence per holder: who it is and what of ours it holds."""
    now = utcnow()
    by_holder: dict[int, list[dict[str, Any]]] = {}
    for row in conflicts:
        by_holder.setdefault(row["writer_id"], []).append(row)
    parts = []
    holders = []
    runs: list[tuple[Holder, list[str]]] = []  # playbook runs in the way, with their batches
    for writer_id, rows in sorted(by_holder.items(), key=lambda kv: others[kv[0]].started_at):
        holder = others[writer_id]
        batches = sorted(
            str(r["scope"])[len(PLAYBOOK_PREFIX) :]
            for r in rows
            if str(r["scope"]).startswith(PLAYBOOK_PREFIX)
        )
        if batches:
            runs.append((holder, batches))
            parts.append(_runbook_text(holder, batches, now))
            holds = [f"batch {b}" for b in batches]
        elif any(r["scope"] == PROJECT for r in rows):
            parts.append(f"{holder.describe(now)} is writing to this project")
            holds = ["the whole project"]
        else:
            holds = sorted(str(r["label"] or r["scope"]) for r in rows)
            shown = ", ".join(holds[:_SHOWN])
            more = f" and {len(holds) - _SHOWN} more" if len(holds) > _SHOWN else ""
            parts.append(f"{holder.describe(now)} is working on {shown}{more}")
        holders.append(_holder_dict(holder, holds, batches, now))
    if runs:
        return Busy(
            "a playbook run holds a batch this command works on: " + "; ".join(parts),
            next_step=_after_runbook(runs),
            reason="playbook-run",
            holders=holders,
        )
    return Busy(
        "another coexist command is running: " + "; ".join(parts),
        next_step=(
            "wait for it to finish, then run this command again (status, batch export and "
            "--plan runs work meanwhile); a command that was killed frees the project with "
            "its process"
        ),
        reason="writer",
        holders=holders,
    )


def _runbook_text(holder: Holder, batches: list[str], now: datetime) -> str:
    return (
        f"a runbook is in progress: {holder.describe(now)} is working on batch "
        f"{', '.join(batches)} until it ends"
    )


def _holder_dict(
    holder: Holder, holds: list[str], batches: list[str], now: datetime
) -> dict[str, Any]:
    return {
        **holder.to_dict(now),
        "holds": holds[:20],
        "holds_count": len(holds),
        # Machine-readable: the batches a playbook run holds (empty: not a run).
        "playbook_batches": batches,
    }


def runbooks_holding(engine: Engine) -> dict[str, Holder]:
    """The playbook runs in progress, by batch, that this context does not act for
    (`acting_for`): the batches whose users a command started here would be refused on.
    Reads only, like `playbook_runs`: what it says can change the moment after (a caller
    that writes claims, or re-checks when refused)."""
    mine = _ACTING_FOR.get()
    return {b: h for b, h in playbook_runs(engine).items() if h.id not in mine}


def runbook_acted_for(engine: Engine) -> int | None:
    """The run id of the playbook run this context acts for (`acting_for`): a queue's jobs
    carry it, so the worker tells the run's own jobs from those queued by others
    (`coexist.worker`). None outside a run's steps (no read then)."""
    mine = _ACTING_FOR.get()
    if not mine:
        return None
    runs = [h.run_id for h in playbook_runs(engine).values() if h.id in mine]
    return next((r for r in runs if r is not None), None)


def runbook_refused(holder: Holder, batch: str) -> dict[str, Any]:
    """One user's refusal by the run holding its batch, as a command that goes on with its
    other users reports it (`coexist retry`): the same words and next step as `Busy`."""
    now = utcnow()
    return {
        "batch": batch,
        "reason": "playbook-run",
        "error": _runbook_text(holder, [batch], now),
        "next": _after_runbook([(holder, [batch])]),
        "holder": _holder_dict(holder, [f"batch {batch}"], [batch], now),
    }


def runbook_refusal(runs: Mapping[str, Holder], what: str, *, first: str, **fields: Any) -> Busy:
    """`Busy` for a command that writes no claim but must not change `runs`' batches
    (`coexist batch import`): the refusal a claim would give, `what` saying what this
    command would have changed, `first` what to do before the runbook's own next step."""
    now = utcnow()
    by_holder: dict[int, tuple[Holder, list[str]]] = {}
    for batch, holder in sorted(runs.items()):
        by_holder.setdefault(holder.id, (holder, []))[1].append(batch)
    ordered = sorted(by_holder.values(), key=lambda hb: hb[0].started_at)
    return Busy(
        f"a playbook run holds a batch {what}: "
        + "; ".join(_runbook_text(h, b, now) for h, b in ordered),
        next_step=f"{first}; or {_after_runbook(ordered)}",
        reason="playbook-run",
        holders=[_holder_dict(h, [f"batch {x}" for x in b], b, now) for h, b in ordered],
        **fields,
    )


def _after_runbook(runs: list[tuple[Holder, list[str]]]) -> str:
    """What an operator refused by a playbook run can do: wait for it, or stop it."""
    holder, batches = runs[0]
    batch = batches[0]
    name = holder.command.removeprefix("playbook run ").strip()
    return (
        f"wait for the runbook to end (`coexist status --batch {batch}` shows where its users "
        f"stand; status, report and --plan runs work meanwhile), or leave the work to it; to "
        f"stop it now, `kill {holder.pid}` on {holder.host} (SIGTERM: it records its run as "
        f"ended and frees the batch; there is no `coexist playbook stop`), and "
        f"`coexist playbook run {name} --batch {batch}` resumes it later at the step it "
        "stopped at; a run that was killed frees its batch with its process: just run this "
        "command again"
    )


def _holder(r: dict[str, Any], selection: str = "") -> Holder:
    """A writers row (joined with what else was selected) as a Holder."""
    return Holder(
        id=r["id"],
        command=r["command"],
        pid=r["pid"],
        host=r["host"],
        started_at=r["started_at"],
        run_id=r["run_id"],
        selection=selection,
    )


def users_held(engine: Engine) -> dict[str, Holder]:
    """The users live writers hold now (a worker's job holds its user), by source id; for
    `coexist status`. Reads only: a dead writer's rows are left for the next claim to delete."""
    life = _liveness(engine)
    try:
        w, c, runs = schema.writers, schema.claims, schema.runs
        stmt = (
            sa.select(w, c.c.scope, runs.c.args)
            .join(c, c.c.writer_id == w.c.id)
            .outerjoin(runs, runs.c.id == w.c.run_id)
            .where(c.c.scope.like("user:%"))
        )
        with db.transaction(engine, write=False) as conn:
            rows = [row_dict(r) for r in conn.execute(stmt)]
            alive = life.alive(conn, rows) if rows else set()
        return {str(r["scope"])[len("user:") :]: _holder(r) for r in rows if r["id"] in alive}
    finally:
        life.drop()


def holder_of(engine: Engine, scope: str) -> Holder | None:
    """The live writer holding `scope` itself, if any (a `--plan` says a run is in progress)."""
    return _held_scopes(engine, schema.claims.c.scope == scope).get(scope)


def playbook_runs(engine: Engine) -> dict[str, Holder]:
    """The playbook runs in progress, by batch (`coexist status` names them)."""
    held = _held_scopes(engine, schema.claims.c.scope.like(f"{PLAYBOOK_PREFIX}%"))
    return {scope[len(PLAYBOOK_PREFIX) :]: h for scope, h in held.items()}


def _held_scopes(engine: Engine, where: sa.ColumnElement[bool]) -> dict[str, Holder]:
    """Scope -> live holder, for the claims `where` selects. Reads only: a dead writer's rows
    are left for the next claim to delete."""
    w, c, runs = schema.writers, schema.claims, schema.runs
    stmt = (
        sa.select(w, c.c.scope, runs.c.args)
        .join(c, c.c.writer_id == w.c.id)
        .outerjoin(runs, runs.c.id == w.c.run_id)
        .where(where)
    )
    with db.transaction(engine, write=False) as conn:
        rows = [row_dict(r) for r in conn.execute(stmt)]
        if not rows:  # the usual case: no liveness check (on PostgreSQL, no extra connection)
            return {}
        life = _liveness(engine)
        try:
            alive = life.alive(conn, rows)
        finally:
            life.drop()
    return {str(r["scope"]): _holder(r, _selection(r["args"])) for r in rows if r["id"] in alive}
