"""Wiring one command invocation: project → journal → adapters → runner.

Commands in `coexist.commands` describe *what* to run; this module owns the
setup and teardown around it, so every command journals its run the same way,
honours plan mode the same way, claims the project the same way (one writer at a
time, `coexist.journal.claims`), and closes its connections.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from coexist import batches, jobs, progress, schedule
from coexist.engine.context import (
    Context,
    SideOptions,
    check_command,
    open_sides,
    side_capabilities,
)
from coexist.engine.runner import Outcome, Runner
from coexist.errors import StorageError
from coexist.gcfreeze import freeze_startup_objects
from coexist.journal import Journal, claims
from coexist.journal.claims import PROJECT, Writer, user_scope
from coexist.retry import RetryPolicy
from coexist.settings import Project, load_project
from coexist.tenants.mailbox_governor import MailboxLimits
from coexist.tenants.plan import WriteRecorder
from coexist.tenants.throttle import WriteLimits

T = TypeVar("T")
log = logging.getLogger(__name__)


def project_dir(path: Path | str | None) -> Path:
    return Path(path or ".").resolve()


def retry_policy(project: Project) -> RetryPolicy:
    return RetryPolicy(
        max_attempts=project.engine.max_attempts, max_wait_s=float(project.engine.retry_max_wait_s)
    )


@dataclass
class Session:
    """One command's run: its context, runner and what it planned or did."""

    project: Project
    journal: Journal
    ctx: Context
    runner: Runner
    recorder: WriteRecorder | None
    outcomes: list[Outcome] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)  # users left out, and why
    # A plan's note: the playbook runs holding a batch of its selection (`runbooks_in_progress`).
    runbooks: dict[str, Any] = field(default_factory=dict)

    @property
    def planning(self) -> bool:
        return self.recorder is not None

    def planned_writes(self) -> list[dict[str, Any]]:
        if self.recorder is None:
            return []
        return [
            {
                "system": w.system,
                "tenant": w.tenant,
                "operation": w.operation,
                "params": _safe_params(w.params),
                "step": w.step,
                "text": w.describe(),
            }
            for w in self.recorder.writes
        ]


def _log_outcome(o: Outcome) -> None:
    """Each step's end in the run's log (names for people, ids for the -v reader)."""
    who = o.label or o.subject
    if o.status == "failed":
        log.warning("%s %s failed: %s (next: %s)", who, o.name, o.error, o.next_step)
    elif o.status == "waiting":
        log.info("%s %s waiting: %s; look again at %s", who, o.name, o.detail, o.look_again_at)
    else:
        log.info("%s %s %s%s: %s", who, o.name, o.status, " changed" if o.changed else "", o.detail)
    log.debug("step %s of item %s", o.step, o.subject)


def _safe_params(params: dict[str, Any]) -> dict[str, Any]:
    """Never print a password, even a generated one, in a plan."""
    return {k: ("[redacted]" if k.lower() == "password" else v) for k, v in params.items()}


def open_journal(project: Project) -> Journal:
    return Journal.open(project.journal_url)


# Sessions that record nothing about users or groups: they run beside a writer. (Plan-mode
# sessions, preflight's among them, never claim: they write nothing.)
READ_ONLY_SESSIONS = frozenset({"verify-mailflow"})


def project_writer(journal: Journal, command: str, args: Mapping[str, Any] | None = None) -> Writer:
    """Claim the whole project for `command` (and the batches of its selection `args`:
    `batch_claim`), or raise `Busy` naming who holds it.

    Every writing command claims the project, not just its users, until the decisions that
    span users have claims of their own (`coexist.journal.claims` says which and why).
    """
    marks = batch_claim(journal, args) if args else {}
    return Writer.open(journal.engine, command, {PROJECT: "the whole project"} | marks)


