"""What the phases ask of an endpoint's data plane, whatever kind of endpoint it is.

`MailboxStore` is one mailbox on one endpoint (a Microsoft 365 mailbox through one of
Graph's APIs, an IMAP account, an EWS mailbox...): its folders, what changed in a folder
since a cursor, items exported in batches and imported one by one (or in batches, where\na store offers `BatchImport`), per-folder totals.
`migrate/sync.py` is the one sync algorithm over two of them; a store never touches the
journal, and the sync algorithm never spells a URL or a protocol command.

The vocabulary is Exchange's, because it is the richest of the kinds: items have an item
class (`IPM.Note` for mail, MS-OXCMSG PidTagMessageClass) and folders a folder class
(`IPF.Note` for mail folders, MS-OXOSFLD PidTagContainerClass). A store of a poorer kind
(IMAP: mail only) maps its items and folders onto these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from coexist.errors import InvalidRequest, RemoteError

MAIL_CLASS = "IPM.Note"  # item class of mail (resources/mailboxitem `type`)
MAIL_FOLDER = "IPF.Note"  # folder class of mail folders (resources/mailboxfolder `type`)

# Payload formats. EXCHANGE_STREAM: the opaque full-fidelity stream of Graph's mailbox
# import/export API (resources/mailbox-import-export-api-overview): only another Exchange
# mailbox can take it, and it keeps every property. MIME: RFC 5322 bytes plus the typed
# properties MIME does not carry (read/flag state, dates, categories).
EXCHANGE_STREAM = "exchange-stream"
MIME = "mime"
# One Graph PIM resource as JSON, per class (stores/graph_pim): a contact; an event, a series
# master with its occurrences (so exceptions and cancellations travel); a To Do task with
# its checklist. Only a store over the same Graph API takes them.
CONTACT_JSON = "graph-contact-json"
EVENT_JSON = "graph-event-json"
TASK_JSON = "graph-task-json"

# How a store remembers where a folder's changes stopped: a delta link (Graph), a
# UIDVALIDITY + UID watermark (IMAP), a sync state (EWS SyncFolderItems); or not at all
# ("listing": no change feed, every round lists the whole folder, and what it no longer
# lists is gone).
CursorStyle = Literal["delta-token", "uid-watermark", "sync-state", "listing"]


@dataclass(frozen=True)
class Capabilities:
    """What a store can do, so the sync algorithm picks its path without knowing the kind."""

    exports: frozenset[str]  # payload formats it can export
    accepts: frozenset[str]  # payload formats it can import
    cursor: CursorStyle
    folder_classes: frozenset[str]  # folder classes it holds (IPF.Note, IPF.Contact ...)
    checkpoint_kind: str  # the journal's folder_state kind its cursors are saved under
    export_batch: int  # items per export call
    export_bytes: int  # bytes of items per export call (memory stays flat)
    imports_in_flight: int  # concurrent imports into one mailbox
    # Export batches read from one mailbox at once (as a source); the sync algorithm keeps
    # one more exported batch queued, so memory grows by a batch per extra export.
    exports_in_flight: int = 1
    # A pipeline's first export batch holds 1/first_batch_share of `export_batch` and
    # `export_bytes` (as a source): nothing is imported before it is exported, so a smaller
    # one lets the target start sooner (1: a batch like the others).
    first_batch_share: int = 1
    # Whether `move` moves a copy between folders of this store (as a target); without it an
    # item moved at the source is imported into its new folder and the old copy deleted.
    moves: bool = False
    # Whether one `import_item` makes the whole item or nothing. A store that makes an item
    # in several requests (a create, then attachments) is not: a copy an interrupted pass
    # left behind may be partial, so it is deleted and the item copied again, where an
    # atomic import's copy is adopted.
    atomic_import: bool = True
    # Whether `inspect` reads an item more cheaply than `export` (as a source). Where it does
    # not (the item is read whole anyway), the skip rules read the exported payload's `info`
    # and `size` instead, after the export.
    inspect_before_export: bool = True
    # Whether an update (`import_item(replace=...)`) makes the copy whole, whatever an
    # interrupted create left out of it (a series' exceptions, a task's checklist). Such a
    # non-atomic target's interrupted copy is adopted and completed by an update instead of
    # deleted and made again; its updates carry the whole item, not the state alone.
    completes_on_update: bool = False
    # Whether the project's folder rules (include/exclude/rename, migrate.folders) apply to
    # this store's folders as a source. Where they do not (contacts, calendars, To Do lists
    # through their own APIs), a well-known folder maps to the target's folder of the same
    # well-known name (default to default, whatever either is called) and every other folder
    # to the same path, made when missing.
    folder_rules: bool = True
    # Items per `BatchImport.import_items` call, for a store that offers one (as a target);
    # 1: items are imported one `import_item` at a time. A store whose protocol writes many
    # items in one command (IMAP MULTIAPPEND, RFC 3502) takes a batch per call: the sync
    # algorithm then runs one task per batch, not one per item.
    import_batch: int = 1
    # Whether a folder listed with `total` 0 holds nothing its change feed would report (as a
    # source). Such a folder with no saved cursor and no row in the journal is not scanned
    # (`sync.unscanned`): no request, no cursor; its first item makes `total` > 0 and the
    # next pass reads it in full.
    empty_means_nothing: bool = False
    # folder_state kinds the store keeps per user and side besides its cursors (folder_id
    # "source" / "target": a mailbox id, default folder names). A source mailbox whose
    # cursors name a mailbox or folders gone (re-created) has them dropped with its cursors
    # (`sync.drop_gone_cursors`).
    side_state: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Folder:
    """One folder: its path of names from the top, the well-known folder it is (top level
    only: inbox, sentitems, calendar ...), its folder class and how many items it holds."""

    id: str
    path: tuple[str, ...]
    well_known: str | None
    folder_class: str
    total: int


@dataclass(frozen=True)
class FolderTree:
    """Every folder a store offers, parents before children, and how many it left out
    (search folders, system folders: views of items other folders hold)."""

    folders: list[Folder]
    left_out: int = 0
    # The store found its mailbox re-created since the journal kept its id (a new mailbox
    # id): copies the journal names there may be gone with the old one
    # (`sync.reverify_copies`, for a target). Kept as a folder_state row (REPLACED_KIND,
    # folder_id: the side) until the journal's copies were checked again.
    replaced: bool = False


REPLACED_KIND = "mailbox-replaced"


@dataclass(frozen=True)
class Change:
    """An item reported by a folder's change feed: new or changed, or removed from it.

    `identity` names the item across stores and folders ("mid:<Message-ID>" or a store's own
    key) and `subject` is for people; a store that learns them only on request leaves them
    None here and fills them in `ChangeRound.describe`."""

    id: str
    removed: bool = False
    change_key: str | None = None
    created: str | None = None  # ISO 8601: when it arrived (what the pass window goes by)
    size: int = 0
    kind: str = MAIL_CLASS  # item class
    identity: str | None = None
    subject: str | None = None


@dataclass(frozen=True)
class ChangePage:
    """One page of a folder's change feed; `cursor` (at the end of a round) is where the
    next round starts, to be saved only after the page's changes are recorded."""

    changes: list[Change]
    cursor: str | None = None


