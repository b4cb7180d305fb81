"""The one sync algorithm (coexist.migrate.sync) over two small in-memory MailboxStores.

`MemoryStore` is a test double of our own protocol (coexist.tenants.protocols), not of any
SDK: a mailbox of MIME messages with typed state, a change log read with a sequence-number
cursor (like an IMAP UID watermark), and switches for what its `caps` say (formats,
moves, atomic imports, inspect before export). The real stores are tested against the
sandbox (tests/e2e/test_graph_mover.py, test_items_mover.py); these tests pin down what
sync.py does with each capability, whatever store offers it.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from coexist import progress, schedule
from coexist.engine.context import Context
from coexist.errors import ConfigError, InvalidRequest, NotFound, RemoteError
from coexist.journal import Journal
from coexist.migrate import planpass, sync
from coexist.migrate.passes import PassResult, Window
from coexist.migrate.sync import StoreMover, message_identity, negotiate
from coexist.tenants.plan import WriteRecorder
from coexist.tenants.protocols import (
    EXCHANGE_STREAM,
    MAIL_FOLDER,
    MIME,
    Capabilities,
    Change,
    ChangePage,
    CursorStyle,
    Folder,
    FolderTree,
    Imported,
    ItemInfo,
    ItemRef,
    MailboxStore,
    MessageState,
    Payload,
)

USER = "ada@example.org"
LOST = "the replied/forwarded state (refused)"
RECEIVED = "2024-01-15T09:00:00+00:00"


class Killed(Exception):
    """What a pass dies of, in the middle of an import (a SIGKILL in a real run)."""


@dataclass
class Message:
    folder: str
    mime: bytes
    state: MessageState
    version: int = 1

    @property
    def identity(self) -> str | None:
        msg = email.message_from_bytes(self.mime, policy=email.policy.default)
        return message_identity(str(msg["Message-ID"]).strip() if msg["Message-ID"] else None)


def mime(subject: str, content_type: str = "text/plain", body: str = "hello") -> bytes:
    return (
        f"Message-ID: <{subject}@example.org>\r\nSubject: {subject}\r\n"
        f"Content-Type: {content_type}\r\n\r\n{body}\r\n"
    ).encode()


class MemoryStore:
    """A mailbox in memory, speaking the MailboxStore protocol (see the module docstring)."""

    def __init__(
        self,
        *,
        formats: frozenset[str] = frozenset({MIME}),
        moves: bool = False,
        atomic_import: bool = True,
        inspect_before_export: bool = True,
        cursor: CursorStyle = "uid-watermark",
        completes_on_update: bool = False,
        folder_rules: bool = True,
        import_batch: int = 1,
    ) -> None:
        self.caps = Capabilities(
            exports=formats,
            accepts=formats,
            cursor=cursor,
            folder_classes=frozenset({MAIL_FOLDER}),
            checkpoint_kind="memory",
            export_batch=2,
            export_bytes=1 << 20,
            imports_in_flight=2,
            moves=moves,
            atomic_import=atomic_import,
            inspect_before_export=inspect_before_export,
            completes_on_update=completes_on_update,
            folder_rules=folder_rules,
            import_batch=import_batch,
        )
        self.ids = itertools.count(1)
        self.folders: dict[str, tuple[str, ...]] = {"f-inbox": ("INBOX",)}
        self.items: dict[str, Message] = {}
        self.log: list[tuple[str, str]] = []  # (folder id, item id): what changed, in order
        self.exports: list[tuple[list[str], bool]] = []  # (item ids, state_only)
        self.calls: Counter[str] = Counter()
        self.kill_after_import: int | None = None  # die after this many imports landed
        self.partial = False  # a killed non-atomic import leaves its copy without its body
        self.batches: list[tuple[str, int]] = []  # (folder id, items) per `import_items` call
        self.refuse: set[bytes] = set()  # MIME an import refuses (InvalidRequest)
        self.page: int | None = None  # changes per page of a round (None: one page)
        self.events: list[str] = []  # "page" (a page read) and "export", in order
        self.page_waits_for_export = False  # a page after the first waits for an export
        self.exported = asyncio.Event()
        self.lose_cursor_at_page: int | None = None  # the round's page that says "lost"
        # Folders (paths) whose copies of replied messages come back `lost` (Imported.lost),
        # as a Graph that refuses 0x1081 or an IMAP folder without \Answered answers.
        self.loses_in: set[tuple[str, ...]] = set()
        # Plan mode, as the real stores': every write recorded here and not made (reads are
        # made); a planned copy or move answers no item id, a planned folder a `planned:` id.
        self.plan: WriteRecorder | None = None

    # -- test helpers

    def folder_id(self, *path: str) -> str:
        return next(f for f, p in self.folders.items() if p == path)

    def put(self, path: tuple[str, ...], subject: str, **state: Any) -> str:
        folder = self.folder_id(*path) if path in self.folders.values() else self._mkdir(path)
        state.setdefault("received", RECEIVED)
        return self._add(Message(folder, mime(subject), MessageState(**state)))

    def change(self, item_id: str, **state: Any) -> None:
        m = self.items[item_id]
        m.state, m.version = replace(m.state, **state), m.version + 1
        self.log.append((m.folder, item_id))

    def move_here(self, item_id: str, *path: str) -> str:
        """Move at this store (as a user would): a new id in the new folder."""
        m = self.items.pop(item_id)
        self.log.append((m.folder, item_id))
        m.folder = self.folder_id(*path)
        return self._add(m)

    def in_folder(self, *path: str) -> list[Message]:
        folder = self.folder_id(*path)
        return [m for m in self.items.values() if m.folder == folder]

    def _mkdir(self, path: tuple[str, ...]) -> str:
        fid = f"f-{next(self.ids)}"
        self.folders[fid] = path
        return fid

    def _add(self, m: Message) -> str:
        item_id = f"m-{next(self.ids)}"
        self.items[item_id] = m
        self.log.append((m.folder, item_id))
        return item_id

    # -- the protocol

    async def list_folders(self) -> FolderTree:
        out = []
        for fid, path in sorted(self.folders.items(), key=lambda kv: len(kv[1])):
            total = sum(1 for m in self.items.values() if m.folder == fid)
            known = "inbox" if fid == "f-inbox" else None
            out.append(Folder(fid, path, known, MAIL_FOLDER, total))
        return FolderTree(out)

    async def create_folder(
        self, parent: Folder | None, name: str, path: tuple[str, ...], folder_class: str
    ) -> Folder | None:
        if self.plan is not None:
            self._record("CREATE", folder="/".join(path))
            return Folder("planned:" + "/".join(path), path, None, folder_class, 0)
        return Folder(self._mkdir(path), path, None, folder_class, 0)

    def _record(self, operation: str, **params: Any) -> None:
        assert self.plan is not None
        # IMAP's verbs, which the plan's summary reads (`planpass._action`).
        self.plan.record("imap", "target", f"{operation} {USER}", params)

    def changes(self, folder: Folder, cursor: str | None) -> Round:
        if self.caps.cursor == "listing":
            assert cursor is None, "a listing store never gets a cursor back"
        return Round(self, folder.id, int(cursor) if cursor else None)

    def cursor_lost(self, exc: RemoteError) -> bool:
        return exc.code == "cursor-lost"

    async def inspect(self, refs: list[ItemRef]) -> dict[str, ItemInfo]:
        self.calls["inspect"] += 1
        return {
            r.item_id: _info(self.items[r.item_id].mime) for r in refs if r.item_id in self.items
        }

    async def export(
        self, refs: list[ItemRef], fmt: str, state_only: bool = False
    ) -> dict[str, Payload]:
        self.exports.append(([r.item_id for r in refs], state_only))
        self.events.append("export")
        self.exported.set()
        out = {}
        for r in refs:
            if (m := self.items.get(r.item_id)) is None:
                continue
            data = m.mime.decode() if fmt == EXCHANGE_STREAM else ""
            body = b"" if state_only or fmt != MIME else m.mime
            out[r.item_id] = Payload(
                fmt,
                data,
                str(m.version),
                mime=body,
                state=m.state,
                source_id=r.item_id,
                size=None if self.caps.inspect_before_export else len(m.mime),
                info=None if self.caps.inspect_before_export else _info(m.mime),
            )
        return out

    def _lost(self, folder_id: str, state: MessageState | None, made: Imported) -> Imported:
        if self.folders.get(folder_id) in self.loses_in and state is not None and state.answered:
            return Imported(made.item_id, made.change_key, LOST)
        return made

    async def import_item(
        self, folder_id: str, payload: Payload, replace: ItemRef | None = None
    ) -> Imported:
        return self._lost(folder_id, payload.state, await self._import(folder_id, payload, replace))

    async def _import(
        self, folder_id: str, payload: Payload, replace: ItemRef | None = None
    ) -> Imported:
        if self.plan is not None:
            if replace is not None:
                self._record("UID STORE FLAGS", item=replace.item_id)
                return Imported(replace.item_id, str(self.items[replace.item_id].version))
            self._record("APPEND", folder=folder_id, bytes=len(payload.mime))
            return Imported(None, None)
        if replace is not None:
            self.calls["update"] += 1
            m = self.items[replace.item_id]
            m.state, m.version = payload.state or MessageState(), m.version + 1
            if self.caps.completes_on_update:  # the update carries the whole item
                m.mime = payload.mime
            return Imported(replace.item_id, str(m.version))
        self.calls["import"] += 1
        body = payload.mime or payload.data.encode()
        dying = self.kill_after_import is not None and self.calls["import"] > self.kill_after_import
        if dying and self.partial:
            body = body.split(b"\r\n\r\n")[0] + b"\r\n\r\n"  # the body never came
        item_id = self._add(Message(folder_id, body, payload.state or MessageState()))
        if dying:
            raise Killed(item_id)
        return Imported(item_id, "1")

    async def import_items(
        self, folder_id: str, payloads: list[Payload]
    ) -> list[Imported | InvalidRequest]:
        """`BatchImport` (used where `caps.import_batch` > 1): each item as `import_item`
        makes it; a kill (`kill_after_import`) lands the batch's earlier items first."""
        self.batches.append((folder_id, len(payloads)))
        out: list[Imported | InvalidRequest] = []
        for payload in payloads:
            if payload.mime in self.refuse:
                out.append(InvalidRequest("refused", service="memory"))
                continue
            out.append(await self.import_item(folder_id, payload))
        return out

    def update_refused(self, exc: RemoteError) -> bool:
        return False

    async def copies(self, folder_id: str, exclude: set[str]) -> dict[str, list[ItemRef]]:
        out: dict[str, list[ItemRef]] = {}
        for item_id, m in self.items.items():
            if m.folder == folder_id and item_id not in exclude and m.identity:
                out.setdefault(m.identity, []).append(ItemRef(folder_id, item_id, str(m.version)))
        return out

    async def copies_of(
        self, folder_id: str, source_id: str, identity: str | None, exclude: set[str]
    ) -> list[ItemRef]:
        return (await self.copies(folder_id, exclude)).get(identity or "", [])

    async def move(self, ref: ItemRef, folder_id: str) -> Imported:
        if ref.item_id not in self.items:
            raise NotFound(f"no item {ref.item_id}", service="memory")
        if self.plan is not None:
            self._record("UID MOVE", item=ref.item_id, to=folder_id)
            return self._lost(folder_id, self.items[ref.item_id].state, Imported(None, None))
        self.calls["move"] += 1
        m = self.items.pop(ref.item_id)
        m.folder = folder_id
        return self._lost(folder_id, m.state, Imported(self._add(m), str(m.version)))

    async def change_keys(self, refs: list[ItemRef]) -> dict[str, str]:
        return {
            r.item_id: str(self.items[r.item_id].version) for r in refs if r.item_id in self.items
        }

    async def delete(self, ref: ItemRef) -> None:
        if ref.item_id not in self.items:
            raise NotFound(f"no item {ref.item_id}", service="memory")
        if self.plan is not None:
            self._record("UID EXPUNGE", item=ref.item_id)
            return
        self.calls["delete"] += 1
        del self.items[ref.item_id]
        self.log.append((ref.folder_id, ref.item_id))

    async def totals(self) -> dict[str, int]:
        return {f.id: f.total for f in (await self.list_folders()).folders}


