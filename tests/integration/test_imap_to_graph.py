"""IMAP -> Microsoft 365 through the one sync algorithm: a real Dovecot source (ImapStore)
and the HTTPS sandbox's Graph mail API as the target (GraphItemsStore), over
`sync.sync_mailbox` as a pass runs it.

Each message lands once in its mapped folder, not a draft, with INTERNALDATE as its delivery
time and its \\Seen / \\Flagged / keywords as isRead / flag / categories; a > 3 MB
attachment goes through an upload session; an unchanged pass copies nothing; a flag change
at the source is applied; plan mode writes nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from coexist.journal import Journal
from coexist.migrate import imap_graph, passes, sync
from coexist.migrate.passes import Window
from coexist.migrate.stores.graph import Box
from coexist.migrate.stores.graph_items import GraphItemsStore
from coexist.migrate.stores.imap import ImapStore
from coexist.sandbox import Sandbox
from coexist.sandbox.mailstore import Item
from coexist.tenants.auth import TenantEndpoint
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.imap import ImapConnections, ImapEndpoint, ImapSession, NewMessage, Password
from coexist.tenants.plan import WriteRecorder
from tests.clients import graph_http, tls
from tests.dovecot import DovecotServer, ImapUser

BIG = bytes(range(256)) * (14 * 1024)  # 3.5 MB: over Graph's 3 MB, needs an upload session
PDF = b"%PDF-1.4 scanned page\n" * 64
OLD = dt.datetime(2019, 3, 4, 5, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=1, minutes=30)))


def message(
    subject: str, attachment: bytes | None = None, headers: dict[str, str] | None = None
) -> bytes:
    """An RFC 5322 message with a unique Message-ID, sent a day before OLD."""
    msg = EmailMessage()
    msg["From"] = "Ann Example <ann@fabrikam.example>"
    msg["To"] = "bob@fabrikam.example"
    msg["Subject"] = subject
    msg["Date"] = "Sun, 03 Mar 2019 10:00:00 +0000"
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@fabrikam.example>"
    for name, value in (headers or {}).items():
        msg[name] = value
    msg.set_content(f"body of {subject}\n")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="pdf", filename="big.pdf")
    return msg.as_bytes()


def pdf_only(subject: str) -> bytes:
    """A message whose whole body is one PDF (as scanners send): no text part at all."""
    msg = EmailMessage()
    msg["From"] = "Scanner <scan@fabrikam.example>"
    msg["To"] = "bob@fabrikam.example"
    msg["Subject"] = subject
    msg["Date"] = "Sun, 03 Mar 2019 10:00:00 +0000"
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@fabrikam.example>"
    msg.set_content(PDF, maintype="application", subtype="pdf", filename="scan.pdf")
    return msg.as_bytes()


def sync_context(journal: Journal, planning: bool = False) -> Any:
    """The little of a Context that sync.py reads: journal, plan flag, migration settings."""
    migration = SimpleNamespace(
        max_item_mb=150, encrypted="copy", deletions="keep", reconcile_tolerance=0,
        folder_rules=[], include_folders=[], exclude_folders=[], mover="imap-graph",
    )  # fmt: skip
    project = SimpleNamespace(
        migration=migration,
        source=SimpleNamespace(kind="imap"),
        target=SimpleNamespace(kind="m365"),
    )
    return SimpleNamespace(journal=journal, planning=planning, project=project)


def target_mailbox(sandbox: Sandbox) -> str:
    with sandbox.world.lock:
        user = next(
            u for u in sandbox.world.target.users.values()
            if u.recipient_type_details == "UserMailbox"
        )  # fmt: skip
    return str(user.id)


@asynccontextmanager
async def stores(
    dovecot: DovecotServer,
    user: ImapUser,
    conn: dict[str, Any],
    mailbox: str,
    plan: WriteRecorder | None = None,
) -> AsyncIterator[tuple[ImapStore, GraphItemsStore]]:
    """The pass's two stores: the Dovecot user's ImapStore, the sandbox mailbox's Graph store."""
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    ep = TenantEndpoint.from_sandbox(conn, "target")
    async with (
        ImapStore.open(ImapConnections(endpoint), Password(user.login, user.password)) as src,
        GraphAdapter(ep, label="target", plan=plan) as graph,
    ):
        yield src, GraphItemsStore(Box(graph, mailbox, ""))


