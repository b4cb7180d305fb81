"""Run windows (`coexist.schedule`): parsing, time zones and DST, next open/close, the gate."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from coexist import progress, schedule
from coexist.errors import InputError
from coexist.schedule import RunGate, Windows, parse_window

BERLIN = ZoneInfo("Europe/Berlin")


def at(text: str, tz: ZoneInfo = BERLIN) -> datetime:
    """A wall-clock time in `tz` ("2026-12-05 21:00")."""
    return datetime.fromisoformat(text).replace(tzinfo=tz)


class FakeClock:
    """A clock that moves only when slept on (no real time passes)."""

    def __init__(self, now: datetime) -> None:
        self.t = now.astimezone(UTC)
        self.slept: list[float] = []

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += timedelta(seconds=seconds)
        await asyncio.sleep(0)


def test_parse_plain_and_across_midnight_and_days() -> None:
    """Windows parse with and without days; ranges wrap over the weekend; 24:00 is an end."""
    span = parse_window("20:00-06:00")
    assert (span.start.hour, span.end and span.end.hour, len(span.days)) == (20, 6, 7)
    assert parse_window("Mon-Fri 19:30-07:00").days == frozenset({0, 1, 2, 3, 4})
    assert parse_window("Fri-Mon 00:00-24:00").days == frozenset({4, 5, 6, 0})
    assert parse_window("sat,Sunday 08:00-12:00").days == frozenset({5, 6})
    assert parse_window("Sat,Sun 00:00-24:00").end is None


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ("20-06", "is not a run window"),
        ("25:00-06:00", "not a time of day"),
        ("20:00-20:00", "opens and closes at once"),
        ("24:00-06:00", "24:00 as an end"),
        ("Mon-Fry 20:00-06:00", "'Fry' is not a day"),
        ("Mo 20:00-06:00", "'Mo' is not a day"),
    ],
)
def test_bad_windows_say_what_is_wrong(text: str, said: str) -> None:
    """A bad window is a ValueError naming it and how to write one."""
    with pytest.raises(ValueError, match=said):
        parse_window(text)


def test_bad_timezone_is_named() -> None:
    """An unknown time zone name is refused with an example of a good one."""
    with pytest.raises(ValueError, match=r"'Mars/Base' is not a time zone.*Europe/Berlin"):
        Windows.parse(["20:00-06:00"], "Mars/Base")


def test_open_across_midnight_in_local_time() -> None:
    """20:00-06:00 Berlin is open at 21:00 and 05:59 local, closed at 06:00 and 19:59."""
    w = Windows.parse(["20:00-06:00"], "Europe/Berlin")
    assert w.is_open(at("2026-12-05 21:00"))
    assert w.is_open(at("2026-12-06 05:59"))
    assert not w.is_open(at("2026-12-06 06:00"))
    assert not w.is_open(at("2026-12-06 19:59"))
    # The same instant given in UTC: 19:30 UTC is 20:30 in Berlin (CET, +01:00).
    assert w.is_open(datetime(2026, 12, 5, 19, 30, tzinfo=UTC))


def test_next_open_and_close() -> None:
    """Closed: the next opening and the closing after it; open: now and this closing."""
    w = Windows.parse(["20:00-06:00"], "Europe/Berlin")
    noon = at("2026-12-05 12:00")
    assert w.next_open(noon) == at("2026-12-05 20:00")
    assert w.next_close(noon) == at("2026-12-06 06:00")
    night = at("2026-12-05 23:00")
    assert w.next_open(night) == night
    assert w.next_close(night) == at("2026-12-06 06:00")


def test_weekday_windows_open_on_their_day_and_run_past_midnight() -> None:
    """Mon-Fri 20:00-06:00: Friday night runs into Saturday; Saturday night stays closed."""
    w = Windows.parse(["Mon-Fri 20:00-06:00"], "Europe/Berlin")
    # 2026-12-04 is a Friday.
    assert w.is_open(at("2026-12-05 05:00"))  # Saturday morning, Friday's window
    assert not w.is_open(at("2026-12-05 21:00"))  # Saturday evening
    assert w.next_open(at("2026-12-05 21:00")) == at("2026-12-07 20:00")  # Monday


def test_touching_windows_close_as_one() -> None:
    """Windows that touch or overlap close at the end of the last one."""
    w = Windows.parse(["18:00-22:00", "22:00-02:00", "01:00-03:00"], "UTC")
    assert w.next_close(at("2026-12-05 19:00", ZoneInfo("UTC"))) == at(
        "2026-12-06 03:00", ZoneInfo("UTC")
    )


def test_always_open_schedules() -> None:
    """No windows: always open, never closes; 00:00-24:00 every day never closes either."""
    assert Windows().is_open(at("2026-12-05 12:00"))
    assert Windows().next_close(at("2026-12-05 12:00")) is None
    whole = Windows.parse(["00:00-24:00"], "Europe/Berlin")
    assert whole.is_open(at("2026-12-05 12:00"))
    assert whole.next_close(at("2026-12-05 12:00")) is None


def test_dst_spring_forward_and_fall_back() -> None:
    """Wall-clock windows over the DST changes: 9 h of 20:00-06:00 in March, 11 h in October."""
    w = Windows.parse(["20:00-06:00"], "Europe/Berlin")
    spring = w.next_open(at("2026-03-28 12:00"))  # clocks go forward on 2026-03-29
    close = w.next_close(spring)
    assert close is not None and close - spring == timedelta(hours=9)
    assert close.astimezone(BERLIN).hour == 6
    autumn = w.next_open(at("2026-10-24 12:00"))  # clocks go back on 2026-10-25
    close = w.next_close(autumn)
    assert close is not None and close - autumn == timedelta(hours=11)
    assert close.astimezone(BERLIN).hour == 6
    # Summer time: 20:00 in Berlin is 18:00 UTC.
    assert w.next_open(at("2026-07-01 12:00")) == datetime(2026, 7, 1, 18, tzinfo=UTC)


def test_start_in_the_skipped_hour_opens_after_it() -> None:
    """A window opening at 02:30 on the spring-forward night opens once the clocks have gone on."""
    w = Windows.parse(["02:30-04:00"], "Europe/Berlin")
    opens = w.next_open(at("2026-03-29 00:00"))
    assert opens.astimezone(BERLIN).date().isoformat() == "2026-03-29"
    assert opens.astimezone(BERLIN).hour == 3  # 02:30 does not exist that night
    assert w.is_open(opens)


def test_gate_waits_until_the_window_opens_and_says_until_when() -> None:
    """wait_open sleeps on its clock until the window opens and reports the local opening."""
    clock = FakeClock(at("2026-12-05 12:00"))
    w = Windows.parse(["20:00-06:00"], "Europe/Berlin", "batch wave-1")
    events: list[progress.PassEvent] = []
    gate = RunGate(w, clock, subject="u1")
    assert gate.closed_now()
    with progress.listening(events.append):
        waited = asyncio.run(gate.wait_open())
    assert waited and not gate.closed_now()
    assert clock.now() == at("2026-12-05 20:00")
    paused = [e for e in events if isinstance(e, progress.PassPaused)]
    assert len(paused) == 1 and paused[0].subject == "u1"
    assert "paused until 2026-12-05 20:00 CET" in paused[0].text
    assert "20:00-06:00 Europe/Berlin, batch wave-1" in paused[0].text
    assert any(isinstance(e, progress.PassResumed) for e in events)
    # Long waits go in steps, so a clock changed under the process is noticed.
    assert max(clock.slept) <= schedule.SLEEP_STEP_S


def test_gate_open_does_not_wait() -> None:
    """Inside a window wait_open returns at once without sleeping."""
    clock = FakeClock(at("2026-12-05 21:00"))
    gate = RunGate(Windows.parse(["20:00-06:00"], "Europe/Berlin"), clock)
    assert asyncio.run(gate.wait_open()) is False
    assert clock.slept == []


def test_window_closed_only_inside_a_gated_pass() -> None:
    """`window_closed` is False outside a pass; inside, it is the pass gate's state."""
    clock = FakeClock(at("2026-12-05 12:00"))
    gate = RunGate(Windows.parse(["20:00-06:00"], "Europe/Berlin"), clock)
    assert not schedule.window_closed()
    with schedule.gated(gate):
        assert schedule.window_closed()
    assert not schedule.window_closed()


