"""The data passes' progress model, its view (plain and live) and the pass estimates."""

from __future__ import annotations

import io
import re
from typing import Any

import pytest
from rich.console import Console

from coexist import estimate, progress
from coexist.estimate import Rate, Volume
from coexist.progress import (
    PassAdvanced,
    PassEnded,
    PassesOver,
    PassesPlanned,
    PassProgress,
    PassSized,
    PassStarted,
    Planned,
)
from coexist.progressview import PassView

ANSI = re.compile(r"\x1b\[|\x1b\]|\r")


class Clock:
    """A clock the test moves by hand (no sleeping, no real time)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def planned(*boxes: tuple[str, str, int | None, int | None]) -> PassesPlanned:
    return PassesPlanned(
        "prestage",
        tuple(
            Planned(f"key-{label}", label, batch, items, size)
            for label, batch, items, size in boxes
        ),
        "prestage: estimated 2 min for 0.10 GB — an estimate",
    )


def test_model_counts_mailboxes_rates_and_eta_per_batch() -> None:
    """Done / running / waiting per batch, items and bytes per second since the passes were
    announced, and an ETA from what the unfinished mailboxes are expected to move."""
    clock = Clock()
    model = PassProgress(clock=clock)
    model.apply(
        planned(
            ("a@x", "wave1", 100, 10_000_000),
            ("b@x", "wave1", 100, 10_000_000),
            ("c@x", "wave2", 50, None),
        )
    )
    model.apply(PassStarted("key-a@x", "prestage", "a@x"))
    clock.now += 10
    model.apply(PassAdvanced("key-a@x", 50, 5_000_000))
    wave1, wave2 = model.batches()
    assert (wave1.name, wave1.done, wave1.running, wave1.waiting) == ("wave1", 0, 1, 1)
    assert wave1.items == 50 and wave1.bytes == 5_000_000
    assert wave1.items_per_s == pytest.approx(5.0)
    assert wave1.bytes_per_s == pytest.approx(500_000)
    # 15 MB left (5 of a, 10 of b) at 0.5 MB/s.
    assert wave1.eta_s == pytest.approx(30.0)
    # wave2 has moved nothing yet: no rate, no ETA.
    assert (wave2.waiting, wave2.eta_s) == (1, None)
    assert model.running()[0].fraction() == pytest.approx(0.5)

    model.apply(PassEnded("key-a@x", "ok", 100, 10_000_000))
    model.apply(PassEnded("key-b@x", "already", 100, 10_000_000))
    model.apply(PassEnded("key-c@x", "waiting"))
    wave1, wave2 = model.batches()
    assert (wave1.done, wave1.running, wave1.waiting, wave1.eta_s) == (2, 0, 0, 0.0)
    assert wave2.waiting == 1
    line = model.line()
    assert line.startswith("prestage: batch wave1 2/2 mailboxes done")
    assert "batch wave2 0/1 mailboxes done, 0 running, 1 waiting" in line


def test_model_marks_a_failed_pass_and_a_user_failed_before_its_pass() -> None:
    """A pass that fails counts as failed; a user whose licence step failed never starts
    its pass and is not left `waiting` for ever."""
    model = PassProgress(clock=Clock())
    model.apply(planned(("a@x", "", 10, None), ("b@x", "", 10, None)))
    model.apply(PassStarted("key-a@x", "prestage"))
    model.apply(PassEnded("key-a@x", "failed"))
    model.step_failed("key-b@x")
    (b,) = model.batches()
    assert (b.failed, b.waiting, b.running) == (2, 0, 0)
    assert "2 failed" in model.line()


def test_model_takes_a_pass_nobody_announced() -> None:
    """Events of a pass outside an announced command (a library call) still show, by label."""
    model = PassProgress(clock=Clock())
    model.apply(PassStarted("k1", "cutover", "z@x"))
    model.apply(PassAdvanced("k1", 3, 300))
    assert [m.label for m in model.running()] == ["z@x"]
    assert model.running()[0].fraction() is None
    # Once the pass has read the source's folders its bar has a length.
    model.apply(PassSized("k1", 12))
    assert model.running()[0].fraction() == pytest.approx(0.25)


def test_events_reach_only_the_listener_of_their_block() -> None:
    """`emit` goes to the listener set by `listening`, and to nobody outside the block."""
    seen: list[Any] = []
    progress.emit(PassStarted("k", "prestage"))
    with progress.listening(seen.append):
        progress.emit(PassStarted("k", "prestage"))
    progress.emit(PassStarted("k", "prestage"))
    assert seen == [PassStarted("k", "prestage")]


def run_view(console: Console, clock: Clock) -> PassView:
    view = PassView(console, every_s=15, clock=clock)
    view(
        planned(
            ("alice@contoso.example", "wave1", 100, 4_000_000),
            ("bob@contoso.example", "wave1", 100, 4_000_000),
        )
    )
    view(PassStarted("key-alice@contoso.example", "prestage", "alice@contoso.example"))
    for step in range(1, 5):
        clock.now += 10
        view(PassAdvanced("key-alice@contoso.example", 25 * step, 1_000_000 * step))
    view.print("[green]ok[/green]       migrate.pass             alice@contoso.example  copied")
    view(PassEnded("key-alice@contoso.example", "ok", 100, 4_000_000))
    view(PassEnded("key-bob@contoso.example", "already", 100, 4_000_000))
    view(PassesOver("prestage", "prestage: took 40 s for 8.0 MB (200 items); estimated 2 min"))
    return view


def test_view_writes_plain_lines_when_not_a_terminal() -> None:
    """Output redirected to a file: the estimate, periodic one-line summaries and the
    estimate against the actual, as plain lines with no escape codes or carriage returns."""
    buf = io.StringIO()
    console = Console(file=buf, width=80, force_terminal=False, color_system=None)
    view = run_view(console, Clock())
    text = buf.getvalue()
    assert not ANSI.search(text), repr(text[:300])
    lines = text.splitlines()
    assert lines[0] == "prestage: estimated 2 min for 0.10 GB — an estimate"
    summaries = [n for n in lines if n.startswith("prestage: batch wave1")]
    # Every 15 s of the 40: at 20 s and 40 s, then the final one; each a single line even
    # past the console's 80 columns.
    assert len(summaries) == 3 and all(len(s) > 80 for s in summaries)
    assert "0/2 mailboxes done, 1 running, 1 waiting" in summaries[0]
    assert "ETA" in summaries[0]
    assert summaries[-1].startswith("prestage: batch wave1 2/2 mailboxes done")
    assert lines[-1].startswith("prestage: took 40 s")
    assert any("migrate.pass" in n and "alice@contoso.example" in n for n in lines)
    assert not view.active


def test_view_draws_bars_on_a_terminal() -> None:
    """On a terminal the view is live: a batch line and a bar per running mailbox, drawn
    with the terminal's control codes, and gone (transient) once the passes are over."""
    buf = io.StringIO()
    console = Console(file=buf, width=120, force_terminal=True, color_system="truecolor")
    clock = Clock()
    view = PassView(console, clock=clock)
    view(planned(("alice@contoso.example", "wave1", 100, 4_000_000)))
    assert not view.active and not buf.getvalue()  # drawn once a pass starts
    view(PassStarted("key-alice@contoso.example", "prestage", "alice@contoso.example"))
    assert view.active
    clock.now += 1
    view(PassAdvanced("key-alice@contoso.example", 50, 2_000_000))
    drawn = buf.getvalue()
    assert "\x1b[" in drawn  # drawn as a live display, not as plain lines
    assert "━" in drawn  # rich's bar
    assert "alice@contoso.example" in drawn and "50%" in drawn
    assert "0/1 mailboxes done, 1 running, 0 waiting" in drawn
    view(PassesOver("prestage", "prestage: took 1 s"))
    assert not view.active
    assert buf.getvalue().rstrip().endswith("prestage: took 1 s")


