"""The runner against a real SQLite journal, with tiny in-test steps on a fresh Registry.

A fake tenant adapter calls `coexist.tenants.plan.before_write()` before each write, as the
real Graph and Exchange adapters do, so the runner's lazy `started` journaling is exercised
exactly as in production. Every step runs twice (changed, then unchanged) as DESIGN.md asks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tenacity import RetryCallState

from coexist.engine.runner import ItemPlan, Outcome, Runner, epoch, iso, resting
from coexist.engine.step import Registry, Step, StepResult
from coexist.engine.step import registry as global_registry
from coexist.errors import InvalidRequest, NotReady, PermissionDenied, TransientError
from coexist.journal import Journal
from coexist.retry import FAIL_FAST, RetryPolicy
from coexist.tenants.plan import WriteRecorder, before_write, current_step

NEXT = "coexist retry --project /p"
LOOK_AGAIN_S = 300.0
WAITING_MAX_S = 86400.0
T0 = 1_800_000_000.0  # a fixed "now" (2027-01-15): the runner's clock in waiting tests
QUICK = RetryPolicy(max_attempts=4, max_wait_s=5, base_s=0.001, cap_s=0.001)


# -- a tiny tenant and its adapter ------------------------------------------------------------
@dataclass
class FakeTenant:
    """Objects with a colour; `paint` is the only write, sent like a real adapter sends one."""

    journal: Journal
    colours: dict[str, str] = field(default_factory=dict)
    ready: set[str] = field(default_factory=set)  # subjects whose "mailbox" exists
    plan: WriteRecorder | None = None
    writes: list[tuple[str, str]] = field(default_factory=list)
    status_at_write: list[str | None] = field(default_factory=list)
    status_at_observe: list[str | None] = field(default_factory=list)
    observed: list[str] = field(default_factory=list)  # step keys, one per observe
    faults: dict[str, list[BaseException]] = field(default_factory=dict)  # step key -> raises

    def journal_status(self) -> str | None:
        key = current_step.get()
        assert key is not None, "the runner sets current_step around a step"
        return (self.journal.get_step(key) or {}).get("status")

    def paint(self, subject: str, colour: str) -> None:
        if self.plan is not None:
            self.plan.record("graph", "target", f"PATCH /things/{subject}", {"colour": colour})
            return
        before_write()
        self.status_at_write.append(self.journal_status())
        self.colours[subject] = colour
        self.writes.append((subject, colour))

    def fault(self, key: str) -> None:
        queue = self.faults.get(key)
        if queue:
            raise queue.pop(0)


# -- tiny steps on a fresh registry (the global one is left alone) ------------------------------
REGISTRY: Registry[Step] = Registry()


@dataclass(frozen=True)
class PaintStep(Step):
    """The object has `colour`; `coats` writes are sent to get there."""

    name: ClassVar[str] = "test.paint"
    colour: str = "blue"
    coats: int = 1


@dataclass(frozen=True)
class VarnishStep(Step):
    """A second step of the same item, run only after PaintStep is ok."""

    name: ClassVar[str] = "test.varnish"


@dataclass(frozen=True)
class AwaitMailboxStep(Step):
    """Waits until the subject is `ready` (like a licensed mailbox still provisioning)."""

    name: ClassVar[str] = "test.await"


@REGISTRY.register(PaintStep)
class PaintExecutor:
    async def observe(self, ctx: FakeTenant, step: PaintStep) -> str | None:
        ctx.observed.append(step.key)
        ctx.status_at_observe.append(ctx.journal_status())
        ctx.fault(step.key)
        return ctx.colours.get(step.subject)

    async def apply(self, ctx: FakeTenant, step: PaintStep, observed: str | None) -> StepResult:
        before = {"colour": observed}
        if observed == step.colour:
            return StepResult(False, before, before, f"already {step.colour}")
        for _ in range(step.coats):
            ctx.paint(step.subject, step.colour)
        return StepResult(True, before, {"colour": step.colour}, f"painted {step.colour}")


@REGISTRY.register(VarnishStep)
class VarnishExecutor:
    async def observe(self, ctx: FakeTenant, step: VarnishStep) -> str | None:
        ctx.observed.append(step.key)
        ctx.fault(step.key)
        return ctx.colours.get(f"{step.subject}/varnish")

    async def apply(self, ctx: FakeTenant, step: VarnishStep, observed: str | None) -> StepResult:
        if observed == "gloss":
            return StepResult(False, {"varnish": observed}, {"varnish": observed}, "varnished")
        ctx.paint(f"{step.subject}/varnish", "gloss")
        return StepResult(True, {"varnish": observed}, {"varnish": "gloss"}, "varnished")


@dataclass(frozen=True)
class AwaitRecheckStep(Step):
    """Waits for Microsoft 365 (a `recheck` wait) until the subject is `ready`."""

    name: ClassVar[str] = "test.await-recheck"


@REGISTRY.register(AwaitRecheckStep)
class AwaitRecheckExecutor:
    async def observe(self, ctx: FakeTenant, step: AwaitRecheckStep) -> bool:
        ctx.observed.append(step.key)
        return step.subject in ctx.ready

    async def apply(self, ctx: FakeTenant, step: AwaitRecheckStep, observed: bool) -> StepResult:
        if observed:
            return StepResult(False, detail="mailbox exists")
        return StepResult(False, detail="mailbox provisioning", status="waiting", recheck=True)


@REGISTRY.register(AwaitMailboxStep)
class AwaitExecutor:
    async def observe(self, ctx: FakeTenant, step: AwaitMailboxStep) -> bool:
        ctx.observed.append(step.key)
        return step.subject in ctx.ready

    async def apply(self, ctx: FakeTenant, step: AwaitMailboxStep, observed: bool) -> StepResult:
        if observed:
            return StepResult(False, detail="mailbox exists")
        return StepResult(False, detail="mailbox not provisioned yet", status="waiting")


@dataclass(frozen=True)
class AfterStep(Step):
    """Ends ok once `other` is varnished: it can only end ok if another item's later plan
    runs while this item is still in its first one (no batch-wide phase in between)."""

    name: ClassVar[str] = "test.after"
    other: str = ""


LOOKS = 10_000  # event-loop turns AfterStep gives the other item (a count, not a time)


@REGISTRY.register(AfterStep)
class AfterExecutor:
    async def observe(self, ctx: FakeTenant, step: AfterStep) -> bool:
        for _ in range(LOOKS):
            if ctx.colours.get(f"{step.other}/varnish") == "gloss":
                return True
            await asyncio.sleep(0)
        return False

    async def apply(self, ctx: FakeTenant, step: AfterStep, observed: bool) -> StepResult:
        if observed:
            return StepResult(False, detail=f"{step.other} varnished first")
        return StepResult(False, detail=f"{step.other} never varnished", status="waiting")


# -- fixtures and helpers -----------------------------------------------------------------------
@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    """A fresh SQLite journal with two user items, alice and bob."""
    with Journal.open(f"sqlite:///{tmp_path / 'journal.db'}") as j:
        for key in ("alice", "bob", "carol"):
            j.upsert_item("user", key, name=key, source_address=f"{key}@fabrikam.example")
        yield j


@pytest.fixture
def tenant(journal: Journal) -> FakeTenant:
    return FakeTenant(journal, colours={"alice": "red", "bob": "red", "carol": "red"})


def run(
    journal: Journal,
    tenant: FakeTenant,
    items: Sequence[ItemPlan],
    *,
    retry: RetryPolicy = FAIL_FAST,
    plan: WriteRecorder | None = None,
    clock: Callable[[], float] = time.time,
    batched: bool = False,
    batch_records: int = 500,
    on_outcome: Callable[[Outcome], None] = lambda _o: None,
) -> list[Outcome]:
    """One command invocation: a run record (unless planning), the runner, every item."""
    tenant.plan = plan
    run_id = 0 if plan is not None else journal.start_run("test", {})
    runner = Runner(
        ctx=tenant,
        journal=journal,
        run_id=run_id,
        retry=retry,
        next_step=NEXT,
        plan=plan,
        steps=REGISTRY,
        look_again_s=LOOK_AGAIN_S,
        waiting_max_s=WAITING_MAX_S,
        clock=clock,
        batch_records=batch_records,
        on_outcome=on_outcome,
    )
    if batched:
        return asyncio.run(runner.run_batched(items, concurrency=2))
    return asyncio.run(runner.run(items, concurrency=2))


def paint(
    subject: str, *steps: Step, phase: str | None = "painted", done: dict[str, Any] | None = None
) -> ItemPlan:
    return ItemPlan(
        "user",
        subject,
        list(steps) or [PaintStep(subject)],
        phase,
        f"{subject}@fabrikam.example",
        done=done or {},
    )


def by_step(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.step: o for o in outcomes}


# -- started, ok, and the unchanged re-run ------------------------------------------------------
def test_started_is_journaled_lazily_right_before_the_first_write(
    journal: Journal, tenant: FakeTenant
) -> None:
    """No record while observing; `started` with the intent at the first write; ok after."""
    step = PaintStep("alice", colour="blue", coats=2)
    [outcome] = run(journal, tenant, [paint("alice", step)])
    assert outcome.status == "ok" and outcome.changed and outcome.detail == "painted blue"
    assert tenant.status_at_observe == [None]  # nothing journaled before the first write
    assert tenant.status_at_write == ["started", "started"]  # journaled once, before write 1
    record = journal.get_step(step.key)
    assert record is not None
    assert record["status"] == "ok" and record["attempts"] == 1 and record["changed"]
    # The intent, plus what was observed just before the first write (None here: the
    # fake executor observes a non-dict), kept for rollback should the run die mid-write.
    assert record["intent"] == {"subject": "alice", "colour": "blue", "coats": 2, "observed": None}
    assert record["before"] == {"colour": "red"} and record["after"] == {"colour": "blue"}
    assert [h["status"] for h in journal.history(step.key)] == ["started", "ok"]
    item = journal.get_item("user", "alice")
    assert item is not None and item["phase"] == "painted" and item["state"] == "ok"


def test_unchanged_rerun_leaves_the_record_and_its_before_state_alone(
    journal: Journal, tenant: FakeTenant
) -> None:
    """A second run finds the world right: no write, the journal's step record is untouched."""
    step = PaintStep("alice")
    run(journal, tenant, [paint("alice", step)])
    first = journal.get_step(step.key)
    history = journal.history(step.key)
    [again] = run(journal, tenant, [paint("alice", step)])
    assert again.status == "ok" and not again.changed
    assert tenant.writes == [("alice", "blue")]
    assert journal.get_step(step.key) == first
    assert journal.history(step.key) == history
    assert first is not None and first["before"] == {"colour": "red"}


