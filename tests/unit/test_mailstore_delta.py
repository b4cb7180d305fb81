"""Mailstore writes for issue 4: change numbers, tombstones, folders, upload spooling, migration."""

from __future__ import annotations

import datetime as dt
import sqlite3
from email.message import EmailMessage
from pathlib import Path

import pytest

from coexist.sandbox.mailstore import (
    FolderExists,
    Item,
    MailStore,
    Tombstone,
    attach,
)

MBX = "2f7c1a8e-0000-4000-8000-000000000002"
T = "source"


def mime(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"] = "ann@fabrikam.example"
    msg["To"] = "bob@fabrikam.example"
    msg["Subject"] = subject
    msg["Date"] = "Mon, 06 May 2024 10:00:00 +0000"
    msg.set_content("hello")
    return msg.as_bytes()


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    return MailStore(tmp_path / "mail.db")


def drain(store: MailStore, folder: str, after: int, removed_after: int) -> list[Item | Tombstone]:
    entries, _clock, more = store.changes(T, MBX, folder, after, removed_after, 1000)
    assert not more
    return entries


def test_changes_order_items_and_tombstones_by_one_clock(store: MailStore) -> None:
    """Updates, moves and deletes surface once each, in change order, after a cursor."""
    inbox = store.folder(T, MBX, "inbox")
    archive = store.folder(T, MBX, "archive")
    assert inbox is not None and archive is not None
    a, b, c = (store.deliver(T, MBX, mime(s)) for s in "abc")
    cursor = store.clock
    store.update_message(T, MBX, a.id, is_read=True)
    moved = store.move_message(T, MBX, b.id, archive.id)
    assert moved is not None and moved.id != b.id
    assert store.delete_message(T, MBX, c.id)
    entries = drain(store, inbox.id, cursor, cursor)
    kinds = [(type(e).__name__, e.id if isinstance(e, Item) else e.item_id) for e in entries]
    assert kinds == [("Item", a.id), ("Tombstone", b.id), ("Tombstone", c.id)]
    assert [e.id for e in drain(store, archive.id, cursor, cursor) if isinstance(e, Item)] == [
        moved.id
    ]


def test_first_round_ignores_older_tombstones_and_pages(store: MailStore) -> None:
    """A first round (after=0) lists live items only; pages end with `more` False."""
    inbox = store.folder(T, MBX, "inbox")
    assert inbox is not None
    items = [store.deliver(T, MBX, mime(f"m{n}")) for n in range(5)]
    store.delete_message(T, MBX, items[0].id)
    start = store.clock
    seen: list[str] = []
    after, more = 0, True
    while more:
        entries, _clock, more = store.changes(T, MBX, inbox.id, after, start, 2)
        seen += [e.id for e in entries if isinstance(e, Item)]
        assert all(isinstance(e, Item) for e in entries)
        after = entries[-1].mseq if entries and isinstance(entries[-1], Item) else after
    assert seen == [i.id for i in items[1:]]


def test_folder_names_unique_per_parent_case_insensitive(store: MailStore) -> None:
    """Odd names are legal; a sibling with the same name (any case) is FolderExists."""
    root = store.folder(T, MBX, "msgfolderroot")
    assert root is not None
    top = store.create_folder(T, MBX, root.id, "a/b")
    child = store.create_folder(T, MBX, top.id, "Quote \"x\" 'y' Ünï 日本")
    assert child.parent_id == top.id and child.display_name.endswith("日本")
    with pytest.raises(FolderExists):
        store.create_folder(T, MBX, root.id, "A/B")
    with pytest.raises(FolderExists):
        store.create_folder(T, MBX, root.id, "inbox")
    again = store.folder(T, MBX, top.id)
    assert again is not None and again.children == 1


def test_insert_message_keeps_explicit_properties(store: MailStore) -> None:
    """The raw insert keeps dates, state, flag, categories and extended properties."""
    received = dt.datetime(2020, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    item = store.insert_message(
        T, MBX, "inbox", mime("x"), received=received, is_read=True,
        flag={"flagStatus": "flagged"}, categories=["Blue"], importance="high",
        sensitivity="private", properties={"Integer 0x0E07": "1"},
    )  # fmt: skip
    found = store.find(item.id)
    assert found == item
    assert (found.received, found.is_read, found.is_draft) == ("2020-01-02T03:04:05Z", True, False)
    assert found.flag == {"flagStatus": "flagged"} and found.categories == ["Blue"]
    assert (found.importance, found.sensitivity) == ("high", "private")
    assert found.properties == {"Integer 0x0E07": "1"}


def test_attachments_and_upload_spool(store: MailStore) -> None:
    """An upload spools to disk; the finished bytes become a MIME attachment part."""
    msg = EmailMessage()
    msg["Subject"] = "with parts"
    msg.set_content("body")
    attach(msg, "small.bin", "application/octet-stream", b"\x00\x01")
    item = store.deliver(T, MBX, msg.as_bytes())
    session = store.create_upload_session(
        T, MBX, item.id, "app", "big.bin", "application/octet-stream", 6,
        dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5),
    )  # fmt: skip
    assert store.append_upload(session.id, b"abc") == 3
    assert store.append_upload(session.id, b"def") == 6
    data = store.take_upload(session.id)
    assert data == b"abcdef" and store.upload_session(session.id) is None
    added = store.add_attachment(T, MBX, item.id, "big.bin", "application/octet-stream", data)
    assert added is not None
    names = [(a.name, a.data) for a in store.attachments(item.id)]
    assert names == [("small.bin", b"\x00\x01"), ("big.bin", b"abcdef")]


def test_old_database_is_migrated(tmp_path: Path) -> None:
    """A mail.db from before issue 4 gains the new columns and keeps its rows."""
    path = tmp_path / "mail.db"
    store = MailStore(path)
    item = store.deliver(T, MBX, mime("old"))
    store.close()
    db = sqlite3.connect(path)
    for column in ("flag_json", "sensitivity", "props_json", "mseq"):
        db.execute("DROP INDEX IF EXISTS messages_delta")
        db.execute(f"ALTER TABLE messages DROP COLUMN {column}")
    db.execute("ALTER TABLE folders DROP COLUMN fseq")
    db.commit()
    db.close()
    reopened = MailStore(path)
    found = reopened.find(item.id)
    assert found is not None and found.flag == {"flagStatus": "notFlagged"} and found.mseq == 0
    assert reopened.deliver(T, MBX, mime("new")).mseq == 1