class Round:
    """One round of a MemoryStore folder's change log after a sequence number."""

    def __init__(self, store: MemoryStore, folder: str, after: int | None) -> None:
        self.store, self.folder, self.after = store, folder, after

    async def pages(self) -> AsyncIterator[ChangePage]:
        s = self.store
        seen = s.log[self.after :] if self.after is not None else s.log
        ids = dict.fromkeys(i for f, i in seen if f == self.folder)
        changes = []
        for item_id in ids:
            m = s.items.get(item_id)
            if m is None or m.folder != self.folder:
                if self.after is not None:  # a full round reports what is there
                    changes.append(Change(item_id, removed=True))
                continue
            changes.append(
                Change(
                    item_id,
                    change_key=str(m.version),
                    created=m.state.received,
                    size=len(m.mime),
                    identity=m.identity,
                )
            )
        cursor = None if s.caps.cursor == "listing" else str(len(s.log))
        size = s.page or max(1, len(changes))
        parts = [changes[i : i + size] for i in range(0, len(changes), size)] or [[]]
        for n, part in enumerate(parts):
            if n and s.page_waits_for_export:
                # A page is a round trip in a real store; here the next one is read only
                # once an export started (a pass that never overlaps them fails here).
                await asyncio.wait_for(s.exported.wait(), 30)
            if n == s.lose_cursor_at_page:
                s.lose_cursor_at_page = None  # once
                raise RemoteError("the cursor is void", service="memory", code="cursor-lost")
            s.events.append("page")
            yield ChangePage(part, cursor if n == len(parts) - 1 else None)

    async def describe(self, new: list[Change]) -> list[Change]:
        return new