class Pass:
    """Runs passes of one Dovecot user into one sandbox mailbox, journaled in `journal`."""

    def __init__(self, dovecot: DovecotServer, user: ImapUser, conn: dict[str, Any], box: str):
        self.dovecot, self.user, self.conn, self.box = dovecot, user, conn, box

    def run(self, journal: Journal, plan: WriteRecorder | None = None) -> Counter[str]:
        async def main() -> Counter[str]:
            counts: Counter[str] = Counter()
            async with stores(self.dovecot, self.user, self.conn, self.box, plan) as (src, tgt):
                ctx = sync_context(journal, planning=plan is not None)
                await sync.sync_mailbox(ctx, self.user.login, src, tgt, Window(), counts)
            return counts

        return asyncio.run(main())


def path_of(sandbox: Sandbox, mailbox: str, folder_id: str) -> list[str]:
    out: list[str] = []
    f = sandbox.mail.folder("target", mailbox, folder_id)
    while f is not None and f.well_known != "msgfolderroot":
        out.insert(0, f.display_name)
        f = sandbox.mail.folder("target", mailbox, f.parent_id) if f.parent_id else None
    return out


def landed(sandbox: Sandbox, mailbox: str) -> dict[str, list[Item]]:
    out: dict[str, list[Item]] = {}
    for item in sandbox.mail.iter_messages("target", mailbox):
        out.setdefault(item.subject, []).append(item)
    return out


def when(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


@pytest.fixture
def seeded(dovecot: DovecotServer) -> tuple[ImapUser, dict[str, int]]:
    """A Dovecot user with mail in INBOX, a nested folder, Sent and Drafts; UIDs by subject."""
    user = dovecot.new_user("m365src")
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    seen, flagged, draft = frozenset({"\\Seen"}), frozenset({"\\Flagged"}), frozenset({"\\Draft"})
    uids: dict[str, int] = {}
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        s.create_folder(["Projects"], "/")
        s.create_folder(["Projects", "2024"], "/")
        plan = [
            ("INBOX", "read one", seen, frozenset({"Blue", "Work"}), message("read one")),
            ("INBOX", "flagged one", flagged, frozenset(), message("flagged one")),
            ("INBOX", "plain one", frozenset(), frozenset(), message("plain one")),
            ("INBOX", "scanned", seen, frozenset(), pdf_only("scanned")),
            ("Projects/2024", "nested big", seen, frozenset(), message("nested big", BIG)),
            ("Sent", "sent one", seen, frozenset(), message("sent one")),
            ("Drafts", "draft one", draft | seen, frozenset(), message("draft one")),
        ]
        for folder, subject, flags, keywords, raw in plan:
            [uid] = s.append(folder, [NewMessage(raw, flags, keywords, OLD)])
            assert uid is not None
            uids[subject] = uid
    return user, uids


def test_imap_mail_lands_once_not_draft_with_flags_dates_and_large_attachments(
    dovecot: DovecotServer,
    sandbox: Sandbox,
    conn: dict[str, Any],
    seeded: tuple[ImapUser, dict[str, int]],
    tmp_path: Path,
) -> None:
    """Every IMAP message is one Graph message in its mapped folder, not a draft (but the
    \\Draft one), received at its INTERNALDATE, sent at its Date header, read/flagged/
    categories kept, the 3.5 MB attachment whole; a second pass copies nothing."""
    user, _ = seeded
    box = target_mailbox(sandbox)
    runs = Pass(dovecot, user, conn, box)
    with Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}") as journal:
        first = runs.run(journal)
        second = runs.run(journal)
    assert first["copied"] == 7 and first["skipped"] == 0, first
    assert +second == Counter(), second
    target = landed(sandbox, box)
    assert sorted(target) == sorted(
        ["read one", "flagged one", "plain one", "scanned", "nested big", "sent one", "draft one"]
    )
    assert all(len(copies) == 1 for copies in target.values()), target
    folders = {s: path_of(sandbox, box, t[0].folder_id) for s, t in target.items()}
    assert folders == {
        "read one": ["Inbox"],
        "flagged one": ["Inbox"],
        "plain one": ["Inbox"],
        "scanned": ["Inbox"],
        "nested big": ["Projects", "2024"],
        "sent one": ["Sent Items"],
        "draft one": ["Drafts"],
    }
    for subject, [item] in target.items():
        assert item.is_draft == (subject == "draft one"), subject
        assert when(item.received) == OLD, (subject, item.received)
        if not item.is_draft:  # a draft was never sent: it has no submit time to keep
            assert when(item.sent) == dt.datetime(2019, 3, 3, 10, tzinfo=dt.UTC), subject
        assert item.internet_message_id == f"<{subject.replace(' ', '.')}@fabrikam.example>"
    states = {
        s: (t.is_read, t.flag["flagStatus"], sorted(t.categories)) for s, [t] in target.items()
    }
    assert states["read one"] == (True, "notFlagged", ["Blue", "Work"])
    assert states["flagged one"] == (False, "flagged", [])
    assert states["plain one"] == (False, "notFlagged", [])
    # 3.5 MB is 4.7 MB of base64: over the 4 MB a create or an attachment POST may carry
    # (the sandbox refuses those, as Graph does), so only an upload session lets it in.
    [big] = target["nested big"]
    [scanned] = target["scanned"]  # a message that is one PDF: the PDF is its attachment
    assert [(a.name, a.data) for a in sandbox.mail.attachments(scanned.id)] == [("scan.pdf", PDF)]
    assert [(a.name, a.data) for a in sandbox.mail.attachments(big.id)] == [("big.pdf", BIG)]