def test_unchanged_first_run_records_ok_without_a_write(
    journal: Journal, tenant: FakeTenant
) -> None:
    """A step already right on its first run is recorded ok/unchanged, then left alone."""
    tenant.colours["alice"] = "blue"
    step = PaintStep("alice")
    [first] = run(journal, tenant, [paint("alice", step)])
    assert first.status == "ok" and not first.changed and tenant.writes == []
    record = journal.get_step(step.key)
    assert record is not None and record["status"] == "ok" and not record["changed"]
    run(journal, tenant, [paint("alice", step)])
    assert journal.get_step(step.key) == record


def test_before_state_survives_a_failed_and_an_unchanged_rerun(
    journal: Journal, tenant: FakeTenant
) -> None:
    """After a change, a re-run that fails before writing, then one that finds the world
    right, both keep the before-state the changing run recorded (what rollback restores)."""
    step = PaintStep("alice")
    run(journal, tenant, [paint("alice", step)])
    tenant.faults[step.key] = [InvalidRequest("Get failed", service="graph", status=400)]
    [failed] = run(journal, tenant, [paint("alice", step)])
    assert failed.status == "failed"
    record = journal.get_step(step.key)
    assert record is not None and record["status"] == "failed"
    assert record["before"] == {"colour": "red"}
    [ok] = run(journal, tenant, [paint("alice", step)])
    assert ok.status == "ok" and not ok.changed
    record = journal.get_step(step.key)
    assert record is not None and record["status"] == "ok"
    assert record["before"] == {"colour": "red"}
    assert tenant.writes == [("alice", "blue")]