def _info(data: bytes) -> ItemInfo:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    return ItemInfo(str(msg["Subject"] or ""), msg.get_content_type())


def project_of(**migration: Any) -> Any:
    """A project whose [migration] settings are the defaults but for `migration`."""
    settings = {
        "folder_rules": [],
        "include_folders": [],
        "exclude_folders": [],
        "max_item_mb": 1,
        "encrypted": "skip",
        "deletions": "keep",
        "reconcile_tolerance": 0,
        **migration,
    }
    return SimpleNamespace(migration=SimpleNamespace(**settings), file="project.toml")


def mover_of(src: MailboxStore, tgt: MailboxStore) -> StoreMover:
    @asynccontextmanager
    async def open_stores(
        ctx: Context, subject: str
    ) -> AsyncIterator[tuple[MailboxStore, MailboxStore]]:
        yield src, tgt

    return StoreMover(open_stores)


def run_pass(tmp_path: Path, src: MailboxStore, tgt: MailboxStore, **migration: Any) -> PassResult:
    """One prestage pass of StoreMover between the two stores (its journal is kept)."""
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        journal.upsert_item("user", USER)  # discovery's row, where reconcile records its report
        project, run_id = project_of(**migration), journal.start_run("test")
        ctx = Context(project, journal, None, None, run_id=run_id)  # type: ignore[arg-type]
        return asyncio.run(mover_of(src, tgt).run(ctx, USER, "prestage", Window()))


def plan_pass(
    tmp_path: Path, src: MemoryStore, tgt: MemoryStore, **migration: Any
) -> planpass.Summary:
    """One prestage pass planned as `--plan` plans it (`planpass.plan_pass`: both stores in
    plan mode, the pass's journal a scratch copy of `run_pass`'s)."""
    recorder = WriteRecorder()
    src.plan = tgt.plan = recorder
    try:
        with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
            ctx = Context(project_of(**migration), journal, None, None, plan=recorder)  # type: ignore[arg-type]
            mover = mover_of(src, tgt)
            run = lambda c: mover.run(c, USER, "prestage", Window())  # noqa: E731
            return asyncio.run(planpass.plan_pass(ctx, USER, run, "imap"))
    finally:
        src.plan = tgt.plan = None


def rows(tmp_path: Path) -> list[dict[str, Any]]:
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        return list(journal.mapped_items(USER))


def test_mime_stores_copy_content_and_state_once(tmp_path: Path) -> None:
    """Two MIME-only stores (IMAP-like) agree on MIME; each message arrives once, in its
    mapped folder, with its bytes and typed state (read, flag, categories, dates); a second
    pass copies and exports nothing."""
    src, tgt = MemoryStore(), MemoryStore()
    flag = {"flagStatus": "flagged"}
    src.put(("INBOX",), "one", read=True, flag=flag, categories=("red",))
    src.put(("INBOX", "Projects"), "two", draft=True, sent="2024-01-14T08:00:00+00:00")
    assert negotiate(src, tgt) == MIME
    first = run_pass(tmp_path, src, tgt)
    assert first.counts["copied"] == 2 and first.status == "ok", first
    [one] = tgt.in_folder("INBOX")
    [two] = tgt.in_folder("INBOX", "Projects")
    assert one.mime == mime("one") and two.mime == mime("two")
    assert one.state == MessageState(read=True, flag=flag, categories=("red",), received=RECEIVED)
    assert two.state.draft and two.state.sent == "2024-01-14T08:00:00+00:00"
    exported = len(src.exports)
    second = run_pass(tmp_path, src, tgt)
    assert second.counts.get("copied", 0) == 0 and second.counts.get("updated", 0) == 0
    assert len(src.exports) == exported and len(tgt.items) == 2