@contextmanager
def batch_hold(journal: Journal, command: str, args: Mapping[str, Any]) -> Iterator[None]:
    """For a command that writes about its selected users outside a session and claims
    nothing else (verify-credentials, credentials request / revoke): hold the batches of
    its selection, so a playbook run on one of them refuses it (`Busy`) before it writes,
    as it refuses a session's command. Runs beside project writers, as before."""
    marks = batch_claim(journal, args) if jobs.current() is None else {}
    if not marks:
        yield
        return
    with Writer.open(journal.engine, command, marks):
        yield


def _writer(
    journal: Journal,
    command: str,
    claim: Mapping[str, str] | None = None,
    args: Mapping[str, Any] | None = None,
) -> Writer:
    """The project's claim (or `claim`: coexist.worker.enqueue) and the batches its selection
    takes in, or inside a worker's job only its user's (`coexist.jobs`): the enqueuing command
    made the project-wide decisions, and the batch claim, under its own. Holding the user
    also pins the mailbox to this worker for its pass, so its Outlook budget
    (`MailboxLimits`, per app per mailbox) is paced by one governor, never two."""
    job = jobs.current()
    if claim is None and job is not None:
        return Writer.open(
            journal.engine, f"{command} on {job.worker}", {user_scope(job.key): job.label}
        )
    if claim is None:
        return project_writer(journal, command, args)
    return Writer.open(journal.engine, command, dict(claim) | batch_claim(journal, args or {}))


def batch_claim(journal: Journal, args: Mapping[str, Any]) -> dict[str, str]:
    """The ``batch:`` scopes of a command's selection (`selected_batches`): a playbook run
    on one of those batches refuses it (`coexist.journal.claims`)."""
    return {
        claims.batch_scope(b): f"users of batch {b}"
        for b in sorted(selected_batches(journal, args))
    }


def selected_batches(journal: Journal, args: Mapping[str, Any]) -> set[str]:
    """The batches whose users a command's selection takes in, read from its arguments as
    its run records them (`runs.args`: ``batch`` a name or a CSV file, ``users``, ``all``),
    the same way `coexist.commands.pick_users` reads them; empty for a command that selects
    no users (discover, groups) and for users of no batch.

    Names nobody knows are left to the command (it refuses them, naming them)."""
    batch, users, everyone = args.get("batch"), args.get("users"), args.get("all")
    if batch and not Path(str(batch)).is_file():
        return {str(batch)}
    if batch:
        names: list[str] = [str(r["source"]) for r in batches.read_rows(Path(str(batch)))]
    elif isinstance(users, list | tuple) and users:
        names = [str(u) for u in users]
    elif everyone:
        return {str(i["batch"]) for i in journal.items(kind="user") if i.get("batch")}
    else:
        return set()
    index = batches.index_users(journal.items(kind="user"))
    found = (index.get(n.strip().lower()) for n in names)
    return {str(i["batch"]) for i in found if i is not None and i.get("batch")}


def runbooks_in_progress(journal: Journal, args: Mapping[str, Any]) -> dict[str, Any]:
    """The playbook runs holding a batch of this selection, by batch: a plan (which claims
    nothing) says a runbook is in progress, as a playbook's own `--plan` does."""
    running = claims.playbook_runs(journal.engine)  # usually none: no selection read then
    wanted = selected_batches(journal, args) if running else set()
    return {
        b: {**h.to_dict(), "text": h.describe()} for b, h in sorted(running.items()) if b in wanted
    }


