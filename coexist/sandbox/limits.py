"""Limit profiles: Microsoft's published throttling, none (fast), or chaos.

Buckets are token buckets keyed by what Microsoft keys them on (app + tenant
for directory operations, app + mailbox for Outlook resources). Under
`published` a `time_scale` > 1 makes every window proportionally shorter so
benchmarks can reach the ceiling in seconds; Retry-After is then fractional
(Microsoft sends whole seconds; our clients parse floats).

Sources:
- Directory writes: 3,000 per 150 s per app + tenant (Microsoft Graph
  throttling limits, "identity and access service limits").
- Directory reads: 3,500 resource units per 10 s per app + tenant (small-tenant
  figure of the same page; a read costs 1 unit here).
- Outlook (mail, calendar, contacts, import/export): per app per mailbox
  10,000 requests / 10 min, 4 concurrent requests, 150 MB upload / 5 min.
- Exchange admin REST writes are counted against the directory-write bucket
  (they write the same directory objects); this is a modelling choice.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from .model import Settings

ChaosFault = Literal["throttle", "unavailable", "reset"]


@dataclass(frozen=True)
class Limit:
    capacity: float  # units per window
    window_s: float

    def rate(self, time_scale: float) -> float:
        return self.capacity / self.window_s * time_scale


PUBLISHED: dict[str, Limit] = {
    "directory_write": Limit(3000, 150),
    "directory_read": Limit(3500, 10),
    "outlook_requests": Limit(10_000, 600),
    "outlook_upload_bytes": Limit(150 * 1024 * 1024, 300),
}
OUTLOOK_CONCURRENCY = 4

PROFILES = ("published", "fast", "chaos")


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class Limiter:
    """Admission control for every face; deterministic for a given seed."""

    def __init__(self, settings: Settings) -> None:
        if settings.profile not in PROFILES:
            raise ValueError(
                f"unknown limit profile {settings.profile!r}; choose one of {PROFILES}"
            )
        self.settings = settings
        self._buckets: dict[tuple[str, tuple[str, ...]], _Bucket] = {}
        self._inflight: dict[tuple[str, ...], int] = {}
        self._lock = threading.Lock()
        self._rng = random.Random(settings.seed)
        self.counters: dict[str, int] = {}

    @property
    def enforcing(self) -> bool:
        return self.settings.profile == "published"

    def ceiling_per_s(self, bucket: str) -> float:
        """The profile's sustained rate for a bucket, in (scaled) units per second."""
        return PUBLISHED[bucket].rate(self.settings.time_scale)

    def admit(self, bucket: str, key: tuple[str, ...], cost: float = 1.0) -> float | None:
        """Take `cost` units; None if admitted, else seconds to wait (Retry-After)."""
        with self._lock:
            self.counters[bucket] = self.counters.get(bucket, 0) + 1
            if not self.enforcing:
                return None
            limit = PUBLISHED[bucket]
            now = time.monotonic()
            b = self._buckets.get((bucket, key))
            if b is None:
                start = 0.0 if self.settings.buckets_start_empty else limit.capacity
                b = self._buckets[(bucket, key)] = _Bucket(start, now)
            rate = limit.rate(self.settings.time_scale)
            b.tokens = min(limit.capacity, b.tokens + (now - b.stamp) * rate)
            b.stamp = now
            if b.tokens >= cost:
                b.tokens -= cost
                return None
            return self._retry_after((cost - b.tokens) / rate)

    def _retry_after(self, seconds: float) -> float:
        if self.settings.time_scale == 1.0:
            return float(max(1, math.ceil(seconds)))
        return max(0.001, round(seconds, 3))

    @contextmanager
    def concurrency(self, key: tuple[str, ...], limit: int = OUTLOOK_CONCURRENCY) -> Iterator[bool]:
        """Hold one of `limit` concurrent slots; yields False when over the limit."""
        with self._lock:
            n = self._inflight.get(key, 0)
            admitted = not self.enforcing or n < limit
            if admitted:
                self._inflight[key] = n + 1
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    self._inflight[key] -= 1

    def chaos(self) -> ChaosFault | None:
        """Under `chaos`, a seeded share of requests fail transiently."""
        if self.settings.profile != "chaos":
            return None
        with self._lock:
            if self._rng.random() >= self.settings.chaos_rate:
                return None
            return self._rng.choice(("throttle", "throttle", "unavailable", "reset"))

    def chaos_retry_after(self) -> float:
        return (
            1.0 if self.settings.time_scale == 1.0 else max(0.001, 1.0 / self.settings.time_scale)
        )

    def visible_at(self) -> float:
        """When a just-created object becomes readable through Graph (replication lag)."""
        if self.settings.profile != "chaos" or self.settings.replication_delay_s <= 0:
            return 0.0
        return time.time() + self.settings.replication_delay_s
