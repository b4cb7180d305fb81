"""Run windows: data passes run only inside them, pause outside them and resume inside.

A project (`[schedule] windows = ["20:00-06:00"]`, `timezone = "Europe/Berlin"`) or one
batch (`coexist batch set-window B "20:00-06:00"`, kept in the journal so every process
that reads it sees it) says when its passes may move data, CodeTwo's scheduler's "run
between 20:00 and 06:00". No window at all (the default) means always.

A window is `[DAYS ]HH:MM-HH:MM` in the window's time zone (default UTC): `20:00-06:00`
crosses midnight (it opens at 20:00 on a day and closes at 06:00 the next), `24:00` is
the end of a day, DAYS is `Mon-Fri`, `Sat,Sun` or `Mon` and names the day a window
*opens* (so `Fri 20:00-06:00` runs into Saturday morning). Several windows are one
schedule, open when any of them is. Times are wall-clock times (`zoneinfo`): a
20:00-06:00 window is 11 hours long on the night the clocks go back. A start in the hour
the clocks skip opens as PEP 495 reads it (02:30 in a spring-forward gap is 03:30); an
end in the hour that repeats is its first occurrence.

`Windows` answers `is_open(now)`, `next_open(now)` and `next_close(now)` for an aware
`now`. `RunGate` puts a clock (injectable: `Clock`, the default `SystemClock`) in front
of it: `await gate.wait_open()` returns at once inside a window and otherwise blocks
until the next one opens, saying "paused until <local time>" through the progress layer
(`progress.PassPaused`); `gate.closed_now()` is the cheap check between items.

Where passes look at their gate (inline mode): `migrate.passes.run_pass` waits for the
user's window before a pass starts; the one sync engine (`migrate.sync`) asks
`closed_now()` at its safe points only, before a folder's scan and before the next
export batch (imports already sent finish and are journaled: never between a copy and its
record), and ends the pass early with `WindowClosed` (its counts so far). `run_pass`
then journals that pass `paused`, waits for the window and runs the pass again, which
continues from the item map and cursors like any interrupted pass: no item twice. The
stores are closed while paused (an IMAP login or an EWS session is not held for hours).
Plan mode never waits (it writes nothing and says when the window opens).

The hook for the queue executor (issue 16's `coexist worker`): `gate_for(project,
journal, batch)` is the gate of a batch (its own windows, else the project's; None when
there are none, i.e. always open). A job can call `await gate.wait_open()` before it
starts, or, rather than hold a worker for hours, reschedule itself at
`gate.windows.next_open(now)`; a job that runs the ordinary steps (`run_pass`) is gated
inside them anyway, per user, by `gate_of(ctx, subject)`. Inside a queued job (`leaving`,
set by `coexist.jobs.running`) a pass never waits: a closed window, before the pass or at
a safe point in it, ends the job's command with `LeaveForLater`, and the worker defers the
job to the window's next opening; the worker's stop (SIGTERM) closes the gate too, so the
pass pauses after the item in flight and the job is queued again at once. Tests inject a
clock with `using_clock(clock)` (a context variable: it reaches every task a command
starts), or, for worker processes, with the test-only `COEXIST_TEST_CLOCK_FILE`.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from coexist import progress
from coexist.errors import InputError

_WINDOW = re.compile(
    r"^(?:(?P<days>[A-Za-z][A-Za-z,\- ]*?)\s+)?(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})$"
)
EXAMPLE = '"20:00-06:00", "Mon-Fri 19:00-07:00" or "Sat,Sun 00:00-24:00"'
# A closed window is slept through in steps of at most this long: a clock changed under
# the process (NTP, a suspended laptop) costs at most one step.
SLEEP_STEP_S = 60.0
# How far ahead the next opening or closing is looked for: a week of windows repeats.
_HORIZON_DAYS = 8


# -- parsing ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One window: opens at `start` on each of `days` (0 = Monday), closes at `end` that
    day, or the next day when `end` is not after `start`."""

    start: time
    end: time | None  # None: 24:00, the end of the day it opens
    days: frozenset[int] = frozenset(range(7))
    text: str = ""

    def occurrence(self, day: date, tz: tzinfo) -> tuple[datetime, datetime] | None:
        """The (open, close) instants in UTC of this window opening on `day`, if it does."""
        if day.weekday() not in self.days:
            return None
        opens = datetime.combine(day, self.start, tzinfo=tz)
        if self.end is None:
            closes = datetime.combine(day + timedelta(days=1), time(0), tzinfo=tz)
        elif self.end > self.start:
            closes = datetime.combine(day, self.end, tzinfo=tz)
        else:
            closes = datetime.combine(day + timedelta(days=1), self.end, tzinfo=tz)
        # Compared in UTC: aware datetimes of one tzinfo compare by wall clock (PEP 495).
        return opens.astimezone(UTC), closes.astimezone(UTC)


