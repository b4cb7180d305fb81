"""`coexist worker`: procrastinate workers on the project's PostgreSQL journal (issue 16).

One job per user and command (`coexist.jobs`): the job runs the command inline for its one
user, in a thread of the worker with its own event loop, claiming only ``user:<source id>``.

What makes a farm of workers safe (each point with what carries it):

* **One job per mailbox.** Jobs carry the queueing lock and the lock ``user:<source id>``
  (procrastinate: at most one such job waits in the queue, and no two run at once), and the
  job claims the user in the journal before its first write (`coexist.journal.claims`): a
  second holder is refused with Busy and the job is tried again later (`_Retry`), so even a
  job procrastinate wrongly took for stalled cannot run beside the live one.
* **Cutover before pre-stage**: `coexist.jobs.PRIORITY`; each command has its own queue
  (``coexist worker --queues cutover`` serves only cutovers).
* **A killed worker's jobs are taken again.** procrastinate 3 workers write a heartbeat
  (``update_heartbeat_interval``); jobs still 'doing' for a worker whose heartbeat is older
  than ``stalled_after`` are stalled (`JobManager.get_stalled_jobs`), and every worker looks
  for them (`_retry_stalled`, the loop procrastinate's docs suggest as a periodic task,
  "Retry stalled jobs") and sets them back to 'todo'. The dead worker's journal claims went
  with its database connection (an advisory lock), so the next job's claim succeeds, and its
  run continues the user where the journal says it stopped: the item map names every copy
  made, so nothing is copied twice.
* **Stopping** (SIGTERM, SIGINT): the worker takes no new job and closes its running jobs'
  run gates (`JobRun.stop`, OR'ed into `schedule.RunGate.closed_now`), so each pass pauses
  at its next safe point, after the item in flight and never between a copy and its record
  (journaled `paused` with its counts), and its job goes back to the queue at once
  (`Requeued`) for another worker. A pass that reaches no safe point within ``stop_grace_s``
  is cancelled (its session ends, its claim goes, copies already made are journaled by the
  pass's sink; an import in flight stays marked 'importing' and the next run settles it).
* **Run windows**: a job whose user's window is closed is deferred to the window's next
  opening before it opens a session (`_window_open`), and a window that closes mid-pass
  pauses the pass at a safe point and defers the job the same way: a closed window never
  holds a worker slot. Deferring queues a new job for the opening and ends this one
  succeeded (`_defer_to_opening`), so closed windows use up no retries (attempts).
* **What the journal says**: a job's run that paused for its worker's stop ends `paused`,
  one deferred by its window `deferred`, one cancelled after ``stop_grace_s`` `stopped`
  (its pass too): none of them a failure (`coexist.runtime`).
* **One job per user and command**: the enqueuing command (`coexist retry` among them)
  queues nothing for a user whose job of that command waits or runs, and says so
  (`already_queued`, `already_running` with its worker).
* **Playbook runs**: a job queued by a run's own step carries the run's id (``runbook``,
  `claims.runbook_acted_for`); a job for a user of a batch a run holds that does not carry
  it (queued before the run started) is refused by the worker before it opens a session
  (`_runbook_allows`: the job ends failed, a warning on the user says why and what to do),
  and the run's enqueue replaces such a job still waiting with its own (`_defer`).
* **Per-mailbox throttle budgets** (Outlook's, per app per mailbox) are kept by the one
  worker holding the mailbox for its pass: the user claim pins it (runtime._writer).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import procrastinate
from procrastinate import exceptions as pc_exceptions
from procrastinate import jobs as pc_jobs
from procrastinate.retry import BaseRetryStrategy, RetryDecision

from coexist import jobs, schedule
from coexist.errors import Busy, InputError
from coexist.journal import Journal, claims
from coexist.journal.db import normalize_url
from coexist.runtime import project_dir, session
from coexist.settings import Project, load_project

log = logging.getLogger(__name__)

# Seconds between tries of a job whose user another writer holds (an inline command holding
# the project, or the job's previous run in a worker whose heartbeat has not lapsed yet).
BUSY_RETRY_S = 5
# Seconds a stopping worker gives its running passes to reach their next safe point (the
# item in flight finishes and is journaled) before it cancels them (`--stop-grace`).
STOP_GRACE_S = 60.0
# Final job states (procrastinate's Status).
FINAL = frozenset({"succeeded", "failed", "cancelled", "aborted"})


class Requeued(Exception):
    """A job stopped by its worker's shutdown: back to the queue for another worker."""


