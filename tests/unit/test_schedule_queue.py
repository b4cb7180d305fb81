"""Run gates inside a queued job (`coexist worker`): they leave instead of waiting, and the
worker's stop closes them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from coexist import schedule
from coexist.schedule import FileClock, LeaveForLater, RunGate, Windows

BERLIN = ZoneInfo("Europe/Berlin")
NIGHT = Windows.parse(["20:00-06:00"], "Europe/Berlin", "batch night")


class Fixed:
    def __init__(self, now: datetime) -> None:
        self.t = now

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        raise AssertionError("a queued job's gate never sleeps")


def test_a_stopping_worker_closes_an_open_gate_and_the_job_leaves_at_once() -> None:
    """The stop flag closes a gate whose window is open; it leaves with no time (requeue now)."""
    stop = threading.Event()
    gate = RunGate(NIGHT, Fixed(datetime(2026, 12, 5, 21, 0, tzinfo=BERLIN)), "u1", stop=stop)
    assert gate.queued and not gate.closed_now()
    gate.leave_if_closed()  # open: goes on
    stop.set()
    assert gate.closed_now()
    with pytest.raises(LeaveForLater) as left:
        gate.leave_if_closed()
    assert left.value.at is None


def test_a_closed_window_leaves_for_its_next_opening() -> None:
    """Closed at noon: the job leaves for 20:00 that day (UTC instant), saying so."""
    gate = RunGate(NIGHT, Fixed(datetime(2026, 12, 5, 12, 0, tzinfo=BERLIN)), "u1")
    gate.stop = threading.Event()
    with pytest.raises(LeaveForLater) as left:
        gate.leave_if_closed()
    assert left.value.at == datetime(2026, 12, 5, 19, 0, tzinfo=UTC)
    assert "paused until 2026-12-05 20:00 CET" in left.value.why


def test_leaving_gives_every_pass_a_gate_that_the_stop_closes() -> None:
    """Inside `leaving`, a project with no windows still gets a gate (always open till stop)."""

    class Journal:
        def get_item(self, kind: str, key: str) -> dict[str, str]:
            return {}

    class Ctx:
        project = None
        journal = Journal()

    assert schedule.gate_of(Ctx(), "u1") is None
    stop = threading.Event()
    with schedule.leaving(stop):
        gate = schedule.gate_of(Ctx(), "u1")
    assert gate is not None and gate.queued and not gate.closed_now()
    stop.set()
    assert gate.closed_now()


def test_the_test_clock_file_is_read_at_each_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """COEXIST_TEST_CLOCK_FILE (test only) makes the file's instant the clock; a deferral on it
    is looked at again within a second of real time."""
    f = tmp_path / "clock"
    f.write_text("2026-12-05T11:00:00+00:00")
    monkeypatch.setenv(schedule.TEST_CLOCK_ENV, str(f))
    clock = schedule.current_clock()
    assert isinstance(clock, FileClock)
    assert clock.now() == datetime(2026, 12, 5, 11, 0, tzinfo=UTC)
    f.write_text("2026-12-05T20:30:00+01:00")
    assert clock.now() == datetime(2026, 12, 5, 19, 30, tzinfo=UTC)
    real = schedule.real_instant(clock, datetime(2030, 1, 1, tzinfo=UTC))
    assert real <= datetime.now(UTC) + timedelta(seconds=schedule.TEST_CLOCK_POLL_S)
    monkeypatch.delenv(schedule.TEST_CLOCK_ENV)
    assert isinstance(schedule.current_clock(), schedule.SystemClock)