def test_estimate_from_known_sizes() -> None:
    """Each mailbox takes the longer of its bytes and its items at the rate; mailboxes run
    `parallel` at a time, the longest first; unsized mailboxes are counted, not timed."""
    rate = Rate(bytes_per_s=1_000_000, items_per_s=10, source="a test rate")
    volumes = [
        Volume(100, 600_000_000, "reconciliation"),  # 600 s by bytes (items: 10 s)
        Volume(3000, 1_000_000, "previous pass"),  # 300 s by items
        Volume(10, 300_000_000, "reconciliation"),  # 300 s
        Volume(None, None, None),
    ]
    est = estimate.estimate("cutover", volumes, rate, parallel=2, mover="imap-sync")
    # Two slots: 600 on one, 300 + 300 on the other.
    assert est.seconds == pytest.approx(600)
    assert (est.mailboxes, est.sized, est.items, est.bytes) == (4, 3, 3110, 901_000_000)
    text = est.text()
    assert text.startswith("cutover: estimated 10 min for 0.90 GB")
    assert "an estimate" in text and "1 mailboxes not sized yet" in text
    one_at_a_time = estimate.estimate("cutover", volumes, rate, parallel=1)
    assert one_at_a_time.seconds == pytest.approx(1200)
    after = estimate.against_actual(est, 750.0, 3000, 850_000_000)
    assert after["is_estimate"] is True and after["seconds"] == pytest.approx(600)
    assert after["actual"] == {"seconds": 750.0, "items": 3000, "bytes": 850_000_000}
    assert after["actual_text"] == (
        "cutover: took 13 min for 0.85 GB (3000 items); estimated 10 min for 0.90 GB"
    )