def test_a_flag_change_at_the_source_is_applied_and_plan_mode_writes_nothing(
    dovecot: DovecotServer,
    sandbox: Sandbox,
    conn: dict[str, Any],
    seeded: tuple[ImapUser, dict[str, int]],
    tmp_path: Path,
) -> None:
    """A pass in plan mode records the Graph writes and makes nothing; a real pass copies;
    then \\Seen and \\Flagged set and a keyword added at the source are PATCHed onto the copy
    (updated 1, copied 0), and the pass after that has nothing to do."""
    user, uids = seeded
    box = target_mailbox(sandbox)
    runs = Pass(dovecot, user, conn, box)
    recorder = WriteRecorder()
    with Journal.open(f"sqlite:///{tmp_path / 'plan.sqlite'}") as journal:
        runs.run(journal, plan=recorder)
    assert list(sandbox.mail.iter_messages("target", box)) == []
    posts = [w.operation for w in recorder.writes if w.operation.endswith("/messages")]
    assert len(posts) == 7, [w.operation for w in recorder.writes]
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    with Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}") as journal:
        assert runs.run(journal)["copied"] == 7
        with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
            flags = frozenset({"\\Seen", "\\Flagged"})
            s.set_flags("INBOX", uids["plain one"], flags, frozenset({"Urgent"}))
        changed = runs.run(journal)
        unchanged = runs.run(journal)
    assert changed["updated"] == 1 and changed["copied"] == 0, changed
    assert +unchanged == Counter(), unchanged
    [plain] = landed(sandbox, box)["plain one"]
    assert (plain.is_read, plain.flag["flagStatus"], plain.categories) == (
        True,
        "flagged",
        ["Urgent"],
    )
    assert not plain.is_draft