# -- failures and waiting ---------------------------------------------------------------------
def test_failure_is_recorded_and_stops_only_that_items_later_steps(
    journal: Journal, tenant: FakeTenant
) -> None:
    """alice's first step fails (class, message, next step); her second never runs; bob and
    carol continue. Fixed and re-run: alice completes, bob is unchanged."""
    items = [
        paint(s, PaintStep(s), VarnishStep(s), phase="varnished") for s in ("alice", "bob", "carol")
    ]
    tenant.faults["test.paint:alice"] = [
        PermissionDenied(
            "Set-Thing: access denied",
            service="exchange",
            status=403,
            next_step="assign the Exchange Administrator role to the app",
        )
    ]
    tenant.faults["test.paint:carol"] = [ValueError("a bug in an executor")]
    outcomes = by_step(run(journal, tenant, items))
    assert outcomes["test.paint:alice"].status == "failed"
    assert "test.varnish:alice" not in outcomes and "test.varnish:alice" not in tenant.observed
    assert journal.get_step("test.varnish:alice") is None
    assert outcomes["test.varnish:bob"].status == "ok" and outcomes["test.varnish:bob"].changed

    record = journal.get_step("test.paint:alice")
    assert record is not None and record["status"] == "failed"
    assert record["error_class"] == "PermissionDenied"
    assert record["error_message"] == (
        "alice@fabrikam.example: step test.paint failed: Set-Thing: access denied"
    )
    assert record["next_step"] == "assign the Exchange Administrator role to the app"
    alice = journal.get_item("user", "alice")
    assert alice is not None and alice["state"] == "failed" and alice["phase"] is None
    assert "access denied" in alice["detail"]["error"]

    carol = journal.get_step("test.paint:carol")
    assert carol is not None and carol["error_class"] == "ValueError"
    assert carol["error_message"].endswith("internal error: ValueError: a bug in an executor")
    assert carol["next_step"] == NEXT  # the runner's default when the error names none
    traces = journal.events(step_key="test.paint:carol", level="error")
    assert traces and "Traceback" in traces[0]["message"]

    again = by_step(run(journal, tenant, items))
    assert again["test.paint:alice"].changed and again["test.varnish:alice"].changed
    assert not again["test.paint:bob"].changed and not again["test.varnish:bob"].changed
    assert all(o.status == "ok" for o in again.values())
    alice = journal.get_item("user", "alice")
    assert alice is not None and alice["state"] == "ok" and alice["phase"] == "varnished"


