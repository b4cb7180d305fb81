"""The IMAP MailboxStore against a real Dovecot (tests/dovecot.py): folders, change rounds,
UIDVALIDITY resets through the real sync algorithm, export/import, totals, plan mode.

Every test takes fresh users of the session's Dovecot, over TLS verified with the test CA.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest

from coexist.errors import AuthenticationError, InvalidRequest, NotFound, RemoteError
from coexist.journal import Journal
from coexist.migrate import sync
from coexist.migrate.passes import Window
from coexist.migrate.stores.imap import (
    APPEND_BATCH,
    CAPS,
    ImapState,
    ImapStore,
    enter_both,
    parse_item_id,
    state_key,
)
from coexist.tenants.imap import (
    ConnectionLimits,
    ImapConnections,
    ImapEndpoint,
    ImapSession,
    NewMessage,
    Password,
)
from coexist.tenants.plan import WriteRecorder
from coexist.tenants.protocols import (
    MIME,
    ChangePage,
    Folder,
    Imported,
    ItemRef,
    MessageState,
    Payload,
)
from tests.dovecot import DovecotServer, ImapUser

T = TypeVar("T")
PLUS_0130 = timezone(timedelta(hours=1, minutes=30))


def message(n: int, subject: str = "hello") -> bytes:
    """A small RFC 5322 message with a unique Message-ID."""
    return (
        f"From: a@example.org\r\nTo: b@example.org\r\nSubject: {subject} {n}\r\n"
        f"Message-ID: <m{n}.{subject}@example.org>\r\nDate: Mon, 4 Mar 2019 05:06:07 +0000\r\n"
        f"\r\nbody {n}\r\n"
    ).encode()


@pytest.fixture
def endpoint(dovecot: DovecotServer) -> ImapEndpoint:
    return ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)


@pytest.fixture
def user(dovecot: DovecotServer) -> ImapUser:
    return dovecot.new_user("store")


@asynccontextmanager
async def open_store(endpoint: ImapEndpoint, user: ImapUser, **kw: Any) -> AsyncIterator[ImapStore]:
    async with ImapStore.open(
        ImapConnections(endpoint), Password(user.login, user.password), **kw
    ) as store:
        yield store


def with_store(
    endpoint: ImapEndpoint, user: ImapUser, work: Callable[[ImapStore], Awaitable[T]], **kw: Any
) -> T:
    """Run `work(store)` on a store of `user` in a fresh event loop."""

    async def main() -> T:
        async with open_store(endpoint, user, **kw) as store:
            return await work(store)

    return asyncio.run(main())


@pytest.fixture
def session(endpoint: ImapEndpoint, user: ImapUser) -> Iterator[ImapSession]:
    """A plain adapter session of `user`, to seed and look behind the store's back."""
    with ImapSession.open(endpoint, Password(user.login, user.password)) as s:
        yield s


async def all_pages(store: ImapStore, folder: Folder, cursor: str | None) -> list[ChangePage]:
    return [p async for p in store.changes(folder, cursor).pages()]


async def folder(store: ImapStore, name: str) -> Folder:
    return next(f for f in (await store.list_folders()).folders if f.id == name)


# -- folders -------------------------------------------------------------------------------------


