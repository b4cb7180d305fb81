"""Admission of EWS requests to the Exchange throttling budget they are charged to.

Exchange's throttling policy gives each budget owner a balance of server time (EwsMaxBurst,
recharged at EwsRechargeRate; FACTS.md "Other endpoints") and EwsMaxConcurrency requests at
once. Whose budget a request spends is the access mode's:

- delegation: every request is the admin's, whatever mailbox it opens: **one** budget for
  the whole server (`budget_key` -> the admin's login);
- impersonation: a request carrying ExchangeImpersonation is charged to the impersonated
  user: one budget per mailbox (`budget_key` -> the user).

When the balance is spent, Exchange answers ErrorServerBusy with BackOffMilliseconds: how
long until *this* request would be admitted. Every caller on the same budget meets the same
empty balance, so one caller told to back off means all of them should: otherwise twenty
callers race for each millisecond recharged, each is told a tiny back-off, and a given call
can lose every race (NOTES-ewsdemo.md finding 2). Per budget, this governor therefore

- pauses every caller until the back-off a busy answer stated is over (`throttled`: the
  latest `resume_at` wins), and checks it again after queueing, so a caller already admitted
  to the queue does not go out into a pause that started meanwhile;
- bounds the requests in flight (`concurrency`), with an AIMD window as `throttle.Gate` and
  `mailbox_governor` do: a busy answer halves it, each success adds 1/window back, so after
  a pause at most `window` callers meet the recharged balance, not the whole herd;
- admits waiters in arrival order (one Condition, FIFO wake-ups), so no caller is starved
  by others re-entering faster.

The governor does not guess the budget's size or rate: real Exchange charges the measured
server time of each call, which the client cannot know. It spends the budget as fast as the
server admits and lets the server say when to stop (the balance recharges during a pause
and is spent right after it, so pausing loses none of it).

The clock is injectable so the state changes are testable without timing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

Clock = Callable[[], float]


# Access modes whose requests Exchange charges to each mailbox's user: the impersonated
# user's budget, or (own) the user's, who signs in itself.
PER_USER_BUDGETS = frozenset({"impersonation", "own"})


def budget_key(access: str, admin: str, user: str | None) -> str:
    """The budget a request is charged to: the admin's under delegation (and for requests
    that act for no mailbox), the impersonated user's under impersonation."""
    if access in PER_USER_BUDGETS and user:
        return f"user:{user.lower()}"
    return f"admin:{admin.lower()}"


@dataclass
class BudgetStats:
    requests: int = 0
    busy: int = 0  # ErrorServerBusy answers met on this budget
    paused_s: float = 0.0  # total time callers waited out a back-off
    peak_in_flight: int = 0


class _Budget:
    def __init__(self, concurrency: int) -> None:
        self.limit = max(1, concurrency)
        self.window = float(self.limit)
        self.in_flight = 0
        self.resume_at = 0.0
        self.changed = asyncio.Condition()
        self.stats = BudgetStats()


@dataclass
class EwsGovernor:
    """Per-budget admission for one EWS server's requests (shared by every mailbox of it).

    `concurrency`: requests in flight per budget at most (delegation: the server's bound,
    below the admin's EwsMaxConcurrency; impersonation: per mailbox)."""

    concurrency: int = 20
    clock: Clock = time.monotonic
    _budgets: dict[str, _Budget] = field(default_factory=dict, init=False)

    def _budget(self, key: str) -> _Budget:
        b = self._budgets.get(key)
        if b is None:
            b = self._budgets[key] = _Budget(self.concurrency)
        return b

    def stats(self, key: str) -> BudgetStats:
        return self._budget(key).stats

    def all_stats(self) -> dict[str, BudgetStats]:
        return {k: b.stats for k, b in self._budgets.items()}

    def window(self, key: str) -> float:
        return self._budget(key).window

    def pause_left(self, key: str) -> float:
        """Seconds until the budget's callers may send again (0: not paused)."""
        return max(0.0, self._budget(key).resume_at - self.clock())

    def admits(self, key: str) -> bool:
        """Whether one more request may go out now on this budget."""
        b = self._budget(key)
        return self.pause_left(key) == 0 and b.in_flight < max(1, int(b.window))

    @asynccontextmanager
    async def slot(self, key: str) -> AsyncIterator[None]:
        """Hold one of the budget's slots for one request, sent once no back-off is in
        force and fewer than `window` requests of this budget are in flight."""
        b = self._budget(key)
        async with b.changed:
            while True:
                pause = b.resume_at - self.clock()
                if pause > 0:
                    started = self.clock()
                    # Woken early by a notify (a slot freed): the loop re-checks the pause.
                    with suppress(TimeoutError):
                        await asyncio.wait_for(b.changed.wait(), pause)
                    b.stats.paused_s += self.clock() - started
                    continue
                if b.in_flight < max(1, int(b.window)):
                    break
                await b.changed.wait()
            b.in_flight += 1
            b.stats.requests += 1
            b.stats.peak_in_flight = max(b.stats.peak_in_flight, b.in_flight)
        try:
            yield
        finally:
            async with b.changed:
                b.in_flight -= 1
                b.changed.notify_all()

    def success(self, key: str) -> None:
        b = self._budget(key)
        b.window = min(float(b.limit), b.window + 1.0 / b.window)

    def throttled(self, key: str, back_off_s: float | None) -> None:
        """ErrorServerBusy on this budget: halve the window and pause every caller of it for
        the back-off the server stated (none stated: the window shrinks only)."""
        b = self._budget(key)
        b.stats.busy += 1
        b.window = max(1.0, b.window / 2)
        if back_off_s and back_off_s > 0:
            b.resume_at = max(b.resume_at, self.clock() + back_off_s)
