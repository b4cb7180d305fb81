"""The full-fidelity mover (Graph mailbox import/export) through prestage and cutover.

Source mailboxes are seeded straight into the sandbox mailstore (old received dates,
folders, attachments, read/flag state); everything after that goes through the CLI
commands and the sandbox's HTTPS Graph faces. Assertions read both mailstores.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from coexist import commands
from coexist.errors import InputError
from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.sandbox.graph.outlook_items import PIM_STORE_KEY
from coexist.sandbox.mailstore import Item
from coexist.sandbox.pim import PimStore
from coexist.settings import load_project
from tests.e2e.conftest import TEST_RETRY
from tests.e2e.pim_seed import (
    EXPECTED_CHECKLIST,
    EXPECTED_CONTACT_FOLDERS,
    graph,
    pim_in_target,
    req,
    seed_pim,
)

OLD = dt.datetime(2024, 1, 15, 9, 30, tzinfo=dt.UTC)
RECENT = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
MOVER = {"migration.mover": "graph-import-export"}
MAIL = "IPM.Note"


def mime(subject: str, attachment: bytes | None = None, ctype: str | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Alice <alice@example.org>"
    msg["To"] = "bob@example.org"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{abs(hash(subject))}@example.org>"
    msg["Date"] = "Mon, 15 Jan 2024 09:00:00 +0000"
    msg.set_content(f"body of {subject}\n")
    if attachment is not None:
        msg.add_attachment(
            attachment, maintype="application", subtype="octet-stream", filename="a.bin"
        )
    raw = msg.as_bytes()
    if ctype is not None:  # a protected message: the whole body is one opaque part
        raw = raw.replace(b"Content-Type: text/plain", f"Content-Type: {ctype}".encode(), 1)
    return raw


# A clear-signed message (RFC 8551 multipart/signed): readable, so it moves.
SIGNED = (
    b"From: Alice <alice@example.org>\nTo: bob@example.org\nSubject: signed\n"
    b"Message-ID: <signed@example.org>\nDate: Mon, 15 Jan 2024 09:00:00 +0000\n"
    b'MIME-Version: 1.0\nContent-Type: multipart/signed; micalg=sha-256; boundary="b1";\n'
    b' protocol="application/pkcs7-signature"\n\n--b1\nContent-Type: text/plain\n\n'
    b"signed body\n--b1\nContent-Type: application/pkcs7-signature; name=smime.p7s\n"
    b"Content-Transfer-Encoding: base64\n\nAAAA\n--b1--\n"
)


class World:
    """The seeded user: source/target ids and helpers over the sandbox mailstore."""

    def __init__(self, sb: Sandbox, project: Path) -> None:
        self.sb, self.project = sb, project
        with Journal.open(load_project(project).journal_url) as j:
            users = [
                u for u in j.items(kind="user") if (u.get("detail") or {}).get("in_scope", True)
            ]
        self.user = users[0]
        self.source = str(self.user["key"])

    @property
    def target(self) -> str:
        with Journal.open(load_project(self.project).journal_url) as j:
            item = j.get_item("user", self.source)
        assert item is not None and item["target_id"]
        return str(item["target_id"])

    def folder(self, side: str, path: list[str], create: bool = False) -> str:
        uid = self.source if side == "source" else self.target
        store = self.sb.mail
        root = store.folder(side, uid, "msgfolderroot")
        assert root is not None
        parent = root.id
        for name in path:
            found = next(
                (f for f in store.child_folders(side, uid, parent) if f.display_name == name), None
            )
            if found is None:
                assert create, (side, path)
                found = store.create_folder(side, uid, parent, name)
            parent = found.id
        return parent

    def put(self, path: list[str], subject: str, received: dt.datetime = OLD, **kw: Any) -> Item:
        folder = self.folder("source", path, create=True)
        body = kw.pop("body", None) or mime(
            subject, kw.pop("attachment", None), kw.pop("ctype", None)
        )
        return self.sb.mail.insert_message(
            "source", self.source, folder, body, received=received, **kw
        )

    def items(self, side: str) -> list[Item]:
        uid = self.source if side == "source" else self.target
        return list(self.sb.mail.iter_messages(side, uid))

    def path_of(self, side: str, folder_id: str) -> list[str]:
        uid = self.source if side == "source" else self.target
        out: list[str] = []
        f = self.sb.mail.folder(side, uid, folder_id)
        while f is not None and f.well_known != "msgfolderroot":
            out.insert(0, f.display_name)
            f = self.sb.mail.folder(side, uid, f.parent_id) if f.parent_id else None
        return out


def provisioned(make_project: Callable[..., Path], sandbox: Sandbox, **overrides: Any) -> World:
    project = make_project(users=10, **MOVER, **overrides)
    commands.discover(project)
    commands.provision(project, all_users=True, retry=TEST_RETRY)
    return World(sandbox, project)


def prestage(w: World, older_than: str = "90d") -> dict[str, Any]:
    return commands.prestage(
        w.project, users=[str(w.user["source_address"])], older_than=older_than, retry=TEST_RETRY
    )


def cutover(w: World) -> dict[str, Any]:
    return commands.cutover(w.project, users=[str(w.user["source_address"])], retry=TEST_RETRY)


def last_counts(w: World) -> dict[str, Any]:
    with Journal.open(load_project(w.project).journal_url) as j:
        passes = j.passes(w.source)
    return dict(passes[-1]["counts"] or {})


def by_subject(items: list[Item]) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for i in items:
        out.setdefault(i.subject, []).append(i)
    return out


def test_prestage_then_cutover_moves_every_item_once_with_full_fidelity(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Old items move at pre-stage, recent ones at cutover; each lands once, byte-identical,
    in the right folder with read/flag state, dates and attachments; re-runs copy 0."""
    w = provisioned(make_project, sandbox)
    flag = {"flagStatus": "flagged"}
    w.put(["Inbox"], "old read", is_read=True)
    w.put(["Inbox"], "old flagged", flag=flag)
    w.put(["Inbox", "Projects", "2024"], "old nested", attachment=b"\x00\x01" * 5000)
    w.put(["Sent Items"], "old sent", is_read=True)
    w.put(["Inbox"], "recent", received=RECENT)
    prestage(w)
    first = last_counts(w)
    assert first["copied"] == 4, first
    assert {i.subject for i in w.items("target")} >= {
        "old read",
        "old flagged",
        "old nested",
        "old sent",
    }
    assert "recent" not in {i.subject for i in w.items("target")}
    prestage(w)
    assert last_counts(w).get("copied", 0) == 0
    cutover(w)
    assert last_counts(w)["copied"] == 1
    cutover(w)
    assert last_counts(w).get("copied", 0) == 0
    source, target = by_subject(w.items("source")), by_subject(w.items("target"))
    for subject, [s] in source.items():
        assert len(target.get(subject, [])) == 1, subject
        [t] = target[subject]
        assert sandbox.mail.mime(t.id) == sandbox.mail.mime(s.id)
        assert (t.is_read, t.flag, t.received, t.sent, t.has_attachments) == (
            s.is_read,
            s.flag,
            s.received,
            s.sent,
            s.has_attachments,
        )
        assert w.path_of("target", t.folder_id) == w.path_of("source", s.folder_id)
    status = commands.status(w.project, user=str(w.user["source_address"]))
    assert status["users"][0]["phase"] == "cutover"


