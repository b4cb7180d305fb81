"""The fallback mover (Graph mail, contacts, calendar and To Do APIs) through prestage and cutover.

Source mail is seeded straight into the sandbox mailstore; contacts, events and tasks are
created through the source tenant's Graph faces over HTTPS. Everything after that goes
through the commands; assertions read both mailstores and the target's Graph faces.
"""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coexist import commands
from coexist.journal import Journal
from coexist.migrate.items import DELTA_PAGE
from coexist.sandbox import Sandbox
from coexist.sandbox.graph.mail_delta import EXPIRED_ANSWERS, expire_after_pages
from coexist.settings import load_project
from tests.e2e.conftest import TEST_RETRY
from tests.e2e.pim_seed import (
    EXPECTED_CHECKLIST,
    EXPECTED_CONTACT_FOLDERS,
    contact_folders,
    graph,
    pim_in_target,
    req,
    seed_pim,
)
from tests.e2e.test_graph_mover import (
    OLD,
    RECENT,
    World,
    by_subject,
    cutover,
    last_counts,
    mime,
    prestage,
)

MOVER = {"migration.mover": "graph-items"}
BIG = b"\x07" * (3 * 1024 * 1024 + 512 * 1024)  # over 3 MB: needs an upload session
REPO = Path(__file__).resolve().parents[2]


def provisioned(make_project: Callable[..., Path], sandbox: Sandbox, **overrides: Any) -> World:
    project = make_project(users=10, **MOVER, **overrides)
    commands.discover(project)
    commands.provision(project, retry=TEST_RETRY)
    return World(sandbox, project)


