"""Run windows end to end: a pass waits for its window, pauses when it closes, resumes inside.

Driven by a fake clock (`schedule.using_clock`) the test moves: the window closes when the
pass has moved its first items (on a progress event), and the clock moves only when the
gate sleeps on it. Nothing here depends on how fast anything runs.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from click.testing import Result

from coexist import commands, progress, schedule
from coexist.engine.runner import Outcome
from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests.e2e.conftest import TEST_RETRY
from tests.e2e.test_graph_mover import World

BERLIN = ZoneInfo("Europe/Berlin")
MESSAGES = 24  # several export batches (graph-items exports one message per batch)


class FakeClock:
    """Moves when slept on, or when the test sets it (no real time)."""

    def __init__(self, now: datetime) -> None:
        self.t = now.astimezone(UTC)
        self.slept = 0

    def now(self) -> datetime:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept += 1
        self.t += timedelta(seconds=seconds)
        await asyncio.sleep(0)


class Watch:
    """The command's progress sink: keeps the pass events; closes the window on the
    `close_after`-th item moved by moving the clock to the morning after."""

    def __init__(self, clock: FakeClock, close_after: int | None = None) -> None:
        self.clock, self.close_after = clock, close_after
        self.events: list[progress.PassEvent] = []
        self.outcomes: list[Outcome] = []

    def __call__(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)

    def pass_event(self, event: progress.PassEvent) -> None:
        self.events.append(event)
        if (
            self.close_after is not None
            and isinstance(event, progress.PassAdvanced)
            and event.items >= self.close_after
        ):
            self.close_after = None
            local = self.clock.now().astimezone(BERLIN)
            morning = (local + timedelta(days=1)).replace(hour=6, minute=30)
            self.clock.t = morning.astimezone(UTC)

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


def seeded(make_project: Callable[..., Path], sandbox: Sandbox, **overrides: Any) -> World:
    """One provisioned user with MESSAGES old messages, in batch `night`."""
    project = make_project(users=10, **{"migration.mover": "graph-items"}, **overrides)
    commands.discover(project)
    commands.provision(project, all_users=True, retry=TEST_RETRY)
    w = World(sandbox, project)
    for n in range(MESSAGES):
        w.put(["Inbox"] if n % 2 else ["Inbox", "Archive"], f"night {n:02d}")
    csv = project / "night.csv"
    csv.write_text(f"Source Email,Batch\n{w.user['source_address']},night\n")
    commands.batch_import(project, csv)
    return w


def passes(w: World) -> list[dict[str, Any]]:
    with Journal.open(load_project(w.project).journal_url) as j:
        return j.passes(w.source)


def test_batch_window_closes_mid_pass_and_the_pass_resumes_without_duplicates(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Outside its batch's window the pass waits; closed mid-pass it pauses, then finishes once."""
    w = seeded(make_project, sandbox)
    shown = commands.batch_set_window(w.project, "night", ["20:00-06:00"], timezone="Europe/Berlin")
    assert shown["windows"] == "20:00-06:00 Europe/Berlin"
    clock = FakeClock(datetime(2026, 12, 5, 12, 0, tzinfo=BERLIN))  # closed: opens at 20:00
    watch = Watch(clock, close_after=3)
    with schedule.using_clock(clock):
        result = commands.prestage(
            w.project, batch="night", older_than="90d", retry=TEST_RETRY, progress=watch
        )
    assert not result.get("failed"), result

    paused = watch.of(progress.PassPaused)
    assert len(paused) == 2, [e.text for e in paused]
    # Started outside the window: it said when it would start, before any pass began.
    assert watch.events.index(paused[0]) < watch.events.index(watch.of(progress.PassStarted)[0])
    assert "paused until 2026-12-05 20:00 CET" in paused[0].text
    assert "batch night" in paused[0].text
    assert "paused until 2026-12-06 20:00 CET" in paused[1].text

    runs = passes(w)
    assert [p["status"] for p in runs] == ["paused", "ok"], runs
    first, second = (dict(p["counts"] or {}) for p in runs)
    assert 0 < first.get("copied", 0) < MESSAGES, first  # stopped mid-pass, not before or after
    assert first.get("copied", 0) + second.get("copied", 0) == MESSAGES, (first, second)

    subjects = Counter(i.subject for i in w.items("target"))
    wanted = {f"night {n:02d}" for n in range(MESSAGES)}
    assert {s: c for s, c in subjects.items() if s in wanted} == dict.fromkeys(wanted, 1)

    with schedule.using_clock(clock):  # still inside the window the pass finished in
        again = commands.prestage(w.project, batch="night", older_than="90d", retry=TEST_RETRY)
    assert not again.get("failed"), again
    assert Counter(i.subject for i in w.items("target")) == subjects  # nothing copied twice


def test_plan_outside_the_window_waits_for_nothing_and_writes_nothing(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """--plan outside the project's window says when it would run, without waiting or writing."""
    w = seeded(
        make_project,
        sandbox,
        **{"schedule.windows": ["Mon-Fri 20:00-06:00"], "schedule.timezone": "Europe/Berlin"},
    )
    clock = FakeClock(datetime(2026, 12, 5, 12, 0, tzinfo=BERLIN))  # a Saturday: opens Monday
    url = load_project(w.project).journal_url
    with Journal.open(url) as j:
        before = j.snapshot(include_logs=True)
    watch = Watch(clock)
    with schedule.using_clock(clock):
        commands.prestage(w.project, batch="night", older_than="90d", plan=True, progress=watch)
    with Journal.open(url) as j:
        assert j.snapshot(include_logs=True) == before
    assert clock.slept == 0
    said = [(o.name, o.status, o.detail) for o in watch.outcomes]
    assert any("would wait: paused until 2026-12-07 20:00 CET" in str(d) for *_, d in said), said
    assert not w.items("target")


def test_batch_set_window_refuses_bad_input_and_clears(
    make_project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    """set-window names the batch and the next command on bad input; --clear restores the project's."""
    project = make_project(**{"schedule.windows": ["22:00-05:00"]})
    commands.discover(project)
    with Journal.open(load_project(project).journal_url) as j:
        address = str(j.items(kind="user")[0]["source_address"])
    (project / "b.csv").write_text(f"Source Email,Batch\n{address},wave\n")
    commands.batch_import(project, project / "b.csv")
    p = str(project)

    unknown = cli("batch", "set-window", "--project", p, "nosuch", "20:00-06:00")
    assert unknown.exit_code != 0
    assert "no user is in batch 'nosuch'" in unknown.output
    assert "coexist batch import" in unknown.output
    bad = cli("batch", "set-window", "--project", p, "wave", "20:00-6")
    assert bad.exit_code != 0 and "batch 'wave'" in bad.output and "20:00-06:00" in bad.output
    zone = cli("batch", "set-window", "--project", p, "wave", "20:00-06:00", "--timezone", "X/Y")
    assert zone.exit_code != 0 and "'X/Y' is not a time zone" in zone.output

    ok = cli("batch", "set-window", "--project", p, "wave", "Mon-Fri 20:00-06:00", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output)["windows"] == "Mon-Fri 20:00-06:00 UTC"
    cleared = cli("batch", "set-window", "--project", p, "wave", "--clear", "--json")
    assert cleared.exit_code == 0, cleared.output
    assert json.loads(cleared.output)["windows"] == "22:00-05:00 UTC"  # the project's again