def test_the_sandbox_refuses_an_upload_range_over_4_mb(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """As Graph documents (attachment-createuploadsession: "ranges of bytes (up to 4 MB each
    time)"), a PUT of a larger range is refused with the 4 MB request error; 4 MB passes."""
    box = target_mailbox(sandbox)
    size = 5 * 1024 * 1024
    with graph_http(conn, "target") as http:
        mid = http.post(f"users/{box}/messages", json={"subject": "ranges"}).json()["id"]
        spec = {"attachmentType": "file", "name": "big.bin", "size": size}
        url = http.post(
            f"users/{box}/messages/{mid}/attachments/createUploadSession",
            json={"AttachmentItem": spec},
        ).json()["uploadUrl"]
    with httpx.Client(verify=tls(conn), timeout=30) as anon:
        over = 4 * 1024 * 1024 + 1
        put = anon.put(
            url, content=b"y" * over, headers={"Content-Range": f"bytes 0-{over - 1}/{size}"}
        )
        assert put.status_code == 413, put.text
        assert put.json()["error"]["message"] == "The maximum request length supported is 4MB."
        ok = 4 * 1024 * 1024
        put = anon.put(
            url, content=b"y" * ok, headers={"Content-Range": f"bytes 0-{ok - 1}/{size}"}
        )
        assert put.status_code == 200 and put.json()["nextExpectedRanges"] == [str(ok)], put.text


def test_the_imap_graph_mover_moves_mail_and_says_it_moves_mail_only(
    dovecot: DovecotServer,
    sandbox: Sandbox,
    conn: dict[str, Any],
    seeded: tuple[ImapUser, dict[str, int]],
    tmp_path: Path,
) -> None:
    """`[migration] mover = "imap-graph"` is what an imap -> m365 project gets; a pass of it
    (here over this test's stores) copies, reconciles with no difference and its detail says
    contacts, calendars and tasks are not moved from an IMAP source."""
    user, _ = seeded
    box = target_mailbox(sandbox)
    with Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}") as journal:
        journal.upsert_item("user", user.login, source_address=user.login)
        ctx = sync_context(journal)
        mover = passes.mover_for(ctx)
        assert isinstance(mover, imap_graph.MailOnlyMover)

        @asynccontextmanager
        async def opener(_: Any, __: str) -> AsyncIterator[tuple[ImapStore, GraphItemsStore]]:
            async with stores(dovecot, user, conn, box) as pair:
                yield pair

        result = asyncio.run(
            imap_graph.MailOnlyMover(opener).run(ctx, user.login, "prestage", Window())
        )
    assert result.status == "ok" and result.counts["copied"] == 7, result
    assert result.counts["difference"] == 0, result
    assert result.detail.endswith(imap_graph.MAIL_ONLY), result.detail
    assert "contacts, calendars and tasks are not moved" in result.detail


def test_a_uidvalidity_reset_and_an_interrupted_import_copy_nothing_twice(
    dovecot: DovecotServer,
    sandbox: Sandbox,
    conn: dict[str, Any],
    seeded: tuple[ImapUser, dict[str, int]],
    tmp_path: Path,
) -> None:
    """After INBOX gets a new UIDVALIDITY its messages are paired with their copies by
    Message-ID (copied 0); a row left `importing` by a pass killed after its create (the
    copy, possibly without its attachments, is in the target) has that copy deleted and
    made again: every message stays in the target once."""
    user, _ = seeded
    box = target_mailbox(sandbox)
    runs = Pass(dovecot, user, conn, box)
    with Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}") as journal:
        assert runs.run(journal)["copied"] == 7
        dovecot.set_uidvalidity(user, "INBOX", 4242)
        reset = runs.run(journal)
        [big] = journal.mapped_items(user.login, folder_id="Projects/2024")
        # What a pass killed between its create and its record leaves: the row marked, no
        # copy recorded (sync._create), the copy in the target.
        journal.map_item(
            user.login, big["source_item_id"], status="importing", target_item_id=None,
            target_change_key=None,
        )  # fmt: skip
        recovered = runs.run(journal)
        after = runs.run(journal)
    assert reset["copied"] == 0 and reset["moved"] == 4, reset
    assert recovered["copied"] == 1, recovered
    assert +after == Counter(), after
    target = landed(sandbox, box)
    assert len(target) == 7 and all(len(copies) == 1 for copies in target.values()), target
    [copy] = target["nested big"]
    assert [(a.name, a.data) for a in sandbox.mail.attachments(copy.id)] == [("big.pdf", BIG)]


# PidTagLastVerbExecuted / PidTagIconIndex as graph_items writes them (see its "Replied and
# forwarded"), read back through Graph as the contract returns them.
LAST_VERB, ICON_INDEX = "Integer 0x1081", "Integer 0x1080"


def graph_read(http: httpx.Client, box: str, message_id: str, prop: str) -> tuple[str, str | None]:
    """A message's importance and one extended property, through Graph (`$expand=
    singleValueExtendedProperties($filter=id eq '...')`): None when it has none."""
    got = http.get(
        f"users/{box}/messages/{message_id}",
        params={"$select": "id,importance", "$expand": f"singleValueExtendedProperties($filter=id eq '{prop}')"},
    )  # fmt: skip
    assert got.status_code == 200, got.text
    expanded = got.json().get("singleValueExtendedProperties") or []
    # singleValueLegacyExtendedProperty (CSDL): its id and a string value, nothing more.
    assert all(set(p) == {"id", "value"} and isinstance(p["value"], str) for p in expanded)
    found = [p["value"] for p in expanded]
    assert len(found) <= 1, found
    return str(got.json()["importance"]), found[0] if found else None