def test_waiting_stops_the_items_sequence_until_the_world_catches_up(
    journal: Journal, tenant: FakeTenant
) -> None:
    """A waiting step is not a failure, but nothing after it runs until it is ok."""
    item = paint("alice", AwaitMailboxStep("alice"), PaintStep("alice"))
    [waiting] = run(journal, tenant, [item])
    assert waiting.status == "waiting" and waiting.detail == "mailbox not provisioned yet"
    assert "test.paint:alice" not in tenant.observed
    record = journal.get_item("user", "alice")
    assert record is not None and record["state"] == "waiting" and record["phase"] is None
    assert record["detail"]["waiting_for"] == "mailbox not provisioned yet"
    assert journal.get_step("test.await:alice") is not None

    tenant.ready.add("alice")
    done = by_step(run(journal, tenant, [item]))
    assert done["test.await:alice"].status == "ok" and done["test.paint:alice"].changed
    snapshot = journal.snapshot()
    unchanged = run(journal, tenant, [item])
    assert [o.changed for o in unchanged] == [False, False]
    assert journal.snapshot() == snapshot


# -- waiting on Microsoft 365: look again later, never hammer -------------------------------------
def not_ready() -> NotReady:
    return NotReady(
        "Graph GET users/0b5e...: 404 MailboxNotEnabledForRESTAPI",
        reason="mailbox not served by Graph yet",
        service="graph",
    )


def at(t: float) -> Callable[[], float]:
    return lambda: t


def test_not_ready_waits_with_reason_and_a_time_to_look_again(
    journal: Journal, tenant: FakeTenant
) -> None:
    """A NotReady step is `waiting`, not failed: reason (no ids), start and look-again time are
    journaled on the step and the item; nothing after it runs."""
    item = paint("alice", PaintStep("alice"), VarnishStep("alice"))
    tenant.faults["test.paint:alice"] = [not_ready()]
    [outcome] = run(journal, tenant, [item], clock=at(T0))
    assert (outcome.status, outcome.detail) == ("waiting", "mailbox not served by Graph yet")
    assert outcome.label == "alice@fabrikam.example"
    assert outcome.look_again_at == iso(T0 + 1) and outcome.waiting_since == iso(T0)
    step = journal.get_step("test.paint:alice")
    assert step is not None and step["status"] == "waiting"
    assert step["detail"] == {
        "text": "mailbox not served by Graph yet",
        "waiting_since": iso(T0),
        "look_again_at": iso(T0 + 1),
    }
    alice = journal.get_item("user", "alice")
    assert alice is not None and alice["state"] == "waiting"
    assert alice["detail"]["waiting_for"] == "mailbox not served by Graph yet"
    assert alice["detail"]["look_again_at"] == iso(T0 + 1)
    assert resting(alice, now=T0) and not resting(alice, now=T0 + 1)
    assert "test.varnish:alice" not in tenant.observed


def test_a_waiting_step_is_not_looked_at_before_its_time(
    journal: Journal, tenant: FakeTenant
) -> None:
    """Before the look-again time a run reports the step as still waiting and reads nothing."""
    item = paint("alice", PaintStep("alice"))
    tenant.faults["test.paint:alice"] = [not_ready()]
    run(journal, tenant, [item], clock=at(T0))
    snapshot = journal.snapshot()
    observed = list(tenant.observed)
    [early] = run(journal, tenant, [item], clock=at(T0 + 0.5))
    assert early.status == "waiting" and early.resting
    assert early.look_again_at == iso(T0 + 1)
    assert tenant.observed == observed  # not hammered
    assert journal.snapshot()["steps"] == snapshot["steps"]
    [due] = run(journal, tenant, [item], clock=at(T0 + 1))
    assert due.status == "ok" and due.changed and not due.resting
    alice = journal.get_item("user", "alice")
    assert alice is not None and alice["state"] == "ok"
    assert alice["detail"]["look_again_at"] is None and alice["detail"]["waiting_for"] is None


