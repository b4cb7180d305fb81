"""The journal a planned pass sees (`migrate.planpass.PlanJournal`) and its summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from coexist.journal import Journal
from coexist.migrate.planpass import PlanJournal, summary
from coexist.tenants.plan import MAIL, PlannedWrite


def test_a_planned_pass_starts_from_the_real_map_and_writes_none_of_it(tmp_path: Path) -> None:
    """The scratch holds the user's rows, cursors (in their order) and item; what the pass
    maps, unmaps, checkpoints or merges into the user (its reconciliation) stays there; the
    project's journal is as it was."""
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as real:
        rows = [
            {"source_item_id": f"m{n}", "source_folder_id": "INBOX", "status": "copied"}
            for n in range(3)
        ]
        real.map_items("u1", rows)
        real.map_items(
            "u2", [{"source_item_id": "x", "source_folder_id": "F", "status": "pending"}]
        )
        real.save_checkpoint("u1", "INBOX", "imap", token="1:3")
        real.upsert_item("user", "u1", detail={"seen": 1})
        before = real.snapshot(include_logs=True)
        plan = PlanJournal(real, "u1")
        assert [r["source_item_id"] for r in plan.mapped_items("u1")] == ["m0", "m1", "m2"]
        assert plan.mapped_items("u2") == []  # only the planned user's rows
        assert plan.get_checkpoint("u1", "INBOX", "imap")["token"] == "1:3"
        plan.map_item("u1", "m3", source_folder_id="INBOX", status="copied")
        plan.unmap_item("u1", "m0")
        plan.save_checkpoint("u1", "INBOX", "imap", token="1:9")
        assert [r["source_item_id"] for r in plan.mapped_items("u1")] == ["m1", "m2", "m3"]
        merged = plan.merge_item("user", "u1", detail={"reconciliation": {"unexplained": 0}})
        assert merged["detail"] == {"seen": 1, "reconciliation": {"unexplained": 0}}
        plan.close()
        assert real.snapshot(include_logs=True) == before


@pytest.mark.parametrize("write", ["pass_started", "set_setting", "upsert_item", "step_started"])
def test_a_planned_pass_may_not_write_the_project_journal(tmp_path: Path, write: str) -> None:
    """Any journal call outside the item map, cursors and a few reads is refused: a sync
    change that would journal something in plan mode fails instead of leaking."""
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as real:
        plan = PlanJournal(real, "u1")
        with pytest.raises(AttributeError, match="planned pass"):
            getattr(plan, write)
        plan.close()


def test_the_summary_counts_new_copies_per_folder_and_the_writes_by_kind() -> None:
    """Copies: rows copied by the plan (not before) per (source, target) folder with their
    sizes, a moved item's copy left to the moves; folders, updates, moves and deletions from
    the captured writes (IMAP and Graph); a new folder named, a Graph id not."""
    before = {
        "a": {"source_item_id": "a", "status": "copied"},
        "b": {"source_item_id": "b", "status": "changed"},
    }
    after = [
        {"source_item_id": "a", "source_folder_id": "INBOX", "target_folder_id": "INBOX",
         "status": "copied", "size": 10, "reason": None},
        {"source_item_id": "b", "source_folder_id": "INBOX", "target_folder_id": "INBOX",
         "status": "copied", "size": 20, "reason": None},
        {"source_item_id": "c", "source_folder_id": "INBOX", "target_folder_id": "AAMkAD=",
         "status": "copied", "size": 30, "reason": None},
        {"source_item_id": "d", "source_folder_id": "Work", "target_folder_id": "planned:Work",
         "status": "copied", "size": 40, "reason": None},
        {"source_item_id": "e", "source_folder_id": "Work", "target_folder_id": "planned:Work",
         "status": "copied", "size": 50, "reason": "moving the copy of z"},
    ]  # fmt: skip
    writes = [
        PlannedWrite("graph", "target", "POST /users/u/mailFolders", {"displayName": "Work"}, None),
        PlannedWrite("graph", "target", "POST /users/u/mailFolders/AAMkAD=/messages", {}, None),
        PlannedWrite("graph", "target", "PATCH /users/u/messages/1", {}, None),
        PlannedWrite("graph", "target", "POST /users/u/messages/2/move", {}, None),
        PlannedWrite("imap", "target", "UID EXPUNGE bob", {"folder": "X", "uid": 1}, None),
    ]
    got = summary("ann@example.org", before, after, writes, {"skipped": 2}, "m365")
    texts = [w.operation for w in got.lines]
    assert all(w.system == MAIL for w in got.lines)
    assert texts == [
        "ann@example.org: create folder Work",
        "ann@example.org: copy 1 message (30 bytes) from INBOX",
        "ann@example.org: copy 1 message (40 bytes) from Work to Work",
        "ann@example.org: update the flags of 1 message",
        "ann@example.org: move 1 message",
        "ann@example.org: delete 1 message",
    ]
    assert got.counts == {
        "folders_created": 1,
        "copied": 2,
        "bytes": 70,
        "updated": 1,
        "moved": 1,
        "deleted_in_target": 1,
        "skipped": 2,
    }


def test_every_journal_call_of_the_sync_algorithm_is_one_a_planned_pass_serves() -> None:
    """Each `journal.<name>` sync.py and the stores call is read from the project's journal or
    kept in the scratch: a new journal method used by sync cannot fail plans unnoticed."""
    import re

    from coexist.migrate import planpass

    root = Path(planpass.__file__).parent
    sources = [root / "sync.py", *sorted((root / "stores").glob("*.py"))]
    called = {
        name
        for path in sources
        for name in re.findall(r"\bjournal\.([a-z_]+)\(", path.read_text(encoding="utf-8"))
    }
    assert called, "no journal calls found: the pattern no longer matches the code"
    assert called <= planpass.READS | planpass.SCRATCH, sorted(
        called - planpass.READS - planpass.SCRATCH
    )


def test_the_summary_names_source_folders_by_path_and_says_what_state_copies_would_lack() -> None:
    """A Graph source folder id is named by its path where the pass said it (`names`); the
    copies its target would make without part of their state (`not_kept`) are counted;
    graph_io's import session is no write to say and its importItem POSTs are copies."""
    after = [
        {"source_item_id": "a", "source_folder_id": "AAMkSRC=", "target_folder_id": "AAMkTGT=",
         "status": "copied", "size": 10, "reason": None},
    ]  # fmt: skip
    writes = [
        PlannedWrite("graph", "target", "POST /admin/exchange/mailboxes/M/createImportSession",
                     {}, None),
        PlannedWrite("graph", "target", "POST {importUrl}", {"Mode": "create"}, None),
        PlannedWrite("graph", "target", "POST {importUrl}", {"Mode": "update"}, None),
    ]  # fmt: skip
    got = summary(
        "ann@example.org", {}, after, writes, {"not_kept": 1}, "m365", {"AAMkSRC=": "Inbox/Work"}
    )
    assert [w.operation for w in got.lines] == [
        "ann@example.org: copy 1 message (10 bytes) from Inbox/Work",
        "ann@example.org: update the flags of 1 message",
    ]
    assert got.counts["not_kept"] == 1 and got.counts["updated"] == 1
    assert got.detail.endswith("; 1 would be copied without part of their state"), got.detail