class HeldByRunbook(Exception):
    """A job for a user of a batch a playbook run holds, queued by someone other than that
    run (before it started): it ends failed, not retried, and says so in the journal."""


class _Retry(BaseRetryStrategy):
    """Busy: try again in a few seconds; Requeued: at once. Anything else ends the job
    (its user's failure is in the journal; `coexist retry` enqueues it again)."""

    def get_retry_decision(
        self, *, exception: BaseException, job: pc_jobs.Job
    ) -> RetryDecision | None:
        if isinstance(exception, Requeued):
            return RetryDecision(retry_in={"seconds": 0})
        if isinstance(exception, Busy):
            return RetryDecision(retry_in={"seconds": BUSY_RETRY_S})
        return None


def conninfo(journal_url: str) -> str:
    """The libpq connection string of a journal URL (SQLAlchemy's ``postgresql+psycopg``)."""
    return (
        normalize_url(journal_url)
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


def queued_project(project: Project) -> str:
    """The project's journal URL, or the InputError of a journal with no task queue."""
    if normalize_url(project.journal_url).get_backend_name() != "postgresql":
        raise jobs.queue_refused(project.journal_url, project.file)
    return project.journal_url


def make_app(journal_url: str) -> procrastinate.App:
    """A procrastinate app on the journal's database, with coexist's one task."""
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(conninfo=conninfo(journal_url))
    )
    app.task(name=jobs.TASK_NAME, pass_context=True, retry=_Retry())(user_job)
    return app


def _commands() -> dict[str, Callable[..., dict[str, Any]]]:
    from coexist import commands  # commands imports jobs; this module is imported lazily

    return {"prestage": commands.prestage, "cutover": commands.cutover}


async def user_job(
    context: procrastinate.JobContext,
    *,
    command: str,
    user: str,
    label: str,
    options: dict[str, Any],
    window: dict[str, Any] | None = None,
    runbook: int | None = None,
) -> dict[str, Any]:
    """Run `command` for one user, inline, in a thread of this worker (its own event loop).
    `window`: set on the job a closed run window deferred (`_defer_to_opening`): the job it
    follows (`after`), when the window opens and which it is (`coexist status` says so).
    `runbook`: the playbook run that queued it (`claims.runbook_acted_for`), if one did."""
    extra = context.additional_context
    directory = Path(str(extra["project"]))
    pool: concurrent.futures.ThreadPoolExecutor = extra["pool"]
    running: set[jobs.JobRun] = extra["running"]
    run = jobs.JobRun(key=user, label=label, worker=str(context.worker_name), job_id=context.job.id)
    call = functools.partial(_commands()[command], directory, users=[user], **options)

    def in_thread() -> dict[str, Any]:
        _runbook_allows(directory, command, user, label, runbook, run)  # before anything
        _window_open(directory, user)  # closed: deferred before any session or claim
        with jobs.running(run):
            return call()

    running.add(run)
    if extra["stopping"].is_set():  # taken just as the worker stops: its pass starts none
        run.stop.set()
    future = asyncio.get_running_loop().run_in_executor(pool, in_thread)
    try:
        result = await asyncio.shield(future)
    except asyncio.CancelledError:
        # The worker is stopping and its grace is over (the pass did not reach a safe point
        # in time): stop the command, let it close its session (claim, run), then hand the
        # job back to the queue.
        run.cancel()
        with contextlib.suppress(BaseException):
            await future
        raise Requeued(f"{command} of {label} stopped with its worker") from None
    except schedule.LeaveForLater as left:
        # The pass paused at a safe point: its worker is stopping, or its window closed.
        if left.at is None:
            raise Requeued(f"{command} of {label} paused: {left.why}") from None
        after = await _defer_to_opening(context, command, user, label, options, left, runbook)
        return {"deferred": left.why, "opens": left.opens, "next_job": after}
    finally:
        running.discard(run)
    if run.cancelled:
        raise Requeued(f"{command} of {label} stopped with its worker")
    await _again_when_due(context, command, user, label, options, result, runbook)
    return {
        "steps": result.get("steps"),
        "failed": len(result.get("failed") or []),
        "waiting": len(result.get("waiting") or []),
    }