def test_a_state_change_is_an_update_that_exports_state_only(tmp_path: Path) -> None:
    """A message read at the source after its copy: the update exports its state alone
    (no MIME) and brings the copy in line, without a second copy."""
    src, tgt = MemoryStore(), MemoryStore()
    item = src.put(("INBOX",), "one")
    run_pass(tmp_path, src, tgt)
    src.change(item, read=True, categories=("blue",))
    result = run_pass(tmp_path, src, tgt)
    assert result.counts["updated"] == 1 and result.counts.get("copied", 0) == 0, result
    assert src.exports[-1] == ([item], True)
    [copy] = tgt.in_folder("INBOX")
    assert copy.state.read and copy.state.categories == ("blue",) and copy.mime == mime("one")


@pytest.mark.parametrize("moves", [True, False])
def test_a_move_at_the_source_moves_the_copy(tmp_path: Path, moves: bool) -> None:
    """A message moved at the source (new id, same Message-ID) ends up once in the mapped
    new folder: moved in the target where it can move items, else imported there and the
    old copy deleted; counted as moved, not copied."""
    src, tgt = MemoryStore(), MemoryStore(moves=moves)
    item = src.put(("INBOX",), "one")
    src.put(("INBOX", "Done"), "other")
    run_pass(tmp_path, src, tgt)
    src.move_here(item, "INBOX", "Done")
    result = run_pass(tmp_path, src, tgt)
    assert result.counts["moved"] == 1 and result.counts.get("copied", 0) == 0, result
    assert tgt.in_folder("INBOX") == []
    assert sorted(m.mime for m in tgt.in_folder("INBOX", "Done")) == [mime("one"), mime("other")]
    assert tgt.calls["move"] == (1 if moves else 0)
    assert tgt.calls["delete"] == (0 if moves else 1)
    assert all(r["status"] == "copied" and not r["reason"] for r in rows(tmp_path))


@pytest.mark.parametrize("moves", [True, False])
def test_a_moved_item_whose_copy_loses_its_replied_state_is_counted_and_listed(
    tmp_path: Path, moves: bool
) -> None:
    """A replied message moved at the source into a folder whose target copies lose that
    state: moved in the target (its update answers `lost`) or copied there and the old
    copy deleted (the create answers `lost`); either way counted `not_kept`, and once the
    move is done its row keeps the `NOT_KEPT` reason, so the reconciliation lists it with
    its folder and subject, in that pass and the next."""
    src, tgt = MemoryStore(), MemoryStore(moves=moves)
    tgt.loses_in = {("INBOX", "Done")}
    item = src.put(("INBOX",), "replied", answered=True)
    src.put(("INBOX", "Done"), "other")
    first = run_pass(tmp_path, src, tgt)
    assert not first.counts.get("not_kept"), first
    src.move_here(item, "INBOX", "Done")
    result = run_pass(tmp_path, src, tgt)
    assert result.counts["moved"] == 1 and result.counts.get("copied", 0) == 0, result
    assert result.counts["not_kept"] == 1, result
    assert "1 without " + LOST in result.detail, result.detail
    [row] = [r for r in rows(tmp_path) if r["source_item_id"] != item and r["subject"]]
    assert row["status"] == "copied" and row["reason"] == sync.NOT_KEPT + LOST, row
    assert row["subject"] == "replied"
    again = run_pass(tmp_path, src, tgt)
    assert not again.counts.get("not_kept") and again.counts.get("moved", 0) == 0, again
    assert [r["reason"] for r in rows(tmp_path) if r["reason"]] == [sync.NOT_KEPT + LOST]


@pytest.mark.parametrize("atomic", [True, False])
def test_a_pass_killed_mid_import_leaves_one_whole_copy(tmp_path: Path, atomic: bool) -> None:
    """A pass that dies after an import landed but before it was recorded: the next pass
    adopts that copy (atomic imports) or deletes the partial copy and copies again
    (non-atomic); either way one whole copy per message."""
    src, tgt = MemoryStore(), MemoryStore(atomic_import=atomic)
    for n in range(3):
        src.put(("INBOX",), f"m{n}")
    tgt.kill_after_import, tgt.partial = 1, not atomic
    with pytest.raises(Killed):
        run_pass(tmp_path, src, tgt)
    assert "importing" in {r["status"] for r in rows(tmp_path)}
    tgt.kill_after_import = None
    run_pass(tmp_path, src, tgt)
    assert sorted(m.mime for m in tgt.in_folder("INBOX")) == [mime(f"m{n}") for n in range(3)]
    assert {r["status"] for r in rows(tmp_path)} <= {"copied", "changed"}
    assert run_pass(tmp_path, src, tgt).counts.get("copied", 0) == 0
    assert len(tgt.items) == 3
    assert (tgt.calls["delete"] > 0) == (not atomic)  # a partial copy is never adopted


def test_a_batch_importing_target_takes_creates_in_batches_per_folder(tmp_path: Path) -> None:
    """A target offering `import_items` (`caps.import_batch` 3) gets runs of creates into
    one folder, at most 3 per call, and updates one by one through `import_item`; an item
    the target refuses inside a batch is skipped with its reason, the others are copied."""
    src, tgt = MemoryStore(), MemoryStore(import_batch=3)
    src.caps = replace(src.caps, export_batch=8)
    for n in range(5):
        src.put(("INBOX",), f"i{n}")
    for n in range(2):
        src.put(("INBOX", "Done"), f"d{n}")
    tgt.refuse = {mime("i3")}
    first = run_pass(tmp_path, src, tgt)
    assert (first.counts["copied"], first.counts["skipped"]) == (6, 1), first
    inbox, done = tgt.folder_id("INBOX"), tgt.folder_id("INBOX", "Done")
    assert sorted(tgt.batches) == sorted([(inbox, 3), (inbox, 2), (done, 2)])
    assert tgt.calls["import"] == 6  # every made copy went through a batch
    assert sorted(m.mime for m in tgt.in_folder("INBOX")) == [mime(f"i{n}") for n in (0, 1, 2, 4)]
    skipped = [r for r in rows(tmp_path) if r["status"] == "skipped"]
    assert [r["reason"] for r in skipped] == ["refused"]
    src.change(next(i for i, m in src.items.items() if m.mime == mime("d0")), read=True)
    second = run_pass(tmp_path, src, tgt)
    assert second.counts["updated"] == 1 and second.counts.get("copied", 0) == 0, second
    assert len(tgt.batches) == 3  # the update went alone, through import_item