def test_bad_stored_batch_window_names_batch_and_command() -> None:
    """A batch window the journal holds that does not parse names the batch and the fix."""
    with pytest.raises(InputError) as caught:
        schedule.batch_windows({"windows": ["late"]}, "wave-1", "UTC", "/p")
    assert "wave-1" in str(caught.value)
    assert caught.value.next_step is not None
    assert "coexist batch set-window --project /p wave-1" in caught.value.next_step


def test_the_console_view_says_paused_until() -> None:
    """The CLI's pass view prints the pause line, with the mailbox's address, at once."""
    import io

    from rich.console import Console

    from coexist.progressview import PassView

    out = io.StringIO()
    view = PassView(Console(file=out, force_terminal=False, width=200))
    view(progress.PassStarted("u1", "prestage", "ann@example.org"))
    view(progress.PassPaused("u1", "paused until 2026-12-05 20:00 CET (...)", datetime.now(UTC)))
    assert "ann@example.org: paused until 2026-12-05 20:00 CET" in out.getvalue()
    assert view.model.mailboxes["u1"].state == progress.WAITING
    view(progress.PassResumed("u1"))
    assert view.model.mailboxes["u1"].state == progress.RUNNING


def test_six_days_open_closes_on_the_seventh() -> None:
    """Mon-Sat all day closes at Sunday 00:00; all week never closes."""
    six = Windows.parse(["Mon-Sat 00:00-24:00"], "Europe/Berlin")
    assert six.next_close(at("2026-11-30 12:00")) == at("2026-12-06 00:00")  # a Monday
    assert six.next_open(at("2026-12-06 12:00")) == at("2026-12-07 00:00")
    week = Windows.parse(["Mon-Sun 00:00-24:00"], "Europe/Berlin")
    assert week.next_close(at("2026-11-30 12:00")) is None
