"""The SQLite mailstore: lazy well-known folders, MIME-derived properties, ordered chunked reads."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
from email.message import EmailMessage
from pathlib import Path

import pytest

from coexist.sandbox.mailstore import (
    MAIL_DB,
    WELL_KNOWN,
    MailStore,
    Recipient,
    item_class_of,
    looks_like_id,
)

MBX = "2f7c1a8e-0000-4000-8000-000000000001"


def mime(subject: str, body: str = "hello", html: bool = False) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Ann Example <ann@fabrikam.example>"
    msg["To"] = "Bob <bob@fabrikam.example>, carol@fabrikam.example"
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{subject.replace(' ', '-')}@test>"
    msg["Date"] = "Mon, 06 May 2024 10:00:00 +0000"
    msg.set_content(body, subtype="html" if html else "plain")
    return msg.as_bytes()


def test_well_known_folders_created_lazily(tmp_path: Path) -> None:
    """A mailbox touched for the first time gets Graph's well-known folders with Exchange's names."""
    store = MailStore(tmp_path / MAIL_DB)
    folders = store.child_folders("source", MBX)
    assert {f.well_known: f.display_name for f in folders} == WELL_KNOWN
    inbox = store.folder("source", MBX, "Inbox")
    assert inbox is not None and inbox.display_name == "Inbox"
    assert store.folder("source", MBX, inbox.id) == inbox
    assert looks_like_id(inbox.id) and not looks_like_id("inbox")


def test_deliver_takes_properties_from_mime(tmp_path: Path) -> None:
    """Subject, sender, recipients, Message-ID, sent date, preview and size come from the MIME."""
    store = MailStore(tmp_path / MAIL_DB)
    raw = mime("Quarterly report", "<p>Numbers   inside</p>", html=True)
    item = store.deliver("source", MBX, raw, bcc=[Recipient("Dan", "dan@x.example")])
    assert item.subject == "Quarterly report"
    assert item.from_ == Recipient("Ann Example", "ann@fabrikam.example")
    assert [r.address for r in item.to] == ["bob@fabrikam.example", "carol@fabrikam.example"]
    assert item.internet_message_id == "<Quarterly-report@test>"
    assert item.sent == "2024-05-06T10:00:00Z"
    assert item.body_type == "html" and item.body_preview == "Numbers inside"
    assert item.size == len(raw) and not item.is_read
    assert [r.address for r in item.bcc] == ["dan@x.example"]
    assert b"".join(store.open_mime(item.id, chunk=7)) == raw
    inbox = store.folder("source", MBX, "inbox")
    assert inbox is not None and (inbox.total, inbox.unread, inbox.size) == (1, 1, len(raw))


def test_iter_messages_orders_and_chunks(tmp_path: Path) -> None:
    """Listing reads in keyset chunks, newest first by default, ties broken by arrival order."""
    store = MailStore(tmp_path / MAIL_DB)
    base = dt.datetime(2024, 5, 6, 10, tzinfo=dt.UTC)
    for i in range(7):
        when = base + dt.timedelta(seconds=i // 2)  # pairs share a receivedDateTime
        store.deliver("source", MBX, mime(f"m{i}"), received=when)
    store.deliver("source", MBX, mime("sent one"), "sentitems", is_read=True)
    inbox = store.folder("source", MBX, "inbox")
    assert inbox is not None
    newest = [i.subject for i in store.iter_messages("source", MBX, inbox.id, chunk=2)]
    assert newest == ["m6", "m5", "m4", "m3", "m2", "m1", "m0"]
    oldest = [
        i.subject for i in store.iter_messages("source", MBX, inbox.id, descending=False, chunk=3)
    ]
    assert oldest == ["m0", "m1", "m2", "m3", "m4", "m5", "m6"]
    assert store.count("source", MBX) == 8 and store.count("source", MBX, inbox.id) == 7
    assert store.count("target", MBX) == 0  # mailboxes are per (tenant key, object id)


def test_reset_forgets_everything_and_survives_reopen(tmp_path: Path) -> None:
    """Rows persist in mail.db across reopen; reset() empties the store."""
    store = MailStore(tmp_path / MAIL_DB)
    item = store.deliver("source", MBX, mime("keep"))
    store.close()
    again = MailStore(tmp_path / MAIL_DB)
    assert again.get("source", MBX, item.id) is not None
    again.reset()
    assert again.count("source", MBX) == 0


@pytest.mark.parametrize(
    ("ctype", "headers", "expected"),
    [
        ("text/plain", "", "IPM.Note"),
        ("application/pkcs7-mime; smime-type=enveloped-data", "", "IPM.Note.SMIME"),
        ('multipart/signed; boundary="b"', "", "IPM.Note.SMIME.MultipartSigned"),
        ("text/plain", "Content-Class: rpmsg.message\n", "IPM.Note"),
    ],
)
def test_item_class_follows_the_mime_structure(ctype: str, headers: str, expected: str) -> None:
    """S/MIME encrypted and clear-signed mail get their MS-OXOSMIME classes; IRM stays IPM.Note."""
    raw = f"Subject: x\n{headers}Content-Type: {ctype}\n\nbody\n".encode()
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    assert item_class_of(msg) == expected


def test_insert_copies_gives_each_copy_its_own_identity(tmp_path: Path) -> None:
    """Bulk fill: one parse, n messages with distinct ids and change keys, in change order."""
    store = MailStore(tmp_path / "mail.db")
    store.ensure_mailbox("source", "u1")
    store.insert_copies("source", "u1", "inbox", b"Subject: same\n\nbody\n", 5)
    items = list(store.iter_messages("source", "u1"))
    assert len(items) == 5 and {i.subject for i in items} == {"same"}
    assert len({i.id for i in items}) == 5 and len({i.change_key for i in items}) == 5


def test_bulk_load_commits_once_and_leaves_the_store_journaled(tmp_path: Path) -> None:
    """bulk_load fills in one transaction, keeps what it wrote across a reopen,
    rolls back on error, and leaves the store in WAL mode for the sandbox."""
    store = MailStore(tmp_path / MAIL_DB)
    store.ensure_mailbox("source", "u1")
    with store.bulk_load():
        store.insert_copies("source", "u1", "inbox", b"Subject: kept\n\nbody\n", 3)
    with pytest.raises(RuntimeError), store.bulk_load():
        store.insert_copies("source", "u1", "inbox", b"Subject: lost\n\nbody\n", 2)
        raise RuntimeError("seeding failed")
    assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()
    reopened = MailStore(tmp_path / MAIL_DB)
    assert [i.subject for i in reopened.iter_messages("source", "u1")] == ["kept"] * 3


def test_mime_is_the_last_column_of_a_new_store(tmp_path: Path) -> None:
    """Every other column is readable without walking a large item's overflow pages."""
    store = MailStore(tmp_path / MAIL_DB)
    names = [r["name"] for r in store._db.execute("PRAGMA table_info(messages)")]
    assert names[-1] == "mime" and {"item_class", "mseq", "flag_json"} <= set(names)


def test_localize_renames_well_known_folders_only(tmp_path: Path) -> None:
    """A German mailbox's Inbox is 'Posteingang' and stays the well-known inbox; other folders keep their names."""
    store = MailStore(tmp_path / MAIL_DB)
    root = store.folder("source", MBX, "msgfolderroot")
    assert root is not None
    store.create_folder("source", MBX, root.id, "Projects")
    store.localize("source", MBX, "de")
    names = {f.display_name: f.well_known for f in store.child_folders("source", MBX)}
    assert names["Posteingang"] == "inbox"
    assert names["Projects"] is None
    assert "Inbox" not in names
    with pytest.raises(ValueError, match="known: de, en, ja"):
        store.localize("source", MBX, "xx")