def test_a_pass_killed_inside_an_import_batch_leaves_one_copy_each(tmp_path: Path) -> None:
    """A pass that dies inside a batch import, after some of its items landed and before
    any was recorded: the next pass adopts those copies and copies the rest, once each."""
    src, tgt = MemoryStore(), MemoryStore(import_batch=4)
    for n in range(6):
        src.put(("INBOX",), f"m{n}")
    tgt.kill_after_import = 2
    with pytest.raises(Killed):
        run_pass(tmp_path, src, tgt)
    assert "importing" in {r["status"] for r in rows(tmp_path)}
    tgt.kill_after_import = None
    run_pass(tmp_path, src, tgt)
    assert sorted(m.mime for m in tgt.in_folder("INBOX")) == [mime(f"m{n}") for n in range(6)]
    assert run_pass(tmp_path, src, tgt).counts.get("copied", 0) == 0
    assert len(tgt.items) == 6


@pytest.mark.parametrize("inspect_first", [True, False])
def test_protected_and_oversize_mail_is_skipped_and_reported(
    tmp_path: Path, inspect_first: bool
) -> None:
    """S/MIME and oversize messages are skipped with a reason, whether the source is read
    before the export (`inspect`) or the export itself is read (`inspect_before_export`
    False: the payload's `info` and `size`)."""
    src, tgt = MemoryStore(inspect_before_export=inspect_first), MemoryStore()
    src.put(("INBOX",), "plain")
    smime = src.put(("INBOX",), "sealed")
    src.items[smime].mime = mime("sealed", "application/pkcs7-mime")
    big = src.put(("INBOX",), "big")
    src.items[big].mime = mime("big", body="x" * (2 << 20))
    result = run_pass(tmp_path, src, tgt)
    assert (result.counts["copied"], result.counts["skipped"]) == (1, 2), result
    reasons = {r["subject"] or r["source_item_id"]: r["reason"] for r in rows(tmp_path)}
    assert "encrypted" in str(reasons.get("sealed") or reasons.get(smime))
    assert "larger than 1 MB" in str(reasons.get("big") or reasons.get(big))
    assert (src.calls["inspect"] > 0) == inspect_first  # one per export batch, or none


def test_deletions_are_mirrored_when_asked(tmp_path: Path) -> None:
    """A message deleted at the source is reported (keep) and then deleted in the target
    (mirror), once."""
    src, tgt = MemoryStore(), MemoryStore()
    item = src.put(("INBOX",), "one")
    run_pass(tmp_path, src, tgt)
    asyncio.run(src.delete(ItemRef(src.folder_id("INBOX"), item)))
    kept = run_pass(tmp_path, src, tgt)
    assert kept.counts["deleted_at_source"] == 1 and len(tgt.items) == 1
    mirrored = run_pass(tmp_path, src, tgt, deletions="mirror")
    assert mirrored.counts["deleted_in_target"] == 1 and tgt.items == {}


def test_formats_are_negotiated_richest_first_or_refused() -> None:
    """Two stores that both speak the Exchange stream use it; a stream-only store and a
    MIME-only one have no format in common: a ConfigError naming both sides' formats."""
    both = frozenset({EXCHANGE_STREAM, MIME})
    assert negotiate(MemoryStore(formats=both), MemoryStore(formats=both)) == EXCHANGE_STREAM
    assert negotiate(MemoryStore(formats=both), MemoryStore()) == MIME
    stream = MemoryStore(formats=frozenset({EXCHANGE_STREAM}))
    with pytest.raises(ConfigError) as raised:
        negotiate(stream, MemoryStore())
    assert "exchange-stream" in str(raised.value) and "mime" in str(raised.value)


def test_a_listing_store_lists_every_round_in_full_and_sees_deletions(tmp_path: Path) -> None:
    """A source without a change feed (cursor style "listing"): no cursor is saved, every
    round lists the folder, an unchanged item is not copied again, a changed one is an
    update and one no longer listed is gone (reported, then mirrored)."""
    src, tgt = MemoryStore(cursor="listing"), MemoryStore()
    keep = src.put(("INBOX",), "keep")
    drop = src.put(("INBOX",), "drop")
    assert run_pass(tmp_path, src, tgt).counts["copied"] == 2
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        assert journal.get_checkpoint(USER, "f-inbox", "memory") is None
    src.change(keep, read=True)
    del src.items[drop]  # gone without a trace in any log: only a full listing shows it
    again = run_pass(tmp_path, src, tgt)
    assert again.counts.get("copied", 0) == 0 and again.counts["updated"] == 1, again
    assert again.counts["deleted_at_source"] == 1
    assert run_pass(tmp_path, src, tgt, deletions="mirror").counts["deleted_in_target"] == 1
    assert [m.mime for m in tgt.items.values()] == [mime("keep")]


