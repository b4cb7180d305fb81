"""Limit profiles: Microsoft's published throttling, none (fast), chaos, or realistic.

- `published`: the published limits below, enforced.
- `fast`: nothing enforced, mailboxes provisioned in half a second (tests).
- `chaos`: nothing enforced, a seeded share of calls fails transiently, and new
  objects 404 in Graph for half a second.
- `realistic`: the published limits enforced too (a real tenant has both), and
  Microsoft 365's timings: a licensed MailUser's mailbox takes minutes, objects
  created through Exchange reach Graph after minutes, a new mailbox answers 404
  `MailboxNotEnabledForRESTAPI` a while longer, and Graph may refuse to PATCH an
  Exchange-created user (`server.profile_settings` has the figures).

Every window and delay is divided by `time_scale` (`realistic` at 60: minutes become
seconds).

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
Origin = Literal["exchange", "graph"]  # which service created an object


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
    # EWS budget of on-premises Exchange's default throttling policy, in ms of server time:
    # EwsMaxBurst 300,000 ms, EwsRechargeRate 900,000 ms/h (= 250 ms/s: the burst refills in
    # 1,200 s) (FACTS.md "Other endpoints", *unverified* per version; ews/orgs.UNVERIFIED).
    "ews_budget": Limit(300_000, 1200),
}
OUTLOOK_CONCURRENCY = 4

PROFILES = ("published", "fast", "chaos", "realistic")
# Profiles that enforce the published limits.
ENFORCING = ("published", "realistic")


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
        return self.settings.profile in ENFORCING

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

    def bucket_keys(self, bucket: str) -> list[tuple[str, ...]]:
        """The keys `bucket` has been charged under so far (which budgets exist)."""
        with self._lock:
            return [key for (name, key) in self._buckets if name == bucket]

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

    def visible_at(self, key: str = "", *, origin: Origin = "exchange") -> float:
        """When an object created now becomes readable through Graph (replication lag).

        `key` (the alias) draws the object's own lag (`Settings.delay`). Objects Exchange
        creates reach Graph through directory replication: minutes under `realistic`
        (FACTS.md). Objects Graph creates itself are read back at once there (a modelling
        choice); `chaos` delays both.
        """
        profile = self.settings.profile
        if profile == "chaos" or (profile == "realistic" and origin == "exchange"):
            lag = self.settings.delay("replication", key)
            return time.time() + lag if lag > 0 else 0.0
        return 0.0

    def graph_writable_at(self, visible_at: float, key: str = "") -> float:
        """From when Graph accepts a PATCH of a user Exchange created now (`graph_patch_refusal`)."""
        if self.settings.graph_patch_refusal != "migrating":
            return 0.0
        return max(visible_at, time.time()) + self.settings.delay("graph_patch", key)
