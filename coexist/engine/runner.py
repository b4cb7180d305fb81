"""The runner: journal → observe → compare → apply → journal, per step.

It records `started` (with the step's intent) before a step runs and `ok` /
`waiting` / `failed` after. A crash between the two leaves `started`: the next
run re-observes and never re-applies blindly. Items (users, groups) run
concurrently up to a limit; one item's steps run in order and stop at the first
step that fails or waits, so nothing runs on top of a half-done predecessor.

Journal writes per step: `started` is its own transaction, committed before the
step's first tenant write; the outcome, the facts for the item and (for the step
that ends the item's run) the item's state are one transaction after it. A step
that wrote nothing records `started` in that same transaction: there was no write
for it to precede. `run_batched` goes further for rounds of read-only steps (one
`Batch` for many items).

Plan mode: the same executors run with adapters that record writes instead of
sending them (`coexist.tenants.plan`), and the journal is left untouched.

Waiting on Microsoft 365: a step that finds the world not caught up yet (a
`NotReady` error: a mailbox still provisioning, an object still replicating, or a
`StepResult` with `recheck`) is recorded `waiting` with the reason, when the wait
began and when to look again. Looks come quickly at first and then at most every
`look_again_s` (the wait so far, doubling, capped); a run before that time reports
the step as still waiting and touches nothing, and a wait longer than
`waiting_max_s` is recorded as failed.
"""

from __future__ import annotations

import asyncio
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from coexist.errors import CoexistError, NotReady, redact
from coexist.journal import Batch
from coexist.retry import RetryPolicy
from coexist.tenants.plan import WriteRecorder, current_step, write_hook

from .step import Registry, Step, StepResult, registry

ITEM_COLUMNS = frozenset(
    {"name", "source_address", "target_id", "target_address", "batch", "phase", "state"}
)


FIRST_LOOK_S = 1.0  # the first look again after a wait on Microsoft 365 begins


def iso(epoch: float) -> str:
    """An epoch time as the journal keeps times people read: ISO 8601 UTC, milliseconds."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def epoch(text: Any) -> float | None:
    """An ISO 8601 time from the journal as epoch seconds (None when absent or unreadable)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def look_again_at(record: Mapping[str, Any] | None) -> float | None:
    """When a waiting step record, or item record, is due to be looked at again."""
    if record is None or (record.get("status") or record.get("state")) != "waiting":
        return None
    detail = record.get("detail") or {}
    return epoch(detail.get("look_again_at")) if isinstance(detail, dict) else None


def _waiting_since(prev: Mapping[str, Any] | None) -> float | None:
    if look_again_at(prev) is None:
        return None
    assert prev is not None
    return epoch((prev.get("detail") or {}).get("waiting_since"))


def _same_outcome(prev: dict[str, Any], result: StepResult) -> bool:
    """An unchanged step whose journal record already says the same thing."""
    if result.changed or result.recheck or prev.get("status") != result.status:
        return False
    return result.status == "ok" or (prev.get("detail") or {}).get("text") == result.detail


def _kept_before(prev: dict[str, Any] | None, fallback: Any) -> Any:
    """The before-state a previous record holds, when this run wrote nothing."""
    if prev is not None and prev.get("before") is not None:
        return prev["before"]
    return fallback