def test_a_partial_copy_is_adopted_and_completed_where_an_update_completes_it(
    tmp_path: Path,
) -> None:
    """A non-atomic target whose update makes a copy whole (`completes_on_update`): the
    partial copy a killed pass left is adopted and completed by an update carrying the whole
    item, never deleted nor made twice; a copy made twice over is deleted."""
    src, tgt = MemoryStore(), MemoryStore(atomic_import=False, completes_on_update=True)
    for n in range(3):
        src.put(("INBOX",), f"m{n}")
    tgt.kill_after_import, tgt.partial = 1, True
    with pytest.raises(Killed):
        run_pass(tmp_path, src, tgt)
    tgt.kill_after_import = None
    [(partial_id, partial)] = [(i, m) for i, m in tgt.items.items() if m.mime.endswith(b"\r\n\r\n")]
    tgt.items["twice"] = replace(partial)  # the same item made twice over by the dead pass
    result = run_pass(tmp_path, src, tgt)
    assert result.counts["copied"] == 1 and result.counts["updated"] == 1, result
    assert tgt.calls["delete"] == 1 and "twice" not in tgt.items
    assert sorted(m.mime for m in tgt.in_folder("INBOX")) == [mime(f"m{n}") for n in range(3)]
    assert partial_id in {r["target_item_id"] for r in rows(tmp_path)}
    assert src.exports[-1][1] is False  # the update exported the whole item
    assert run_pass(tmp_path, src, tgt).counts.get("copied", 0) == 0 and len(tgt.items) == 3


def test_folders_outside_the_rules_map_default_to_default_and_others_by_path(
    tmp_path: Path,
) -> None:
    """A source whose folders the project's rules do not touch (`folder_rules` False, like
    contacts or calendars): its default folder goes to the target's default whatever it is
    called, another folder to the same path (made once), though the rules exclude both."""
    src, tgt = MemoryStore(folder_rules=False), MemoryStore()
    tgt.folders["f-inbox"] = ("Posteingang",)
    src.put(("INBOX",), "default")
    src.put(("Suppliers",), "other")
    rules = {"exclude_folders": ["INBOX", "Suppliers"], "folder_rules": ["^Suppliers->Moved"]}
    assert run_pass(tmp_path, src, tgt, **rules).counts["copied"] == 2
    assert [m.mime for m in tgt.in_folder("Posteingang")] == [mime("default")]
    assert [m.mime for m in tgt.in_folder("Suppliers")] == [mime("other")]
    src.put(("Suppliers",), "later")
    assert run_pass(tmp_path, src, tgt, **rules).counts["copied"] == 1
    assert sorted(tgt.folders.values()) == [("Posteingang",), ("Suppliers",)]


class _Closing:
    """A run gate's clock that closes the window once `after` imports have landed."""

    def __init__(self, store: MemoryStore, after: int) -> None:
        self.store, self.after = store, after
        self.open_at = datetime(2026, 12, 5, 21, 0, tzinfo=UTC)  # inside 20:00-06:00 UTC
        self.closed_at = datetime(2026, 12, 6, 7, 0, tzinfo=UTC)

    def now(self) -> datetime:
        closed = self.store.calls["import"] >= self.after
        return self.closed_at if closed else self.open_at

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - never waits here
        raise AssertionError("the sync engine does not sleep on its gate")


def test_a_window_closing_mid_pass_stops_at_a_batch_boundary_and_the_next_pass_finishes(
    tmp_path: Path,
) -> None:
    """The run window closes after the 2nd import: the pass stops with `WindowClosed` after
    the imports in flight are journaled (no row left `importing`), copied < all; a pass in
    the window again copies the rest, each message once."""
    src, tgt = MemoryStore(), MemoryStore()
    for n in range(12):
        src.put(("INBOX",), f"m{n:02d}")
    gate = schedule.RunGate(schedule.Windows.parse(["20:00-06:00"]), _Closing(tgt, 2))
    with schedule.gated(gate), pytest.raises(schedule.WindowClosed) as closed:
        run_pass(tmp_path, src, tgt)
    copied = closed.value.counts.get("copied", 0)
    assert 2 <= copied < 12, closed.value.counts
    statuses = Counter(r["status"] for r in rows(tmp_path))
    assert statuses["copied"] == copied and "importing" not in statuses, statuses
    assert len(tgt.items) == copied  # every import that landed is journaled
    rest = run_pass(tmp_path, src, tgt)  # no gate: the window is open
    assert rest.counts["copied"] == 12 - copied
    assert sorted(m.mime for m in tgt.in_folder("INBOX")) == [mime(f"m{n:02d}") for n in range(12)]


def test_a_new_mailbox_is_copied_while_its_scan_goes_on(tmp_path: Path) -> None:
    """A mailbox the journal holds nothing of: its first scanned page is exported before the
    scan reads the next one (the copy does not wait for the whole scan), and every message
    still arrives exactly once; the next pass, over a mailbox with rows, copies nothing."""
    src, tgt = MemoryStore(), MemoryStore(import_batch=2)
    src.page, src.page_waits_for_export = 3, True
    for n in range(8):
        src.put(("INBOX",), f"m{n}")
    first = run_pass(tmp_path, src, tgt)
    assert first.counts["copied"] == 8 and first.status == "ok", first
    assert src.events.index("export") < len(src.events) - 1 - src.events[::-1].index("page")
    assert sorted(m.mime for m in tgt.in_folder("INBOX")) == [mime(f"m{n}") for n in range(8)]
    assert {r["status"] for r in rows(tmp_path)} == {"copied"}
    src.put(("INBOX",), "later")
    second = run_pass(tmp_path, src, tgt)
    assert second.counts["copied"] == 1 and len(tgt.items) == 9, second


def test_a_cursor_lost_while_a_new_mailbox_is_copied_copies_nothing_twice(
    tmp_path: Path,
) -> None:
    """A cursor lost mid-scan of a new mailbox (a new IMAP UIDVALIDITY) while its first
    pages are being copied: the copies under way are finished and recorded, the folder is
    scanned again in the usual order, and every message is in the target once."""
    src, tgt = MemoryStore(), MemoryStore()
    src.page, src.page_waits_for_export, src.lose_cursor_at_page = 2, True, 2
    for n in range(7):
        src.put(("INBOX",), f"m{n}")
    result = run_pass(tmp_path, src, tgt)
    assert result.counts["copied"] == 7 and result.status == "ok", result
    assert sorted(m.mime for m in tgt.in_folder("INBOX")) == [mime(f"m{n}") for n in range(7)]
    assert {r["status"] for r in rows(tmp_path)} == {"copied"}
    assert run_pass(tmp_path, src, tgt).counts.get("copied", 0) == 0 and len(tgt.items) == 7


