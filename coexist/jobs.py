"""Where a prestage or cutover runs its users: in the command, or as jobs on a farm of workers.

`[engine] executor` names one of `EXECUTORS`; a command hands its run to the executor the
setting names (`dispatch`) and never asks which one it got:

* ``inline`` runs the command's users in the command itself (the default; SQLite projects).
* ``queue`` keeps the project-wide decisions in the command, inline, under its project claim
  (the selection, phase checks, the licence seats prestage counts for the whole batch:
  `coexist.journal.claims` says why those span users), then puts one job per user in
  procrastinate's queue in the project's PostgreSQL journal and returns (`--wait`: follows
  the jobs to their end). `coexist worker` processes (`coexist.worker`) take the jobs.

A job is the same command for its one user (``coexist prestage --users <that user>``), run
inline inside the worker: the same journaled steps, resumed the same way when a job is run
again, so there is no second code path to keep in step. What differs inside a job is only
what it claims (`current`): ``user:<source id>`` instead of the whole project, so jobs of
different users run side by side and two workers never hold one mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

from coexist import schedule
from coexist.errors import InputError
from coexist.journal import Journal, claims, db

if TYPE_CHECKING:
    from coexist.runtime import Session

# The commands a queue runs per user, and their priority: a higher number is taken first
# (procrastinate, "Provide a job priority"), so the cutover night is not stuck behind a
# weekend's pre-stage backlog.
PRIORITY = {"cutover": 10, "prestage": 0}
# The one procrastinate task: run a command for one user (coexist.worker.user_job).
TASK_NAME = "coexist.user_job"


@dataclass(eq=False)  # compared and hashed by identity: a worker keeps a set of them
class JobRun:
    """The job a worker thread is running: its user, and how to stop its command."""

    key: str  # the user's source id (its claim: `user:<key>`)
    label: str  # the user's source address, as people read it
    worker: str  # who runs it (status shows it)
    job_id: int | None = None
    # Set when the worker stops: the user's pass pauses at its next safe point (after the
    # item in flight, never between a copy and its record) and the job is queued again.
    stop: threading.Event = field(default_factory=threading.Event)
    _loop: asyncio.AbstractEventLoop | None = None
    _task: asyncio.Task[Any] | None = None
    _cancelled: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def attach(self) -> None:
        """Called by the command's session in its own event loop: what `cancel` stops."""
        with self._lock:
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.current_task()
            cancelled = self._cancelled
        if cancelled and self._task is not None:
            self._task.cancel()

    def cancel(self) -> None:
        """Stop the command (thread-safe): its session ends, its claim goes, its run ends
        'failed'; what it journaled stays, and the job's next run continues from there."""
        with self._lock:
            self._cancelled = True
            loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # its loop already closed: nothing to stop
                loop.call_soon_threadsafe(task.cancel)

    @property
    def cancelled(self) -> bool:
        return self._cancelled


_JOB: ContextVar[JobRun | None] = ContextVar("coexist_job", default=None)


def current() -> JobRun | None:
    """The job this command runs for (None: an operator's command)."""
    return _JOB.get()


@contextlib.contextmanager
def running(job: JobRun) -> Iterator[JobRun]:
    """Run a command for `job` inside this block (its session claims only the job's user)."""
    token = _JOB.set(job)
    try:
        with schedule.leaving(job.stop):  # its passes leave rather than wait, and stop
            yield job
    finally:
        _JOB.reset(token)


@dataclass
class Request:
    """One prestage or cutover as an executor receives it."""

    command: str
    directory: Path | None
    args: dict[str, Any]  # as the run records them (`runs.args`)
    # Keyword arguments a job passes to the command for its one user (JSON-serialisable).
    options: dict[str, Any]
    # The project-wide part of the command (selection, phase checks, licence seats): run in
    # the enqueuing command under its project claim; returns the users to enqueue.
    select: Callable[[Session], Awaitable[list[dict[str, Any]]]]
    # The whole command, inline (what `inline` runs, and what each job runs for its user).
    inline: Callable[[], dict[str, Any]]
    at: dt.datetime | None = None  # --at: the jobs are scheduled for then
    wait: bool = False  # --wait: follow the jobs until they end


class Executor(Protocol):
    def submit(self, request: Request) -> dict[str, Any]:
        """Run or enqueue the request; the command's result."""