def _interrupted_observation(prev: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a step killed mid-write saw before its first write (journaled with `started`).

    After such a crash the next run observes the already-changed world, so this is
    the only true before-state left for rollback.
    """
    if prev is None or prev.get("status") != "started":
        return None
    observed = (prev.get("intent") or {}).get("observed")
    return observed if isinstance(observed, dict) else None


_T = TypeVar("_T")


def _stops(outcome: Outcome) -> bool:
    """Whether an item's run ends at this step (the next steps build on it)."""
    return outcome.status in ("failed", "waiting")


def set_item(journal: Any, kind: str, key: str, **fields: Any) -> None:
    """Set item columns; any other field is merged into the item's `detail` JSON."""
    columns = {k: v for k, v in fields.items() if k in ITEM_COLUMNS}
    extra = {k: v for k, v in fields.items() if k not in ITEM_COLUMNS}
    journal.merge_item(kind, key, extra or None, **columns)


@dataclass(frozen=True)
class Outcome:
    """How one step ended in this run."""

    step: str
    subject: str
    name: str
    status: str  # ok | waiting | failed | planned
    changed: bool
    detail: str = ""
    error: str | None = None
    error_class: str | None = None
    next_step: str | None = None
    data: dict[str, Any] = field(default_factory=dict, compare=False)  # not yet on the item
    label: str = ""  # how operators know the item (address / name), never only its id
    look_again_at: str | None = None  # waiting on Microsoft 365: when it is looked at again
    waiting_since: str | None = None
    resting: bool = False  # reported as still waiting, not looked at (its time has not come)


def resting(item: Mapping[str, Any], now: float | None = None) -> bool:
    """Whether an item waits on Microsoft 365 and its look-again time has not come."""
    due = look_again_at(item)
    return due is not None and due > (time.time() if now is None else now)


@dataclass(frozen=True)
class ItemPlan:
    """The ordered steps for one item, and the phase it reaches when all are ok."""

    kind: str  # user | group
    key: str
    steps: Sequence[Step]
    phase: str | None = None  # phase recorded when every step ends ok
    label: str = ""  # how operators know the item (address / name)
    # Item fields recorded with the phase when every step ends ok (in the same write).
    done: Mapping[str, Any] = field(default_factory=dict)
    # In a pipeline: whether the item's next plan runs only once this one ended ok.
    gates: bool = True


def _ended_ok(outcomes: Sequence[Outcome]) -> bool:
    """Whether a plan's steps all ended ok (or planned): an empty plan has nothing to stop on."""
    return not outcomes or outcomes[-1].status not in ("failed", "waiting")


async def _together(tasks: Sequence[asyncio.Future[_T]]) -> list[_T]:
    """Await every task; when one raises, cancel the others first.

    An error that stops the run (a failed journal write, an unreachable endpoint) stops
    the other items too, before their next write, rather than leaving them running while
    the session closes the journal under them.
    """
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


@dataclass
class _Round:
    """A batched round in progress: its records so far, and the records it started from."""

    previous: dict[str, dict[str, Any]]
    batch: Batch = field(default_factory=Batch)
    outcomes: list[Outcome] = field(default_factory=list)


# The batched round the current task runs in (tasks inherit it from `run_batched`).
_ROUND: ContextVar[_Round | None] = ContextVar("coexist_runner_round", default=None)


@dataclass
class Runner:
    """Runs item plans for one command invocation."""

    ctx: Any  # the executors' context (tenant adapters, project, journal, caches)
    journal: Any  # coexist.journal.Journal
    run_id: int
    retry: RetryPolicy
    next_step: str  # the command an operator runs to continue, e.g. `coexist retry --project X`
    plan: WriteRecorder | None = None
    steps: Registry[Step] = field(default_factory=lambda: registry)
    on_outcome: Callable[[Outcome], None] = lambda _o: None
    on_advance: Callable[[int, int], None] | None = None  # (items done, items in this run)
    look_again_s: float = 300.0  # longest pause between two looks at a waiting step
    waiting_max_s: float = 2 * 86400.0  # a wait on Microsoft 365 this long is a failure
    clock: Callable[[], float] = time.time
    batch_records: int = 500  # items per write of a batched round (`run_batched`)

    @property
    def planning(self) -> bool:
        return self.plan is not None

    async def run_step(
        self,
        step: Step,
        label: str = "",
        *,
        defer_data: bool = False,
        then: Callable[[Outcome], None] | None = None,
    ) -> Outcome:
        """observe → compare → apply, journaling `started` right before the first write.

        A step that finds the world already right writes nothing and leaves its
        journal record alone: the before-state recorded by the run that made the
        change is what `rollback` restores, so a re-run must not overwrite it.

        The step's record is one journal transaction, with `then` (given the outcome)
        writing in it too; the outcome is reported once that is committed. Only
        `started` before a first write is its own transaction, committed before the write.
        """
        outcome = await self._run_step(step, label, defer_data, then)
        batched = _ROUND.get()
        if batched is None:
            self.on_outcome(outcome)
        else:  # reported once its record is written
            batched.outcomes.append(outcome)
            if len(batched.outcomes) >= self.batch_records:
                self._write_round(batched)
        return outcome

    def _record(
        self, write: Callable[[], Outcome], then: Callable[[Outcome], None] | None
    ) -> Outcome:
        """`write` the step's record and let `then` add to it, in one journal transaction."""
        with self.journal.together():
            outcome = write()
            if then is not None:
                then(outcome)
        return outcome

    def _writer(self) -> Any:
        """Where records go: the batched round's `Batch`, else the journal."""
        batched = _ROUND.get()
        return self.journal if batched is None else batched.batch

    def _previous(self, key: str) -> dict[str, Any] | None:
        batched = _ROUND.get()
        return self.journal.get_step(key) if batched is None else batched.previous.get(key)

    async def run_batched(self, items: Sequence[ItemPlan], concurrency: int = 8) -> list[Outcome]:
        """`run` for one-step items that only read the tenants, journaled in a few transactions.

        Each step runs as in `run` (observe → compare → apply → record), but the records go
        into a `Batch` written every `batch_records` items and at the end of the round, and
        the previous records are read at its start: a round of thousands of read-backs costs a
        few statements per table, not a few transactions per item. Outcomes are reported once
        their records are written. Nothing in the round reads these records back, and a step
        that writes to a tenant all the same still records `started` on the journal itself
        before its first write. A crash loses the records not yet written: those steps run
        again next time, as if never run. The round moves no item bar (`on_advance`): it may
        run beside another round.
        """
        if any(len(item.steps) > 1 for item in items):
            raise ValueError("run_batched takes one-step items (a later step reads the record)")
        keys = [step.key for item in items for step in item.steps]
        batched = _Round(previous={} if self.planning else self.journal.get_steps(keys))
        slots = asyncio.Semaphore(max(1, concurrency))

        async def one(item: ItemPlan) -> list[Outcome]:
            async with slots:
                return await self.run_item(item)

        token = _ROUND.set(None if self.planning else batched)
        try:
            tasks = [asyncio.ensure_future(one(item)) for item in items]
        finally:
            _ROUND.reset(token)  # the tasks took their copy of the context
        results = await _together(tasks)
        self._write_round(batched)
        return [o for r in results for o in r]

    def _write_round(self, batched: _Round) -> None:
        """Write a batched round's records so far, then report their outcomes."""
        self.journal.write_batch(batched.batch)
        written, batched.outcomes = batched.outcomes, []
        batched.batch = Batch()
        for outcome in written:
            self.on_outcome(outcome)

    async def _run_step(
        self,
        step: Step,
        label: str,
        defer_data: bool,
        then: Callable[[Outcome], None] | None,
    ) -> Outcome:
        executor = self.steps.executor_for(step)
        prev = None if self.planning else self._previous(step.key)
        due = look_again_at(prev)
        if due is not None and due > self.clock():
            # Not hammered: until its time comes a waiting step is reported, not looked at.
            assert prev is not None
            rest = prev
            return self._record(
                lambda: self._report_waiting(step.key, step.subject, step.name, label, rest), then
            )
        if prev is not None and prev.get("status") == "started":
            self.journal.event(
                self.run_id,
                "warning",
                "previous attempt was interrupted; re-observing before any write",
                item_key=step.subject,
                step_key=step.key,
            )
        started = False
        interrupted = _interrupted_observation(prev)
        observed_now: dict[str, Any] | None = None

        def journal_started(journal: Any = None) -> None:
            """Record `started`: on the journal itself before a tenant write (the write hook)."""
            nonlocal started
            if not self.planning:
                # Before every tenant write, not only the first: once a journal write has
                # failed (disk full, read-only), no run writes what it cannot journal.
                self.journal.check_writable()
            if not started and not self.planning:
                # The live state seen just before the first write goes with the intent,
                # so a crash between write and record still leaves the true before-state.
                first = interrupted if interrupted is not None else observed_now
                (journal or self.journal).step_started(
                    self.run_id,
                    step.key,
                    item_kind=step.item_kind,
                    item_key=step.subject,
                    name=step.name,
                    intent={**step.intent(), "observed": first},
                )
                started = True

        def record_failure(exc: Exception, message: str, trace: str | None) -> Outcome:
            kept = None if started else prev

            def write() -> Outcome:
                # A no-op after a tenant write: `started` was committed before it.
                journal_started(self._writer())
                if trace is not None:
                    self._debug(step, trace)
                return self._failed(step, label, exc, type(exc).__name__, message, kept)

            return self._record(write, then)

        step_token = current_step.set(step.key)
        hook_token = write_hook.set(journal_started)
        try:

            async def attempt() -> StepResult:
                nonlocal observed_now
                observed = await executor.observe(self.ctx, step)
                observed_now = observed if isinstance(observed, dict) else None
                return await executor.apply(self.ctx, step, observed)

            try:
                result = await self.retry.call(attempt)
            except NotReady as exc:
                # Microsoft 365 has not caught up: a wait with a time to look again, not a
                # failure. What this attempt already wrote stays recorded as its before-state.
                result = StepResult(
                    started,
                    observed_now if started else None,
                    None,
                    exc.reason,
                    status="waiting",
                    recheck=True,
                )
            except CoexistError as exc:
                if exc.stops_run:  # the disk, the network, a certificate: not this user's
                    raise
                return record_failure(exc, exc.message, None)
            except Exception as exc:  # a bug: record it for the operator, keep other items going
                msg = f"internal error: {type(exc).__name__}: {exc}"
                return record_failure(exc, msg, traceback.format_exc())
            settled = not started and prev is not None and _same_outcome(prev, result)
            # Nothing written in this run: the before-state of the run that made the change
            # stays the one rollback restores, even when the record itself is rewritten.
            kept = None if started or result.changed else prev
            if interrupted is not None:
                kept = {"before": interrupted}

            def record() -> Outcome:
                # A step that wrote nothing to a tenant records `started` with its outcome.
                if not settled:
                    journal_started(self._writer())
                if result.recheck and result.status == "waiting":
                    return self._waited(step, label, result, prev, kept, defer_data)
                return self._finished(
                    step, result, record=not settled, kept=kept, defer_data=defer_data, label=label
                )

            return self._record(record, then)
        finally:
            write_hook.reset(hook_token)
            current_step.reset(step_token)

    def _waited(
        self,
        step: Step,
        label: str,
        result: StepResult,
        prev: dict[str, Any] | None,
        kept: dict[str, Any] | None,
        defer_data: bool,
    ) -> Outcome:
        """Record a wait on Microsoft 365 with when it began and when to look again."""
        now = self.clock()
        since = _waiting_since(prev) or now
        if now - since > self.waiting_max_s:
            hours = (now - since) / 3600
            exc = NotReady(
                f"still waiting after {hours:.1f} h: {result.detail}; Microsoft 365 has not "
                "caught up, which is no longer a delay but a fault",
                reason=result.detail,
                service="coexist",
                next_step=(
                    "look at the user in the Microsoft 365 admin center (a provisioning "
                    f"error?), then {self.next_step}"
                ),
            )
            return self._failed(step, label, exc, "NotReady", exc.message, kept)
        pause = min(self.look_again_s, max(FIRST_LOOK_S, now - since))
        timing = {"waiting_since": iso(since), "look_again_at": iso(now + pause)}
        return self._finished(
            step, result, kept=kept, defer_data=defer_data, label=label, timing=timing
        )

    def _report_waiting(
        self, key: str, subject: str, name: str, label: str, record: Mapping[str, Any]
    ) -> Outcome:
        """A wait whose look-again time has not come, reported as it stands in the journal."""
        detail = record.get("detail") or {}
        outcome = Outcome(
            key,
            subject,
            name,
            "waiting",
            False,
            str(detail.get("text") or detail.get("waiting_for") or ""),
            label=label,
            look_again_at=detail.get("look_again_at"),
            waiting_since=detail.get("waiting_since"),
            resting=True,
        )
        return outcome

    def still_waiting(self, item: Mapping[str, Any]) -> Outcome:
        """Report an item whose look-again time has not come, without running its steps."""
        detail = item.get("detail") or {}
        name = str(detail.get("last_step") or "")
        outcome = self._report_waiting(
            f"{name}:{item['key']}",
            str(item["key"]),
            name,
            str(item.get("source_address") or item.get("name") or item["key"]),
            item,
        )
        self.on_outcome(outcome)
        return outcome

    def _finished(
        self,
        step: Step,
        result: StepResult,
        *,
        record: bool = True,
        kept: dict[str, Any] | None = None,
        defer_data: bool = False,
        label: str = "",
        timing: dict[str, str] | None = None,
    ) -> Outcome:
        status: str = result.status
        if self.planning:
            status = "planned" if result.changed else status
        else:
            if record:
                self._writer().step_finished(
                    step.key,
                    status=status,
                    before=_kept_before(kept, result.before),
                    after=result.after,
                    changed=result.changed,
                    detail={"text": result.detail, **(timing or {})},
                )
            if result.data and not defer_data:
                # Facts the next steps need (e.g. the target object id) go on the item.
                set_item(self._writer(), step.item_kind, step.subject, **result.data)
        outcome = Outcome(
            step.key,
            step.subject,
            step.name,
            status,
            result.changed,
            result.detail,
            data=dict(result.data) if defer_data and not self.planning else {},
            label=label,
            look_again_at=(timing or {}).get("look_again_at"),
            waiting_since=(timing or {}).get("waiting_since"),
        )
        return outcome

    def _failed(
        self,
        step: Step,
        label: str,
        exc: BaseException,
        cls: str,
        message: str,
        kept: dict[str, Any] | None = None,
    ) -> Outcome:
        who = label or step.subject
        text = redact(f"{who}: step {step.name} failed: {message}")
        retry_after = getattr(exc, "retry_after", None)
        nxt = getattr(exc, "next_step", None) or self.next_step
        if not self.planning:
            self._writer().step_finished(
                step.key,
                status="failed",
                before=_kept_before(kept, None),
                after=(kept or {}).get("after"),
                error_class=cls,
                error_message=text,
                retry_after=retry_after,
                next_step=nxt,
            )
        return Outcome(
            step.key, step.subject, step.name, "failed", False, "", text, cls, nxt, label=label
        )

    def _debug(self, step: Step, text: str) -> None:
        if not self.planning:
            self.journal.event(
                self.run_id, "error", redact(text)[-4000:], item_key=step.subject, step_key=step.key
            )

    async def run_item(self, item: ItemPlan) -> list[Outcome]:
        outcomes: list[Outcome] = []
        last = len(item.steps) - 1

        def record_item(outcome: Outcome) -> None:
            # The item's state goes in the transaction of the step that ends its run.
            if not self.planning and (len(outcomes) == last or _stops(outcome)):
                self._record_item(item, [*outcomes, outcome])

        for i, step in enumerate(item.steps):
            # The last step's facts are written with the item's state: one write, not two.
            outcome = await self.run_step(step, item.label, defer_data=i == last, then=record_item)
            outcomes.append(outcome)
            if _stops(outcome):
                break
        return outcomes

    def _record_item(self, item: ItemPlan, outcomes: list[Outcome]) -> None:
        if not outcomes:
            return
        last = outcomes[-1]
        fields: dict[str, Any] = {**last.data, "last_step": last.name}
        # What a waiting item waits for, since when and when it is looked at again; cleared
        # once it is no longer waiting.
        wait = {"waiting_for": None, "waiting_since": None, "look_again_at": None}
        if last.status == "failed":
            fields.update(wait, state="failed", error=last.error)
        elif last.status == "waiting":
            fields.update(
                state="waiting",
                error=None,
                waiting_for=last.detail,
                waiting_since=last.waiting_since,
                look_again_at=last.look_again_at,
            )
        else:
            fields.update(wait, state="ok", error=None)
            if item.phase:
                fields["phase"] = item.phase
            fields.update(item.done)
        set_item(self._writer(), item.kind, item.key, **fields)

    async def run(self, items: Sequence[ItemPlan], concurrency: int = 8) -> list[Outcome]:
        """Run every item's steps; at most `concurrency` items at once."""
        return await self.run_pipelines([[item] for item in items], concurrency)

    async def run_pipelines(
        self, pipelines: Sequence[Sequence[ItemPlan]], concurrency: int = 8
    ) -> list[Outcome]:
        """Run each item's plans in order, at most `concurrency` items at once.

        Every item moves on to its next plan as soon as its own plan has ended ok, never
        waiting for the rest of the batch: a run stopped at any moment has taken each item
        as far as it got (a batch-wide phase would lose every item's progress in it). A plan
        that fails or waits ends its item's pipeline here, unless it does not `gate`.
        """
        slots = asyncio.Semaphore(max(1, concurrency))
        results: list[list[Outcome]] = [[] for _ in pipelines]
        done = 0

        async def one(i: int, plans: Sequence[ItemPlan]) -> None:
            nonlocal done
            async with slots:
                for plan in plans:
                    outcomes = await self.run_item(plan)
                    results[i] += outcomes
                    if plan.gates and not _ended_ok(outcomes):
                        break
            done += 1
            if self.on_advance is not None:
                self.on_advance(done, len(pipelines))

        await _together([asyncio.ensure_future(one(i, p)) for i, p in enumerate(pipelines)])
        return [o for r in results for o in r]