def test_prestage_then_cutover_moves_mail_once_not_draft_with_dates_state_and_attachments(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Each message lands once, not a draft, with dates, state and attachments; re-runs copy 0."""
    w = provisioned(make_project, sandbox)
    w.put(["Inbox"], "old read", is_read=True)
    w.put(["Inbox"], "old flagged", flag={"flagStatus": "flagged"}, categories=["Blue"])
    w.put(["Inbox", "Projects", "2024"], "old nested", attachment=b"\x00\x01" * 5000)
    w.put(["Inbox", "Projects"], "old big", attachment=BIG)
    w.put(["Sent Items"], "old sent", is_read=True, sent=OLD - dt.timedelta(minutes=3))
    w.put(["Inbox"], "recent", received=RECENT)
    prestage(w)
    assert last_counts(w)["copied"] == 5, last_counts(w)
    assert "recent" not in {i.subject for i in w.items("target")}
    prestage(w)
    assert last_counts(w).get("copied", 0) == 0
    cutover(w)
    assert last_counts(w)["copied"] == 1, last_counts(w)
    cutover(w)
    assert last_counts(w).get("copied", 0) == 0
    source, target = by_subject(w.items("source")), by_subject(w.items("target"))
    assert set(target) == set(source)
    for subject, [s] in source.items():
        assert len(target[subject]) == 1, subject
        [t] = target[subject]
        assert not t.is_draft, subject
        assert (t.is_read, t.flag["flagStatus"], t.received, t.sent, t.categories) == (
            s.is_read,
            s.flag["flagStatus"],
            s.received,
            s.sent,
            s.categories,
        ), subject
        assert t.internet_message_id == s.internet_message_id
        assert w.path_of("target", t.folder_id) == w.path_of("source", s.folder_id)
        got = [(a.name, a.data) for a in sandbox.mail.attachments(t.id)]
        assert got == [(a.name, a.data) for a in sandbox.mail.attachments(s.id)], subject
    report = commands.status(w.project, user=str(w.user["source_address"]))["users"][0]
    assert report["phase"] == "cutover"
    assert report["reconciliation"]["unexplained"] == 0


def test_contacts_recurring_events_with_exceptions_and_tasks_arrive_once(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Contacts, a series with its exception and cancellation, and tasks arrive once; changes follow."""
    w = provisioned(make_project, sandbox)
    seeded = seed_pim(sandbox, w.source)
    prestage(w)
    counts = last_counts(w)
    assert (counts["contacts_copied"], counts["events_copied"], counts["tasks_copied"]) == (3, 2, 2)
    assert counts["events_without_attendees"] == 1  # reported: Graph would invite them
    assert (
        pim_in_target(sandbox, w.target, seeded)["checklists"]["File taxes"] == EXPECTED_CHECKLIST
    )
    prestage(w)
    assert last_counts(w).get("copied", 0) == 0
    with graph(sandbox, "source") as g:  # changed and deleted at the source since
        req(g, "PATCH", f"users/{w.source}/contacts/{seeded['ada']}", json={"jobTitle": "Countess"})
        req(g, "DELETE", seeded["milk"])
        req(g, "POST", seeded["taxes_steps"], json={"displayName": "Post it"})
    prestage(w)
    counts = last_counts(w)
    assert counts.get("copied", 0) == 0 and counts["updated"] == 2, counts
    checklist = pim_in_target(sandbox, w.target, seeded)["checklists"]["File taxes"]
    assert checklist == [*EXPECTED_CHECKLIST, ("Post it", False)]
    assert counts["deleted_at_source"] == 1  # deletions = keep: reported, the copy stays
    user = w.target
    with graph(sandbox, "target") as g:
        contacts = req(g, "GET", f"users/{user}/contacts")["value"]
        assert [(c["displayName"], c["jobTitle"]) for c in contacts] == [
            ("Ada Lovelace", "Countess")
        ]
        assert contacts[0]["emailAddresses"][0]["address"] == "ada@example.org"
        [suppliers] = req(g, "GET", f"users/{user}/contactFolders")["value"]
        assert suppliers["displayName"] == "Suppliers"
        inside = req(g, "GET", f"users/{user}/contactFolders/{suppliers['id']}/contacts")
        assert [c["companyName"] for c in inside["value"]] == ["Acme"]
        assert contact_folders(g, user) == EXPECTED_CONTACT_FOLDERS
        events = req(g, "GET", f"users/{user}/events")["value"]
        assert sorted(e["subject"] for e in events) == ["Dentist", "Weekly sync"]
        series = next(e for e in events if e["type"] == "seriesMaster")
        assert series["originalStartTimeZone"] == "W. Europe Standard Time"
        path = f"users/{user}/events/{series['id']}/instances"
        occ = req(g, "GET", path, params={**seeded["window"], "$top": 50})["value"]
        starts = seeded["original_starts"]
        assert [o["originalStart"] for o in occ] == starts[:5] + starts[6:]
        changed = [(o["subject"], o["originalStart"]) for o in occ if o["type"] == "exception"]
        assert changed == [("Weekly sync (moved)", starts[2])]
        lists = {x["displayName"]: x for x in req(g, "GET", f"users/{user}/todo/lists")["value"]}
        default = next(x for x in lists.values() if x["wellknownListName"] == "defaultList")
        tasks = req(g, "GET", f"users/{user}/todo/lists/{default['id']}/tasks")["value"]
        assert [(t["title"], t["importance"]) for t in tasks] == [("File taxes", "high")]
        kept = req(g, "GET", f"users/{user}/todo/lists/{lists['Groceries']['id']}/tasks")
        assert [t["title"] for t in kept["value"]] == ["Milk"]


def test_changes_since_the_last_pass_are_brought_into_line(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Read/flag changes are PATCHed, a move is mirrored (no second copy), a deletion is reported."""
    w = provisioned(make_project, sandbox)
    a = w.put(["Inbox"], "will be read")
    b = w.put(["Inbox"], "will move")
    gone = w.put(["Inbox"], "will be deleted")
    w.put(["Inbox"], "unchanged", body=mime("unchanged"))
    prestage(w)
    sandbox.mail.update_message(
        "source", w.source, a.id, is_read=True, flag={"flagStatus": "flagged"}
    )
    dest = w.folder("source", ["Archive", "Moved"], create=True)
    sandbox.mail.move_message("source", w.source, b.id, dest)
    sandbox.mail.delete_message("source", w.source, gone.id)
    cutover(w)
    counts = last_counts(w)
    assert counts.get("copied", 0) == 0 and counts["moved"] == 1, counts
    assert counts["deleted_at_source"] == 1  # deletions = keep: reported, copy kept
    target = by_subject(w.items("target"))
    [read] = target["will be read"]
    assert read.is_read and read.flag["flagStatus"] == "flagged"
    [moved] = target["will move"]
    assert w.path_of("target", moved.folder_id) == ["Archive", "Moved"]
    assert len(target["will be deleted"]) == 1
    assert len(target["unchanged"]) == 1


def test_encrypted_and_oversize_messages_are_skipped_and_reported(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """An S/MIME message and one over max_item_mb are skipped and listed with folder and subject."""
    w = provisioned(make_project, sandbox, **{"migration.max_item_mb": 1})
    w.put(["Inbox"], "big", attachment=b"x" * (1024 * 1024 + 10))
    w.put(["Inbox", "Secure"], "smime", ctype="application/pkcs7-mime; smime-type=enveloped-data")
    w.put(["Inbox"], "plain", received=OLD)
    prestage(w)
    counts = last_counts(w)
    assert counts["copied"] == 1 and counts["skipped"] == 2, counts
    report = commands.status(w.project, user=str(w.user["source_address"]))["users"][0]
    skipped = {(s["folder"], s["subject"]) for s in report["reconciliation"]["skipped_items"]}
    assert skipped == {("Inbox", "big"), ("Inbox/Secure", "smime")}
    assert report["reconciliation"]["unexplained"] == 0


def test_passes_complete_and_reconcile_under_chaos(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Under the chaos profile both passes complete; every message and PIM item lands once."""
    project = make_project(users=10, profile="chaos", **MOVER)
    commands.discover(project)
    commands.provision(project, retry=TEST_RETRY)
    w = World(sandbox, project)
    for n in range(6):
        w.put(["Inbox", f"F{n % 2}"], f"old {n}", is_read=bool(n % 2))
    w.put(["Inbox"], "recent", received=RECENT)
    seed_pim(sandbox, w.source)
    prestage(w)
    cutover(w)
    cutover(w)
    assert last_counts(w).get("copied", 0) == 0
    target = by_subject(w.items("target"))
    assert sorted(target) == sorted(by_subject(w.items("source")))
    assert all(len(v) == 1 for v in target.values()), target
    report = commands.status(w.project, user=str(w.user["source_address"]))["users"][0]
    assert report["reconciliation"]["unexplained"] == 0
    with graph(sandbox, "target") as g:
        events = req(g, "GET", f"users/{w.target}/events")["value"]
        assert sorted(e["subject"] for e in events) == ["Dentist", "Weekly sync"]


def kill_at(
    project: Path, args: list[str], progress: Callable[[], int], at: int, jitter: float
) -> bool:
    """Run the CLI; SIGKILL it once `progress()` reaches `at` (plus `jitter` s). Killed?"""
    log = (project / "kill.log").open("ab")
    cmd = [sys.executable, "-m", "coexist.cli", *args, "--project", str(project), "--json"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=log)
    while proc.poll() is None:
        if progress() >= at:
            time.sleep(jitter)
            if proc.poll() is not None:
                break
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return True
        time.sleep(0.005)
    return False


def test_sigkill_mid_pass_then_rerun_leaves_no_duplicates_and_no_gaps(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """SIGKILL of the CLI at seeded points of a pass, then a full re-run: every item exactly once."""
    w = provisioned(make_project, sandbox)
    for n in range(16):
        w.put(["Inbox", f"K{n % 2}"], f"kill {n}", attachment=BIG if n in (5, 11) else None)
    seed_pim(sandbox, w.source)
    user = str(w.user["source_address"])
    args = ["prestage", "--users", user, "--older-than", "90d"]

    def copied() -> int:
        return len(w.items("target"))

    rng = random.Random(int(os.environ.get("COEXIST_CRASH_SEED", "4")))  # explore others
    kills = sum(
        kill_at(w.project, args, copied, at, rng.uniform(0.0, 0.03))
        for at in sorted(rng.sample(range(1, 16), 3))
    )
    assert kills >= 1, kills
    prestage(w)
    prestage(w)
    assert last_counts(w).get("copied", 0) == 0
    source, target = by_subject(w.items("source")), by_subject(w.items("target"))
    assert set(target) == set(source)
    for subject, [s] in source.items():
        [t] = target[subject]
        got = [(a.name, a.data) for a in sandbox.mail.attachments(t.id)]
        assert got == [(a.name, a.data) for a in sandbox.mail.attachments(s.id)], subject
    with graph(sandbox, "target") as g:
        events = req(g, "GET", f"users/{w.target}/events")["value"]
        assert sorted(e["subject"] for e in events) == ["Dentist", "Weekly sync"]
        assert len(req(g, "GET", f"users/{w.target}/contacts")["value"]) == 1


# -- identity, expiry, localized mailboxes -------------------------------------------------------


def journal_rows(w: World) -> list[dict[str, Any]]:
    with Journal.open(load_project(w.project).journal_url) as j:
        return j.mapped_items(w.source)


def interrupt(w: World, row: dict[str, Any]) -> None:
    """The journal as a kill between a create and its record leaves it: the row `importing`,
    no target item named, the copy in the target."""
    with Journal.open(load_project(w.project).journal_url) as j:
        j.map_item(
            w.source, row["source_item_id"], status="importing", target_item_id=None,
            target_change_key=None,
        )  # fmt: skip


@pytest.mark.parametrize("unverified_filters", [True, False])
def test_interrupted_copies_are_found_by_identity_never_by_lookalikes(
    make_project: Callable[..., Path], sandbox: Sandbox, unverified_filters: bool
) -> None:
    """A copy whose record a kill lost is recognised by its stamp and Message-ID, while the
    target's own items that look the same (subject, delivery time, Message-ID; name and
    address; subject and start; title) are never deleted nor adopted; one copy each."""
    w = provisioned(make_project, sandbox)
    sandbox.world.settings.unverified_identity_filters = unverified_filters
    w.put(["Inbox"], "twin")
    w.put(["Inbox"], "other")
    seed_pim(sandbox, w.source)
    prestage(w)
    rows = journal_rows(w)
    named = {
        "twin": next(r for r in rows if r["subject"] == "twin"),
        "Ada Lovelace": next(r for r in rows if r["subject"] == "Ada Lovelace"),
        "Dentist": next(r for r in rows if r["subject"] == "Dentist"),
        "File taxes": next(r for r in rows if r["subject"] == "File taxes"),
    }
    for row in named.values():
        interrupt(w, row)
    inbox = w.folder("target", ["Inbox"])
    native_mail = sandbox.mail.insert_message("target", w.target, inbox, mime("twin"), received=OLD)
    user = w.target
    with graph(sandbox, "target") as g:
        native_ada = req(g, "POST", f"users/{user}/contacts", json={
            "givenName": "Ada", "surname": "Lovelace",
            "emailAddresses": [{"address": "ada@example.org"}]})["id"]  # fmt: skip
        native_dentist = req(g, "POST", f"users/{user}/events", json={
            "subject": "Dentist", "start": {"dateTime": "2024-02-02T10:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2024-02-02T11:00:00", "timeZone": "UTC"}})["id"]  # fmt: skip
        default = next(
            x
            for x in req(g, "GET", f"users/{user}/todo/lists")["value"]
            if x["wellknownListName"] == "defaultList"
        )
        tasks = f"users/{user}/todo/lists/{default['id']}/tasks"
        native_taxes = req(g, "POST", tasks, json={"title": "File taxes", "importance": "high"})[
            "id"
        ]
    prestage(w)
    counts = last_counts(w)
    assert counts["copied"] == 1 and counts.get("contacts_copied", 0) == 0, counts
    twins = by_subject(w.items("target"))["twin"]
    assert len(twins) == 2 and native_mail.id in {t.id for t in twins}
    after = {r["source_item_id"]: r for r in journal_rows(w)}
    natives = {native_mail.id, native_ada, native_dentist, native_taxes}
    for subject, row in named.items():
        again = after[row["source_item_id"]]
        assert again["status"] == "copied" and again["target_item_id"] not in natives, subject
    with graph(sandbox, "target") as g:
        contacts = req(g, "GET", f"users/{user}/contacts")["value"]
        assert sorted(c["displayName"] for c in contacts) == ["Ada Lovelace", "Ada Lovelace"]
        events = req(g, "GET", f"users/{user}/events")["value"]
        assert sorted(e["subject"] for e in events) == ["Dentist", "Dentist", "Weekly sync"]
        titles = [t["title"] for t in req(g, "GET", tasks)["value"]]
        assert sorted(titles) == ["File taxes", "File taxes"]
    prestage(w)
    assert last_counts(w).get("copied", 0) == 0


@pytest.mark.parametrize("answer", EXPIRED_ANSWERS)
def test_sync_state_expired_between_and_mid_pass_restarts_without_duplicates(
    make_project: Callable[..., Path], sandbox: Sandbox, answer: str
) -> None:
    """With every delta sync state forgotten between passes and again in the middle of a
    folder's round (each expiry answer), the restarted rounds copy only what is new, still
    see the move and the deletions, and every message ends up in the target once."""
    w = provisioned(make_project, sandbox)
    sandbox.world.settings.mail_delta_expired_answer = answer
    made = [w.put(["Inbox"], f"bulk {n}") for n in range(DELTA_PAGE + 30)]
    projects = [w.put(["Inbox", "Projects"], f"project {n}") for n in range(3)]
    prestage(w)
    assert last_counts(w)["copied"] == DELTA_PAGE + 33
    store = sandbox.mail
    store.delete_message("source", w.source, made[0].id)
    store.delete_message("source", w.source, projects[0].id)
    moved_to = w.folder("source", ["Archive", "Moved"], create=True)
    store.move_message("source", w.source, made[1].id, moved_to)
    w.put(["Inbox"], "new one")
    w.put(["Inbox", "Projects"], "new two")
    sandbox.world.expire_sync_states()  # between passes
    assert sandbox.ctx is not None
    expire_after_pages(sandbox.ctx.extra, 1, w.folder("source", ["Inbox"]))  # mid-round
    prestage(w)
    counts = last_counts(w)
    assert (counts["copied"], counts["moved"], counts["deleted_at_source"]) == (2, 1, 2), counts
    cutover(w)
    assert last_counts(w).get("copied", 0) == 0
    target = Counter(i.internet_message_id for i in w.items("target"))
    source = Counter(i.internet_message_id for i in w.items("source"))
    kept = {made[0].internet_message_id, projects[0].internet_message_id}  # deletions = keep
    assert target == source + Counter(kept)
    [moved] = [i for i in w.items("target") if i.subject == "bulk 1"]
    assert w.path_of("target", moved.folder_id) == ["Archive", "Moved"]