@dataclass(frozen=True)
class ItemRef:
    """An item of a store: the folder it is in, its id, its change key if known."""

    folder_id: str
    item_id: str
    change_key: str | None = None


@dataclass(frozen=True)
class ItemInfo:
    """What the skip rules read of an item before it is exported: subject, and the top-level
    MIME content type and content class (lower case) that show protected mail."""

    subject: str | None = None
    content_type: str = ""
    content_class: str = ""


@dataclass(frozen=True)
class MessageState:
    """The typed properties of a message that its MIME does not carry, in Exchange's terms
    (resources/message): what the MIME format travels with, and all an update carries.

    An IMAP store maps \\Seen to `read`, \\Draft to `draft`, \\Flagged to
    `flag={"flagStatus": "flagged"}`, keywords to `categories`, INTERNALDATE to
    `received`, \\Answered to `answered`, $Forwarded to `forwarded` and the MIME
    Importance/X-Priority headers to `importance` (known only where the message was read,
    not in a state-only export)."""

    read: bool = False
    draft: bool = False
    # resources/followupflag: `flagStatus` (notFlagged, flagged, complete) and, where the
    # store has them, `startDateTime`/`dueDateTime`/`completedDateTime`; None: no flag state.
    flag: Mapping[str, Any] | None = None
    categories: tuple[str, ...] = ()
    # low, normal, high (resources/message `importance`); None: not known (a state-only
    # export of a store that keeps it in the message text): an update leaves the copy's as it is.
    importance: str | None = None
    received: str | None = None  # ISO 8601: delivery time (IMAP INTERNALDATE)
    sent: str | None = None  # ISO 8601: submit time
    # The user replied to / forwarded the message (IMAP \\Answered, $Forwarded of RFC 5788;
    # Exchange's PidTagLastVerbExecuted). False: not known to be; a copy's is never cleared.
    answered: bool = False
    forwarded: bool = False


@dataclass(frozen=True)
class Payload:
    """An exported item, in `fmt`: what an import of that format takes, and the source's
    change key at export time (recorded with the copy).

    EXCHANGE_STREAM carries the item in `data`. MIME carries the RFC 5322 bytes in `mime`
    (empty in a state-only export, `export(state_only=True)`) and the typed properties in
    `state`. `source_id` is the source item's id (a target may stamp its copy with it);
    `size` and `info` are set by a store whose `caps.inspect_before_export` is False."""

    fmt: str
    data: str
    change_key: str | None
    mime: bytes = b""
    state: MessageState | None = None
    source_id: str = ""
    size: int | None = None
    info: ItemInfo | None = field(default=None)


