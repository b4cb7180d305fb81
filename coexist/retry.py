"""Retry policies: injected objects, so tests can fail fast and production can wait.

Only `TransientError` is retried (throttling, 5xx, dropped connections), and not one
its client library already retried (`retryable=False`: the token endpoint). When
the service said how long to wait (Retry-After), that wins over backoff —
Microsoft's throttling guidance: learn.microsoft.com/graph/throttling
("wait the number of seconds specified in the Retry-After header").
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
)

from coexist.errors import TransientError, Unreachable

T = TypeVar("T")


def retryable(exc: BaseException) -> bool:
    """A transient failure nobody retried yet."""
    return isinstance(exc, TransientError) and exc.retryable


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient errors up to `max_attempts`, honouring Retry-After."""

    max_attempts: int = 5
    max_wait_s: float = 300.0  # give up on one step after this much total waiting
    base_s: float = 1.0  # exponential backoff base when no Retry-After was given
    cap_s: float = 60.0

    def wait_for(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return min(exc.retry_after, self.max_wait_s)
        backoff = min(self.cap_s, self.base_s * 2 ** (state.attempt_number - 1))
        return random.uniform(0, backoff)  # full jitter (AWS architecture blog)

    def should_stop(self, state: RetryCallState) -> bool:
        """Give up after `max_wait_s` in all; after `max_attempts` unless the service said when.

        A throttled request that carries Retry-After is the service scheduling us, not
        failing: Microsoft asks clients to keep waiting the stated time
        (learn.microsoft.com/graph/throttling), so those retries are bounded by time only.
        """
        if stop_after_delay(self.max_wait_s)(state):
            return True
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return False
        return bool(stop_after_attempt(self.max_attempts)(state))

    async def call(self, fn: Callable[[], Awaitable[T]]) -> T:
        # The first attempt runs outside tenacity: almost every call succeeds at once, and
        # building an AsyncRetrying and iterating it cost ~7 % of the Graph mover's client
        # CPU per small item (bench/graph_mover_bench.py, profiled: tenacity plus the
        # `inspect.iscoroutinefunction` it runs on its hooks, per request). A retryable
        # failure enters tenacity as its first attempt, replayed, so attempts, waits and
        # Retry-After are as before; only `max_wait_s` now counts from that first failure
        # rather than from the first attempt's start (at most one request's timeout later).
        try:
            return await fn()
        except Exception as exc:
            if not retryable(exc):
                raise  # what tenacity did at once (reraise=True): not retried
            first: Exception | None = exc

        async def attempt_once() -> T:
            nonlocal first
            if first is not None:
                replay, first = first, None
                raise replay
            return await fn()

        retrying = AsyncRetrying(
            retry=retry_if_exception(retryable),
            stop=self.should_stop,
            wait=self.wait_for,
            sleep=asyncio.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    return await attempt_once()
        except Unreachable as exc:
            # Still no connection after this policy's attempts: an outer policy (the
            # engine's, around the step whose read this was) would only wait longer for
            # the same answer, so the run stops now with it.
            exc.retryable = False
            raise
        raise AssertionError("unreachable")  # pragma: no cover


FAIL_FAST = RetryPolicy(max_attempts=1, max_wait_s=0)