def test_folders_carry_well_known_names_from_special_use(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """Special-use folders are well-known (Graph's names), custom ones are paths; parents
    come before children; every folder is a mail folder with its message count."""
    session.create_folder(["Archive"], "/")
    session.create_folder(["Projects"], "/")
    session.create_folder(["Projects", "2024"], "/")
    session.create_folder(["Container", "Child"], "/")  # "Container" holds no mail
    session.append("Projects/2024", [NewMessage(message(1))])
    tree = with_store(endpoint, user, lambda s: s.list_folders())
    by_id = {f.id: f for f in tree.folders}
    assert {f.id: f.well_known for f in tree.folders if f.well_known} == {
        "INBOX": "inbox",
        "Drafts": "drafts",
        "Sent": "sentitems",
        "Trash": "deleteditems",
        "Junk": "junkemail",
        "Archive": "archive",
    }
    assert by_id["Projects/2024"].path == ("Projects", "2024")
    assert by_id["Projects/2024"].well_known is None and by_id["Projects/2024"].total == 1
    order = [f.id for f in tree.folders]
    assert order.index("Projects") < order.index("Projects/2024")
    assert "Container" not in by_id and by_id["Container/Child"].path == ("Container", "Child")
    assert {f.folder_class for f in tree.folders} == {"IPF.Note"} and tree.left_out == 0


def test_odd_names_and_a_deep_tree_are_created_and_listed(
    dovecot: DovecotServer, endpoint: ImapEndpoint
) -> None:
    """Quotes, a "/" inside a name (a "." delimiter), non-ASCII (modified UTF-7 on the wire)
    and a tree five deep are created through the store and listed back by path; a server
    whose delimiter is "/" cannot hold "a/b": None (the folder is reported as skipped)."""
    dotted = dovecot.new_user("dotted", separator=".")
    names = ['He said "hi"', "a/b", "Überweisungen ✓ 日本"]
    deep = ("L1", "L2", "L3", "L4", "L5")

    async def work(store: ImapStore) -> tuple[list[Folder | None], list[tuple[str, ...]]]:
        await store.list_folders()
        made = [await store.create_folder(None, n, (n,), "IPF.Note") for n in names]
        parent: Folder | None = None
        for depth in range(1, len(deep) + 1):
            parent = await store.create_folder(parent, deep[depth - 1], deep[:depth], "IPF.Note")
            assert parent is not None
        made.append(await store.create_folder(None, "Contacts", ("Contacts",), "IPF.Contact"))
        return made, [f.path for f in (await store.list_folders()).folders]

    made, paths = with_store(endpoint, dotted, work)
    assert [f.path if f else None for f in made] == [(n,) for n in names] + [None]
    for n in names:
        assert (n,) in paths
    assert deep in paths and paths.index(deep[:4]) < paths.index(deep)

    slash = dovecot.new_user("slash")

    async def refused(store: ImapStore) -> Folder | None:
        await store.list_folders()
        return await store.create_folder(None, "a/b", ("a/b",), "IPF.Note")

    assert with_store(endpoint, slash, refused) is None


# -- changes -------------------------------------------------------------------------------------


def test_a_changes_round_then_an_unchanged_round(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """A first round reports every message (identity = Message-ID, arrival, size) in pages,
    with the cursor on the last page only; from that cursor nothing is reported; a new
    message is then the only change."""
    session.append("INBOX", [NewMessage(message(i)) for i in range(5)])

    async def work(store: ImapStore) -> tuple[list[ChangePage], list[ChangePage], list[ChangePage]]:
        inbox = await folder(store, "INBOX")
        first = await all_pages(store, inbox, None)
        cursor = first[-1].cursor
        again = await all_pages(store, inbox, cursor)
        await store.run(lambda s: s.append("INBOX", [NewMessage(message(9))]))
        third = await all_pages(store, inbox, again[-1].cursor)
        return first, again, third

    first, again, third = with_store(endpoint, user, work, page=2)
    assert [len(p.changes) for p in first] == [2, 2, 1]
    assert [p.cursor is not None for p in first] == [False, False, True]
    changes = [c for p in first for c in p.changes]
    assert [c.identity for c in changes] == [f"mid:<m{i}.hello@example.org>" for i in range(5)]
    assert all(c.created and c.size == len(message(0)) and not c.removed for c in changes)
    assert [len(p.changes) for p in again] == [0] and again[-1].cursor == first[-1].cursor
    assert [c.identity for p in third for c in p.changes] == ["mid:<m9.hello@example.org>"]


def test_flag_changes_and_expunges_come_from_condstore_and_qresync(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """After a round, a flag set on one message is a change with a new change key (CHANGEDSINCE)
    and an expunged one a removal (VANISHED); the rest is not reported."""
    uids = session.append("INBOX", [NewMessage(message(i)) for i in range(3)])
    assert session.caps.condstore and session.caps.qresync

    async def work(store: ImapStore) -> tuple[list[ChangePage], list[ChangePage]]:
        inbox = await folder(store, "INBOX")
        first = await all_pages(store, inbox, None)
        session.set_flags("INBOX", uids[0] or 0, frozenset({"\\Seen"}), frozenset({"$label1"}))
        session.delete("INBOX", [uids[1] or 0])
        return first, await all_pages(store, inbox, first[-1].cursor)

    first, second = with_store(endpoint, user, work)
    before = {c.id: c.change_key for c in first[0].changes}
    [changed, removed] = sorted(second[0].changes, key=lambda c: c.removed)
    assert parse_item_id(changed.id)[2] == uids[0] and not changed.removed
    assert changed.change_key != before[changed.id]
    assert changed.change_key == state_key({"\\Seen"}, {"$label1"})
    assert parse_item_id(removed.id)[2] == uids[1] and removed.removed


def sync_context(journal: Journal) -> Any:
    """The little of a Context that sync.py reads: journal, plan flag, migration settings."""
    migration = SimpleNamespace(
        max_item_mb=150, encrypted="copy", deletions="keep",
        folder_rules=[], include_folders=[], exclude_folders=[],
    )  # fmt: skip
    return SimpleNamespace(journal=journal, planning=False,
                           project=SimpleNamespace(migration=migration))  # fmt: skip


async def sync_pass(ctx: Any, key: str, src: ImapStore, tgt: ImapStore) -> Counter[str]:
    """Steps 1-5 of a pass (sync.sync_mailbox) between two IMAP stores; its counts."""
    counts: Counter[str] = Counter()
    await sync.sync_mailbox(ctx, key, src, tgt, Window(), counts)
    return counts


def test_a_new_uidvalidity_resets_the_folder_and_rematches_copies_by_message_id(
    dovecot: DovecotServer, endpoint: ImapEndpoint, tmp_path: Path
) -> None:
    """Through the real sync algorithm (scan, copy, moves, update) between two Dovecot users:
    after the source folder gets a new UIDVALIDITY, the round is restarted (`cursor_lost`),
    every message is paired with its existing copy by Message-ID, and nothing is copied
    twice; a pass after that has nothing to do."""
    src_user, tgt_user = dovecot.new_user("src"), dovecot.new_user("tgt")
    with ImapSession.open(endpoint, Password(src_user.login, src_user.password)) as s:
        s.append("INBOX", [NewMessage(message(i)) for i in range(3)])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)
    key = "src@example.org"

    async def one_pass(src: ImapStore, tgt: ImapStore) -> Counter[str]:
        return await sync_pass(ctx, key, src, tgt)

    async def main() -> tuple[Counter[str], Counter[str], Counter[str], dict[str, int]]:
        async with (
            open_store(endpoint, src_user) as src,
            open_store(endpoint, tgt_user, label="target") as tgt,
        ):
            first = await one_pass(src, tgt)
            dovecot.set_uidvalidity(src_user, "INBOX", 4242)
            second = await one_pass(src, tgt)
            third = await one_pass(src, tgt)
            return first, second, third, await tgt.totals()

    try:
        first, second, third, totals = asyncio.run(main())
        rows = journal.mapped_items(key)
    finally:
        journal.close()
    assert first["copied"] == 3
    assert second["copied"] == 0 and second["moved"] == 3 and second["updated"] == 3
    assert +third == Counter()  # unchanged: nothing to do
    assert totals["INBOX"] == 3
    assert sorted(r["status"] for r in rows) == ["copied"] * 3
    assert {parse_item_id(r["source_item_id"])[1] for r in rows} == {4242}


def test_a_move_and_a_flag_change_at_the_source_are_a_move_and_a_store_in_the_target(
    dovecot: DovecotServer, endpoint: ImapEndpoint, tmp_path: Path
) -> None:
    """Through sync.sync_mailbox between two Dovecot users: a message moved at the source is
    MOVEd in the target (caps.moves: no second copy), a flag change is exported state-only
    and set on the copy; an unchanged pass after that does nothing."""
    src_user, tgt_user = dovecot.new_user("src"), dovecot.new_user("tgt")
    login = Password(src_user.login, src_user.password)
    with ImapSession.open(endpoint, login) as s:
        s.create_folder(["Projects"], "/")
        uids = s.append("INBOX", [NewMessage(message(i)) for i in range(2)])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = sync_context(journal), "src@example.org"

    async def main() -> list[Counter[str]]:
        async with (
            open_store(endpoint, src_user) as src,
            open_store(endpoint, tgt_user, label="target") as tgt,
        ):
            first = await sync_pass(ctx, key, src, tgt)
            await src.run(lambda s: s.move("INBOX", [uids[0] or 0], "Projects"))
            await src.run(
                lambda s: s.set_flags("INBOX", uids[1] or 0, frozenset({"\\Seen"}), frozenset())
            )
            return [first, await sync_pass(ctx, key, src, tgt), await sync_pass(ctx, key, src, tgt)]

    try:
        first, second, third = asyncio.run(main())
    finally:
        journal.close()
    assert first["copied"] == 2
    # The moved copy's state is re-synced too (sync adopts a moved copy as `changed`).
    assert second["copied"] == 0 and second["moved"] == 1 and second["updated"] == 2
    assert +third == Counter()
    with ImapSession.open(endpoint, Password(tgt_user.login, tgt_user.password)) as t:
        assert t.folder("Projects").messages == 1 and t.folder("INBOX").messages == 1
        [kept] = t.changes("INBOX", None).new
    assert kept.flags == {"\\Seen"}


# -- export and import -----------------------------------------------------------------------


def test_export_then_import_keeps_flags_keywords_and_internaldate(
    dovecot: DovecotServer, endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """Messages exported from one Dovecot user and imported concurrently (waiting imports go
    together as one MULTIAPPEND) into another keep their bytes, flags, keywords and INTERNALDATE; an update sets the
    copy's flags; the subject is read from the header only."""
    sent = [
        NewMessage(message(1), frozenset({"\\Seen"}), frozenset(),
                   datetime(2019, 3, 4, 5, 6, 7, tzinfo=UTC)),
        NewMessage(message(2, "=?utf-8?q?Gr=C3=BC=C3=9Fe?="),
                   frozenset({"\\Flagged", "\\Answered"}), frozenset({"$Forwarded", "Project-X"}),
                   datetime(2001, 12, 31, 23, 59, 58, tzinfo=PLUS_0130)),
        NewMessage(message(3), frozenset({"\\Draft"}), frozenset(),
                   datetime(2024, 2, 29, 12, 0, 0, tzinfo=UTC)),
    ]  # fmt: skip
    session.append("INBOX", sent)
    target = dovecot.new_user("copy")

    async def main() -> tuple[list[str], dict[str, Any]]:
        async with (
            open_store(endpoint, user) as src,
            open_store(endpoint, target, label="target") as tgt,
        ):
            inbox = await folder(src, "INBOX")
            ids = [c.id for p in await all_pages(src, inbox, None) for c in p.changes]
            refs = [ItemRef("INBOX", i) for i in ids]
            info = await src.inspect(refs)
            payloads = await src.export(refs, MIME)
            made = await asyncio.gather(*(tgt.import_item("INBOX", payloads[i]) for i in ids))
            copy_ids = [m.item_id or "" for m in made]
            states = await src.export(refs, MIME, state_only=True)
            seen = Payload(MIME, "", None, state=MessageState(read=True))
            updated = await tgt.import_item("INBOX", seen, ItemRef("INBOX", copy_ids[2]))
            keys = await tgt.change_keys([ItemRef("INBOX", i) for i in copy_ids])
            return copy_ids, {"info": info, "ids": ids, "payloads": payloads,
                              "updated": updated, "keys": keys, "states": states}  # fmt: skip

    copy_ids, got = asyncio.run(main())
    assert len(set(copy_ids)) == 3
    payloads = got["payloads"]
    assert [payloads[i].mime for i in got["ids"]] == [m.raw for m in sent]
    assert [payloads[i].size for i in got["ids"]] == [len(m.raw) for m in sent]
    state = payloads[got["ids"][1]].state
    assert isinstance(state, ImapState) and state.received is not None
    assert datetime.fromisoformat(state.received) == sent[1].internaldate  # the same instant
    assert replace(state, received=None) == ImapState(
        read=False,
        draft=False,
        flag={"flagStatus": "flagged"},
        categories=("Project-X",),
        importance="normal",  # read from the header (none: normal)
        answered=True,
        forwarded=True,
        keywords=("$Forwarded",),
    )
    assert payloads[got["ids"][0]].state.read and payloads[got["ids"][2]].state.draft  # type: ignore[union-attr]
    # A state-only export (an update) carries the same state and no body: the flags only,
    # so its importance is unknown (None: an update never resets the copy's).
    states = got["states"]
    assert [states[i].state for i in got["ids"]] == [
        replace(payloads[i].state, importance=None)  # type: ignore[type-var]
        for i in got["ids"]
    ]
    assert {states[i].mime for i in got["ids"]} == {b""}
    assert got["info"][got["ids"][1]].subject == "Grüße 2"
    assert got["info"][got["ids"][0]].content_type == ""
    with ImapSession.open(endpoint, Password(target.login, target.password)) as t:
        landed = list(t.changes("INBOX", None).new)
        fetched = list(t.fetch("INBOX", landed))
    # Concurrent imports may go over several connections: the copies' UIDs need not follow
    # the order of the imports, so each copy is paired with its message by its text.
    uid_of = {f.raw: f.uid for f in fetched}
    assert sorted(uid_of) == sorted(m.raw for m in sent)
    copies = [next(c for c in landed if c.uid == uid_of[m.raw]) for m in sent]
    assert [c.internaldate for c in copies] == [m.internaldate for m in sent]
    assert [c.keywords for c in copies] == [m.keywords for m in sent]
    assert [c.flags for c in copies[:2]] == [m.flags for m in sent[:2]]
    assert copies[2].flags == {"\\Seen"}  # the update replaced \Draft
    assert got["keys"][copy_ids[2]] == state_key({"\\Seen"}, set()) == got["updated"].change_key


def test_move_and_delete(endpoint: ImapEndpoint, user: ImapUser, session: ImapSession) -> None:
    """A message moved to another folder gets a ref there; a deleted one is gone, and
    deleting it again is NotFound."""
    session.create_folder(["Archive"], "/")
    [uid] = session.append("INBOX", [NewMessage(message(1))])

    async def work(store: ImapStore) -> tuple[str, bool]:
        assert store.caps.moves  # Dovecot has MOVE and UIDPLUS
        [change] = (await all_pages(store, await folder(store, "INBOX"), None))[0].changes
        moved = await store.move(ItemRef("INBOX", change.id), "Archive")
        assert moved.item_id is not None and moved.change_key == change.change_key
        ref = ItemRef("Archive", moved.item_id)
        await store.delete(ref)
        try:
            await store.delete(ref)
        except NotFound:
            return moved.item_id, True
        return moved.item_id, False

    moved, not_found = with_store(endpoint, user, work)
    assert parse_item_id(moved)[0] == "Archive" and not_found
    assert session.folder("Archive").messages == 0 and session.folder("INBOX").messages == 0
    assert uid is not None


def test_totals_count_and_size_per_folder(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """Per folder: messages (STATUS) and their bytes; an empty folder is 0 and 0."""
    session.append("INBOX", [NewMessage(message(i)) for i in range(4)])

    async def work(store: ImapStore) -> tuple[dict[str, int], Any]:
        return await store.totals(), await store.folder_totals()

    counts, sized = with_store(endpoint, user, work)
    assert counts["INBOX"] == 4 and counts["Sent"] == 0
    assert sized["INBOX"].count == 4
    assert sized["INBOX"].size == sum(len(message(i)) for i in range(4))
    assert (sized["Sent"].count, sized["Sent"].size) == (0, 0)


def test_totals_count_what_other_connections_appended_to_the_selected_folder(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """A folder the store's connection still has selected (the read-write SELECT that read
    its PERMANENTFLAGS for a flagged copy) is counted as it is now: with a message appended
    meanwhile over another connection (an extra append connection, new mail) in its totals,
    count and bytes. Dovecot answers STATUS on the selected folder from that selection's
    stale view, which made a real cutover report a false reconciliation difference."""
    flagged = Payload(MIME, "", None, mime=message(1),
                      state=MessageState(flag={"flagStatus": "flagged"}))  # fmt: skip
    other = message(2)

    async def work(store: ImapStore) -> tuple[dict[str, int], Any]:
        made = await store.import_item("Sent", flagged)  # SELECTs Sent for PERMANENTFLAGS
        assert made.item_id is not None and made.lost is None
        session.append("Sent", [NewMessage(other)])  # another connection
        return await store.totals(), await store.folder_totals()

    counts, sized = with_store(endpoint, user, work, label="target")
    assert counts["Sent"] == 2
    assert (sized["Sent"].count, sized["Sent"].size) == (2, len(message(1)) + len(other))


def test_plan_mode_records_writes_and_sends_none(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """With a WriteRecorder, CREATE, APPEND, STORE and EXPUNGE are recorded, not sent."""
    [uid] = session.append("INBOX", [NewMessage(message(1))])
    plan = WriteRecorder()

    async def work(store: ImapStore) -> None:
        await store.list_folders()
        made = await store.create_folder(None, "New", ("New",), "IPF.Note")
        assert made is not None and made.id.startswith("planned:")
        payload = Payload(MIME, "", None, mime=message(2))
        assert (await store.import_item(made.id, payload)).item_id is None
        [change] = (await all_pages(store, await folder(store, "INBOX"), None))[0].changes
        ref = ItemRef("INBOX", change.id)
        await store.import_item("INBOX", payload, ref)
        await store.delete(ref)

    with_store(endpoint, user, work, label="target", plan=plan)
    ops = [w.operation.split()[0] for w in plan.writes]
    assert ops == ["CREATE", "APPEND", "UID", "UID"]
    assert [w.system for w in plan.writes] == ["imap"] * 4
    assert "New" not in [f.name for f in session.list_folders(status=False)]
    [ref] = session.refs("INBOX", [uid or 0])
    assert ref.flags == frozenset()  # not \Seen, not \Deleted


def test_capabilities_say_mime_uid_watermark_mail_only() -> None:
    """The store exports and accepts MIME only, keeps UID watermarks, holds mail folders."""
    assert CAPS.exports == CAPS.accepts == {MIME}
    assert CAPS.cursor == "uid-watermark" and CAPS.folder_classes == {"IPF.Note"}
    assert CAPS.atomic_import and CAPS.inspect_before_export and not CAPS.moves


def test_a_changed_uidvalidity_is_a_lost_cursor(
    dovecot: DovecotServer, endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """From a cursor of another UIDVALIDITY the round raises the error `cursor_lost` knows."""
    session.append("INBOX", [NewMessage(message(1))])

    async def work(store: ImapStore) -> bool:
        inbox = await folder(store, "INBOX")
        cursor = (await all_pages(store, inbox, None))[-1].cursor
        dovecot.set_uidvalidity(user, "INBOX", 777)
        try:
            await all_pages(store, inbox, cursor)
        except RemoteError as exc:
            return store.cursor_lost(exc) and "777" in exc.message
        return False

    assert with_store(endpoint, user, work)


@pytest.mark.parametrize("per_mailbox", [1, 3])
def test_concurrent_imports_each_get_their_own_copy_over_the_mailbox_connections(
    dovecot: DovecotServer, endpoint: ImapEndpoint, per_mailbox: int
) -> None:
    """Many imports at once (as sync's pipeline sends them) go as MULTIAPPENDs over up to
    `connections_per_mailbox` connections: each import's id names the copy of its own
    message, none is lost or doubled; with one connection the copies keep the imports'
    order (ascending UIDs), the order the store's docs promise for that setting."""
    target = dovecot.new_user("many")
    sent = [message(i, "many") for i in range(60)]

    async def main() -> list[str]:
        limits = ConnectionLimits(per_server=10, per_mailbox=per_mailbox)
        async with ImapStore.open(
            ImapConnections(endpoint, limits), Password(target.login, target.password)
        ) as tgt:
            made = await asyncio.gather(
                *(tgt.import_item("INBOX", Payload(MIME, "", None, mime=raw)) for raw in sent)
            )
        return [m.item_id or "" for m in made]

    ids = asyncio.run(main())
    uids = [parse_item_id(i)[2] for i in ids]
    assert len(set(uids)) == len(sent)
    with ImapSession.open(endpoint, Password(target.login, target.password)) as t:
        landed = list(t.changes("INBOX", None).new)
        text = {f.uid: f.raw for f in t.fetch("INBOX", landed)}
    assert [text[u] for u in uids] == sent  # each id is its own message's copy
    if per_mailbox == 1:
        assert uids == sorted(uids)


def test_batch_imports_answer_per_message_and_a_refused_one_is_that_message_alone(
    dovecot: DovecotServer, endpoint: ImapEndpoint
) -> None:
    """`import_items` (the sync pipeline's batch import, one MULTIAPPEND per call), several
    at once over the mailbox's connections: each answer names its own message's copy; a
    batch the server refuses for one message (Dovecot refuses a zero-byte message) goes
    again one by one, so only that message is refused and the others are copied."""
    target = dovecot.new_user("batch")
    sent = [message(i, "batch") for i in range(70)]
    batches = [sent[n : n + 32] for n in range(0, 64, 32)] + [[*sent[64:67], b"", *sent[67:]]]

    async def main() -> list[list[Imported | InvalidRequest]]:
        limits = ConnectionLimits(per_server=10, per_mailbox=2)
        async with ImapStore.open(
            ImapConnections(endpoint, limits), Password(target.login, target.password)
        ) as tgt:
            assert tgt.caps.import_batch == APPEND_BATCH  # Dovecot offers MULTIAPPEND
            return await asyncio.gather(
                *(
                    tgt.import_items("INBOX", [Payload(MIME, "", None, mime=m) for m in b])
                    for b in batches
                )
            )

    answers = [a for got in asyncio.run(main()) for a in got]
    [refused] = [a for a in answers if isinstance(a, InvalidRequest)]
    assert answers.index(refused) == 67 and "zero" in refused.message.lower()
    made = [a for a in answers if isinstance(a, Imported)]
    uids = [parse_item_id(a.item_id or "")[2] for a in made]
    with ImapSession.open(endpoint, Password(target.login, target.password)) as t:
        landed = list(t.changes("INBOX", None).new)
        text = {f.uid: f.raw for f in t.fetch("INBOX", landed)}
    assert len(landed) == len(sent) and [text[u] for u in uids] == sent


def test_cancelled_imports_leave_the_waiting_ones_to_a_new_flusher(
    dovecot: DovecotServer, endpoint: ImapEndpoint
) -> None:
    """Imports that flush the folder's queue for the others, cancelled mid-append, do not
    strand the imports still waiting: a new flusher appends their messages (each gets its own
    copy), and the messages of imports cancelled while queued are not appended."""
    target = dovecot.new_user("cancel")
    # One MULTIAPPEND takes APPEND_BATCH messages: 3 stay queued behind it, 5 more cancelled.
    sent = [message(i, "cancel") for i in range(APPEND_BATCH + 8)]
    flushers, queued_cancelled = [0, 1], list(range(APPEND_BATCH + 3, APPEND_BATCH + 8))

    async def main() -> list[Any]:
        limits = ConnectionLimits(per_server=10, per_mailbox=2)
        async with ImapStore.open(
            ImapConnections(endpoint, limits), Password(target.login, target.password)
        ) as tgt:
            tasks = [
                asyncio.ensure_future(tgt.import_item("INBOX", Payload(MIME, "", None, mime=raw)))
                for raw in sent
            ]
            # Two loop turns: every import queued its message, then the first one took a
            # connection and sent messages 0 to APPEND_BATCH - 1, the second waits to flush
            # the rest.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            for n in flushers + queued_cancelled:
                tasks[n].cancel()
            return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)

    got = asyncio.run(main())
    with ImapSession.open(endpoint, Password(target.login, target.password)) as t:
        landed = list(t.changes("INBOX", None).new)
        text = {f.uid: f.raw for f in t.fetch("INBOX", landed)}
    # Queued behind the cancelled flushers: appended by a new one.
    for n in range(APPEND_BATCH, APPEND_BATCH + 3):
        made = got[n]
        assert not isinstance(made, BaseException), (n, made)
        assert text[parse_item_id(made.item_id or "")[2]] == sent[n]
    assert all(isinstance(got[n], asyncio.CancelledError) for n in flushers + queued_cancelled)
    assert not {sent[n] for n in queued_cancelled} & set(text.values())
    assert len(text) == len(set(text.values()))  # nothing appended twice


SIGNED = (
    b"From: a@example.org\r\nSubject: =?utf-8?q?sign=C3=A9?=\r\nMessage-ID: <s1@example.org>\r\n"
    b'Content-Type: multipart/signed; protocol="application/pkcs7-signature";\r\n'
    b" boundary=b\r\nContent-Class: urn:content-classes:message\r\n\r\n--b--\r\n"
)


def test_inspect_after_a_scan_sends_nothing_and_reads_what_a_header_fetch_reads(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """A change round reads the inspect fields with the Message-ID: `inspect` of what it
    reported then sends no command, and says what a store that did not scan reads from the
    server (subject decoded, content type and class); the export that follows reads whole
    messages of the right size."""
    session.append("INBOX", [NewMessage(message(i)) for i in range(3)] + [NewMessage(SIGNED)])

    async def scanned(store: ImapStore) -> tuple[dict[str, Any], int, dict[str, Payload]]:
        inbox = await folder(store, "INBOX")
        ids = [c.id for p in await all_pages(store, inbox, None) for c in p.changes]
        refs = [ItemRef("INBOX", i) for i in ids]
        before = store.meter.calls
        info = await store.inspect(refs)
        calls = store.meter.calls - before
        return info, calls, await store.export(refs, MIME)

    async def unscanned(store: ImapStore) -> tuple[dict[str, Any], int]:
        _, uids = await store.run(lambda s: s.list_uids("INBOX"))
        validity = await store.run(lambda s: s.examine("INBOX"))
        refs = [ItemRef("INBOX", f"{validity}:{u}:INBOX") for u in uids]
        before = store.meter.calls
        info = await store.inspect(refs)
        return info, store.meter.calls - before

    info, calls, payloads = with_store(endpoint, user, scanned, page=2)
    read, read_calls = with_store(endpoint, user, unscanned)
    assert calls == 0 and read_calls > 0
    assert info == read and len(info) == 4
    signed = next(i for i in info.values() if i.content_type == "multipart/signed")
    assert signed.subject == "signé" and signed.content_class == "urn:content-classes:message"
    assert sorted(p.mime for p in payloads.values()) == sorted(
        [message(i) for i in range(3)] + [SIGNED]
    )


@pytest.mark.parametrize("warm", [False, True], ids=["on-demand", "warm"])
def test_an_export_while_a_change_round_reads_uses_another_connection(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession, warm: bool
) -> None:
    """While the store's own connection reads a change round (a new mailbox is copied
    while it is scanned), an export reads over a connection of its own: it does not wait
    behind the round's pages (here the own connection is held until the export is done;
    waiting for it would never end). `warm`: the export starts while the connections
    `warm` opens are still logging in, and waits for one of them."""
    session.append("INBOX", [NewMessage(message(i)) for i in range(5)])

    async def work(store: ImapStore) -> dict[str, Payload]:
        inbox = await folder(store, "INBOX")
        pages = store.changes(inbox, None).pages()
        first = await anext(pages)  # the round goes on: more pages to read
        refs = [ItemRef("INBOX", c.id) for c in first.changes]
        gate = threading.Event()
        held = asyncio.ensure_future(store.run(lambda s: gate.wait(60)))
        try:
            if warm:
                store.warm(export=True)
            return await asyncio.wait_for(store.export(refs, MIME), 30)
        finally:
            gate.set()
            await held
            await pages.aclose()

    got = with_store(endpoint, user, work, page=2)
    assert sorted(p.mime for p in got.values()) == [message(0), message(1)]


def test_warm_opens_the_connections_ahead_within_the_mailbox_limit(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """`warm` logs in the append connections ahead of the first import (never more than
    `connections_per_mailbox`), reads the folder's PERMANENTFLAGS once, and the store's
    exit closes them all; the imports that follow copy each message once. A planned pass
    appends nothing: warming its target opens no connection."""
    creds = Password(user.login, user.password)
    sent = [message(i, "warm") for i in range(8)]

    async def main() -> tuple[bool, bool, int, list[Imported], bool]:
        conns = ImapConnections(endpoint, ConnectionLimits(per_server=10, per_mailbox=3))
        async with ImapStore.open(conns, creds, label="target") as tgt:
            tgt.warm(imports=True, into={"INBOX"})
            tgt.warm(imports=True, into={"INBOX"})  # again: nothing more is opened
            await tgt._settle()
            full, calls = not conns.has_room(user.login), tgt.meter.calls
            made = await asyncio.gather(
                *(tgt.import_item("INBOX", Payload(MIME, "", None, mime=raw)) for raw in sent)
            )
        closed = conns.has_room(user.login)
        planned = ImapConnections(endpoint, ConnectionLimits(per_server=10, per_mailbox=2))
        async with ImapStore.open(planned, creds, plan=WriteRecorder()) as dry:
            dry.warm(imports=True, into={"INBOX"})
            await dry._settle()
            dry_room = planned.has_room(user.login)
        return full, closed, calls, made, dry_room

    full, closed, calls, made, dry_room = asyncio.run(main())
    assert full and closed and dry_room
    assert calls == 1  # the PERMANENTFLAGS SELECT, read ahead
    landed = list(session.changes("INBOX", None).new)
    assert len(landed) == len(sent) and len({m.item_id for m in made}) == len(sent)


def test_the_target_listing_without_totals_names_the_same_folders(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """`folder_names` (what the folder mapping reads of a target) lists the folders
    `list_folders` lists, with their paths and well-known names, without their totals."""
    session.append("INBOX", [NewMessage(message(0))])

    async def work(store: ImapStore) -> tuple[list[Folder], list[Folder]]:
        return (await store.list_folders()).folders, (await store.folder_names()).folders

    full, names = with_store(endpoint, user, work)
    by_id = sorted([replace(f, total=0) for f in full], key=lambda f: f.id)
    assert by_id == sorted(names, key=lambda f: f.id)  # LIST's order is the server's
    assert next(f.total for f in full if f.id == "INBOX") == 1


def test_an_empty_folder_is_not_scanned_and_its_first_message_is_copied_next_pass(
    dovecot: DovecotServer, endpoint: ImapEndpoint, tmp_path: Path
) -> None:
    """A source folder STATUS counts empty gets no scan and no cursor
    (`caps.empty_means_nothing`); once a message arrives in it, the next pass reads the
    folder in full and copies it, once."""
    src_user, tgt_user = dovecot.new_user("src"), dovecot.new_user("tgt")
    src_creds = Password(src_user.login, src_user.password)
    with ImapSession.open(endpoint, src_creds) as s:
        s.create_folder(["Later"], "/")
        s.append("INBOX", [NewMessage(message(0, "empty"))])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = sync_context(journal), "src@example.org"

    async def main() -> tuple[Counter[str], list[str], Counter[str], Counter[str]]:
        async with (
            open_store(endpoint, src_user) as src,
            open_store(endpoint, tgt_user, label="target") as tgt,
        ):
            first = await sync_pass(ctx, key, src, tgt)
            cursors = [str(c["folder_id"]) for c in journal.checkpoints(key)]
            with ImapSession.open(endpoint, src_creds) as s:
                s.append("Later", [NewMessage(message(1, "empty"))])
            return (
                first,
                cursors,
                await sync_pass(ctx, key, src, tgt),
                await sync_pass(ctx, key, src, tgt),
            )

    try:
        first, cursors, second, third = asyncio.run(main())
    finally:
        journal.close()
    assert first["copied"] == 1 and "Later" not in cursors and "INBOX" in cursors
    assert second["copied"] == 1 and third["copied"] == 0


def test_both_logins_at_once_and_a_refused_one_closes_the_other(
    dovecot: DovecotServer, endpoint: ImapEndpoint
) -> None:
    """`enter_both` (the imap-sync mover's `open_stores`, the bench) logs in to both
    stores at once; when one login is refused its error is raised, and the store that did
    log in is closed again (its connection slot is free)."""
    good, bad = dovecot.new_user("good"), dovecot.new_user("bad")

    async def main() -> tuple[str, str, bool]:
        conns = ImapConnections(endpoint, ConnectionLimits(per_server=10, per_mailbox=1))
        async with AsyncExitStack() as stack:
            src, tgt = await enter_both(
                stack,
                ImapStore.open(conns, Password(good.login, good.password)),
                ImapStore.open(conns, Password(bad.login, bad.password), label="target"),
            )
            users = src.user, tgt.user
        with pytest.raises(AuthenticationError):
            async with AsyncExitStack() as stack:
                await enter_both(
                    stack,
                    ImapStore.open(conns, Password(good.login, good.password)),
                    ImapStore.open(conns, Password(bad.login, "wrong"), label="target"),
                )
        return users[0], users[1], conns.has_room(good.login)

    src_user, tgt_user, freed = asyncio.run(main())
    assert (src_user, tgt_user) == (good.login, bad.login) and freed


def test_an_export_over_a_selection_older_than_the_message_still_reads_it(
    endpoint: ImapEndpoint, user: ImapUser, session: ImapSession
) -> None:
    """An export connection keeps its folder selected between batches (no EXAMINE each
    time); a message delivered after that selection, which a scan over another connection
    reported, is still exported (not left pending as if gone since the scan)."""
    session.append("INBOX", [NewMessage(message(1))])

    def ids() -> list[str]:
        _, uids = session.list_uids("INBOX")
        validity = session.examine("INBOX")
        return [f"{validity}:{u}:INBOX" for u in uids]

    async def work(store: ImapStore) -> list[bytes]:
        first = ids()
        await store.export([ItemRef("INBOX", i) for i in first], MIME)  # selects INBOX
        session.append("INBOX", [NewMessage(message(2))])  # another session delivers
        later = [i for i in ids() if i not in first]
        got = await store.export([ItemRef("INBOX", i) for i in later], MIME)
        return [p.mime for p in got.values()]

    assert with_store(endpoint, user, work) == [message(2)]
