"""provision's read-back overlapping its MailUser round (`mailusers.provision_users`).

A stand-in runner plays the round, so when users end and when the round goes on are under
the test's control; the read-back batches it is handed are the subject.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from coexist.engine.context import Context
from coexist.engine.runner import ItemPlan, Outcome
from coexist.errors import Conflict
from coexist.provisioning.mailusers import (
    READBACK,
    MailUserStep,
    TargetAddressStep,
    provision_users,
)

KEYS = [f"u{n}" for n in range(6)]


def _plan(key: str) -> ItemPlan:
    step = MailUserStep(
        subject=key,
        mode="create",
        target_name=key,
        alias=key,
        display_name=key,
        primary_smtp=f"{key}@contoso.example",
        external_address=f"{key}@fabrikam.example",
        x500=(),
    )
    return ItemPlan("user", key, [step], "provisioned", label=f"{key}@fabrikam.example")


def _ended(key: str, status: str = "ok") -> Outcome:
    data = {"target_id": f"id-{key}"}
    return Outcome(f"provision.mailuser:{key}", key, MailUserStep.name, status, True, data=data)


class Round:
    """The MailUser round: `first` users end, then the round waits until it is let go."""

    def __init__(self, outcomes: list[Outcome], first: int, fail: BaseException | None = None):
        self.outcomes = outcomes
        self.first = first
        self.fail = fail
        self.go_on = asyncio.Event()
        self.batches: list[list[str]] = []
        self.running_at_batch: list[bool] = []
        self.cancelled = False

    async def run(self, plans: Sequence[ItemPlan], concurrency: int) -> list[Outcome]:
        try:
            self.outcomes += [_ended(p.key) for p in plans[: self.first]]
            await self.go_on.wait()
            if self.fail is not None:
                raise self.fail
            ended = [
                _ended(p.key, "failed" if p.key == "u4" else "ok") for p in plans[self.first :]
            ]
            self.outcomes += ended
            return []
        except asyncio.CancelledError:
            self.cancelled = True
            raise

    async def run_batched(self, items: Sequence[ItemPlan], concurrency: int) -> list[Outcome]:
        self.batches.append([i.key for i in items])
        self.running_at_batch.append(not self.go_on.is_set())
        for item in items:
            [step] = item.steps
            assert isinstance(step, TargetAddressStep) and step.target_id == f"id-{item.key}"
        self.go_on.set()  # the round goes on once the first batch was read back
        return []


def _provision(round_: Round, ctx: Context, *, batch: int) -> None:
    plans = [_plan(k) for k in KEYS]
    runner: Any = round_
    asyncio.run(provision_users(runner, ctx, plans, round_.outcomes, 4, batch=batch))


def _ctx() -> Context:
    """A run context with no tenants: the stand-in round makes no calls."""
    return Context(project=None, journal=None, source=None, target=None)  # type: ignore[arg-type]


def test_users_are_read_back_while_the_round_goes_on_and_the_rest_at_its_end() -> None:
    """Once `batch` users have ended ok they are read back while the round still writes; the
    users ending later are read back when it is done; a failed user is never read back."""
    ctx = _ctx()
    round_ = Round([], first=3)
    _provision(round_, ctx, batch=3)
    assert round_.batches == [["u0", "u1", "u2"], ["u3", "u5"]]
    assert round_.running_at_batch == [True, False]
    assert ctx.cache[READBACK] == "bulk"  # each batch decides bulk or one read each afresh


def test_fewer_ended_users_than_a_batch_wait_for_the_end_of_the_round() -> None:
    """Below `batch` users nothing is read back until the round ends; then all in one batch."""
    round_ = Round([], first=2)

    async def later() -> None:
        await asyncio.sleep(0.3)  # a few looks at the round, each finding too few users
        round_.go_on.set()

    async def main() -> None:
        plans = [_plan(k) for k in KEYS]
        runner: Any = round_
        await asyncio.gather(later(), provision_users(runner, _ctx(), plans, round_.outcomes, 4))

    asyncio.run(main())
    assert round_.batches == [["u0", "u1", "u2", "u3", "u5"]]
    assert round_.running_at_batch == [False]


def test_an_error_of_the_round_comes_out_before_anything_more_is_read_back() -> None:
    """The round's own error is raised; the users it left are not read back after it."""
    round_ = Round([], first=3, fail=RuntimeError("journal gone"))
    with pytest.raises(RuntimeError, match="journal gone"):
        _provision(round_, _ctx(), batch=3)
    assert round_.batches == [["u0", "u1", "u2"]]


def test_an_error_in_a_read_back_stops_the_round_and_leaves_nothing_running() -> None:
    """A read-back that raises cancels the round still writing, and is what comes out."""

    class Failing(Round):
        async def run_batched(self, items: Sequence[ItemPlan], concurrency: int) -> list[Outcome]:
            raise Conflict("read-back refused", service="exchange")

    round_ = Failing([], first=3)
    with pytest.raises(Conflict, match="read-back refused"):
        _provision(round_, _ctx(), batch=3)
    assert round_.cancelled
