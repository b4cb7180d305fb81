"""How long a data pass will take, said before it starts and held against the actual after.

An estimate, never a promise: what is left to move per mailbox comes from what the
journal already knows (the folder totals the stores read at the last reconciliation,
what the item map says is copied, or else the previous pass's counts), and the rate from
the endpoint's published ceiling or, where none binds, the bench figure of the mover.
Before a mailbox's first pass the journal knows nothing of it: where the source has
Exchange cmdlets (Microsoft 365, Exchange over remote PowerShell) its size comes from
Get-MailboxStatistics (`first_pass_sizes`, read once per mailbox and journaled as an
observation with its time); elsewhere (IMAP, WorkMail) it is counted but not sized, and
the text says why.

Every rate is here, with its source, so there is one place to correct them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import logging
import re
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from coexist import progress
from coexist.errors import CoexistError

log = logging.getLogger("coexist.estimate")


@dataclass(frozen=True)
class Rate:
    """What one mailbox's pass moves per second at most, and where the figure comes from."""

    bytes_per_s: float
    items_per_s: float
    source: str
    # Microsoft 365's budgets are per mailbox; the sandbox scales them with
    # `[engine] outlook_time_scale`, so the estimate does too.
    scaled: bool = False


# Microsoft 365, per app per mailbox (FACTS.md, "Throttling (published)"): 150 MB upload per
# 5 min (0.5 MB/s, ≈1.8 GB/h) and 10,000 requests per 10 min (16.7/s, one import each).
# bench/graph_mover_bench.py and bench/imap_bench.py keep the movers at 1.00 of both.
M365 = Rate(
    150_000_000 / 300,
    10_000 / 600,
    "Microsoft 365's per-mailbox Outlook budget (150 MB / 5 min ≈ 1.8 GB/h, 10,000 requests "
    "/ 10 min)",
    scaled=True,
)
# IMAP → IMAP between two Dovecots, no server limit binding (README bench table,
# bench/imap_bench.py: 860-1,263 msgs/s for 4 KB, 49-58 MB/s for 512 KB messages); the
# lower ends, as a real provider's connection limits only lower them.
IMAP = Rate(
    45_000_000,
    800,
    "the IMAP mover's bench figures (Dovecot to Dovecot; a provider's limits can be lower)",
)
# EWS → EWS, Exchange 2016 → 2019, budget-bound (README bench table, bench/ews_bench.py:
# 10.4 items/s under delegation, 20.8 under impersonation, for 2 mailboxes × 8 KB at the
# sandbox's time scale 2, 0.96-0.98 of the budget ceiling): per budget at scale 1 about 5.2
# items/s, ~46 ms of budget charged per copied item. Under delegation every mailbox of the
# admin shares that one budget, so the estimate is low there. *Unverified* against real
# Exchange: the sandbox's charges per request are nominal (NOTES-ewsdemo.md).
EWS = Rate(
    42_000, 5.2, "the EWS mover's budget-bound bench figures (Exchange 2016 → 2019, per budget)"
)
# Graph → WorkMail, budget-bound (README bench table: 9.8-9.9 items/s for 2 mailboxes at
# time scale 2, 0.97 of WorkMail's budget ceiling): per mailbox at scale 1 about 2.5 items/s.
WORKMAIL = Rate(20_000, 2.5, "the Graph → WorkMail budget-bound bench figures (per mailbox)")

RATES: dict[str, Rate] = {
    "graph-import-export": M365,
    "graph-items": M365,
    "imap-graph": M365,  # the target's Outlook budget binds (bench: 1.00 of it)
    "ews-graph": M365,
    "imap-sync": IMAP,
    "ews-sync": EWS,
    "graph-ews": WORKMAIL,
}


@dataclass(frozen=True)
class Volume:
    """What a mailbox's pass is expected to move, and what that is known from."""

    items: int | None
    bytes: int | None
    # reconciliation | previous pass | Get-MailboxStatistics | None (nothing known yet)
    known_from: str | None