def test_changes_since_the_last_pass_are_brought_into_line(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """isRead/flag changes and a move between folders at the source reach the copy, no duplicate."""
    w = provisioned(make_project, sandbox)
    a = w.put(["Inbox"], "will be read")
    b = w.put(["Inbox"], "will move")
    w.put(["Inbox"], "will be deleted")
    prestage(w)
    sandbox.mail.update_message(
        "source", w.source, a.id, is_read=True, flag={"flagStatus": "flagged"}
    )
    dest = w.folder("source", ["Archive", "Moved"], create=True)
    sandbox.mail.move_message("source", w.source, b.id, dest)
    gone = next(i for i in w.items("source") if i.subject == "will be deleted")
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


def test_oversize_and_encrypted_items_are_skipped_and_reported(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Over max_item_mb, S/MIME-encrypted and IRM items are skipped and reported with folder
    and subject; a clear-signed item is readable and moves."""
    w = provisioned(make_project, sandbox, **{"migration.max_item_mb": 1})
    w.put(["Inbox"], "big", attachment=b"x" * (1024 * 1024 + 10))
    w.put(["Inbox", "Secure"], "smime", ctype="application/pkcs7-mime; smime-type=enveloped-data")
    w.put(["Inbox"], "signed", body=SIGNED)
    irm = mime("irm", b"rpmsg").replace(
        b"MIME-Version", b"Content-Class: rpmsg.message\nMIME-Version"
    )
    w.put(["Inbox"], "irm", body=irm)
    w.put(["Inbox"], "plain")
    prestage(w)
    counts = last_counts(w)
    assert counts["copied"] == 2 and counts["skipped"] == 3, counts
    report = commands.status(w.project, user=str(w.user["source_address"]))["users"][0]
    skipped = {(s["folder"], s["subject"]) for s in report["reconciliation"]["skipped_items"]}
    assert skipped == {("Inbox", "big"), ("Inbox/Secure", "smime"), ("Inbox", "irm")}
    assert sorted(by_subject(w.items("target"))) == ["plain", "signed"]
    assert report["reconciliation"]["unexplained"] == 0


def test_awkward_folder_names_deep_trees_and_rules_map_right(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Quotes, slashes, non-ASCII and a deep tree survive; '^Inbox/->' lifts Inbox children."""
    w = provisioned(make_project, sandbox, **{"migration.folder_rules": ["^Inbox/->"]})
    odd = ["Inbox", 'Q1/Q2 "plans"', "Ünïcødé 日本"]
    deep = ["Clients", *(f"L{i}" for i in range(8))]
    w.put(odd, "odd")
    w.put(deep, "deep")
    w.put(["Inbox"], "top")
    prestage(w)
    target = by_subject(w.items("target"))
    assert w.path_of("target", target["odd"][0].folder_id) == odd[1:]
    assert w.path_of("target", target["deep"][0].folder_id) == deep
    assert w.path_of("target", target["top"][0].folder_id) == ["Inbox"]
    recon = commands.status(w.project, user=str(w.user["source_address"]))["users"][0][
        "reconciliation"
    ]
    assert recon["unexplained"] == 0
    assert all(r["difference"] == 0 for r in recon["folders"])


def test_contacts_recurring_events_and_tasks_arrive_through_import_export(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Contacts (and a custom contact folder), a series with a changed and a cancelled
    occurrence, and tasks (and a custom list) arrive once at cutover; a re-run copies 0."""
    w = provisioned(make_project, sandbox)
    seeded = seed_pim(sandbox, w.source)
    prestage(w)  # created just now: nothing is older than 90 days
    assert last_counts(w).get("copied", 0) == 0
    cutover(w)
    counts = last_counts(w)
    assert counts["copied"] == 7 and counts.get("skipped", 0) == 0, counts
    got = pim_in_target(sandbox, w.target, seeded)
    assert got["contacts"] == {"Ada Lovelace"}
    assert got["contact_folders"] == EXPECTED_CONTACT_FOLDERS
    assert got["events"] == ["Dentist", "Weekly sync"]
    assert got["attendees"] == ["ada@example.org"]  # the full-fidelity stream keeps them
    starts = seeded["original_starts"]
    assert got["occurrences"] == starts[:5] + starts[6:]
    assert got["exceptions"] == [("Weekly sync (moved)", starts[2])]
    assert got["tasks"]["Groceries"] == ["Milk"] and ["File taxes"] in got["tasks"].values()
    assert got["checklists"]["File taxes"] == EXPECTED_CHECKLIST
    cutover(w)
    assert last_counts(w).get("copied", 0) == 0


def test_mirror_deletes_the_copies_of_mail_contacts_and_tasks_deleted_at_the_source(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """deletions = mirror: a message, a contact and a task deleted at the source after the
    first pass are deleted in the target by the next one, each through its own API."""
    w = provisioned(make_project, sandbox, **{"migration.deletions": "mirror"})
    seeded = seed_pim(sandbox, w.source)
    doomed = w.put(["Inbox"], "doomed")
    w.put(["Inbox"], "kept")
    prestage(w)
    cutover(w)
    with graph(sandbox, "source") as g:
        req(g, "DELETE", f"users/{w.source}/contacts/{seeded['ada']}")
        req(g, "DELETE", seeded["milk"])
    assert sandbox.mail.delete_message("source", w.source, doomed.id)
    cutover(w)
    counts = last_counts(w)
    assert counts["deleted_at_source"] == 3 and counts["deleted_in_target"] == 3, counts
    assert counts.get("not_mirrored", 0) == 0
    assert sorted(by_subject(w.items("target"))) == ["kept"]
    got = pim_in_target(sandbox, w.target, seeded)
    assert got["contacts"] == set() and got["tasks"]["Groceries"] == []
    assert got["contact_folders"] == EXPECTED_CONTACT_FOLDERS


def test_prestage_window_range_moves_only_items_received_within_it(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """--since/--until limit pre-stage to that range; cutover brings the rest; a bad range
    is refused before anything runs."""
    w = provisioned(make_project, sandbox)
    w.put(["Inbox"], "before", received=dt.datetime(2023, 6, 1, tzinfo=dt.UTC))
    w.put(["Inbox"], "inside", received=dt.datetime(2024, 1, 15, tzinfo=dt.UTC))
    w.put(["Inbox"], "after", received=dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
    who = [str(w.user["source_address"])]
    for since, until in (("2024-03-01", "2024-01-01"), ("last tuesday", None)):
        with pytest.raises(InputError):
            commands.prestage(w.project, users=who, since=since, until=until, retry=TEST_RETRY)
    assert w.items("target") == []
    commands.prestage(
        w.project, users=who, since="2024-01-01", until="2024-03-01", retry=TEST_RETRY
    )
    assert sorted(by_subject(w.items("target"))) == ["inside"]
    cutover(w)
    assert sorted(by_subject(w.items("target"))) == ["after", "before", "inside"]


def test_mail_that_arrives_in_the_live_target_is_new_not_a_difference(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """After cutover the target is live: a message delivered there shows as new, and a later
    pass still reconciles; before cutover the same surplus would count as unexplained."""
    w = provisioned(make_project, sandbox)
    w.put(["Inbox"], "old")
    prestage(w)
    stray = mime("stray before cutover")
    sandbox.mail.insert_message("target", w.target, "inbox", stray, received=RECENT)
    prestage(w)
    assert status_recon(w)["unexplained"] == 1  # a copy nobody made: flagged
    sandbox.mail.delete_message(
        "target", w.target, by_subject(w.items("target"))["stray before cutover"][0].id
    )
    cutover(w)
    sandbox.mail.insert_message("target", w.target, "inbox", mime("new mail"), received=RECENT)
    cutover(w)
    recon = status_recon(w)
    assert recon["unexplained"] == 0 and last_counts(w)["difference"] == 0
    assert sum(f["arrived_in_target"] for f in recon["folders"]) == 1


def status_recon(w: World) -> dict[str, Any]:
    user = commands.status(w.project, user=str(w.user["source_address"]))["users"][0]
    return dict(user["reconciliation"])


def _pim_store(sandbox: Sandbox) -> PimStore:
    """The sandbox's PIM store (opened by the Graph faces the seed went through)."""
    store = sandbox.ctx.extra[PIM_STORE_KEY] if sandbox.ctx is not None else None
    assert isinstance(store, PimStore)
    return store


def _put(w: World, well_known: str, subject: str, sub: str | None = None, **kw: Any) -> Item:
    """A source message in a well-known folder (whatever its localized name), or a child."""
    folder = sandbox_folder(w.sb, w.source, well_known)
    if sub is not None:
        found = next((f for f in w.sb.mail.child_folders("source", w.source, folder)
                      if f.display_name == sub), None)  # fmt: skip
        folder = found.id if found else w.sb.mail.create_folder("source", w.source, folder, sub).id
    return w.sb.mail.insert_message(
        "source", w.source, folder, mime(subject), received=kw.pop("received", OLD), **kw
    )


def sandbox_folder(sb: Sandbox, uid: str, well_known: str, side: str = "source") -> str:
    found = sb.mail.folder(side, uid, well_known)
    assert found is not None
    return found.id


@pytest.mark.parametrize("code", ["SyncStateNotFound", "SyncStateInvalid", "resyncRequired"])
def test_localized_mailboxes_search_folders_and_an_expired_sync_state(
    make_project: Callable[..., Path], sandbox: Sandbox, code: str
) -> None:
    """A German source and a Japanese target: defaults meet by what each API says they are,
    search folders are never copied, and a sync state that expires mid-project (answered with
    `code`) restarts the scan: every item arrives exactly once, a deletion seen only through
    the restart is reported."""
    sandbox.world.settings.io_sync_state_code = code
    w = provisioned(make_project, sandbox)
    seeded = seed_pim(sandbox, w.source)
    pim = _pim_store(sandbox)
    for side, uid, language in (("source", w.source, "de"), ("target", w.target, "ja")):
        sandbox.mail.localize(side, uid, language)
        pim.localize(side, uid, language)
    _put(w, "inbox", "old in Posteingang")
    doomed = _put(w, "inbox", "old, deleted while the state is expired")
    _put(w, "inbox", "old in Projekte", sub="Projekte")
    _put(w, "sentitems", "old sent")
    _put(w, "inbox", "recent", received=RECENT)
    sandbox.mail.create_search_folder("source", w.source, "Alles", "")
    sandbox.mail.create_search_folder("source", w.source, "Nur alte", "old")
    prestage(w)
    assert last_counts(w)["copied"] == 4

    sandbox.world.expire_sync_states()
    sandbox.mail.delete_message("source", w.source, doomed.id)
    _put(w, "inbox", "old, after the expiry")
    prestage(w)
    counts = last_counts(w)
    assert counts["copied"] == 1 and counts["deleted_at_source"] == 1, counts
    cutover(w)
    assert last_counts(w)["copied"] == 8  # the recent message and the 7 PIM items
    cutover(w)
    assert last_counts(w).get("copied", 0) == 0

    inbox = sandbox_folder(sandbox, w.target, "inbox", "target")
    target = by_subject(w.items("target"))
    source = by_subject(w.items("source"))
    assert {s: len(t) for s, t in target.items()} == {
        **{s: 1 for s in source},
        "old, deleted while the state is expired": 1,  # deletions = keep
    }
    assert target["old in Posteingang"][0].folder_id == inbox
    assert w.path_of("target", target["old in Projekte"][0].folder_id) == ["受信トレイ", "Projekte"]
    assert w.path_of("target", target["old sent"][0].folder_id) == ["送信済みアイテム"]
    names = {f.display_name for f in sandbox.mail.child_folders("target", w.target)}
    assert not names & {"Posteingang", "Gesendete Elemente", "Alles", "Nur alte", "Finder"}
    got = pim_in_target(sandbox, w.target, seeded)
    assert got["contacts"] == {"Ada Lovelace"} and got["events"] == ["Dentist", "Weekly sync"]
    assert got["contact_folders"] == EXPECTED_CONTACT_FOLDERS
    assert got["tasks"] == {"タスク": ["File taxes"], "Groceries": ["Milk"]}
    calendars = {c.display_name for c in pim.folders("target", w.target, "calendar")}
    assert "Kalender" not in calendars and "予定表" in calendars
    report = commands.status(w.project, user=str(w.user["source_address"]))["users"][0]
    assert report["reconciliation"]["unexplained"] == 0, report["reconciliation"]


@pytest.mark.parametrize(
    "conflict",
    ["400 ErrorInvalidRequest", "409 ErrorIrresolvableConflict", "412 PreconditionFailed"],
)
def test_any_4xx_on_an_update_import_is_that_items_conflict(
    make_project: Callable[..., Path], sandbox: Sandbox, conflict: str
) -> None:
    """A copy changed in the target meanwhile: its update import is refused (each plausible
    answer), reported as that item's conflict, and the pass goes on with the others."""
    sandbox.world.settings.io_update_conflict = conflict
    w = provisioned(make_project, sandbox)
    a = w.put(["Inbox"], "changed on both sides")
    b = w.put(["Inbox"], "changed at the source only")
    prestage(w)
    copies = by_subject(w.items("target"))
    sandbox.mail.update_message("target", w.target, copies[a.subject][0].id, categories=["Red"])
    for item in (a, b):
        sandbox.mail.update_message("source", w.source, item.id, is_read=True)
    w.put(["Inbox"], "new")
    result = cutover(w)
    assert not result["failed"], result
    counts = last_counts(w)
    assert counts["update_conflicts"] == 1 and counts["updated"] == 1, counts
    assert counts["copied"] == 1
    after = by_subject(w.items("target"))
    assert after[b.subject][0].is_read and not after[a.subject][0].is_read
    assert after[a.subject][0].categories == ["Red"]  # the target wins


def test_an_interrupted_import_is_recognised_by_identity(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Imports that landed but were never journaled (a kill between the two) are adopted on
    the next run by Message-ID, or by search key where there is none (a draft, a contact, an
    event, a task), though the copies' createdDateTime and size differ from the source's."""
    w = provisioned(make_project, sandbox)
    seed_pim(sandbox, w.source)
    w.put(["Inbox"], "plain mail")
    draft = mime("a draft").replace(b"Message-ID:", b"X-Old-Message-ID:")
    w.put(["Drafts"], "a draft", body=draft, is_draft=True)
    prestage(w)
    cutover(w)
    project = load_project(w.project)
    with Journal.open(project.journal_url) as j:
        rows = [r for r in j.mapped_items(w.source) if r["status"] == "copied"]
        assert len(rows) == 9 and all(r["source_identity"] for r in rows)
        assert any(str(r["source_identity"]).startswith("sk:") for r in rows if r["kind"] == MAIL)
        before = {r["source_item_id"]: r["target_item_id"] for r in rows}
        for r in rows:  # as a pass killed after each import and before its record leaves them
            j.map_item(w.source, r["source_item_id"], status="importing", target_item_id=None,
                       target_change_key=None)  # fmt: skip
    mails = len(w.items("target"))
    sandbox.mail.update_message("source", w.source, w.items("source")[0].id, is_read=True)
    cutover(w)
    counts = last_counts(w)
    assert counts.get("copied", 0) == 0 and counts.get("skipped", 0) == 0, counts
    assert len(w.items("target")) == mails
    with Journal.open(project.journal_url) as j:
        after = {r["source_item_id"]: r["target_item_id"] for r in j.mapped_items(w.source)}
        assert {r["status"] for r in j.mapped_items(w.source)} == {"copied"}
    assert after == before
    report = commands.status(w.project, user=str(w.user["source_address"]))["users"][0]
    assert report["reconciliation"]["unexplained"] == 0, report["reconciliation"]