def _runbook_allows(
    directory: Path, command: str, user: str, label: str, runbook: int | None, run: jobs.JobRun
) -> None:
    """`HeldByRunbook` when a playbook run holds the user's batch and this job is not one
    of its own: it was queued before the run started (typed enqueues are refused during a
    run), and running it now would do an operator's command in the middle of a runbook -
    what the run's lock is for. Jobs claim only their user (`coexist.runtime._writer`), so
    the worker checks before it opens a session.

    The job ends failed, not queued again: a job waiting for the run to end would hold up a
    run that follows it (the run's enqueue finds it queued, procrastinate's queueing lock
    allows one waiting job per user, and `--wait` follows it) - though the run's enqueue
    replaces a waiting job of another's with its own (`_defer`). Nothing is lost: the
    refusal is in the journal (a warning on the user, with the run's details and what to
    do) and in the job's end; nothing is done twice: the job ran nothing."""
    project = load_project(directory)
    with Journal.open(project.journal_url) as journal:
        batch = str((journal.get_item("user", user) or {}).get("batch") or "")
        holder = claims.playbook_runs(journal.engine).get(batch) if batch else None
        if holder is None or (runbook is not None and holder.run_id == runbook):
            return
        refusal = claims.runbook_refused(holder, batch)
        text = (
            f"{command} job {run.job_id} of {label} on {run.worker} refused: it was queued "
            f"before the runbook on batch {batch} started; {refusal['error']}"
        )
        next_step = (
            f"leave {label} to the runbook, or queue it again once the runbook has ended "
            f"(`coexist {command} --users {label}`)"
        )
        journal.event(
            None,
            "warning",
            text,
            item_key=user,
            data={**refusal, "job": run.job_id, "command": command, "next": next_step},
        )
    raise HeldByRunbook(f"{text}; next: {next_step}")


def _window_open(directory: Path, user: str) -> None:
    """`schedule.LeaveForLater` when the user's run window is closed now (the job is deferred
    to its opening without opening a session: no run, no claim, no worker slot held)."""
    project = load_project(directory)
    with Journal.open(project.journal_url) as journal:
        item = journal.get_item("user", user) or {}
        gate = schedule.gate_for(project, journal, item.get("batch") or None, subject=user)
    if gate is not None and gate.closed_now():
        raise gate.leave_for_opening()


async def _defer_to_opening(
    context: procrastinate.JobContext,
    command: str,
    user: str,
    label: str,
    options: dict[str, Any],
    left: schedule.LeaveForLater,
    runbook: int | None = None,
) -> int | None:
    """A closed run window: a new job for the user at the window's opening, and this one
    ends (succeeded). Not a retry of this job: procrastinate counts every retry as an
    attempt (`procrastinate_retry_job` adds one), and a night of closed windows must not
    look like, or use up, a job's tries. The new job names this one (`window.after`), so
    `--wait` follows it (`follow`). Returns its id (None: another job of this command was
    queued for the user meanwhile, which looks at the window itself when it runs)."""
    assert left.at is not None
    job_id = context.job.id
    window: dict[str, Any] = {"after": job_id, "opens": left.opens, "window": left.window}
    kwargs: dict[str, Any] = {"command": command, "user": user, "label": label, "options": options}
    kwargs |= _stamp(runbook)
    task = context.app.tasks[jobs.TASK_NAME]
    log.info("%s of %s %s: queued again for then", command, label, left.why)
    try:
        return await _configure(task, command, user, left.at).defer_async(**kwargs, window=window)
    except pc_exceptions.AlreadyEnqueued:
        pass
    # One job of the user waits already (an operator queued it while this one ran).
    waiting = await context.app.job_manager.list_jobs_async(
        task=jobs.TASK_NAME, status="todo", queueing_lock=_scope(user)
    )
    if any(j.task_kwargs.get("command") == command for j in waiting):
        return None  # it is this command's: it runs the user's pass then
    # The other command's (cutover queued behind a pre-stage): this one is kept as well,
    # without the queueing lock (procrastinate allows one waiting job per lock value); the
    # lock still runs the two one after the other.
    deferrer = task.configure(
        queue=command, priority=jobs.PRIORITY[command], lock=_scope(user), schedule_at=left.at
    )
    return await deferrer.defer_async(**kwargs, window=window)