def test_estimate_rates_follow_the_endpoint_ceiling() -> None:
    """Microsoft 365's per-mailbox Outlook budget is ~1.8 GB/h and is scaled with the
    sandbox's time scale; 1.8 GB into Microsoft 365 is estimated at an hour."""
    m365 = estimate.rate_for("graph-import-export")
    assert m365 is not None and m365.bytes_per_s * 3600 == pytest.approx(1.8e9)
    est = estimate.estimate("prestage", [Volume(1000, 1_800_000_000, "reconciliation")], m365, 8)
    assert est.seconds == pytest.approx(3600) and "estimated 1 h 00 min" in est.text()
    fast = estimate.rate_for("graph-import-export", 60)
    assert fast is not None and fast.bytes_per_s == pytest.approx(m365.bytes_per_s * 60)
    assert estimate.rate_for("imap-sync", 60) == estimate.IMAP  # no Microsoft budget there
    nothing = estimate.estimate("prestage", [Volume(None, None, None)], m365, 8)
    assert nothing.seconds is None and "no estimate yet for 1 mailboxes" in nothing.text()
    none = estimate.estimate("prestage", [], estimate.rate_for("none"), 8, mover="none")
    assert "no data mover configured" in none.text()


class FakeJournal:
    """The three journal reads `estimate.volume` makes, answered from fixed rows."""

    def __init__(
        self, user: dict[str, Any], counts: dict[str, dict[str, int]], passes: list[dict[str, Any]]
    ) -> None:
        self.user, self.counts, self._passes = user, counts, passes

    def get_item(self, kind: str, key: str) -> dict[str, Any]:
        return self.user

    def item_map_counts(self, key: str) -> dict[str, dict[str, int]]:
        return self.counts

    def passes(self, key: str) -> list[dict[str, Any]]:
        return self._passes


def test_volume_left_from_reconciliation_or_previous_pass() -> None:
    """What is left: the source's folder totals minus what the item map has copied; bytes at
    the copied average where the store gives no sizes; else the previous pass's counts."""
    rows = [
        {"source_items": 30, "source_bytes": 3_000_000},
        {"source_items": 20, "source_bytes": 2_000_000},
    ]
    counts = {"f1": {"copied": 20, "copied_bytes": 2_000_000, "skipped": 5}}
    user = {"detail": {"reconciliation": {"folders": rows}}}
    v = estimate.volume(FakeJournal(user, counts, []), "k", "cutover")
    assert v == Volume(25, 3_000_000, "reconciliation")
    unsized = [{"source_items": 50, "source_bytes": None}]
    user = {"detail": {"reconciliation": {"folders": unsized}}}
    v = estimate.volume(FakeJournal(user, counts, []), "k", "cutover")
    assert v == Volume(25, 25 * 100_000, "reconciliation")
    passes = [
        {"status": "ok", "counts": {"copied": 7, "updated": 1, "bytes": 800}},
        {"status": "failed", "counts": {}},
    ]
    v = estimate.volume(FakeJournal({}, {}, passes), "k", "prestage")
    assert v == Volume(8, 800, "previous pass")
    assert estimate.volume(FakeJournal({}, {}, []), "k", "prestage") == Volume(None, None, None)


def test_view_says_nothing_when_no_pass_started() -> None:
    """A command whose users all still wait (a retry round) runs no pass: no estimate, no
    summary, no line at all from the view."""
    buf = io.StringIO()
    view = PassView(Console(file=buf, force_terminal=False), clock=Clock())
    view(planned(("alice@contoso.example", "wave1", None, None)))
    view(PassEnded("key-alice@contoso.example", "waiting"))
    view(PassesOver("prestage", "prestage: took 0 s for 0.0 MB (0 items); there was no estimate"))
    assert buf.getvalue() == ""
