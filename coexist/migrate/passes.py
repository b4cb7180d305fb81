"""Data passes: one interface, whichever mover moves the data.

`run_pass(ctx, subject, kind, window)` is what pre-stage and cutover call. The
mover is chosen by the project (`[migration] mover`). Until a mover is
configured a pass ends as `no data mover configured` — a visible per-user
state, never a success. A mailbox Microsoft 365 has not made ready yet (the
movers' first Graph call answers `NotReady`) leaves the pass `waiting`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from coexist import jobs, progress, schedule
from coexist.engine.context import Context
from coexist.engine.step import Step, StepResult, registry
from coexist.errors import NotReady

NO_MOVER = "no data mover configured"


@dataclass(frozen=True)
class Window:
    """Which items a pass moves: older than a cut-off (pre-stage) or everything not yet moved."""

    older_than: timedelta | None = None  # pre-stage: items received before now - older_than
    since: datetime | None = None
    until: datetime | None = None
    # A trial pass: at most this many items per folder, the newest first (`[trial] items`).
    per_folder: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "older_than_s": self.older_than.total_seconds() if self.older_than else None,
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
        }
        if self.per_folder:  # only when set: windows journaled before it still compare equal
            out["per_folder"] = self.per_folder
        return out

    def cutoff(self, now: datetime | None = None) -> datetime | None:
        """Items received at or after this are outside the window (None: no upper bound)."""
        bounds = [b for b in (self.until, self._older(now)) if b is not None]
        return min(bounds) if bounds else None

    def _older(self, now: datetime | None) -> datetime | None:
        if self.older_than is None:
            return None
        return (now or datetime.now(UTC)) - self.older_than

    def contains(self, received: datetime | None, now: datetime | None = None) -> bool:
        """Whether an item received at `received` belongs to this pass (unknown: yes)."""
        if received is None:
            return True
        cutoff = self.cutoff(now)
        if cutoff is not None and received >= cutoff:
            return False
        return self.since is None or received >= self.since


@dataclass(frozen=True)
class PassResult:
    status: str  # ok | no-mover | failed
    detail: str
    counts: dict[str, int] = field(default_factory=dict)
    # Source folder id -> its path ("Inbox/Projects"), for a plan's lines: a Graph or EWS
    # folder id means nothing to a reader (`reconcile.pass_result`; not journaled).
    folders: dict[str, str] = field(default_factory=dict)
    # Lines for the run log (`Journal.event`, warning), written with the pass's end.
    events: tuple[str, ...] = ()


class Mover(Protocol):
    async def run(self, ctx: Context, subject: str, kind: str, window: Window) -> PassResult: ...


class NoMover:
    """The placeholder until a mover is configured: moves nothing and says so."""

    async def run(self, ctx: Context, subject: str, kind: str, window: Window) -> PassResult:
        return PassResult("no-mover", NO_MOVER)


MOVERS: dict[str, Mover] = {"none": NoMover()}
# Movers made of modules that register themselves in MOVERS when imported: `[migration]
# mover` name -> module. Imported on first use, so a project only loads the stores it uses.
MOVER_MODULES = {
    "graph-import-export": "coexist.migrate.stores.graph_io",
    "graph-items": "coexist.migrate.items",
    "imap-sync": "coexist.migrate.stores.imap",
    "imap-graph": "coexist.migrate.imap_graph",
    "ews-sync": "coexist.migrate.stores.ews",
    "graph-ews": "coexist.migrate.stores.ews",
    "ews-graph": "coexist.migrate.stores.ews",
}
_EWS = ("exchange", "workmail")
# The (source kind, target kind) pairs each mover moves between ([source]/[target] kind);
# `none` moves nothing, whatever the kinds.
MOVER_KINDS: dict[str, frozenset[tuple[str, str]]] = {
    "graph-import-export": frozenset({("m365", "m365")}),
    "graph-items": frozenset({("m365", "m365")}),
    "imap-sync": frozenset({("imap", "imap")}),
    "imap-graph": frozenset({("imap", "m365")}),
    "ews-sync": frozenset((s, t) for s in _EWS for t in _EWS),
    "graph-ews": frozenset(("m365", t) for t in _EWS),
    "ews-graph": frozenset((s, "m365") for s in _EWS),
}


# Movers whose passes run planned (`migrate.planpass`): `--plan` opens both stores and runs
# the real sync with the writes captured, and says per source folder what it would copy
# (tests/e2e/test_imap_plan.py, test_m365_plan.py). A planned pass reads no mail content from
# Graph or EWS sources (graph_io, graph_items and ews exports read states, headers and sizes
# only), but IMAP exports and PIM items are read as the real pass reads them, so a plan of
# many mailboxes is best made per user.
PLANNED_MOVERS = frozenset(
    {"imap-sync", "imap-graph", "ews-sync", "graph-items", "graph-import-export"}
)


def _mover_name(ctx: Context) -> str:
    return str(getattr(getattr(ctx.project, "migration", None), "mover", "none") or "none")


def _kinds(ctx: Context) -> tuple[str, str]:
    def kind(side: str) -> str:
        return str(getattr(getattr(ctx.project, side, None), "kind", "m365") or "m365")

    return kind("source"), kind("target")


def mover_for(ctx: Context) -> Mover:
    from coexist.errors import ConfigError

    name = getattr(getattr(ctx.project, "migration", None), "mover", "none") or "none"
    file = str(getattr(ctx.project, "file", "project.toml"))
    pair = _kinds(ctx)
    if name in MOVER_KINDS and pair not in MOVER_KINDS[name]:
        serving = sorted(m for m, pairs in MOVER_KINDS.items() if pair in pairs)
        instead = (
            f"set mover to one of: {', '.join(serving)}"
            if serving
            else 'no mover of this version does; set mover = "none" to move data by other means'
        )
        raise ConfigError(
            f"data mover {name!r} does not move {pair[0]} -> {pair[1]} ([source] kind = "
            f"{pair[0]!r}, [target] kind = {pair[1]!r})",
            file=file,
            key="migration.mover",
            next_step=f"{instead} in [migration]",
        )
    if name not in MOVERS and name in MOVER_MODULES:
        importlib.import_module(MOVER_MODULES[name])
    try:
        return MOVERS[name]
    except KeyError:
        raise ConfigError(
            f"data mover {name!r} is not available in this version",
            file=file,
            key="migration.mover",
        ) from None


async def run_pass(ctx: Context, subject: str, kind: str, window: Window) -> PassResult:
    """Run one data pass for one user and journal it.

    Inside the user's run window only (`coexist.schedule`): a pass waits for it to open,
    and one whose window closes stops at a safe point (`WindowClosed`), is journaled
    `paused` with what it moved, and runs again once the window reopens, continuing from
    the item map and cursors like any interrupted pass."""
    mover = mover_for(ctx)
    gate = schedule.gate_of(ctx, subject)
    if ctx.planning:
        if _mover_name(ctx) in PLANNED_MOVERS:
            result = await _planned(ctx, mover, subject, kind, window)
        else:
            result = PassResult("planned", f"would run a {kind} pass ({type(mover).__name__})")
        if gate is not None and gate.closed_now():  # plan mode never waits
            detail = f"{result.detail}; would wait: {gate.paused_until()}"
            result = PassResult(result.status, detail, result.counts)
        return result
    while True:
        if gate is not None and gate.queued:
            # A queued job's pass does not hold its worker slot while closed: it leaves, and
            # the worker defers the job to the opening (or requeues it when stopping).
            gate.leave_if_closed()
        elif gate is not None:
            await gate.wait_open()
        ended = await _one_pass(ctx, mover, subject, kind, window, gate)
        if ended is not None:
            return ended


async def _one_pass(
    ctx: Context,
    mover: Mover,
    subject: str,
    kind: str,
    window: Window,
    gate: schedule.RunGate | None,
) -> PassResult | None:
    """One journaled pass; None when its run window closed before it ended (`paused`)."""
    pass_id = ctx.journal.pass_started(ctx.run_id, subject, kind, window.to_dict())
    user = ctx.journal.get_item("user", subject) or {}
    progress.emit(progress.PassStarted(subject, kind, str(user.get("source_address") or "")))
    try:
        with schedule.gated(gate):
            result = await mover.run(ctx, subject, kind, window)
    except schedule.WindowClosed as closed:
        # Stopped at a safe point: what it moved is journaled, its stores are closed.
        ctx.journal.pass_finished(pass_id, "paused", closed.counts)
        progress.emit(progress.PassEnded(subject, "paused", *_moved(closed.counts)))
        return None
    except NotReady:
        # A mailbox Graph does not serve yet (404 MailboxNotEnabledForRESTAPI for minutes
        # after licensing): the pass waits, and the step with it (the runner records when to
        # look again). The item map and checkpoints keep whatever the pass did before.
        ctx.journal.pass_finished(pass_id, "waiting", {})
        progress.emit(progress.PassEnded(subject, "waiting"))
        raise
    except BaseException:
        # The pass ended (an error, a cancel): it must not stay `running` in `status`. The
        # item map and checkpoints already hold what it did; a re-run continues from them.
        # A queued job's pass cancelled by its stopping worker (no safe point within
        # --stop-grace) is `stopped`, not failed: its job is queued again (coexist.worker).
        job = jobs.current()
        ended = "stopped" if job is not None and job.cancelled else "failed"
        ctx.journal.pass_finished(pass_id, ended, {})
        progress.emit(progress.PassEnded(subject, ended))
        raise
    for text in result.events:
        ctx.journal.event(ctx.run_id, "warning", text, item_key=subject)
    ctx.journal.pass_finished(pass_id, result.status, result.counts)
    progress.emit(progress.PassEnded(subject, result.status, *_moved(result.counts)))
    return result


def _moved(counts: dict[str, int]) -> tuple[int, int]:
    """Items and bytes a pass moved, from its counts (what the progress view shows)."""
    items = int(counts.get("copied", 0)) + int(counts.get("updated", 0))
    return items, int(counts.get("bytes", 0))


async def _planned(
    ctx: Context, mover: Mover, subject: str, kind: str, window: Window
) -> PassResult:
    """The pass run planned: its summary lines join the command's plan; status `planned`
    where it would write anything, else `ok` (nothing to do)."""
    from coexist.migrate.planpass import plan_pass

    source_kind, target_kind = _kinds(ctx)
    try:
        summary = await plan_pass(
            ctx, subject, lambda c: mover.run(c, subject, kind, window), target_kind, source_kind
        )
    except Exception as exc:
        # A mailbox Graph does not serve yet: in a plan, the steps that would license it
        # are only planned, so the pass cannot be: it would run once the mailbox is there.
        if (not_ready := _only_not_ready(exc)) is None:
            raise
        return PassResult("planned", f"would run a {kind} pass; not planned: {not_ready.reason}")
    if ctx.plan is not None:
        ctx.plan.writes.extend(summary.lines)
    # A skip line says what the pass would leave out: not a write.
    writes = [x for x in summary.lines if x.params.get("action") != "skip"]
    status = "planned" if writes else "ok"
    return PassResult(status, f"{kind} pass {summary.detail}", summary.counts)


def _only_not_ready(exc: BaseException) -> NotReady | None:
    """The NotReady `exc` is, or that every exception of its group is (a mover's TaskGroup)."""
    if isinstance(exc, NotReady):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        found, rest = exc.split(NotReady)
        if rest is None and found is not None:
            return next(e for e in _leaves(found) if isinstance(e, NotReady))
    return None


def _leaves(group: BaseExceptionGroup[Any]) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out


@dataclass(frozen=True)
class DataPassStep(Step):
    """One data pass for one user (pre-stage or cutover)."""

    name = "migrate.pass"

    kind: str  # prestage | cutover | trial
    older_than_s: float | None = None
    since: str | None = None  # ISO 8601: only items received at or after
    until: str | None = None  # ISO 8601: only items received before
    per_folder: int | None = None  # trial: at most this many items per folder
    # The last run of this command that ended ok: a pass of this kind and window that
    # finished ok in a later run (one this run continues, killed or stopped by an error)
    # is not run again. None: always run.
    resume_after: int | None = None

    @property
    def key(self) -> str:
        return f"{self.name}.{self.kind}:{self.subject}"

    def window(self) -> Window:
        return Window(
            older_than=timedelta(seconds=self.older_than_s) if self.older_than_s else None,
            since=datetime.fromisoformat(self.since) if self.since else None,
            until=datetime.fromisoformat(self.until) if self.until else None,
            per_folder=self.per_folder,
        )


# How old a finished final (cutover) pass may be and still stand for this run's. Mail the
# source receives after the final pass reaches the target only through another pass until
# the swap is made, so a run continued soon after a kill (the usual case: the operator or a
# supervisor runs it again) keeps the pass it has, and one continued later runs a delta
# pass first, cheap from the pass's cursors, rather than leaving that mail behind.
FINAL_PASS_KEPT_FOR = timedelta(minutes=10)


def finished_pass(
    ctx: Context, step: DataPassStep, now: datetime | None = None
) -> dict[str, Any] | None:
    """The pass of this step that already ran to its end (ok) in a run it continues.

    A command killed after a user's pass but before what follows it (the forwarding swap)
    resumes there: the pass is done and the items it copied are mapped, so running it again
    would only repeat its scan while the rest of the batch waits. A pass that did not end
    ok (interrupted, waiting, unreconciled) is run again and continues from its checkpoints;
    so is a final pass older than FINAL_PASS_KEPT_FOR.
    """
    if step.resume_after is None:
        return None
    window = step.window().to_dict()
    oldest = (now or datetime.now(UTC)) - FINAL_PASS_KEPT_FOR
    done = [
        p
        for p in ctx.journal.passes(step.subject)
        if p["kind"] == step.kind
        and p["status"] == "ok"
        and int(p["run_id"] or 0) > step.resume_after
        and (p["window"] or {}) == window
        and (step.kind != "cutover" or (p["finished_at"] and p["finished_at"] >= oldest))
    ]
    return done[-1] if done else None


@registry.register(DataPassStep)
class DataPassExecutor:
    async def observe(self, ctx: Context, step: DataPassStep) -> dict[str, Any] | None:
        done = finished_pass(ctx, step)
        if done is None:
            return None
        # JSON only: what a step observed goes with its `started` record when the run
        # records one (the pass ended in a killed run whose step record was left
        # `started`), and the journal refuses the pass row's datetimes.
        ended = done["finished_at"]
        return {
            "pass_id": done["id"],
            "run_id": done["run_id"],
            "counts": dict(done["counts"] or {}),
            "finished_at": ended.isoformat() if ended is not None else None,
        }

    async def apply(
        self, ctx: Context, step: DataPassStep, observed: dict[str, Any] | None
    ) -> StepResult:
        if observed is not None:
            counts = dict(observed["counts"] or {})
            progress.emit(progress.PassEnded(step.subject, "already", *_moved(counts)))
            detail = (
                f"{step.kind} pass already finished (run {observed['run_id']}, "
                f"{int(counts.get('copied', 0))} copied): not run again"
            )
            return StepResult(False, None, counts, detail, data={f"{step.kind}_pass": "ok"})
        result = await run_pass(ctx, step.subject, step.kind, step.window())
        if ctx.planning:  # nothing recorded: `planned` where the pass would write anything
            return StepResult(result.status == "planned", None, None, result.detail)
        data = {"data_state": result.detail, f"{step.kind}_pass": result.status}
        if result.status == "ok":
            return StepResult(
                bool(result.counts.get("copied")), None, result.counts, result.detail, data=data
            )
        # Not a success: the per-user state shows it and the item waits.
        return StepResult(False, None, None, result.detail, status="waiting", data=data)