async def _again_when_due(
    context: procrastinate.JobContext,
    command: str,
    user: str,
    label: str,
    options: dict[str, Any],
    result: dict[str, Any],
    runbook: int | None = None,
) -> None:
    """A user left waiting on Microsoft 365 (a mailbox still provisioning) gets its next job
    at the time the command said to look again, as `coexist retry` would run it."""
    looks = [w["look_again_at"] for w in result.get("waiting") or [] if w.get("look_again_at")]
    if not looks:
        return
    when = dt.datetime.fromisoformat(str(min(looks)))
    task = context.app.tasks[jobs.TASK_NAME]
    with contextlib.suppress(pc_exceptions.AlreadyEnqueued):  # the operator enqueued it
        await _configure(task, command, user, when).defer_async(
            command=command, user=user, label=label, options=options, **_stamp(runbook)
        )


def _stamp(runbook: int | None) -> dict[str, Any]:
    """The job argument naming the playbook run that queued it (none: not a run's job; the
    jobs others queue keep the arguments they always had)."""
    return {} if runbook is None else {"runbook": runbook}


def _scope(user: str) -> str:
    """A user's job lock and queueing lock: the scope of its journal claim."""
    return f"user:{user}"


def _configure(
    task: procrastinate.tasks.Task[Any, Any, Any], command: str, user: str, at: dt.datetime | None
) -> pc_jobs.JobDeferrer:
    scope = _scope(user)
    return task.configure(
        queue=command,
        priority=jobs.PRIORITY[command],
        lock=scope,
        queueing_lock=scope,
        schedule_at=at,
    )


# -- the enqueuing command ----------------------------------------------------------------
def enqueue(request: jobs.Request) -> dict[str, Any]:
    """The project-wide part inline under the project claim, then one job per user."""
    project = load_project(project_dir(request.directory))
    url = queued_project(project)

    async def select(sess: Any) -> dict[str, Any]:
        users = await request.select(sess)
        return {
            "users": [(str(u["key"]), str(u.get("source_address"))) for u in users],
            "skipped": sess.skipped,
        }

    async def decide() -> dict[str, Any]:
        # Under `enqueue`, not `project`: the workers' user claims stay where they are.
        scope = {claims.ENQUEUE: f"queueing {request.command} jobs"}
        async with session(request.directory, request.command, request.args, claim=scope) as s:
            return await select(s)

    chosen = asyncio.run(decide())
    with Journal.open(url) as journal:
        runbook = claims.runbook_acted_for(journal.engine)  # one of a playbook run's steps?
    deferred, already = asyncio.run(_defer(url, request, chosen["users"], runbook))
    with Journal.open(url) as journal:
        workers = jobs.job_workers(journal, [a.job for a in already if a.running and a.job])
    result: dict[str, Any] = {
        "plan": False,
        "executor": "queue",
        "command": request.command,
        "users": len(chosen["users"]),
        "enqueued": [{"user": label, "job": job} for label, job in deferred],
        # Queued nothing for these: a job of theirs waits in the queue, or one of this
        # command runs on a worker now (a second would only run the user again).
        "already_queued": [a.label for a in already if not a.running],
        "already_running": [
            {"user": a.label, "job": a.job, "worker": workers.get(a.job or 0)}
            for a in already
            if a.running
        ],
        "scheduled_at": request.at.isoformat() if request.at else None,
        "skipped": chosen["skipped"],
        "failed": [],
        "waiting": [],
        "steps": {},
        "changed": 0,
    }
    if request.wait:
        # The jobs it queued, and those it found queued or running: all of them end.
        followed = [*deferred, *((a.label, a.job) for a in already if a.job is not None)]
        ended = follow(url, [job for _, job in followed])
        result["jobs"] = dict(Counter(ended.values()))
        result["failed"] = _failed_users(project, [key for key, _ in chosen["users"]])
        named = {str(f["user"]) for f in result["failed"]}
        # A job that raised (not a step that failed: those are in the journal, above).
        result["failed"] += [
            {
                "user": label,
                "item": None,
                "step": f"{request.command} job {job}",
                "error": f"the job ended {ended[job]}",
                "next": "see the worker's log; `coexist retry` queues the user again",
            }
            for label, job in followed
            if ended.get(job) != "succeeded" and label not in named
        ]
    return result


@dataclass(frozen=True)
class Already:
    """A user the enqueuing command queued nothing for: its job waits, or runs now."""

    label: str
    job: int | None  # None: it ended between the refusal and the look at it
    running: bool


