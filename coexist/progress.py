"""Progress of data passes: typed events, and a model a view renders (no terminal here).

A pass reports what it does through `emit`: the command announces the mailboxes it will
pass over (`PassesPlanned`, with the estimate), each pass says when it starts, how far
it got (`PassAdvanced`, cumulative) and how it ended, and the command says when all are
over (`PassesOver`). Whoever wants them listens with `listening` (the CLI's live view).
The events travel in a context variable rather than through every mover's signature:
the runner's tasks copy the context they are created in, so a listener set around a
command's session reaches every pass it runs, and a test or a library call that sets
none costs one lookup per event.

`PassProgress` is the model: per batch, mailboxes done / running / waiting, items and
bytes per second and an ETA; per running mailbox its items and bytes against what it is
expected to move. Times come from a clock the caller gives (tests pass their own).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Planned:
    """A mailbox a command will pass over, with what it is expected to move (None: unknown)."""

    subject: str  # the user's key (never shown: `label` is)
    label: str  # the source address
    batch: str
    items: int | None = None
    bytes: int | None = None


@dataclass(frozen=True)
class PassesPlanned:
    kind: str  # prestage | cutover | trial
    mailboxes: tuple[Planned, ...]
    estimate_text: str  # "estimated 4 min for 0.12 GB (an estimate: …)"


@dataclass(frozen=True)
class PassStarted:
    subject: str
    kind: str
    label: str = ""


@dataclass(frozen=True)
class PassSized:
    """What a running pass found to move once it read the source's folders (items)."""

    subject: str
    items: int


@dataclass(frozen=True)
class PassAdvanced:
    """How far a running pass got: items and bytes it moved so far (cumulative)."""

    subject: str
    items: int
    bytes: int


@dataclass(frozen=True)
class PassEnded:
    subject: str
    # ok | failed | waiting | no-mover | already (finished in an earlier run) | paused
    # | stopped (a queued job's pass cancelled by its stopping worker)
    status: str
    items: int = 0
    bytes: int = 0


@dataclass(frozen=True)
class PassPaused:
    """A pass waits for its run window (`coexist.schedule`): `text` says until when."""

    subject: str
    text: str  # "paused until 2026-12-05 20:00 CET (run window 20:00-06:00 Europe/Berlin, ...)"
    until: datetime


@dataclass(frozen=True)
class PassResumed:
    """A paused pass's window opened: it goes on."""

    subject: str


@dataclass(frozen=True)
class PassesOver:
    """The command's passes are over; `summary_text` says the estimate against the actual."""

    kind: str
    summary_text: str


PassEvent = (
    PassesPlanned
    | PassStarted
    | PassSized
    | PassAdvanced
    | PassEnded
    | PassPaused
    | PassResumed
    | PassesOver
)
Listener = Callable[[PassEvent], None]

_LISTENER: ContextVar[Listener | None] = ContextVar("coexist_pass_listener", default=None)


def emit(event: PassEvent) -> None:
    """Tell the listener (if any) about a pass event. A listener's error is not the pass's:
    a view that fails must not fail a migration, so it is dropped for the rest of the run."""
    listener = _LISTENER.get()
    if listener is None:
        return
    try:
        listener(event)
    except Exception:  # pragma: no cover - a broken view; the pass goes on
        _LISTENER.set(None)


@contextmanager
def listening(listener: Listener | None) -> Iterator[None]:
    """Send the pass events emitted inside this block (and in tasks it starts) to `listener`."""
    token = _LISTENER.set(listener)
    try:
        yield
    finally:
        _LISTENER.reset(token)


WAITING, RUNNING, DONE, FAILED = "waiting", "running", "done", "failed"
# How a pass's end status counts: a pass that waits on Microsoft 365 is waiting again.
_END_STATE = {
    "ok": DONE,
    "already": DONE,
    "no-mover": DONE,
    "waiting": WAITING,
    "paused": WAITING,  # its run window closed: it runs again when the window opens
    "stopped": WAITING,  # its worker stopped (coexist.worker): its job is queued again
}


@dataclass
class Mailbox:
    subject: str
    label: str
    batch: str
    state: str = WAITING
    items: int = 0
    bytes: int = 0
    expected_items: int | None = None
    expected_bytes: int | None = None
    started: float | None = None
    ended: float | None = None

    def fraction(self) -> float | None:
        """How much of what it is expected to move it has moved (None: not known)."""
        if self.expected_bytes:
            return min(1.0, self.bytes / self.expected_bytes)
        if self.expected_items:
            return min(1.0, self.items / self.expected_items)
        return None


@dataclass(frozen=True)
class BatchSummary:
    name: str
    done: int
    running: int
    waiting: int
    failed: int
    items: int
    bytes: int
    items_per_s: float
    bytes_per_s: float
    eta_s: float | None  # None: nothing to go on (no rate yet, or sizes unknown)

    @property
    def mailboxes(self) -> int:
        return self.done + self.running + self.waiting + self.failed


