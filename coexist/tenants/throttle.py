"""Throttle governor: one per endpoint, shared by every request in flight.

Directory and Exchange admin requests go through this Gate. Outlook resources (mail,
contacts, calendar, To Do, mailbox import/export) are limited per app per mailbox instead and
are governed by `mailbox_governor.MailboxGovernor` (Graph adapter).

Two mechanisms, both because Microsoft's limits are per app and tenant (or
mailbox), not per connection:

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
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


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