class Inline:
    """The command runs its users itself."""

    def submit(self, request: Request) -> dict[str, Any]:
        return request.inline()


class Queue:
    """One job per user in procrastinate's queue in the PostgreSQL journal."""

    def submit(self, request: Request) -> dict[str, Any]:
        from coexist import worker  # procrastinate is imported only by projects that queue

        return worker.enqueue(request)


EXECUTORS: dict[str, Executor] = {"inline": Inline(), "queue": Queue()}
INLINE = EXECUTORS["inline"]


def dispatch(request: Request, *, executor: str, plan: bool) -> dict[str, Any]:
    """Hand `request` to the executor `[engine] executor` names. A plan, and a job's own
    command inside a worker, always run inline (a plan writes nothing to enqueue; a job is
    the inline run of its user)."""
    chosen = INLINE if plan or current() is not None else EXECUTORS[executor]
    return chosen.submit(request)


def queue_refused(journal_url: str, file: Path) -> InputError:
    """`[engine] executor = "queue"` on a journal that has no task queue (SQLite)."""
    return InputError(
        f'[engine] executor = "queue" needs a PostgreSQL journal; this project journals to '
        f"{journal_url.split('://', 1)[0]} ({file})",
        next_step="set [project] journal to a postgresql:// URL (COEXIST_JOURNAL_URL), or set "
        '[engine] executor = "inline"',
        key="engine.executor",
    )


def who_runs(journal: Journal) -> dict[str, str]:
    """Per user (source id): the worker job running it now, else its job waiting in the queue;
    users with neither are left out. For `coexist status`."""
    out: dict[str, str] = {}
    if journal.engine.dialect.name == "postgresql":
        with db.transaction(journal.engine, write=False) as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT args->>'user' AS key, args->>'command' AS command, status, "
                    "scheduled_at, args->'window' AS window FROM procrastinate_jobs "
                    "WHERE task_name = :task AND status IN ('todo', 'doing') ORDER BY id"
                ),
                {"task": TASK_NAME},
            )
            for key, command, status, at, window in rows:
                # 'doing' with no live holder: its worker died; the job is taken again once
                # that worker's heartbeat lapses (coexist.worker).
                out[str(key)] = (
                    _queued(str(command), at, window)
                    if status == "todo"
                    else (f"{command} taken by a worker that stopped (it is taken again)")
                )
    for key, holder in claims.users_held(journal.engine).items():
        out[key] = holder.describe()
    return out


def _queued(command: str, at: dt.datetime | None, window: Any) -> str:
    """A waiting job as status says it: why it waits, and until when."""
    if isinstance(window, dict) and window.get("opens"):  # deferred by its closed run window
        return (
            f"{command} waiting for its run window (opens {window['opens']}, "
            f"{window.get('window') or 'run window'})"
        )
    # A job queued again at once (its worker stopped) has a scheduled time too, now past.
    later = at is not None and at > dt.datetime.now(dt.UTC)
    when = f" for {at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC" if at and later else ""
    return f"{command} queued{when}"


def job_workers(journal: Journal, job_ids: list[int]) -> dict[int, str]:
    """The worker running each job, from its run (`runs.args` names worker and job); a job
    whose run has not started yet is left out."""
    if not job_ids or journal.engine.dialect.name != "postgresql":
        return {}
    with db.transaction(journal.engine, write=False) as conn:
        rows = conn.execute(
            sa.text(
                "SELECT (args->>'job')::bigint, args->>'worker' FROM runs "
                "WHERE (args->>'job')::bigint = ANY(:ids) ORDER BY id"
            ),
            {"ids": list(job_ids)},
        )
        return {int(job): str(worker) for job, worker in rows if worker}


def queued_users(journal: Journal, command: str) -> list[str]:
    """The users (source ids) with a job of `command` queued or running."""
    if journal.engine.dialect.name != "postgresql":
        return []
    with db.transaction(journal.engine, write=False) as conn:
        rows = conn.execute(
            sa.text(
                "SELECT DISTINCT args->>'user' FROM procrastinate_jobs WHERE task_name = :task "
                "AND status IN ('todo', 'doing') AND args->>'command' = :command"
            ),
            {"task": TASK_NAME, "command": command},
        )
        return sorted(str(key) for (key,) in rows)
