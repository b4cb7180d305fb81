"""The data column of `coexist status`: every pass summed, read under the current mover."""

from __future__ import annotations

from typing import Any

from coexist.migrate.summary import data_summary, human_bytes, waiting_text


def record(kind: str, status: str, copied: int = 0, size: int = 0) -> dict[str, Any]:
    """A journal pass record with only what the summary reads."""
    counts = {"copied": copied, "bytes": size} if status in ("ok", "waiting") and size else {}
    return {"kind": kind, "status": status, "counts": counts}


def test_every_pass_is_summed_and_the_last_one_named() -> None:
    """Items and bytes of all passes; `last` is the newest pass that ran with a mover."""
    passes = [
        record("prestage", "no-mover"),
        record("prestage", "ok", 1000, 1_000_000),
        record("cutover", "failed"),
        record("cutover", "ok", 204, 200_000),
    ]
    summary = data_summary(passes, "graph-import-export")
    assert (summary.passes, summary.items, summary.bytes) == (2, 1204, 1_200_000)
    assert summary.text() == "2 passes, 1,204 items, 1.2 MB; last: cutover ok"


def test_a_pass_held_by_reconciliation_says_so() -> None:
    """A cutover pass waiting on an unexplained difference is a pass, and shows the count."""
    passes = [record("cutover", "waiting", 3, 3000)]
    text = data_summary(passes, "graph-items", {"unexplained": 2}).text()
    assert text == "1 pass, 3 items, 3.0 KB; last: cutover waiting, 2 unexplained"


def test_no_mover_text_only_while_the_mover_is_none() -> None:
    """`none` passes say nothing once a mover is set; under `none` status says so, with
    what earlier passes moved."""
    passes = [record("prestage", "no-mover")]
    assert data_summary(passes, "graph-import-export").text() == ""
    assert data_summary(passes, "none").text() == "no data mover configured"
    earlier = [record("prestage", "ok", 5, 5000)]
    assert data_summary(earlier, "none").text() == (
        "no data mover configured; earlier: 1 pass, 5 items, 5.0 KB"
    )


def test_waiting_for_no_mover_is_read_under_the_current_mover() -> None:
    """A user the `none` mover left waiting waits for a data pass once a mover is set."""
    assert waiting_text("no data mover configured", "none") == "no data mover configured"
    now = waiting_text("no data mover configured", "graph-items")
    assert now is not None and now.startswith("a data pass with graph-items")
    assert waiting_text("the mailbox", "graph-items") == "the mailbox"


def test_sizes_read_as_people_write_them() -> None:
    """Decimal units, one decimal from KB."""
    assert [human_bytes(n) for n in (0, 999, 1200, 1_200_000, 1_200_000_000)] == [
        "0 B",
        "999 B",
        "1.2 KB",
        "1.2 MB",
        "1.2 GB",
    ]