def volume(journal: Any, key: str, kind: str) -> Volume:
    """What is left to move for one user, from the journal alone (no tenant is asked).

    The last reconciliation holds the source's folder totals (items; bytes where the store
    reports them) as the stores read them; the item map says what is already copied, so
    what is left is the difference (a pre-stage pass moves only its window of it: the
    estimate is then high). Without a reconciliation the previous pass's counts stand in.
    """
    user = journal.get_item("user", key) or {}
    report = (user.get("detail") or {}).get("reconciliation") or {}
    rows = report.get("folders") or []
    if rows:
        counts = journal.item_map_counts(key)
        moved = sum(per.get(s, 0) for per in counts.values() for s in ("copied", "changed", "gone"))
        moved_bytes = sum(
            per.get(f"{s}_bytes", 0) for per in counts.values() for s in ("copied", "changed")
        )
        skipped = sum(per.get("skipped", 0) for per in counts.values())
        source_items = sum(int(r.get("source_items") or 0) for r in rows)
        left = max(0, source_items - moved - skipped)
        sizes = [r.get("source_bytes") for r in rows]
        if all(s is not None for s in sizes):
            # The copies' sizes are the target's (they differ from the source's): what is
            # left is at least its items at the source's average size.
            source_bytes = sum(int(s or 0) for s in sizes)
            average = source_bytes // source_items if source_items else 0
            left_bytes: int | None = max(source_bytes - moved_bytes, left * average)
        elif moved:
            left_bytes = left * (moved_bytes // moved)  # at the average size copied so far
        else:
            left_bytes = None
        return Volume(left, left_bytes, "reconciliation")
    done = [p for p in journal.passes(key) if p["status"] == "ok" and p["counts"]]
    if done:
        counts = done[-1]["counts"]
        items = int(counts.get("copied", 0)) + int(counts.get("updated", 0))
        return Volume(items, int(counts.get("bytes", 0)), "previous pass")
    return Volume(None, None, None)


@dataclass(frozen=True)
class Estimate:
    kind: str
    mailboxes: int
    sized: int  # mailboxes whose size is known
    items: int
    bytes: int
    seconds: float | None  # None: no rate for this mover, or nothing sized
    parallel: int
    rate: Rate | None
    mover: str = ""
    by_statistics: int = 0  # mailboxes sized by Get-MailboxStatistics (before a first pass)
    unsized_why: str = ""  # why mailboxes before their first pass have no size

    def text(self) -> str:
        if self.mover == "none":
            return f"{self.kind}: no estimate (no data mover configured: nothing is moved)"
        if self.rate is None:
            return f"{self.kind}: no estimate (no rate known for data mover {self.mover!r})"
        why = f"; {self.unsized_why}" if self.unsized_why else ""
        if not self.sized:
            return (
                f"{self.kind}: no estimate yet for {self.mailboxes} mailboxes (their sizes "
                f"are known after a first pass{why})"
            )
        unsized = self.mailboxes - self.sized
        more = f"; {unsized} mailboxes not sized yet, not counted{why}" if unsized else ""
        stats = (
            f"; sizes of {self.by_statistics} mailboxes from {STATISTICS} before their first "
            "pass, which counts every item, also those the pass's filters leave out"
            if self.by_statistics
            else ""
        )
        return (
            f"{self.kind}: estimated {progress.duration(self.seconds)} for "
            f"{gigabytes(self.bytes)} ({self.items} items, {self.sized} mailboxes, "
            f"{self.parallel} at a time{more}) — an estimate, at {self.rate.source}{stats}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "is_estimate": True,
            "kind": self.kind,
            "mailboxes": self.mailboxes,
            "sized_mailboxes": self.sized,
            "items": self.items,
            "bytes": self.bytes,
            "seconds": self.seconds,
            "parallel": self.parallel,
            "mover": self.mover,
            "sized_by_statistics": self.by_statistics,
            "unsized_why": self.unsized_why or None,
            "rate": (
                None
                if self.rate is None
                else {
                    "bytes_per_s": self.rate.bytes_per_s,
                    "items_per_s": self.rate.items_per_s,
                    "source": self.rate.source,
                }
            ),
            "text": self.text(),
        }


def gigabytes(n: int) -> str:
    """`1.25 GB`; under 10 MB in MB (`0.00 GB` would say nothing)."""
    if n < 10_000_000:
        return f"{n / 1_000_000:.1f} MB"
    return f"{n / 1_000_000_000:.2f} GB"


def rate_for(mover: str, time_scale: float = 1.0) -> Rate | None:
    rate = RATES.get(mover)
    if rate is None or not rate.scaled or time_scale == 1:
        return rate
    return Rate(
        rate.bytes_per_s * time_scale,
        rate.items_per_s * time_scale,
        f"{rate.source}, × {time_scale:g} ([engine] outlook_time_scale)",
        scaled=True,
    )


def estimate(
    kind: str,
    volumes: list[Volume],
    rate: Rate | None,
    parallel: int,
    mover: str = "",
    unsized_why: str = "",
) -> Estimate:
    """The pass's duration: each sized mailbox takes what its bytes or its items take at
    `rate`, whichever is longer; `parallel` mailboxes go at once (each has its own
    budget), the longest first, each onto the slot that frees first."""
    sized = [v for v in volumes if v.known_from is not None]
    items = sum(v.items or 0 for v in sized)
    size = sum(v.bytes or 0 for v in sized)
    seconds: float | None = None
    if rate is not None and sized:
        times = sorted(
            (
                max((v.bytes or 0) / rate.bytes_per_s, (v.items or 0) / rate.items_per_s)
                for v in sized
            ),
            reverse=True,
        )
        slots = [0.0] * max(1, min(parallel, len(times)))
        for t in times:
            heapq.heapreplace(slots, slots[0] + t)
        seconds = max(slots)
    by_statistics = sum(1 for v in sized if v.known_from == STATISTICS)
    unsized = len(volumes) - len(sized)
    return Estimate(
        kind, len(volumes), len(sized), items, size, seconds, parallel, rate, mover,
        by_statistics, unsized_why if unsized else "",
    )  # fmt: skip


def against_actual(est: Estimate, seconds: float, items: int, size: int) -> dict[str, Any]:
    """The estimate beside what the passes took (the command's result and --json)."""
    out = est.to_dict()
    out["actual"] = {"seconds": round(seconds, 1), "items": items, "bytes": size}
    if est.seconds is None:
        out["actual_text"] = (
            f"{est.kind}: took {progress.duration(seconds)} for {gigabytes(size)} "
            f"({items} items); there was no estimate"
        )
    else:
        out["actual_text"] = (
            f"{est.kind}: took {progress.duration(seconds)} for {gigabytes(size)} ({items} "
            f"items); estimated {progress.duration(est.seconds)} for {gigabytes(est.bytes)}"
        )
    return out


class Watch:
    """A command's passes from estimate to actual (`watch`)."""

    def __init__(self, est: Estimate, run_id: int | None, began: float) -> None:
        self.est, self.run_id, self.began = est, run_id, began
        self.result: dict[str, Any] = est.to_dict()


@contextmanager
def watch(
    sess: Any, items: list[dict[str, Any]], kind: str, first: FirstPass | None = None
) -> Iterator[Watch]:
    """Estimate the passes over `items` and announce them (`progress.PassesPlanned`); when
    the block ends, set the watch's `result` to the estimate against the actual (the
    passes this run journaled) and announce the end (`progress.PassesOver`). `first`: the
    sizes `first_pass_sizes` read for mailboxes the journal knows nothing of."""
    project = sess.project
    mover = str(project.migration.mover or "none")
    scale = float(getattr(project.engine, "outlook_time_scale", 1) or 1)
    parallel = int(project.engine.concurrency_per_tenant)
    first = first or FirstPass()
    volumes = []
    for i in items:
        key = str(i["key"])
        v = first.read.get(key) or volume(sess.journal, key, kind)
        volumes.append(first.volumes.get(key, v) if v.known_from is None else v)
    est = estimate(kind, volumes, rate_for(mover, scale), parallel, mover, first.why)
    planned = tuple(
        progress.Planned(
            str(i["key"]),
            str(i.get("source_address") or i.get("name") or i["key"]),
            str(i.get("batch") or ""),
            v.items,
            v.bytes,
        )
        for i, v in zip(items, volumes, strict=True)
    )
    progress.emit(progress.PassesPlanned(kind, planned, est.text()))
    w = Watch(est, sess.ctx.run_id, time.monotonic())
    try:
        yield w
    finally:
        try:
            text = _actual(sess, w, items)
        except Exception as exc:  # a broken journal must not mask the error that ended the run
            log.warning("no actual for the %s estimate: %s", kind, exc)
            w.result, text = est.to_dict(), est.text()
        progress.emit(progress.PassesOver(kind, text))


def _actual(sess: Any, w: Watch, items: list[dict[str, Any]]) -> str:
    """Set `w.result` to the estimate against what this run's passes moved; its text."""
    est = w.est
    if sess.planning or w.run_id is None:
        w.result = est.to_dict()
        return est.text() + " (plan: nothing moved)"
    seconds = time.monotonic() - w.began
    keys = {str(i["key"]) for i in items}
    mine = [
        p
        for p in sess.journal.passes()
        if p["run_id"] == w.run_id and p["item_key"] in keys and p["counts"]
    ]
    moved = sum(
        int(p["counts"].get("copied", 0)) + int(p["counts"].get("updated", 0)) for p in mine
    )
    size = sum(int(p["counts"].get("bytes", 0)) for p in mine)
    w.result = against_actual(est, seconds, moved, size)
    return str(w.result["actual_text"])


# -- before a first pass: Get-MailboxStatistics -------------------------------------------------

STATISTICS = "Get-MailboxStatistics"
# The user item's `detail` key holding the last statistics read (an observation, with its time).
OBSERVED = "mailbox_statistics"
# A size read within this long is used again, not asked again (a mailbox grows by a day's
# mail in a day: small beside what an estimate is for).
FRESH_S = 24 * 3600.0
# Exchange prints TotalItemSize (a ByteQuantifiedSize) as "48.56 MB (50,917,744 bytes)"
# (Get-MailboxStatistics.md examples; the REST face returns that text, remote PowerShell its
# deserialised ToString()).
_BYTES = re.compile(r"\(([\d,.\s\u00a0']+) bytes\)")
# Why a source kind without cmdlets gives no size before a first pass.
NO_STATISTICS = {
    "imap": "an IMAP source has no Get-MailboxStatistics",
    "workmail": "a WorkMail source has no Get-MailboxStatistics",
    "exchange": "set [source.ews] powershell_url for Get-MailboxStatistics sizes",
}


@dataclass(frozen=True)
class FirstPass:
    """Sizes read for mailboxes before their first pass, per user key, and why some have none."""

    volumes: Mapping[str, Volume] = field(default_factory=dict)
    why: str = ""
    asked: int = 0  # Get-MailboxStatistics calls made (the rest came from the journal)
    # What the journal said of each mailbox (`volume`), read once here for `watch` too.
    read: Mapping[str, Volume] = field(default_factory=dict)


def byte_count(value: Any) -> int | None:
    """Bytes of a TotalItemSize as Exchange gives it: the text "… (1,234 bytes)", a number,
    or a deserialised object's {"Value": …}; None when it is none of these."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, Mapping):
        return byte_count(value.get("Value") or value.get("value"))
    if isinstance(value, str):
        found = _BYTES.search(value)
        if found:
            digits = re.sub(r"\D", "", found.group(1))
            return int(digits) if digits else None
    return None


def statistics_volume(row: Mapping[str, Any]) -> Volume | None:
    """A mailbox's size from one Get-MailboxStatistics row (ItemCount, TotalItemSize)."""
    size = byte_count(row.get("TotalItemSize"))
    try:
        items = int(row.get("ItemCount") or 0)
    except (TypeError, ValueError):
        return None
    return None if size is None else Volume(items, size, STATISTICS)


def observed(
    user: Mapping[str, Any] | None, now: dt.datetime, fresh_s: float = FRESH_S
) -> Volume | None:
    """The journaled statistics of a user item, if read within `fresh_s` of `now`."""
    seen = ((user or {}).get("detail") or {}).get(OBSERVED) or {}
    try:
        at = dt.datetime.fromisoformat(str(seen["observed_at"]))
        age = (now - at).total_seconds()
        fresh = 0 <= age <= fresh_s
        found = Volume(int(seen["items"]), int(seen["bytes"]), STATISTICS)
    except (KeyError, TypeError, ValueError):
        return None
    return found if fresh else None


async def first_pass_sizes(
    sess: Any,
    items: list[dict[str, Any]],
    kind: str,
    *,
    now: dt.datetime | None = None,
    fresh_s: float = FRESH_S,
) -> FirstPass:
    """Sizes for the mailboxes of `items` the journal knows nothing of (before their first
    pass), from the source's Get-MailboxStatistics: read-only, one call per mailbox, at
    most `[engine] concurrency_per_tenant` at once, each journaled on the user item
    (`detail.mailbox_statistics`, with `observed_at`) so a run within `fresh_s` reads the
    journal instead. Plan mode reads too (a read is no write) and uses what the journal
    holds, but journals nothing (a plan leaves the journal as it was). Nothing is read
    where the estimate cannot use it (no mover, no rate). A source without cmdlets,
    or a read that fails, leaves the mailbox unsized and says why; it never fails the
    command (an estimate is advice)."""
    from coexist.engine.context import CMDLETS

    journal = sess.journal
    now = now or dt.datetime.now(dt.UTC)
    if rate_for(str(sess.project.migration.mover or "none")) is None:
        return FirstPass()
    read = {str(i["key"]): volume(journal, str(i["key"]), kind) for i in items}
    unknown = [i for i in items if read[str(i["key"])].known_from is None]
    if not unknown:
        return FirstPass(read=read)
    side = sess.ctx.source
    if not side.has(CMDLETS):
        kind_ = str(side.kind)
        why = NO_STATISTICS.get(kind_, f"the {kind_} source has no {STATISTICS}")
        return FirstPass(why=why, read=read)
    try:
        runner = side.cmdlets
    except CoexistError as exc:  # cmdlets configured but not openable (e.g. per-user logins)
        return FirstPass(why=f"no {STATISTICS}: {exc}", read=read)
    found: dict[str, Volume] = {}
    ask: list[dict[str, Any]] = []
    for i in unknown:
        cached = observed(journal.get_item("user", str(i["key"])), now, fresh_s)
        if cached is not None:
            found[str(i["key"])] = cached
        else:
            ask.append(i)
    failed: list[str] = []
    gate = asyncio.Semaphore(max(1, int(sess.project.engine.concurrency_per_tenant)))

    async def one(item: dict[str, Any]) -> None:
        key = str(item["key"])
        identity = str(item.get("source_address") or key)
        try:
            async with gate:
                rows = await runner.run(STATISTICS, Identity=identity)
        except CoexistError as exc:
            log.warning("%s %s: %s", STATISTICS, identity, exc)
            failed.append(f"{identity}: {exc}")
            return
        v = statistics_volume(rows[0]) if rows else None
        if v is None:
            failed.append(f"{identity}: no ItemCount/TotalItemSize in the answer")
            return
        found[key] = v
        seen = {
            "items": v.items,
            "bytes": v.bytes,
            "observed_at": dt.datetime.now(dt.UTC).isoformat(),
            "source": STATISTICS,
        }
        if not sess.planning:
            journal.merge_item("user", key, detail={OBSERVED: seen})

    await asyncio.gather(*(one(i) for i in ask))
    why = ""
    if failed:
        why = f"{STATISTICS} failed for {len(failed)} mailboxes (first: {sorted(failed)[0]})"
    return FirstPass(found, why, len(ask), read)