def test_looks_come_quickly_then_at_most_look_again_s_apart(
    journal: Journal, tenant: FakeTenant
) -> None:
    """Each look waits as long as the wait so far (1 s at first), capped at `look_again_s`."""
    item = paint("alice", AwaitRecheckStep("alice"))
    now, looks = T0, []
    for _ in range(12):
        [o] = run(journal, tenant, [item], clock=at(now))
        assert o.status == "waiting" and o.waiting_since == iso(T0)
        due = epoch(o.look_again_at)
        assert due is not None
        looks.append(round(due - now, 3))
        now = due
    assert looks[:4] == [1.0, 1.0, 2.0, 4.0]
    assert max(looks) == LOOK_AGAIN_S and looks[-1] == LOOK_AGAIN_S
    tenant.ready.add("alice")
    [done] = run(journal, tenant, [item], clock=at(now))
    assert done.status == "ok"


def test_a_wait_longer_than_waiting_max_s_fails_with_what_to_do(
    journal: Journal, tenant: FakeTenant
) -> None:
    """Two days of MailboxNotEnabledForRESTAPI is a fault, not a delay: the step fails."""
    item = paint("alice", PaintStep("alice"))
    tenant.faults["test.paint:alice"] = [not_ready(), not_ready()]
    run(journal, tenant, [item], clock=at(T0))
    [late] = run(journal, tenant, [item], clock=at(T0 + WAITING_MAX_S + 1))
    assert late.status == "failed" and late.error_class == "NotReady"
    assert late.error is not None and "still waiting after 24.0 h" in late.error
    assert "mailbox not served by Graph yet" in late.error
    assert late.next_step is not None and "admin center" in late.next_step
    alice = journal.get_item("user", "alice")
    assert alice is not None and alice["state"] == "failed"
    assert alice["detail"]["look_again_at"] is None


def test_operator_waits_have_no_look_again_time(journal: Journal, tenant: FakeTenant) -> None:
    """A wait for an operator (no `recheck`) is looked at on every run, as before."""
    item = paint("alice", AwaitMailboxStep("alice"))
    [o] = run(journal, tenant, [item], clock=at(T0))
    assert o.status == "waiting" and o.look_again_at is None
    alice = journal.get_item("user", "alice")
    assert alice is not None and not resting(alice, now=T0)
    run(journal, tenant, [item], clock=at(T0))
    assert tenant.observed.count("test.await:alice") == 2


# -- plan mode -------------------------------------------------------------------------------
def test_plan_mode_records_writes_and_leaves_the_journal_alone(
    journal: Journal, tenant: FakeTenant
) -> None:
    """--plan: each would-be write is recorded with its step; nothing is sent or journaled."""
    snapshot = journal.snapshot(include_logs=True)
    recorder = WriteRecorder()
    outcomes = run(journal, tenant, [paint("alice"), paint("bob")], plan=recorder)
    assert {o.status for o in outcomes} == {"planned"}
    planned = sorted((w.step or "", w.operation, str(w.params)) for w in recorder.writes)
    assert planned == [
        ("test.paint:alice", "PATCH /things/alice", "{'colour': 'blue'}"),
        ("test.paint:bob", "PATCH /things/bob", "{'colour': 'blue'}"),
    ]
    assert tenant.colours["alice"] == "red" and tenant.writes == []
    assert journal.snapshot(include_logs=True) == snapshot

    run(journal, tenant, [paint("alice")])  # really paint alice
    snapshot = journal.snapshot(include_logs=True)
    recorder = WriteRecorder()
    [unchanged] = run(journal, tenant, [paint("alice")], plan=recorder)
    assert unchanged.status == "ok" and not unchanged.changed and recorder.writes == []
    assert journal.snapshot(include_logs=True) == snapshot


# -- crash recovery ---------------------------------------------------------------------------
@pytest.mark.parametrize("written_before_crash", [True, False])
def test_crash_left_started_record_is_reobserved(
    journal: Journal, tenant: FakeTenant, written_before_crash: bool
) -> None:
    """A `started` left by a killed run is noted as an event; the step re-observes and writes
    only if the world still differs; a further run is unchanged."""
    step = PaintStep("alice")
    crashed = journal.start_run("test", {})
    journal.step_started(
        crashed, step.key, item_kind="user", item_key="alice", name=step.name, intent=step.intent()
    )
    if written_before_crash:
        tenant.colours["alice"] = "blue"
    [outcome] = run(journal, tenant, [paint("alice", step)])
    assert outcome.status == "ok" and outcome.changed is not written_before_crash
    assert tenant.writes == ([] if written_before_crash else [("alice", "blue")])
    events = journal.events(step_key=step.key, level="warning")
    assert [e["message"] for e in events] == [
        "previous attempt was interrupted; re-observing before any write"
    ]
    record = journal.get_step(step.key)
    assert record is not None and record["status"] == "ok"
    [again] = run(journal, tenant, [paint("alice", step)])
    assert not again.changed and journal.get_step(step.key) == record
    assert len(journal.events(step_key=step.key, level="warning")) == 1


