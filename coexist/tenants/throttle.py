"""Throttle governor: one per endpoint, shared by every request in flight.

Directory and Exchange admin requests go through this Gate. Outlook resources (mail,
contacts, calendar, To Do, mailbox import/export) are limited per app per mailbox instead and
are governed by `mailbox_governor.MailboxGovernor` (Graph adapter).

Three mechanisms, all because Microsoft's limits are per app and tenant (or
mailbox), not per connection:

- Write budget (`WriteBudget`): directory writes are paced to the published
  budget before they are sent, so the service never has to refuse them. One
  budget per app and tenant, shared by that tenant's Graph and Exchange adapters.
- Retry-After pause: when the service answers 429/503 with Retry-After, every
  concurrent request to the same endpoint would hit the same wall. All senders
  wait the stated time (learn.microsoft.com/graph/throttling: "wait the number
  of seconds specified in the Retry-After header").
- Adaptive concurrency (AIMD, as TCP congestion control): each throttled answer
  halves the number of requests allowed in flight, each success adds back
  1/window. A herd of requests released together after a pause would be
  refused again; a window that shrinks to what the limit admits keeps it
  saturated without wasted calls.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

Clock = Callable[[], float]

# Microsoft Graph throttling limits, "Identity and access service limits": writes per app +
# tenant pair are limited to 3,000 per 2 minutes 30 seconds.
DIRECTORY_WRITES = 3000
DIRECTORY_WRITE_WINDOW_S = 150.0
# *unverified*, both: (1) how the service counts that window (token bucket, fixed or sliding
# window) - `WriteBudget` models a token bucket of DIRECTORY_WRITES refilled over the window,
# as the sandbox does; (2) whether Exchange admin cmdlets that change recipients draw on the
# same budget - they write the same directory objects, so one budget per app + tenant is
# shared by the Graph and Exchange adapters (the cautious reading; the sandbox counts them
# there too, sandbox/limits.py). If either is otherwise, a refusal re-aligns the budget
# (`WriteBudget.refused`) and the Gate honours Retry-After: a few refused calls, no lost write.
# Statuses that say the request was refused before it was processed (graph/throttling).
REFUSED_STATUS = frozenset({429, 503})


class Gate:
    def __init__(self, max_concurrency: int = 8) -> None:
        self.max = max(1, max_concurrency)
        self.window = float(self.max)
        self._in_flight = 0
        self._resume_at = 0.0
        self._changed = asyncio.Condition()
        self.throttled = 0

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one in-flight slot within the current window and after any pause."""
        async with self._changed:
            while self._in_flight >= int(self.window):
                await self._changed.wait()
            self._in_flight += 1
        try:
            delay = self._resume_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            yield
        finally:
            async with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def success(self) -> None:
        self.window = min(float(self.max), self.window + 1.0 / self.window)

    def throttle(self, retry_after: float | None) -> None:
        """A throttled or busy answer: shrink the window and pause for `retry_after`."""
        self.throttled += 1
        self.window = max(1.0, self.window / 2)
        if retry_after:
            self._resume_at = max(self._resume_at, time.monotonic() + retry_after)


@dataclass(frozen=True)
class WriteLimits:
    """The directory-write budget of one app in one tenant: `writes` per `window_s`."""

    writes: float = DIRECTORY_WRITES
    window_s: float = DIRECTORY_WRITE_WINDOW_S
    # A fresh Microsoft window admits a full budget at once; a client that knows the budget
    # is already spent (a benchmark's or test's drained sandbox) starts empty instead.
    start_full: bool = True

    @property
    def rate(self) -> float:
        """Writes per second, sustained."""
        return self.writes / self.window_s


class WriteBudget:
    """Paces the directory writes of one app in one tenant to its published budget.

    A token bucket holding the writes the service would still admit: it starts full (a
    fresh window admits a full budget) and refills at the sustained rate. A write waits,
    in arrival order, until the bucket covers it, and is sent only then - so writes leave
    at the rate the service admits and it has no reason to answer 429.

    The service may still refuse (another client of the same app, a window spent by an
    earlier run, a different counting: see DIRECTORY_WRITE_WINDOW_S). A refusal says the
    service's bucket was empty when it answered; writes still in flight will draw on what
    it gains from then on, so the budget believes it holds nothing minus those writes
    (`refused`). From then on it is never ahead of the service again.

    Reads are not paced here: they have their own, larger budget. The maths takes an
    injected clock so it is testable without timing.
    """

    def __init__(self, limits: WriteLimits | None = None, clock: Clock = time.monotonic) -> None:
        self.limits = limits or WriteLimits()
        self.clock = clock
        self.tokens = float(self.limits.writes) if self.limits.start_full else 0.0
        self.stamp = clock()
        self.in_flight = 0  # writes sent (tokens taken) and not answered yet
        self.taken = 0  # tokens taken: every write sent, refused ones included
        self.refusals = 0  # writes the service refused (429/503)
        self.paced_s = 0.0  # total time writes waited for the budget
        self._queue = asyncio.Lock()  # FIFO: writes leave in the order they asked

    def _refill(self) -> None:
        now = self.clock()
        rate = self.limits.rate
        self.tokens = min(float(self.limits.writes), self.tokens + (now - self.stamp) * rate)
        self.stamp = now

    def _clamped(self, cost: int) -> float:
        # The service never admits more than a full bucket at once: a larger cost is sent
        # when the bucket is full, not never.
        return min(float(cost), float(self.limits.writes))

    def delay(self, cost: int = 1) -> float:
        """Seconds until the bucket covers `cost` writes (0.0: send now)."""
        self._refill()
        return max(0.0, (self._clamped(cost) - self.tokens) / self.limits.rate)

    def take(self, cost: int = 1) -> None:
        """Spend `cost` writes now (they are in flight until `done`)."""
        self._refill()
        self.tokens -= self._clamped(cost)
        self.taken += cost
        self.in_flight += cost

    def done(self, cost: int = 1) -> None:
        """`cost` writes were answered (accepted, refused or failed)."""
        self.in_flight -= cost

    def refused(self, cost: int = 1) -> None:
        """The service refused `cost` writes still counted in flight: its bucket was empty.

        The budget now holds nothing, less the other writes in flight (the service counts
        those as they arrive, from what it gains after this answer). A budget already below
        that keeps its debt: it is writes that queued behind it.
        """
        self._refill()
        self.refusals += 1
        self.tokens = min(self.tokens, -float(self.in_flight - cost))

    @asynccontextmanager
    async def spend(self, cost: int = 1) -> AsyncIterator[None]:
        """Wait in line until the budget covers `cost` writes, take them, and hold them as in
        flight while the body sends them. `cost` 0 (a read) passes straight through."""
        if cost <= 0:
            yield
            return
        async with self._queue:
            # Checked again after each sleep: a refusal while this write waited moves it back.
            while (wait := self.delay(cost)) > 0:
                self.paced_s += wait
                await asyncio.sleep(wait)
            self.take(cost)
        try:
            yield
        finally:
            self.done(cost)