def test_the_first_export_batch_holds_the_first_batch_share_of_the_bounds() -> None:
    """`caps.first_batch_share`: a pipeline's first export batch holds that share of the
    count and byte bounds (the target starts on it sooner), the later ones the whole;
    jobs streamed in parts send the first batch with the first part, and a later part's
    short last batch still waits for the next part. Share 1: the batches as before."""
    jobs = [sync.Job({"source_item_id": str(n), "size": 10}, "d") for n in range(10)]

    async def sizes(share: int, parts: list[int] | None = None, cap: int = 1000) -> list[int]:
        async def stream() -> AsyncIterator[list[sync.Job]]:
            start = 0
            for n in parts or []:
                yield jobs[start : start + n]
                start += n

        source = stream() if parts else jobs
        return [len(b) async for b in sync._batched(source, 4, cap, share)]

    assert asyncio.run(sizes(4)) == [1, 4, 4, 1]
    assert asyncio.run(sizes(1)) == [4, 4, 2]
    assert asyncio.run(sizes(4, [3, 7])) == [1, 4, 4, 1]
    assert asyncio.run(sizes(1, [3, 7])) == [4, 4, 2]
    assert asyncio.run(sizes(2, cap=40)) == [2, 4, 4]  # 20 bytes first, then 40


def recreated(old: MemoryStore) -> MemoryStore:
    """`old` re-created with its content restored, as Exchange shows a re-created mailbox:
    the same messages (same Message-IDs, same state) in the same folder paths, under new
    folder and item ids."""
    new = MemoryStore()
    new.ids = itertools.count(1000)
    new.folders = {}
    for fid, path in old.folders.items():
        new.folders[f"g-{fid}"] = path
    for m in old.items.values():
        new._add(Message(f"g-{m.folder}", m.mime, m.state, m.version))
    return new


def test_a_mailbox_whose_every_folder_id_changed_is_scanned_again_copying_nothing_twice(
    tmp_path: Path,
) -> None:
    """A source re-created between passes (every folder and item id new, no saved cursor's
    folder listed any more): its cursors are dropped and it is scanned in full, said once in
    the pass's events with folder paths, the copies already made are kept (adopted by
    identity, not made again), only the new message is copied, and the next pass is an
    ordinary one."""
    src, tgt = MemoryStore(), MemoryStore()
    src.put(("INBOX",), "one")
    src.put(("INBOX", "Projects"), "two")
    assert run_pass(tmp_path, src, tgt).counts["copied"] == 2
    copies = set(tgt.items)
    again = recreated(src)
    again.put(("INBOX",), "three")
    result = run_pass(tmp_path, again, tgt)
    assert result.status == "ok" and result.counts["copied"] == 1, result
    assert sorted(m.mime for m in tgt.items.values()) == sorted(
        mime(s) for s in ("one", "two", "three")
    )
    assert copies <= set(tgt.items)  # the first copies are the ones kept
    [said] = result.events
    assert "INBOX" in said and "INBOX/Projects" in said and "g-" not in said, said
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        cursors = {c["folder_id"] for c in journal.checkpoints(USER) if c["kind"] == "memory"}
        assert cursors and all(str(f).startswith("g-") for f in cursors), cursors
        assert {r["source_folder_id"] for r in journal.mapped_items(USER)} <= set(again.folders)
    quiet = run_pass(tmp_path, again, tgt)
    assert quiet.events == () and quiet.counts.get("copied", 0) == 0, quiet
    assert len(tgt.items) == 3


def test_a_pass_killed_after_the_gone_cursors_were_noted_says_it_and_copies_once(
    tmp_path: Path,
) -> None:
    """Kill-safe: a pass that died after dropping a re-created mailbox's cursors (the fact
    journaled, the rows of its vanished folders settled) leaves the next pass to scan in
    full, say it once and copy nothing twice."""
    src, tgt = MemoryStore(), MemoryStore()
    src.put(("INBOX",), "one")
    run_pass(tmp_path, src, tgt)
    again = recreated(src)
    again.kill_after_import = 0  # the pass dies at its first import: after the scan
    again.put(("INBOX",), "two")
    tgt.kill_after_import = 0
    with pytest.raises(BaseException):  # noqa: B017 - whatever the kill raises
        run_pass(tmp_path, again, tgt)
    tgt.kill_after_import = None
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        left = [c for c in journal.checkpoints(USER) if c["kind"] == sync.GONE_KIND]
        assert len(left) == 1, left  # the fact outlived the kill; the old cursors did not
        assert not [c for c in journal.checkpoints(USER) if c["folder_id"] in src.folders]
    result = run_pass(tmp_path, again, tgt)
    [said] = result.events
    assert "INBOX" in said, said
    assert sorted(m.mime for m in tgt.items.values()) == [mime("one"), mime("two")]
    assert run_pass(tmp_path, again, tgt).events == ()


def contents(store: MemoryStore) -> Any:
    """Everything a store holds: folders, messages (folder, bytes, state, version), its log."""
    items = {i: (m.folder, m.mime, m.state, m.version) for i, m in store.items.items()}
    return dict(store.folders), items, list(store.log)