@dataclass(frozen=True)
class Imported:
    """What an import made: the copy's id and change key (None in plan mode); `lost`: what
    of the item's state the target refused or ignored though the copy was made ("the
    replied/forwarded state (refused: ...)"), reported by the sync, not a skip."""

    item_id: str | None
    change_key: str | None
    lost: str | None = None


class ChangeRound(Protocol):
    """One round of a folder's change feed, from a cursor (None: from the start)."""

    def pages(self) -> AsyncIterator[ChangePage]: ...

    async def describe(self, new: list[Change]) -> list[Change]:
        """The new items with their identity and subject filled in."""
        ...


class ChangeFeed(Protocol):
    """What the scan needs of a source: each folder's changes since a cursor."""

    @property
    def caps(self) -> Capabilities: ...

    def changes(self, folder: Folder, cursor: str | None) -> ChangeRound: ...

    def cursor_lost(self, exc: RemoteError) -> bool:
        """Whether an error of the change feed says the saved cursor is no longer valid."""
        ...


class MailboxStore(ChangeFeed, Protocol):
    """One mailbox on one endpoint."""

    async def list_folders(self) -> FolderTree: ...

    async def create_folder(
        self, parent: Folder | None, name: str, path: tuple[str, ...], folder_class: str
    ) -> Folder | None:
        """Make a folder (or find the one an interrupted pass made); None where this store
        cannot hold a folder of that class there."""
        ...

    async def inspect(self, refs: list[ItemRef]) -> dict[str, ItemInfo]:
        """ItemInfo per item id; an item that could not be read is left out."""
        ...

    async def export(
        self, refs: list[ItemRef], fmt: str, state_only: bool = False
    ) -> dict[str, Payload]:
        """One batch (within `caps`) in `fmt`; an item gone since its scan is left out.
        `state_only` (an update): a format that carries typed state apart (MIME) may leave
        the content out; an opaque one (EXCHANGE_STREAM) exports the whole item anyway."""
        ...

    async def import_item(
        self, folder_id: str, payload: Payload, replace: ItemRef | None = None
    ) -> Imported:
        """Create the item in the folder, or (`replace`) bring that copy in line with it."""
        ...

    def update_refused(self, exc: RemoteError) -> bool:
        """Whether a failed `import_item(replace=...)` is that item's conflict (reported,
        the pass goes on) rather than a failure of the pass."""
        ...

    async def copies(self, folder_id: str, exclude: set[str]) -> dict[str, list[ItemRef]]:
        """Items of a folder by identity, but those in `exclude` (crash recovery)."""
        ...

    async def copies_of(
        self, folder_id: str, source_id: str, identity: str | None, exclude: set[str]
    ) -> list[ItemRef]:
        """The copies this tool made in a folder of one source item (by its id or its
        identity), but those in `exclude` (crash recovery of a non-atomic import)."""
        ...

    async def move(self, ref: ItemRef, folder_id: str) -> Imported:
        """Move an item to another folder of this store (only if `caps.moves`): the moved
        item's id and change key (None in plan mode); NotFound if it is not there."""
        ...

    async def change_keys(self, refs: list[ItemRef]) -> dict[str, str]:
        """The current change key per item id; an item that could not be read is left out."""
        ...

    async def delete(self, ref: ItemRef) -> None:
        """Delete an item (NotFound if it is not there)."""
        ...

    async def totals(self) -> dict[str, int]:
        """Items per folder id (reconciliation)."""
        ...


@runtime_checkable
class BatchImport(Protocol):
    """What a store whose `caps.import_batch` is above 1 offers besides `import_item`."""

    async def import_items(
        self, folder_id: str, payloads: list[Payload]
    ) -> list[Imported | InvalidRequest]:
        """Create the items in the folder (never an update): per payload, in order, what
        its `import_item` would have answered, or the InvalidRequest refusing that item
        alone (the others are made). Any other error is raised for the whole batch, whose
        items may then have been made or not, as an interrupted `import_item`'s."""
        ...


@runtime_checkable
class Warms(Protocol):
    """What a store offers that gets ready for a copy before the copy's first call."""

    def warm(
        self, *, export: bool = False, imports: bool = False, into: Collection[str] = ()
    ) -> None:
        """Start, in the background, what the copy's exports (`export`) or imports
        (`imports`, into the folders `into` if known) will need first (an IMAP store opens
        its extra connections and reads the folders' PERMANENTFLAGS); return at once.
        Nothing is raised here: what fails fails again, and is reported, at the call that
        needs it."""
        ...


@runtime_checkable
class NamesFolders(Protocol):
    """What a store offers that lists its folders more cheaply without their totals."""

    async def folder_names(self) -> FolderTree:
        """`list_folders` without the per-folder totals (each `total` 0): what a target's
        folder mapping needs, where a total costs a request per folder."""
        ...