@dataclass
class PassProgress:
    """The state of a command's passes, updated from pass events."""

    clock: Callable[[], float] = time.monotonic
    kind: str = ""
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)
    estimate_text: str = ""
    summary_text: str = ""
    over: bool = False
    began: float | None = None

    def apply(self, event: PassEvent) -> None:
        now = self.clock()
        if isinstance(event, PassesPlanned):
            self.kind, self.estimate_text, self.over = event.kind, event.estimate_text, False
            self.summary_text = ""
            self.mailboxes = {
                p.subject: Mailbox(
                    p.subject, p.label, p.batch, expected_items=p.items, expected_bytes=p.bytes
                )
                for p in event.mailboxes
            }
            self.began = now
        elif isinstance(event, PassStarted):
            box = self._box(event.subject, event.label)
            box.state, box.started, box.ended = RUNNING, now, None
            box.items = box.bytes = 0
            self.kind = self.kind or event.kind
        elif isinstance(event, PassSized):
            box = self._box(event.subject)
            box.expected_items = event.items
        elif isinstance(event, PassAdvanced):
            box = self._box(event.subject)
            box.items, box.bytes = event.items, event.bytes
            if box.state != RUNNING:
                box.state, box.started = RUNNING, box.started or now
        elif isinstance(event, PassEnded):
            box = self._box(event.subject)
            box.state = _END_STATE.get(event.status, FAILED)
            box.items, box.bytes = max(box.items, event.items), max(box.bytes, event.bytes)
            box.ended = now
        elif isinstance(event, PassPaused) and event.subject:
            self._box(event.subject).state = WAITING  # outside its run window
        elif isinstance(event, PassResumed) and event.subject:
            self._box(event.subject).state = RUNNING
        elif isinstance(event, PassesOver):
            self.over, self.summary_text = True, event.summary_text
        if self.began is None:
            self.began = now

    def step_failed(self, subject: str) -> None:
        """A user's step before its pass failed: its pass will not run in this command."""
        box = self.mailboxes.get(subject)
        if box is not None and box.state == WAITING:
            box.state = FAILED

    def _box(self, subject: str, label: str = "") -> Mailbox:
        box = self.mailboxes.get(subject)
        if box is None:  # a pass the command did not announce (a library call, a test)
            box = self.mailboxes[subject] = Mailbox(subject, label or subject, "")
        elif label:
            box.label = label
        return box

    def running(self) -> list[Mailbox]:
        return [m for m in self.mailboxes.values() if m.state == RUNNING]

    def batches(self) -> list[BatchSummary]:
        """Per batch (in the order mailboxes were announced), its counts, rates and ETA."""
        now = self.clock()
        elapsed = max(now - self.began, 1e-9) if self.began is not None else None
        names: dict[str, list[Mailbox]] = {}
        for m in self.mailboxes.values():
            names.setdefault(m.batch, []).append(m)
        out = []
        for name, boxes in names.items():
            states = [m.state for m in boxes]
            items = sum(m.items for m in boxes)
            size = sum(m.bytes for m in boxes)
            items_per_s = items / elapsed if elapsed and items else 0.0
            bytes_per_s = size / elapsed if elapsed and size else 0.0
            out.append(
                BatchSummary(
                    name=name,
                    done=states.count(DONE),
                    running=states.count(RUNNING),
                    waiting=states.count(WAITING),
                    failed=states.count(FAILED),
                    items=items,
                    bytes=size,
                    items_per_s=items_per_s,
                    bytes_per_s=bytes_per_s,
                    eta_s=_eta(boxes, items_per_s, bytes_per_s),
                )
            )
        return out

    def line(self) -> str:
        """One plain line for logs and redirected output: every batch's counts and rates."""
        parts = [summary_line(b) for b in self.batches()]
        return f"{self.kind or 'pass'}: " + ("; ".join(parts) if parts else "no mailboxes")


def _eta(boxes: list[Mailbox], items_per_s: float, bytes_per_s: float) -> float | None:
    """Seconds left at the batch's rate so far, from what its unfinished mailboxes are
    expected to move (bytes where every one's size is known, else items)."""
    left = [m for m in boxes if m.state in (WAITING, RUNNING)]
    if not left:
        return 0.0
    if bytes_per_s > 0 and all(m.expected_bytes is not None for m in left):
        rest = sum(max(0, (m.expected_bytes or 0) - m.bytes) for m in left)
        return rest / bytes_per_s
    if items_per_s > 0 and all(m.expected_items is not None for m in left):
        rest = sum(max(0, (m.expected_items or 0) - m.items) for m in left)
        return rest / items_per_s
    return None


def megabytes(n: int) -> str:
    return f"{n / 1_000_000:.1f} MB"


def duration(seconds: float | None) -> str:
    """`42 s`, `3 min`, `1 h 05 min`; `unknown` for None."""
    if seconds is None:
        return "unknown"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{(s + 59) // 60} min"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def summary_line(b: BatchSummary) -> str:
    name = f"batch {b.name} " if b.name else ""
    failed = f", {b.failed} failed" if b.failed else ""
    return (
        f"{name}{b.done}/{b.mailboxes} mailboxes done, {b.running} running, {b.waiting} "
        f"waiting{failed}; {b.items} items, {megabytes(b.bytes)} "
        f"({b.items_per_s:.1f} items/s, {b.bytes_per_s / 1_000_000:.2f} MB/s); "
        f"ETA {duration(b.eta_s)}"
    )