def state_seen(
    conn: dict[str, Any], box: str, sandbox: Sandbox
) -> dict[str, tuple[str, str | None, str | None]]:
    """Per subject, each copy's (importance, last verb, icon index) as Graph returns them."""
    out = {}
    with graph_http(conn, "target") as http:
        for [t] in landed(sandbox, box).values():
            importance, verb = graph_read(http, box, t.id, LAST_VERB)
            out[t.subject] = (importance, verb, graph_read(http, box, t.id, ICON_INDEX)[1])
    return out


def test_replied_forwarded_and_high_importance_land_and_survive_a_flag_change(
    dovecot: DovecotServer, sandbox: Sandbox, conn: dict[str, Any], tmp_path: Path
) -> None:
    """An \\Answered message lands with PidTagLastVerbExecuted 102 + icon 0x105, a $Forwarded
    one with 104 + 0x106, an X-Priority 1 one as High (plan mode first: it writes nothing
    but would send those properties); \\Seen set at the source between passes is PATCHed
    (updated 2) and the copies keep High and their replied state; a further pass copies
    nothing and changes no copy."""
    user = dovecot.new_user("verbs")
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    seed = [
        ("replied one", frozenset({"\\Answered"}), frozenset(), {}),
        ("forwarded one", frozenset(), frozenset({"$Forwarded"}), {}),
        ("urgent one", frozenset({"\\Answered"}), frozenset(), {"X-Priority": "1 (Highest)"}),
        ("low one", frozenset(), frozenset(), {"Importance": "low"}),
        ("quiet one", frozenset(), frozenset(), {}),
    ]
    uids: dict[str, int] = {}
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        for subject, flags, keywords, headers in seed:
            raw = message(subject, headers=headers)
            [uid] = s.append("INBOX", [NewMessage(raw, flags, keywords, OLD)])
            assert uid is not None
            uids[subject] = uid
    box = target_mailbox(sandbox)
    runs = Pass(dovecot, user, conn, box)
    recorder = WriteRecorder()
    with Journal.open(f"sqlite:///{tmp_path / 'plan.sqlite'}") as journal:
        runs.run(journal, plan=recorder)
    assert list(sandbox.mail.iter_messages("target", box)) == []
    planned = {
        w.params["subject"]: w.params for w in recorder.writes if w.operation.endswith("/messages")
    }
    assert len(planned) == 5, [w.operation for w in recorder.writes]
    verbs = {
        subject: {p["id"]: p["value"] for p in body["singleValueExtendedProperties"]}.get(LAST_VERB)
        for subject, body in planned.items()
    }  # fmt: skip
    assert verbs == {"replied one": "102", "forwarded one": "104", "urgent one": "102",
                     "low one": None, "quiet one": None}  # fmt: skip
    with Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}") as journal:
        first = runs.run(journal)
        landed_first = state_seen(conn, box, sandbox)
        with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
            s.set_flags(
                "INBOX", uids["urgent one"], frozenset({"\\Seen", "\\Answered"}), frozenset()
            )
            s.set_flags(
                "INBOX", uids["forwarded one"], frozenset({"\\Seen"}), frozenset({"$Forwarded"})
            )
        changed = runs.run(journal)
        after_change = {t.subject: t for [t] in landed(sandbox, box).values()}
        again = runs.run(journal)
    assert first["copied"] == 5 and first["skipped"] == 0, first
    assert changed["updated"] == 2 and changed["copied"] == 0, changed
    assert +again == Counter(), again
    final = {t.subject: t for [t] in landed(sandbox, box).values()}
    # Nothing changed any copy after the update pass (same change keys).
    assert {k: t.change_key for k, t in final.items()} == {
        k: t.change_key for k, t in after_change.items()
    }
    expected = {
        "replied one": ("normal", "102", "261"),
        "forwarded one": ("normal", "104", "262"),
        "urgent one": ("high", "102", "261"),
        "low one": ("low", None, None),
        "quiet one": ("normal", None, None),
    }
    assert landed_first == expected
    assert state_seen(conn, box, sandbox) == expected
    assert [final[s].is_read for s in ("urgent one", "forwarded one", "replied one")] == [
        True, True, False,
    ]  # fmt: skip
    assert not any(t.is_draft for t in final.values())