# -- batched rounds -----------------------------------------------------------------------------
def _users(path: Path) -> Journal:
    journal = Journal.open(f"sqlite:///{path}")
    for key in ("alice", "bob", "carol"):
        journal.upsert_item("user", key, name=key, source_address=f"{key}@fabrikam.example")
    return journal


def test_a_batched_round_journals_what_a_plain_round_does(
    journal: Journal, tenant: FakeTenant, tmp_path: Path
) -> None:
    """Waiting, ok, failed, resting and unchanged re-runs: run_batched leaves the journal and
    reports the outcomes exactly as run does, round after round."""
    items = [
        ItemPlan("user", "alice", [AwaitRecheckStep("alice")], "ready", "alice@fabrikam.example"),
        ItemPlan("user", "bob", [AwaitMailboxStep("bob")], "ready", "bob@fabrikam.example"),
        paint("carol", PaintStep("carol", colour="red")),
    ]
    denied = PermissionDenied("Get-Thing: access denied", service="exchange", status=403)
    with _users(tmp_path / "batched.db") as other:
        twin = FakeTenant(other, colours=dict(tenant.colours))
        for t in (tenant, twin):
            t.ready.add("bob")
        rounds = [(T0, [denied]), (T0 + 0.5, []), (T0 + 2, []), (T0 + 3, [])]
        for now, faults in rounds:
            if now == T0 + 2:
                tenant.ready.add("alice")
                twin.ready.add("alice")
            tenant.faults["test.paint:carol"] = list(faults)
            twin.faults["test.paint:carol"] = list(faults)
            plain = run(journal, tenant, items, clock=at(now))
            batched = run(other, twin, items, clock=at(now), batched=True)
            assert sorted(batched, key=lambda o: o.step) == sorted(plain, key=lambda o: o.step)
            assert other.snapshot(include_logs=True) == journal.snapshot(include_logs=True)
        assert [o.status for o in plain] == ["ok", "ok", "ok"] and not any(o.changed for o in plain)


def test_a_batched_round_writes_as_it_goes_and_reports_only_what_is_written(
    journal: Journal, tenant: FakeTenant
) -> None:
    """Records are written every `batch_records` items and at the end; each outcome is
    reported once its record and its item's state are in the journal."""
    tenant.ready.update({"alice", "bob", "carol"})
    keys = ("alice", "bob", "carol")
    items = [ItemPlan("user", key, [AwaitMailboxStep(key)], "ready", key) for key in keys]
    seen: list[tuple[str, str | None, str | None]] = []
    written: list[int] = []

    def report(outcome: Outcome) -> None:
        record = journal.get_step(outcome.step) or {}
        item = journal.get_item("user", outcome.subject) or {}
        seen.append((outcome.subject, record.get("status"), item.get("phase")))
        written.append(len(journal.steps(status="ok")))

    run(journal, tenant, items, batched=True, batch_records=2, on_outcome=report)
    assert sorted(seen) == [(k, "ok", "ready") for k in keys]
    assert written == [2, 2, 3]  # two written (and reported) mid-round, the last at the end


def test_a_write_in_a_batched_round_is_journaled_started_first(
    journal: Journal, tenant: FakeTenant
) -> None:
    """A step that writes to a tenant in a batched round still has `started` (with what it
    observed) in the journal before its write, and its outcome after the round."""
    [outcome] = run(journal, tenant, [paint("alice")], batched=True)
    assert outcome.changed and tenant.writes == [("alice", "blue")]
    assert tenant.status_at_write == ["started"]
    record = journal.get_step("test.paint:alice")
    assert record is not None and record["status"] == "ok"
    assert record["intent"]["observed"] is None and record["before"] == {"colour": "red"}


def test_a_batched_round_takes_one_step_items_only(journal: Journal, tenant: FakeTenant) -> None:
    """A later step would read the earlier step's record, which a batch has not written yet."""
    item = paint("alice", PaintStep("alice"), VarnishStep("alice"))
    with pytest.raises(ValueError, match="one-step items"):
        run(journal, tenant, [item], batched=True)
    assert journal.get_step("test.paint:alice") is None