@asynccontextmanager
async def session(
    directory: Path | str | None,
    command: str,
    args: dict[str, Any],
    *,
    plan: bool = False,
    retry: RetryPolicy | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    env: dict[str, str] | None = None,
    claim: Mapping[str, str] | None = None,
) -> AsyncIterator[Session]:
    """One command: its project and journal, the project's claim when it writes (or `claim`),
    its run."""
    project = load_project(project_dir(directory), env=env)
    # A command a side's kind cannot serve is refused before the journal or any endpoint.
    kinds = {side: project.tenant(side).kind for side in ("source", "target")}
    capabilities = {side: side_capabilities(project.tenant(side)) for side in ("source", "target")}
    check_command(kinds, command, str(project.file), capabilities)
    journal = open_journal(project)
    freeze_startup_objects()  # what is alive now lives for the process (coexist/gcfreeze.py)
    writer: Writer | None = None
    runbooks: dict[str, Any] = {}
    try:
        if not plan and command not in READ_ONLY_SESSIONS:
            # Before the run is recorded: a refused command leaves the journal as it was.
            writer = _writer(journal, command, claim, args)
        elif jobs.current() is None:
            runbooks = runbooks_in_progress(journal, args)
            for batch, run in runbooks.items():
                log.warning("a playbook run on batch %s is in progress: %s", batch, run["text"])
        job = jobs.current()
        if job is not None:
            job.attach()  # a worker stopping cancels this command (coexist.worker)
            # The run says which worker and job made it (who held the user, when).
            args = {**args, "worker": job.worker, "job": job.job_id}
        async with _journaled_run(
            project, journal, writer, command, args, plan, retry, on_outcome, env
        ) as sess:
            sess.runbooks = runbooks
            yield sess
    finally:
        if writer is not None:
            writer.close()
        journal.close()


@asynccontextmanager
async def _journaled_run(
    project: Project,
    journal: Journal,
    writer: Writer | None,
    command: str,
    args: dict[str, Any],
    plan: bool,
    retry: RetryPolicy | None,
    on_outcome: Callable[[Outcome], None] | None,
    env: dict[str, str] | None = None,
) -> AsyncIterator[Session]:
    """One run: recorded in `runs`, with both sides' clients (per kind) and a runner."""
    recorder = WriteRecorder() if plan else None
    policy = retry or retry_policy(project)
    run_id = 0 if plan else journal.start_run(command, args)
    log.info("run %s of %s in %s", run_id or "(plan)", command, project.directory)
    if writer is not None:
        writer.note_run(run_id)
    status = "failed"
    try:
        opts = SideOptions(
            concurrency=project.engine.concurrency_per_tenant,
            plan=recorder,
            read_retry=policy,
            mailbox_limits=MailboxLimits(time_scale=project.engine.outlook_time_scale),
            write_limits=WriteLimits(writes=project.engine.directory_write_budget),
            env=env,
        )
        async with open_sides(project, opts) as (source, target):
            ctx = Context(project, journal, source, target, plan=recorder, run_id=run_id or None)
            outcomes: list[Outcome] = []

            def record(o: Outcome) -> None:
                outcomes.append(o)
                _log_outcome(o)
                if on_outcome is not None:
                    on_outcome(o)

            runner = Runner(
                ctx=ctx,
                journal=journal,
                run_id=run_id,
                retry=policy,
                next_step=f"coexist retry --project {project.directory}",
                plan=recorder,
                on_outcome=record,
                # A progress sink may also count finished items (the CLI's live bar does).
                on_advance=getattr(on_outcome, "advance", None),
                look_again_s=float(project.engine.look_again_s),
                waiting_max_s=float(project.engine.waiting_max_s),
            )
            sess = Session(project, journal, ctx, runner, recorder, outcomes)
            # A progress sink may also follow the data passes (the CLI's live view).
            with progress.listening(getattr(on_outcome, "pass_event", None)):
                yield sess
        status = "ok"
    except schedule.LeaveForLater as left:
        # A queued job's pass gave its worker slot back (coexist.worker), not a failure:
        # paused at a safe point because its worker stops (queued again at once), or
        # deferred to its run window's opening.
        status = "paused" if left.at is None else "deferred"
        raise
    except asyncio.CancelledError:
        job = jobs.current()
        if job is not None and job.cancelled:  # its stopping worker's --stop-grace ran out
            status = "stopped"
        raise
    finally:
        try:
            if not plan:
                journal.finish_run(run_id, status)
        except StorageError:
            if status == "ok":  # else the error that ended the run is the one to report
                raise
        finally:
            log.info("run %s of %s ended: %s", run_id or "(plan)", command, status)


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)