async def _defer(
    url: str, request: jobs.Request, users: list[tuple[str, str]], runbook: int | None = None
) -> tuple[list[tuple[str, int]], list[Already]]:
    app = make_app(url)
    deferred: list[tuple[str, int]] = []
    already: list[Already] = []
    async with app.open_async():
        task = app.tasks[jobs.TASK_NAME]
        manager = app.job_manager
        for key, label in users:
            # The queueing lock refuses a second *waiting* job, not one beside a running
            # job: `coexist retry` while a worker runs the user would queue it again.
            # (Checked, then queued: a job taken in between is run again after, harmless.)
            doing = await manager.list_jobs_async(
                task=jobs.TASK_NAME, status="doing", lock=_scope(key)
            )
            mine = [j for j in doing if j.task_kwargs.get("command") == request.command]
            if mine and mine[0].id is not None:
                already.append(Already(label, mine[0].id, running=True))
                continue
            kwargs: dict[str, Any] = {"command": request.command, "user": key, "label": label}
            kwargs |= {"options": request.options, **_stamp(runbook)}
            deferrer = _configure(task, request.command, key, request.at)
            try:
                job_id = await deferrer.defer_async(**kwargs)
            except pc_exceptions.AlreadyEnqueued:
                # Its job waits in the queue already: one per mailbox.
                waiting = await manager.list_jobs_async(
                    task=jobs.TASK_NAME, status="todo", queueing_lock=_scope(key)
                )
                first = next(iter(waiting), None)
                if await _cancelled_for_run(manager, first, runbook):
                    # A playbook run's step found a job queued before the run started:
                    # the worker would refuse it (`_runbook_allows`) and the step would
                    # follow it, so the run takes the user over with a job of its own.
                    log.warning(
                        "%s of %s: job %s queued before the playbook run was cancelled; "
                        "the run's own job replaces it",
                        request.command,
                        label,
                        first.id if first else None,
                    )
                    deferred.append((label, await deferrer.defer_async(**kwargs)))
                    continue
                already.append(Already(label, first.id if first else None, running=False))
                continue
            deferred.append((label, job_id))
    return deferred, already


async def _cancelled_for_run(manager: Any, job: pc_jobs.Job | None, runbook: int | None) -> bool:
    """Whether `job`, waiting for a user a playbook run's step queues (`runbook`), was queued
    by someone else and is now cancelled (procrastinate cancels only a 'todo' job: False when
    a worker took it meanwhile)."""
    if runbook is None or job is None or job.id is None:
        return False
    if job.task_kwargs.get("runbook") == runbook:
        return False
    return bool(await manager.cancel_job_by_id_async(job.id))


def follow(url: str, job_ids: list[int], poll_s: float = 2.0) -> dict[int, str]:
    """--wait: until every job ended; each job's final state (by the ids given). A job a
    closed run window deferred ended by queueing its successor (`_defer_to_opening`): it is
    followed through its successors to the last one's end."""
    import psycopg

    if not job_ids:
        return {}
    now = {job: job for job in job_ids}  # job given -> the job of its chain followed now
    with psycopg.connect(conninfo(url), autocommit=True) as conn:
        while True:
            rows = conn.execute(
                "SELECT id, status::text FROM procrastinate_jobs WHERE id = ANY(%s)",
                (list(now.values()),),
            ).fetchall()
            states = {int(job): str(status) for job, status in rows}
            ended = [job for job in now.values() if states.get(job) == "succeeded"]
            nexts: dict[int, int] = dict(
                conn.execute(
                    "SELECT (args->'window'->>'after')::bigint, id FROM procrastinate_jobs "
                    "WHERE task_name = %s AND (args->'window'->>'after')::bigint = ANY(%s)",
                    (jobs.TASK_NAME, ended),
                ).fetchall()
                if ended
                else []
            )
            if nexts:  # a deferred job's successor: follow it instead (and look again now)
                now = {given: nexts.get(job, job) for given, job in now.items()}
                continue
            # A job no longer in the table was deleted (procrastinate's cleanup): over too.
            if {states.get(job, "deleted") for job in now.values()} <= FINAL | {"deleted"}:
                return {given: states.get(job, "deleted") for given, job in now.items()}
            log.info("jobs: %s", dict(Counter(states.values())))
            time.sleep(poll_s)