# -- pipelines: each item on to its next plan as soon as it is ready -------------------------------
def pipelines(journal: Journal, tenant: FakeTenant, plans: list[list[ItemPlan]]) -> list[Outcome]:
    runner = Runner(
        ctx=tenant,
        journal=journal,
        run_id=journal.start_run("test", {}),
        retry=FAIL_FAST,
        next_step=NEXT,
        steps=REGISTRY,
    )
    return asyncio.run(runner.run_pipelines(plans, concurrency=3))


def test_a_pipeline_moves_each_item_on_without_waiting_for_the_batch(
    journal: Journal, tenant: FakeTenant
) -> None:
    """alice's second plan runs while bob is still in his first (bob's step ends ok only if
    it does): a cutover's swap follows its user's own final pass, not the batch's. The last
    plan's `done` fields are recorded with the item's state; a failed plan ends its item's
    pipeline there; the unchanged re-run writes nothing."""
    for key in ("alice", "bob", "carol"):
        journal.merge_item("user", key, {"unfinished": "cutover"})
    tenant.faults["test.paint:carol"] = [InvalidRequest("bad colour", service="graph")]

    def pipeline(key: str, first: Step) -> list[ItemPlan]:
        done = {"unfinished": None}
        return [paint(key, first, phase=None), paint(key, VarnishStep(key), done=done)]

    plans = [
        pipeline("alice", PaintStep("alice")),
        pipeline("bob", AfterStep("bob", other="alice")),
        pipeline("carol", PaintStep("carol")),
    ]
    outcomes = by_step(pipelines(journal, tenant, plans))
    assert outcomes["test.after:bob"].status == "ok", outcomes["test.after:bob"]
    assert outcomes["test.varnish:bob"].status == "ok"
    assert outcomes["test.paint:carol"].status == "failed"
    assert "test.varnish:carol" not in tenant.observed
    expected = {
        "alice": ("ok", "painted", None),
        "bob": ("ok", "painted", None),
        "carol": ("failed", None, "cutover"),  # still to finish: status and retry show it
    }
    for key, (state, phase, left) in expected.items():
        item = journal.get_item("user", key)
        assert item is not None, key
        assert (item["state"], item["phase"], item["detail"].get("unfinished")) == (
            state,
            phase,
            left,
        ), item

    snapshot = journal.snapshot()
    tenant.writes.clear()
    again = pipelines(journal, tenant, plans[:2])
    assert not any(o.changed for o in again) and not tenant.writes
    assert journal.snapshot() == snapshot


def test_a_plan_that_does_not_gate_lets_its_item_go_on(
    journal: Journal, tenant: FakeTenant
) -> None:
    """A plan with `gates=False` (a final pass with mover "none") leaves its state visible
    and its item goes on to the next plan; a gating plan that waits ends the pipeline."""
    waits = ItemPlan("user", "alice", [AwaitMailboxStep("alice")], None, "alice", gates=False)
    blocks = ItemPlan("user", "bob", [AwaitMailboxStep("bob")], None, "bob")
    outcomes = by_step(
        pipelines(
            journal,
            tenant,
            [
                [waits, paint("alice", VarnishStep("alice"))],
                [blocks, paint("bob", VarnishStep("bob"))],
            ],
        )
    )
    assert outcomes["test.await:alice"].status == "waiting"
    assert outcomes["test.varnish:alice"].status == "ok"
    assert outcomes["test.await:bob"].status == "waiting"
    assert "test.varnish:bob" not in tenant.observed


# -- retries ------------------------------------------------------------------------------------
def throttled(retry_after: float | None = 0.001) -> TransientError:
    return TransientError("throttled", service="graph", status=429, retry_after=retry_after)


def test_transient_errors_are_retried_then_the_step_succeeds(
    journal: Journal, tenant: FakeTenant
) -> None:
    """Two throttled observes, then success: one outcome, one journal attempt; then unchanged."""
    step = PaintStep("alice")
    tenant.faults[step.key] = [throttled(), throttled(None)]
    [outcome] = run(journal, tenant, [paint("alice", step)], retry=QUICK)
    assert outcome.status == "ok" and outcome.changed
    assert tenant.observed == [step.key] * 3
    record = journal.get_step(step.key)
    assert record is not None and record["attempts"] == 1 and record["status"] == "ok"
    [again] = run(journal, tenant, [paint("alice", step)], retry=QUICK)
    assert not again.changed and journal.get_step(step.key) == record


def test_retries_stop_at_max_attempts(journal: Journal, tenant: FakeTenant) -> None:
    """A step failing transiently without Retry-After fails after `max_attempts` tries."""
    step = PaintStep("alice")
    tenant.faults[step.key] = [throttled(None) for _ in range(QUICK.max_attempts)]
    [outcome] = run(journal, tenant, [paint("alice", step)], retry=QUICK)
    assert outcome.status == "failed" and outcome.error_class == "TransientError"
    assert tenant.observed == [step.key] * QUICK.max_attempts


