"""Per-mailbox throttle governor for Outlook resources (mail, contacts, calendar, To Do,
the mailbox import/export API).

learn.microsoft.com/graph/throttling-limits, "Outlook service limits": the limits are per app
per mailbox - 10,000 requests per 10 minutes, 4 concurrent requests, 150 MB upload (PATCH,
POST, PUT) per 5 minutes. A tenant-wide window (`throttle.Gate`) cannot keep one mailbox
under them and would needlessly cap many mailboxes moving in parallel, so every Outlook
request is governed by the mailbox it targets:

- Concurrency: at most `concurrency` requests in flight per mailbox; a throttled answer
  halves the allowance (AIMD, as `throttle.Gate`), each success adds back 1/window.
- Budgets: two reservation token buckets per mailbox (requests, upload bytes) refilled at
  the published rate. A request reserves its cost before it is sent and waits until the
  bucket would cover it, so requests leave exactly at the sustained rate in arrival order
  (no herd, no 429). The buckets start full, as a fresh Microsoft window does.
- Retry-After: when the service still refuses (another client of the same app, a restart
  within the window), the mailbox pauses for the stated time and the refused budget is
  drained so the client bucket is never ahead of the service's again.

The maths takes an injected clock so it is testable without timing.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

Clock = Callable[[], float]
MB = 1024 * 1024

# Path segments under /users/{id}/ that are Outlook resources (throttling-limits lists mail,
# calendar, contacts, To Do as "Outlook service"). Everything else under /users (the user
# object, memberOf, licenseDetails, settings/exchange) is a directory resource.
OUTLOOK_SEGMENTS = frozenset(
    {
        "messages",
        "mailfolders",
        "contacts",
        "contactfolders",
        "calendar",
        "calendars",
        "calendargroups",
        "calendarview",
        "events",
        "todo",
        "sendmail",
        "mailboxsettings",
        "inferenceclassification",
        "outlook",
    }
)
# importUrl: ".../api/gv1.0/Mailboxes('MBX:...')/importItem" (mailbox-createimportsession; the
# beta form was ".../api/gbeta/..."). Found wherever it is in the path, so a changed prefix
# still charges the import to its mailbox.
_IMPORT_MAILBOX = re.compile(r"^mailboxes\('([^']+)'\)$", re.IGNORECASE)
# outlook-large-attachments: uploadUrl is ".../api/v2.0/Users('{user id}@{tenant id}')/...".
_OUTLOOK_USER = re.compile(r"^users\('([^'@]+)(?:@[^']*)?'\)$", re.IGNORECASE)
_PREFIXES = ("v1.0", "beta", "api", "gbeta", "gv1.0", "v2.0")


@dataclass(frozen=True)
class MailboxLimits:
    """Microsoft's published Outlook limits per app per mailbox; `time_scale` > 1 shortens
    the windows (sandbox benchmarks, matching `coexist sandbox serve --time-scale`)."""

    concurrency: int = 4
    requests: float = 10_000
    requests_window_s: float = 600.0
    upload_bytes: float = 150 * MB
    upload_window_s: float = 300.0
    time_scale: float = 1.0
    # A fresh Microsoft window admits a full budget at once; a client that knows the budget
    # is already spent (a benchmark's drained sandbox) starts empty instead.
    start_full: bool = True

    @property
    def request_rate(self) -> float:
        """Requests per second, sustained."""
        return self.requests / self.requests_window_s * self.time_scale

    @property
    def upload_rate(self) -> float:
        """Upload bytes per second, sustained."""
        return self.upload_bytes / self.upload_window_s * self.time_scale


class TokenBucket:
    """A reservation token bucket: `reserve` takes the cost at once (the balance may go
    negative, a debt later callers queue behind) and answers how long to wait until the
    balance would have covered it at the refill rate."""

    def __init__(
        self, capacity: float, rate: float, clock: Clock, tokens: float | None = None
    ) -> None:
        self.capacity = capacity
        self.rate = rate
        self.clock = clock
        self.tokens = capacity if tokens is None else tokens
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def reserve(self, cost: float) -> float:
        """Take `cost` units; seconds until they are covered (0.0: send now).

        A cost above the capacity is clamped to it: the service can never admit more than a
        full bucket, so the best the client can do is send when its bucket is full.
        """
        self._refill()
        self.tokens -= min(cost, self.capacity)
        return max(0.0, -self.tokens / self.rate)

    def drain(self) -> None:
        """The service refused: whatever this bucket believed was left is not there."""
        self._refill()
        self.tokens = min(self.tokens, 0.0)


@dataclass
class MailboxStats:
    requests: int = 0
    upload_bytes: int = 0
    throttled: int = 0
    peak_in_flight: int = 0
    paced_s: float = 0.0  # total time requests waited for budget


class _Mailbox:
    def __init__(self, limits: MailboxLimits, clock: Clock) -> None:
        self.limit = max(1, limits.concurrency)
        start = None if limits.start_full else 0.0
        self.requests = TokenBucket(limits.requests, limits.request_rate, clock, start)
        self.upload = TokenBucket(limits.upload_bytes, limits.upload_rate, clock, start)
        self.window = float(self.limit)
        self.in_flight = 0
        self.resume_at = 0.0
        self.changed = asyncio.Condition()
        self.stats = MailboxStats()


@dataclass
class MailboxGovernor:
    """Admission for Outlook requests, one state per mailbox key, shared by the adapter."""

    limits: MailboxLimits = field(default_factory=MailboxLimits)
    clock: Clock = time.monotonic
    _boxes: dict[str, _Mailbox] = field(default_factory=dict, init=False)
    _aliases: dict[str, str] = field(default_factory=dict, init=False)

    def alias(self, name: str, mailbox: str) -> None:
        """`name` (e.g. the import/export API's primaryMailboxId) is the same mailbox as
        `mailbox` (the user id): Microsoft keys the limits on the mailbox, not on the path."""
        a, b = name.lower(), mailbox.lower()
        if a != b:
            self._aliases[a] = b

    def key(self, name: str) -> str:
        k = name.lower()
        return self._aliases.get(k, k)

    def _box(self, name: str) -> _Mailbox:
        k = self.key(name)
        box = self._boxes.get(k)
        if box is None:
            box = self._boxes[k] = _Mailbox(self.limits, self.clock)
        return box

    def stats(self, name: str) -> MailboxStats:
        return self._box(name).stats

    def all_stats(self) -> dict[str, MailboxStats]:
        return {k: b.stats for k, b in self._boxes.items()}

    def reserve(self, name: str, requests: int = 1, upload: int = 0) -> float:
        """Take the request's cost from the mailbox's budgets; seconds to wait before sending
        (also covering any Retry-After pause in force)."""
        box = self._box(name)
        box.stats.requests += requests
        box.stats.upload_bytes += upload
        wait = box.requests.reserve(requests)
        if upload:
            wait = max(wait, box.upload.reserve(upload))
        return max(wait, box.resume_at - self.clock())

    @asynccontextmanager
    async def slot(self, name: str, requests: int = 1, upload: int = 0) -> AsyncIterator[None]:
        """Hold the mailbox's slots for one request (a $batch holds one per inner request,
        up to the limit) after its budget is covered and any pause is over."""
        box = self._box(name)
        wait = self.reserve(name, requests, upload)
        if wait > 0:
            box.stats.paced_s += wait
            await asyncio.sleep(wait)
        need = min(max(1, requests), box.limit)
        async with box.changed:
            while box.in_flight + need > max(need, int(box.window)):
                await box.changed.wait()
            box.in_flight += need
            box.stats.peak_in_flight = max(box.stats.peak_in_flight, box.in_flight)
        try:
            pause = box.resume_at - self.clock()  # a 429 may have arrived while queued
            if pause > 0:
                await asyncio.sleep(pause)
            yield
        finally:
            async with box.changed:
                box.in_flight -= need
                box.changed.notify_all()

    def success(self, name: str) -> None:
        box = self._box(name)
        box.window = min(float(box.limit), box.window + 1.0 / box.window)

    def throttled(self, name: str, retry_after: float | None, *, upload: bool = False) -> None:
        """A 429/503 for this mailbox: shrink the window, pause, and drain the budget the
        refused request drew on (the request budget always; the upload budget if it carried
        a body - the answer does not say which budget refused it)."""
        box = self._box(name)
        box.stats.throttled += 1
        box.window = max(1.0, box.window / 2)
        box.requests.drain()
        if upload:
            box.upload.drain()
        if retry_after:
            box.resume_at = max(box.resume_at, self.clock() + retry_after)


# -- what a request costs, and which mailbox it is charged to ----------------------------------


def _segments(url: str) -> list[str]:
    path = urlsplit(url).path if "://" in url else url.split("?", 1)[0]
    segs = [unquote(s) for s in path.split("/") if s]
    # Graph URLs carry the version; importUrl carries api/gv1.0 (api/gbeta before v1.0).
    while segs and segs[0].lower() in _PREFIXES:
        segs = segs[1:]
    return segs


def mailbox_of(url: str) -> str | None:
    """The mailbox an Outlook request is charged to, or None for a directory request.

    `/users/{id}/<outlook resource>/...`, `/admin/exchange/mailboxes/{id}/...`, an
    importUrl's `Mailboxes('{id}')` and an uploadUrl's `Users('{id}@{tenant}')`.
    """
    segs = _segments(url)
    for seg in segs:
        m = _IMPORT_MAILBOX.match(seg)
        if m:
            return m.group(1)
    if segs:
        m = _OUTLOOK_USER.match(segs[0])
        if m:
            return m.group(1)
    low = [s.lower() for s in segs]
    if len(low) >= 3 and low[0] == "users" and low[2] in OUTLOOK_SEGMENTS:
        return segs[1]
    if len(low) >= 4 and low[:3] == ["admin", "exchange", "mailboxes"]:
        return segs[3]
    return None


def batch_mailboxes(body: Any) -> dict[str, int]:
    """Inner requests of a JSON $batch per mailbox: Outlook counts each one against its
    mailbox (throttling-limits: "JSON batching ... each request is evaluated against the
    throttling limits" *unverified* wording)."""
    out: dict[str, int] = {}
    if not isinstance(body, dict):
        return out
    for r in body.get("requests") or []:
        box = mailbox_of(str(r.get("url") or "")) if isinstance(r, dict) else None
        if box is not None:
            out[box] = out.get(box, 0) + 1
    return out


def import_bytes(body: dict[str, Any]) -> int:
    """Upload bytes of an importItem: the decoded `Data` stream.

    *unverified*: which bytes Exchange counts against the 150 MB upload budget for an import
    (the item stream or the base64 JSON body); the sandbox charges the decoded stream, and so
    does this client so that it runs at the sandbox's ceiling. Counting the JSON body would
    run 25% below that.
    """
    data = body.get("Data")
    if not isinstance(data, str) or not data:
        return 0
    # The exact decoded size without decoding: 3 bytes per 4 characters, minus the padding.
    return max(0, len(data) * 3 // 4 - data[-2:].count("="))