def _clock_time(text: str, *, end: bool) -> time | None:
    hours, minutes = (int(p) for p in text.split(":"))
    if end and (hours, minutes) == (24, 0):
        return None
    if hours > 23 or minutes > 59:
        raise ValueError(f"{text!r} is not a time of day (00:00 ... 23:59, or 24:00 as an end)")
    return time(hours, minutes)


FULL_DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def _day(name: str) -> int:
    """'Mon', 'monday', 'TUE' -> 0, 0, 1; ValueError otherwise."""
    key = name.strip().lower()
    for i, full in enumerate(FULL_DAYS):
        if len(key) >= 3 and full.startswith(key):
            return i
    raise ValueError(f"{name.strip()!r} is not a day (Mon ... Sun, e.g. Mon-Fri or Sat,Sun)")


def _days(text: str) -> frozenset[int]:
    out: set[int] = set()
    for part in text.split(","):
        first, dash, last = part.partition("-")
        a = _day(first)
        b = _day(last) if dash else a
        # Mon-Fri, and Fri-Mon across the weekend.
        out.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(out)


def parse_window(text: str) -> Span:
    """`[DAYS ]HH:MM-HH:MM` -> a Span; ValueError saying what is wrong and how to write it."""
    if not isinstance(text, str):
        raise ValueError(f"a window is a string like {EXAMPLE}, got {text!r}")
    m = _WINDOW.match(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a run window; write it like {EXAMPLE}")
    start = _clock_time(m["start"], end=False)
    assert start is not None  # only an end may be 24:00
    end = _clock_time(m["end"], end=True)
    if end == start:
        raise ValueError(f"{text!r} opens and closes at once; for a whole day write 00:00-24:00")
    days = _days(m["days"]) if m["days"] else frozenset(range(7))
    return Span(start, end, days, text.strip())


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA time zone name -> ZoneInfo; ValueError naming it when it is unknown."""
    try:
        return ZoneInfo(str(name))
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f'{name!r} is not a time zone; use an IANA name like "Europe/Berlin", '
            '"America/New_York" or "UTC"'
        ) from None


# -- the schedule ----------------------------------------------------------------------


@dataclass(frozen=True)
class Windows:
    """A schedule: open while any of its spans is (always open when it has none)."""

    spans: tuple[Span, ...] = ()
    tz: tzinfo = UTC
    label: str = "project"  # whose windows: "project" or "batch <name>" (said in messages)

    @classmethod
    def parse(cls, texts: Sequence[str], timezone: str = "UTC", label: str = "project") -> Windows:
        """Windows from their texts (ValueError on the first bad one)."""
        return cls(tuple(parse_window(t) for t in texts), parse_timezone(timezone), label)

    @property
    def always(self) -> bool:
        return not self.spans

    def describe(self) -> str:
        zone = getattr(self.tz, "key", str(self.tz))
        return f"{', '.join(s.text for s in self.spans)} {zone}" if self.spans else "always"

    def _occurrences(
        self, now: datetime, days: int = _HORIZON_DAYS
    ) -> Iterator[tuple[datetime, datetime]]:
        """Every window occurrence opening from the day before `now` to `days` after, by opening."""
        day = now.astimezone(self.tz).date()
        found = []
        for offset in range(-1, days):
            for span in self.spans:
                occ = span.occurrence(day + timedelta(days=offset), self.tz)
                if occ is not None:
                    found.append(occ)
        return iter(sorted(found))

    def is_open(self, now: datetime) -> bool:
        if self.always:
            return True
        at = now.astimezone(UTC)
        return any(opens <= at < closes for opens, closes in self._occurrences(at))

    def next_open(self, now: datetime) -> datetime:
        """`now` if open, else the instant (UTC) the next window opens."""
        at = now.astimezone(UTC)
        if self.is_open(at):
            return at
        # Every span opens at least once a week, so the horizon always holds one.
        return next(opens for opens, _ in self._occurrences(at) if opens > at)

    def next_close(self, now: datetime) -> datetime | None:
        """When the window open at (or next after) `now` closes, windows that touch or
        overlap counted as one; None when it never closes (e.g. every day 00:00-24:00)."""
        if self.always:
            return None
        at = self.next_open(now)
        close = at
        # Two weeks ahead: the schedule repeats weekly, so a run of open windows longer
        # than a week never ends.
        for opens, closes in self._occurrences(at, 2 * _HORIZON_DAYS):
            if opens <= close < closes:
                close = closes
        if close - at > timedelta(days=7):
            return None
        return close

    def local(self, instant: datetime) -> str:
        """An instant as the operator reads it: local time in the windows' zone."""
        return instant.astimezone(self.tz).strftime("%Y-%m-%d %H:%M %Z")


# -- clocks and the gate ---------------------------------------------------------------


class Clock(Protocol):
    def now(self) -> datetime: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


_CLOCK: ContextVar[Clock | None] = ContextVar("coexist_schedule_clock", default=None)


@contextmanager
def using_clock(clock: Clock) -> Iterator[None]:
    """Gates made inside this block (and in tasks it starts) read `clock` (tests)."""
    token = _CLOCK.set(clock)
    try:
        yield
    finally:
        _CLOCK.reset(token)


# TEST ONLY: a file holding an ISO 8601 instant that `coexist worker` processes read as
# their clock, so an end-to-end test can open and close run windows in worker processes it
# started (a context variable does not cross processes). Never set it in production.
TEST_CLOCK_ENV = "COEXIST_TEST_CLOCK_FILE"
# How soon (real seconds) a queued job deferred on a test clock is looked at again: the
# test moves that clock, so the real time it will show an instant is unknown.
TEST_CLOCK_POLL_S = 1.0


class FileClock:
    """TEST ONLY (`TEST_CLOCK_ENV`): the instant written in a file, re-read at each call."""

    def __init__(self, path: str) -> None:
        self.path = path

    def now(self) -> datetime:
        with open(self.path, encoding="utf-8") as f:
            return datetime.fromisoformat(f.read().strip()).astimezone(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(min(seconds, TEST_CLOCK_POLL_S))

    def to_real(self, instant: datetime) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=TEST_CLOCK_POLL_S)


def current_clock() -> Clock:
    clock = _CLOCK.get()
    if clock is not None:
        return clock
    path = os.environ.get(TEST_CLOCK_ENV)
    return FileClock(path) if path else SystemClock()


def real_instant(clock: Clock, instant: datetime) -> datetime:
    """The real (system) instant at which `clock` shows `instant`: the same instant on the
    system clock; a test clock says how soon to look again."""
    to_real = getattr(clock, "to_real", None)
    return to_real(instant) if to_real is not None else instant


class WindowClosed(Exception):  # a signal, not an error: the pass resumes
    """A pass stopped at a safe point because its run window closed; `counts` so far."""

    def __init__(self, counts: dict[str, int] | None = None) -> None:
        super().__init__("the run window closed")
        self.counts = dict(counts or {})


class LeaveForLater(BaseException):  # a signal, like CancelledError: not an error
    """A queued job's pass gives its worker slot back instead of waiting (`coexist worker`):
    its window is closed (`at`: the real instant it opens), or its worker is stopping
    (`at` None: queue it again at once). A BaseException so that the step runner does not
    record it as the step's failure: like a cancel, it ends the job's command, and the job's
    next run continues from the item map and cursors."""

    def __init__(self, at: datetime | None, why: str, *, opens: str = "", window: str = "") -> None:
        super().__init__(why)
        self.at = at
        self.why = why
        # A closed window: when it opens, as the operator reads it ("2026-12-05 20:00 CET"),
        # and which window it is ("20:00-06:00 Europe/Berlin, batch night"): what
        # `coexist status` says of the deferred job.
        self.opens = opens
        self.window = window


_LEAVE: ContextVar[threading.Event | None] = ContextVar("coexist_leave", default=None)


@contextmanager
def leaving(stop: threading.Event) -> Iterator[None]:
    """Passes run inside this block are a queued job's (`coexist.jobs.running`): they leave
    (`LeaveForLater`) rather than wait for a closed window, and `stop` set (the worker is
    stopping) closes their gate, so they pause at the next safe point."""
    token = _LEAVE.set(stop)
    try:
        yield
    finally:
        _LEAVE.reset(token)


@dataclass
class RunGate:
    """A schedule with a clock: what a pass asks whether it may go on."""

    windows: Windows
    clock: Clock = field(default_factory=current_clock)
    subject: str = ""  # the user whose pass waits (for the progress event), if any
    # A queued job's: set when its worker stops (closes the gate); None outside a job.
    stop: threading.Event | None = None

    # The state known to hold over [from, until): asked between every item, so it is worked
    # out once per opening or closing, not per call (a clock set back recomputes it).
    _known: tuple[datetime, datetime, bool] | None = field(default=None, repr=False)

    @property
    def queued(self) -> bool:
        """A queued job's gate: it leaves rather than waits (`leave_if_closed`)."""
        return self.stop is not None

    def stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def closed_now(self) -> bool:
        if self.stopping():
            return True
        now = self.clock.now()
        known = self._known
        if known is not None and known[0] <= now < known[1]:
            return known[2]
        is_open = self.windows.is_open(now)
        until = self.windows.next_close(now) if is_open else self.windows.next_open(now)
        self._known = (now, until or datetime.max.replace(tzinfo=UTC), not is_open)
        return not is_open

    def paused_until(self) -> str:
        """'paused until 2026-12-05 20:00 CET (run window 20:00-06:00 Europe/Berlin, batch B)'."""
        opens = self.windows.next_open(self.clock.now())
        return f"paused until {self.windows.local(opens)} (run window {self.window_text()})"

    def window_text(self) -> str:
        """'20:00-06:00 Europe/Berlin, batch B': which window this is."""
        return f"{self.windows.describe()}, {self.windows.label}"

    def leave_for_opening(self) -> LeaveForLater:
        """What a queued job's pass raises while its window is closed: leave, and come back
        when it opens (the real instant, and the opening as the operator reads it)."""
        opens = self.windows.next_open(self.clock.now())
        return LeaveForLater(
            real_instant(self.clock, opens),
            self.paused_until(),
            opens=self.windows.local(opens),
            window=self.window_text(),
        )

    def leave_if_closed(self) -> None:
        """A queued job's pass, before it starts: go on if open, else `LeaveForLater` (at
        the window's next opening, or at once when the worker is stopping)."""
        if not self.closed_now():
            return
        if self.stopping():
            raise LeaveForLater(None, "its worker is stopping")
        opens = self.windows.next_open(self.clock.now())
        progress.emit(progress.PassPaused(self.subject, self.paused_until(), opens))
        raise self.leave_for_opening()

    async def wait_open(self) -> bool:
        """Return once the window is open; True when it had to wait. Says when it will open
        (`progress.PassPaused`) before it sleeps."""
        if not self.closed_now():
            return False
        opens = self.windows.next_open(self.clock.now())
        progress.emit(progress.PassPaused(self.subject, self.paused_until(), opens))
        while self.closed_now():
            left = (self.windows.next_open(self.clock.now()) - self.clock.now()).total_seconds()
            await self.clock.sleep(max(0.0, min(left, SLEEP_STEP_S)))
        progress.emit(progress.PassResumed(self.subject))
        return True


# The context variable a pass's gate travels in to the sync engine (set by `run_pass`).
_GATE: ContextVar[RunGate | None] = ContextVar("coexist_run_gate", default=None)


@contextmanager
def gated(gate: RunGate | None) -> Iterator[None]:
    token = _GATE.set(gate)
    try:
        yield
    finally:
        _GATE.reset(token)


def window_closed() -> bool:
    """Whether the running pass's window is closed now (False outside a gated pass)."""
    gate = _GATE.get()
    return gate is not None and gate.closed_now()


# -- where windows come from -----------------------------------------------------------

BATCH_SETTING = "schedule.batch:"  # journal setting key prefix: batch name -> its windows


def batch_setting(batch: str) -> str:
    return f"{BATCH_SETTING}{batch}"


def batch_windows(
    stored: Any, batch: str, default_timezone: str = "UTC", project_dir: str = "."
) -> Windows:
    """A batch's stored windows ({"windows": [...], "timezone": ...}) as Windows; an
    InputError naming the batch and the command that sets them again when they are bad
    (written by hand into the journal, or by an older version)."""
    stored = stored or {}
    texts = stored.get("windows") or []
    zone = stored.get("timezone") or default_timezone
    try:
        return Windows.parse(texts, zone, f"batch {batch}")
    except ValueError as exc:
        raise InputError(
            f"the run window of batch {batch!r} stored in the journal is not valid: {exc}",
            batch=batch,
            next_step=f'coexist batch set-window --project {project_dir} {batch} "20:00-06:00" '
            f"(or --clear)",
        ) from None


def project_windows(project: Any) -> Windows:
    """The project's `[schedule]` windows (checked when the project was loaded)."""
    s = getattr(project, "schedule", None)
    if s is None or not s.windows:
        return Windows(label="project")
    return Windows.parse(s.windows, s.timezone or "UTC", "project")


def windows_for(project: Any, journal: Any, batch: str | None) -> Windows:
    """A batch's own windows if it has some, else the project's."""
    if batch:
        stored = journal.get_setting(batch_setting(batch)) if journal is not None else None
        if stored:
            zone = project_windows_zone(project)
            return batch_windows(stored, batch, zone, str(getattr(project, "directory", ".")))
    return project_windows(project)


def gate_for(
    project: Any, journal: Any, batch: str | None, *, clock: Clock | None = None, subject: str = ""
) -> RunGate | None:
    """The run gate of a batch (None: no windows, always open). The queue executor's hook."""
    windows = windows_for(project, journal, batch)
    if windows.always:
        return None
    return RunGate(windows, clock or current_clock(), subject)


def gate_of(ctx: Any, subject: str) -> RunGate | None:
    """The gate of one user's pass: its batch's windows, else the project's. In a queued
    job (`leaving`) always a gate, which its worker's stop closes."""
    user = ctx.journal.get_item("user", subject) or {}
    gate = gate_for(ctx.project, ctx.journal, user.get("batch") or None, subject=subject)
    stop = _LEAVE.get()
    if stop is not None:
        gate = gate or RunGate(Windows(label="project"), current_clock(), subject)
        gate.stop = stop
    return gate


def set_batch_windows(
    project: Any,
    journal: Any,
    batch: str,
    windows: Sequence[str],
    *,
    timezone: str | None = None,
    clear: bool = False,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Give a batch its own run windows (`coexist batch set-window`), or take them away
    (`clear`: the project's apply again). Checked before anything is stored: the batch
    must have users, every window and the time zone must parse."""
    where = f"coexist batch set-window --project {project.directory}"
    if not journal.items(kind="user", batch=batch):
        raise InputError(
            f"no user is in batch {batch!r}",
            batch=batch,
            next_step=f"coexist batch import --project {project.directory} FILE (its Batch "
            f"column, or --name {batch}), then {where} {batch} ...",
        )
    if clear and (windows or timezone):
        raise InputError(
            "--clear takes no windows and no --timezone",
            batch=batch,
            next_step=f"{where} {batch} --clear",
        )
    if not clear and not windows:
        raise InputError(
            f"name at least one window for batch {batch!r}, like {EXAMPLE}",
            batch=batch,
            next_step=f'{where} {batch} "20:00-06:00" (or --clear for the project\'s)',
        )
    key = batch_setting(batch)
    if clear:
        journal.set_setting(key, None)
    else:
        stored = {"windows": list(windows), "timezone": timezone}
        zone = timezone or project_windows_zone(project)
        try:
            Windows.parse(windows, zone, f"batch {batch}")
        except ValueError as exc:
            raise InputError(
                f"batch {batch!r}: {exc}",
                batch=batch,
                next_step=f'{where} {batch} "20:00-06:00" [--timezone Europe/Berlin]',
            ) from None
        journal.set_setting(key, stored)
    effective = windows_for(project, journal, batch)
    at = (now or datetime.now(UTC)).astimezone(UTC)
    out: dict[str, Any] = {"batch": batch, "windows": effective.describe(), "own": not clear}
    if not effective.always:
        out["open_now"] = effective.is_open(at)
        out["next_open"] = effective.local(effective.next_open(at))
        close = effective.next_close(at)
        out["next_close"] = effective.local(close) if close else None
    return out


def project_windows_zone(project: Any) -> str:
    s = getattr(project, "schedule", None)
    return (s.timezone if s is not None else None) or "UTC"