def _failed_users(project: Project, keys: list[str]) -> list[dict[str, Any]]:
    with Journal.open(project.journal_url) as journal:
        failed = {s["item_key"]: s for s in journal.steps(status="failed")}
        out = []
        for key in keys:
            item = journal.get_item("user", key)
            if item is not None and item.get("state") == "failed":
                step = failed.get(key) or {}
                out.append(
                    {
                        "user": item.get("source_address"),
                        "item": key,
                        "step": step.get("name"),
                        "error": step.get("error_message"),
                        "next": step.get("next_step"),
                    }
                )
        return out


# -- the worker ---------------------------------------------------------------------------
def serve(
    directory: Path | None,
    *,
    concurrency: int = 2,
    queues: list[str] | None = None,
    name: str | None = None,
    heartbeat_s: float = 10.0,
    stalled_after_s: float = 30.0,
    stop_grace_s: float = STOP_GRACE_S,
) -> None:
    """Run a worker until SIGTERM / SIGINT (procrastinate's signal handlers)."""
    if concurrency < 1:
        raise InputError("--concurrency must be at least 1", next_step="--concurrency 2")
    if stalled_after_s <= heartbeat_s:
        raise InputError(
            f"--stalled-after {stalled_after_s:g} must be longer than --heartbeat {heartbeat_s:g}",
            next_step="--heartbeat 10 --stalled-after 30  (procrastinate's defaults)",
        )
    unknown = sorted(set(queues or []) - set(jobs.PRIORITY))
    if unknown:
        raise InputError(
            f"--queues: unknown queue(s) {', '.join(unknown)}",
            next_step=f"--queues {','.join(sorted(jobs.PRIORITY))}",
        )
    folder = project_dir(directory)
    project = load_project(folder)
    url = queued_project(project)
    Journal.open(url).close()  # the journal and the queue's tables at the newest revision
    worker_name = name or f"worker {socket.gethostname()}:{os.getpid()}"
    asyncio.run(
        _serve(
            url,
            folder,
            concurrency,
            queues,
            worker_name,
            heartbeat_s,
            stalled_after_s,
            stop_grace_s,
        )
    )


async def _serve(
    url: str,
    folder: Path,
    concurrency: int,
    queues: list[str] | None,
    name: str,
    heartbeat_s: float,
    stalled_after_s: float,
    stop_grace_s: float,
) -> None:
    app = make_app(url)
    running: set[jobs.JobRun] = set()
    stopping = threading.Event()
    loop = asyncio.get_running_loop()
    # One thread per job slot: each command runs its own event loop there.
    with concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="job") as pool:
        async with app.open_async():
            stalled = asyncio.create_task(_retry_stalled(app, stalled_after_s, heartbeat_s))
            serving = asyncio.create_task(
                app.run_worker_async(
                    queues=queues or sorted(jobs.PRIORITY),
                    name=name,
                    concurrency=concurrency,
                    additional_context={
                        "project": str(folder),
                        "pool": pool,
                        "running": running,
                        "stopping": stopping,
                    },
                    update_heartbeat_interval=heartbeat_s,
                    stalled_worker_timeout=stalled_after_s,
                    shutdown_graceful_timeout=stop_grace_s,
                    # Ours below: the running passes must hear of the stop first.
                    install_signal_handlers=False,
                )
            )

            def stop() -> None:
                # Every running pass pauses after its item in flight; its job is queued
                # again at once (user_job). Cancelling the worker's task is procrastinate's
                # graceful stop: no new job, `stop_grace_s` for the running ones, then
                # they are cancelled (the fallback for a pass that reaches no safe point).
                if not stopping.is_set():
                    log.info("stopping: %d running job(s) pause after their item", len(running))
                stopping.set()
                for run in list(running):
                    run.stop.set()
                serving.cancel()

            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop)
            try:
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
            finally:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    loop.remove_signal_handler(signum)
                stalled.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await stalled


async def _retry_stalled(app: procrastinate.App, stalled_after_s: float, every_s: float) -> None:
    """Set the jobs of workers whose heartbeat lapsed back to 'todo' (every worker looks;
    procrastinate's retry locks the job row, so two workers retrying one job retry it once:
    the second finds it no longer 'doing' and is refused, which is ignored here)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            stalled = await app.job_manager.get_stalled_jobs(
                seconds_since_heartbeat=stalled_after_s, task_name=jobs.TASK_NAME
            )
            for job in stalled:
                with contextlib.suppress(Exception):
                    await app.job_manager.retry_job(job)
                    log.info("job %s of a stopped worker is queued again", job.id)
        except Exception as exc:  # the database away for a moment: look again next time
            log.warning("looking for stalled jobs failed: %s", exc)