def test_retry_after_throttles_are_bounded_by_time_not_attempts(
    journal: Journal, tenant: FakeTenant
) -> None:
    """Throttles that say when to come back are waited out past max_attempts (then succeed)."""
    step = PaintStep("alice")
    tenant.faults[step.key] = [throttled(0.002) for _ in range(QUICK.max_attempts + 2)]
    [outcome] = run(journal, tenant, [paint("alice", step)], retry=QUICK)
    assert outcome.status == "ok" and outcome.changed
    assert tenant.observed == [step.key] * (QUICK.max_attempts + 3)


def test_retry_after_throttles_give_up_after_max_wait(journal: Journal, tenant: FakeTenant) -> None:
    """A step throttled for longer than max_wait_s fails, with the last Retry-After recorded."""
    step = PaintStep("alice")
    short = RetryPolicy(max_attempts=2, max_wait_s=0.05, base_s=0.001, cap_s=0.001)
    tenant.faults[step.key] = [throttled(0.02) for _ in range(50)]
    [outcome] = run(journal, tenant, [paint("alice", step)], retry=short)
    assert outcome.status == "failed" and outcome.error_class == "TransientError"
    record = journal.get_step(step.key)
    assert record is not None and record["retry_after"] == pytest.approx(0.02)


def test_fail_fast_does_not_retry(journal: Journal, tenant: FakeTenant) -> None:
    """FAIL_FAST gives up on the first transient error, recording Retry-After for the operator."""
    step = PaintStep("alice")
    tenant.faults[step.key] = [throttled(7)]
    [outcome] = run(journal, tenant, [paint("alice", step)], retry=FAIL_FAST)
    assert outcome.status == "failed" and tenant.observed == [step.key]
    record = journal.get_step(step.key)
    assert record is not None
    assert record["error_class"] == "TransientError" and record["retry_after"] == 7
    assert record["next_step"] == NEXT
    [again] = run(journal, tenant, [paint("alice", step)], retry=FAIL_FAST)
    assert again.status == "ok" and again.changed


def test_non_transient_errors_are_not_retried(journal: Journal, tenant: FakeTenant) -> None:
    """A retrying policy still runs a step that fails with a non-transient error once."""
    step = PaintStep("alice")
    tenant.faults[step.key] = [InvalidRequest("bad", service="graph", status=400)]
    [outcome] = run(journal, tenant, [paint("alice", step)], retry=QUICK)
    assert outcome.status == "failed" and outcome.error_class == "InvalidRequest"
    assert tenant.observed == [step.key]


def retry_state(exc: BaseException, attempt: int) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = attempt
    state.set_exception((type(exc), exc, None))
    return state


def test_wait_honours_retry_after_capped_by_max_wait() -> None:
    """The wait is the service's Retry-After when given (capped by max_wait_s), else jittered
    exponential backoff within [0, min(cap, base * 2**(n-1))]."""
    policy = RetryPolicy(max_attempts=5, max_wait_s=10, base_s=0.5, cap_s=1.5)
    assert policy.wait_for(retry_state(throttled(3), 1)) == 3
    assert policy.wait_for(retry_state(throttled(120), 1)) == 10
    for attempt, ceiling in ((1, 0.5), (2, 1.0), (3, 1.5), (4, 1.5)):
        wait = policy.wait_for(retry_state(throttled(None), attempt))
        assert 0 <= wait <= ceiling


def test_policy_call_retries_only_transient_errors() -> None:
    """RetryPolicy.call: TransientError is retried to success; other errors propagate at once."""
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise throttled(0.001)
        return "done"

    assert asyncio.run(QUICK.call(flaky)) == "done" and len(calls) == 3

    async def broken() -> str:
        calls.append(1)
        raise InvalidRequest("no", service="graph")

    calls.clear()
    with pytest.raises(InvalidRequest):
        asyncio.run(QUICK.call(broken))
    assert len(calls) == 1


# -- the registry -------------------------------------------------------------------------------
def test_registry_is_per_instance_and_refuses_duplicates() -> None:
    """The test registry does not leak into the global one; double registration is refused."""
    with pytest.raises(LookupError, match="PaintStep"):
        global_registry.executor_for(PaintStep("alice"))
    with pytest.raises(ValueError, match="registered twice"):
        REGISTRY.register(PaintStep)(PaintExecutor)
    fresh: Registry[Step] = Registry()
    with pytest.raises(LookupError, match="no executor registered for VarnishStep"):
        fresh.executor_for(VarnishStep("alice"))