def plan_then_run(
    tmp_path: Path, src: MemoryStore, tgt: MemoryStore, **migration: Any
) -> tuple[dict[str, int], PassResult, Counter[str]]:
    """Plan a pass (`plan_pass`), check that it changed neither store nor anything of the
    project's journal (item map, cursors, logs) and sent no progress event, then run it:
    (the plan's counts, the real pass's result, the target's writes by kind in it)."""
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        journal_before = journal.snapshot(include_logs=True)
    stores_before = contents(src), contents(tgt)
    events: list[progress.PassEvent] = []
    with progress.listening(events.append):
        planned = plan_pass(tmp_path, src, tgt, **migration)
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        assert journal.snapshot(include_logs=True) == journal_before
    assert (contents(src), contents(tgt)) == stores_before
    assert events == []
    calls = Counter(tgt.calls)
    real = run_pass(tmp_path, src, tgt, **migration)
    made = Counter(tgt.calls)
    made.subtract(calls)
    return planned.counts, real, made


@pytest.mark.parametrize("moves", [True, False])
def test_a_plan_writes_nothing_and_says_what_the_real_pass_then_writes(
    tmp_path: Path, moves: bool
) -> None:
    """A planned pass (`planpass.plan_pass`, as `--plan` runs it) that would move a copy (a
    move at the source: the copy moved, or copied anew and the old one deleted), mirror a
    deletion (its row unmapped) and recover a partial import a killed pass left (deleted,
    copied again): neither store changes, nor anything of the project's journal (item map,
    cursors, logs); no progress event is sent; and the copies (with their bytes), moves and
    deletions it plans are exactly those the real pass then makes."""
    src, tgt = MemoryStore(), MemoryStore(moves=moves, atomic_import=False)
    moved = src.put(("INBOX",), "moved")
    gone = src.put(("INBOX",), "gone")
    src.put(("INBOX", "Done"), "stays")
    run_pass(tmp_path, src, tgt)
    src.put(("INBOX",), "late")
    tgt.kill_after_import, tgt.partial = tgt.calls["import"], True
    with pytest.raises(Killed):
        run_pass(tmp_path, src, tgt)
    tgt.kill_after_import = None
    assert {r["status"] for r in rows(tmp_path)} == {"copied", "importing"}
    src.move_here(moved, "INBOX", "Done")
    asyncio.run(src.delete(ItemRef(src.folder_id("INBOX"), gone)))
    said, real, made = plan_then_run(tmp_path, src, tgt, deletions="mirror")
    # Moved where the target moves, else copied anew and the old copy deleted.
    expected = (1, 1, 2) if moves else (2, 0, 3)
    assert (said["copied"], said["moved"], said["deleted_in_target"]) == expected, said
    assert (made["import"], made["move"], made["delete"]) == expected, made
    copied = [mime("late")] + ([] if moves else [mime("moved")])
    assert said["bytes"] == sum(len(m) for m in copied), said
    assert (real.counts["copied"], real.counts["moved"], real.counts["deleted_in_target"]) == (
        1,
        1,
        1,
    ), real
    assert sorted(m.mime for m in tgt.in_folder("INBOX")) == [mime("late")]
    assert sorted(m.mime for m in tgt.in_folder("INBOX", "Done")) == [mime("moved"), mime("stays")]


@pytest.mark.parametrize("moved_away", [False, True])
def test_a_plan_recovers_an_interrupted_import_as_the_real_pass_does(
    tmp_path: Path, moved_away: bool
) -> None:
    """A killed pass left a landed copy unrecorded (atomic target): a plan adopts it and
    plans its update (`adopt_interrupted`), or, its message moved away at the source since,
    settles it as the moved message's old copy (`settle_left`), copied anew and deleted;
    the plan writes nothing and plans exactly the copies, updates and deletions the real
    pass then makes, each message ending up in the target once."""
    src, tgt = MemoryStore(), MemoryStore()
    for n in range(4):
        src.put(("INBOX",), f"m{n}")
    src.put(("INBOX", "Done"), "stays")
    tgt.kill_after_import = 1
    with pytest.raises(Killed):
        run_pass(tmp_path, src, tgt)
    tgt.kill_after_import = None
    landed = {m.mime for m in tgt.items.values()}
    [stuck] = [
        r
        for r in rows(tmp_path)
        if r["status"] == "importing" and src.items[r["source_item_id"]].mime in landed
    ]
    if moved_away:
        src.move_here(stuck["source_item_id"], "INBOX", "Done")
    said, real, made = plan_then_run(tmp_path, src, tgt)
    planned = (said["copied"], said["updated"], said["moved"], said["deleted_in_target"])
    assert planned == (made["import"], made["update"], made["move"], made["delete"]), (said, made)
    assert made["delete"] == (1 if moved_away else 0) and made["update"] == (0 if moved_away else 1)
    assert real.counts.get("moved", 0) == (1 if moved_away else 0), real
    everything = sorted(m.mime for m in src.items.values())
    assert sorted(m.mime for m in tgt.items.values()) == everything
    assert sorted(m.mime for m in tgt.in_folder("INBOX", "Done")) == sorted(
        m.mime for m in src.in_folder("INBOX", "Done")
    )


def test_a_plan_reads_the_change_key_an_interrupted_update_forgot(tmp_path: Path) -> None:
    """A copy whose change key a killed update left forgotten (`Sink.mark`): the plan reads
    it from the target (`change_keys`) and plans the update the real pass then makes, not
    a conflict; and writes nothing."""
    src, tgt = MemoryStore(), MemoryStore()
    item = src.put(("INBOX",), "one")
    run_pass(tmp_path, src, tgt)
    src.change(item, read=True)
    with Journal.open(f"sqlite:///{tmp_path / 'j.db'}") as journal:
        journal.map_item(USER, item, target_change_key=None)  # as `Sink.mark` leaves it
    said, real, made = plan_then_run(tmp_path, src, tgt)
    assert said["updated"] == made["update"] == 1, (said, made)
    assert real.counts["updated"] == 1 and not real.counts.get("update_conflicts"), real
    [copy] = tgt.in_folder("INBOX")
    assert copy.state.read
