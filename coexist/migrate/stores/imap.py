"""The IMAP store: one IMAP account as a `MailboxStore`, over `coexist.tenants.imap`.

It speaks no IMAP itself: the adapter does (`ImapSession` through `AsyncImapSession`); this
module translates its records into the protocol's (`coexist.tenants.protocols`).

- Folders: every selectable folder; the id is the folder's full IMAP name, the path its
  decoded parts. Well-known folders come from RFC 6154 special-use attributes (or the usual
  names when the server has none: `tenants.imap.SPECIAL_NAMES`). Gmail's All Mail, Starred
  and Important (\\All, \\Flagged, \\Important) are views of messages other folders hold:
  left out unless `include_virtual` (`[source.imap] include_virtual_folders = true`). A
  special-use folder under a container that holds no mail (Gmail's `[Gmail]/Sent Mail`,
  `[Gmail]` being \\Noselect) is shown at the top, so the folder mapping anchors it like
  any well-known folder.
- Items: an item id is `<UIDVALIDITY>:<UID>:<folder>` (`item_id`): IMAP UIDs are per folder
  and void under a new UIDVALIDITY (RFC 3501 2.3.1.1), so both are in the id. The change
  key is a digest of the message's flags and keywords (`state_key`): the only part of an
  IMAP message that can change (RFC 3501 2.3: the text is immutable).
- Changes: the cursor is a watermark (`UIDVALIDITY:last UID:HIGHESTMODSEQ`). Each round
  reports the messages above the watermark (new), flag changes (CONDSTORE CHANGEDSINCE)
  and expunged UIDs (QRESYNC VANISHED) below it. A server without CONDSTORE has every
  known message's flags re-read (the sync compares change keys); one without QRESYNC keeps
  the UIDs it reported in the cursor and reports those no longer there. A changed
  UIDVALIDITY raises `UIDVALIDITY_CHANGED`, which `cursor_lost` recognises: the sync starts
  the folder over, rows the full round no longer reports become gone, and each message is
  paired with its existing copy by Message-ID (`sync.resolve_moves`): nothing is copied again.
- Export: MIME only: the RFC 5322 bytes in `Payload.mime`, the flags, keywords and
  INTERNALDATE as the protocol's `MessageState` in `Payload.state` (`message_state`:
  \\Answered and $Forwarded too, and the importance the message's headers give; an
  `ImapState` also keeps the "$" keywords, which the protocol has no field for), read in
  chunks bounded by count and bytes (`AsyncImapSession.fetch`). A state-only export (an
  update) reads the flags only: its importance is unknown (None), so no target resets it.
- Import: APPEND keeping the state's flags, keywords and INTERNALDATE (`imap_flags`);
  imports into one folder that wait for the connection go as one MULTIAPPEND (RFC 3502:
  all or none) where offered. An update (`replace`) sets the copy's flags and keywords
  (the text cannot change). `move` is MOVE (`caps.moves` where the server has MOVE and
  UIDPLUS).
- Plan mode (`plan`): every write (CREATE, APPEND, STORE, MOVE, EXPUNGE) is recorded, not
  sent; reads are sent.
"""

from __future__ import annotations

import asyncio
import email.errors
import email.header
import email.parser
import email.policy
import hashlib
import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from coexist.engine.context import (
    Context,
    ImapServer,
    Meter,
    capability_missing,
    imap_endpoint,
    imap_limits,
)
from coexist.errors import AuthenticationError, InvalidRequest, NotFound, RemoteError
from coexist.migrate.passes import MOVERS
from coexist.migrate.stores.mime_headers import header_importance
from coexist.migrate.sync import StoreMover, message_identity
from coexist.tenants.imap import (
    CHUNK_BYTES,
    CHUNK_MESSAGES,
    SERVICE,
    AsyncImapSession,
    Credentials,
    FetchedMessage,
    FolderChanges,
    ImapConnections,
    ImapFolder,
    ImapSession,
    MessageRef,
    NewMessage,
    Watermark,
    parse_sequence_set,
    plain_fields,
    sequence_set,
)
from coexist.tenants.plan import WriteRecorder, before_write
from coexist.tenants.protocols import (
    MAIL_CLASS,
    MAIL_FOLDER,
    MIME,
    Capabilities,
    Change,
    ChangePage,
    Folder,
    FolderTree,
    Imported,
    ItemInfo,
    ItemRef,
    MailboxStore,
    MessageState,
    Payload,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

CHECKPOINT_KIND = "imap-uids"
CHANGE_PAGE = 500  # new messages per page of a change round (one UID FETCH of metadata)
# A round's first page is smaller: a new mailbox's copy starts with that page (sync.py copies
# it while the scan goes on), after its FETCH is parsed and its rows journaled; 500 of them
# took 0.1-0.2 s there before the first export began (bench/imap_bench.py, 2,000 x 4 KB).
FIRST_PAGE = 100
# Imports into one mailbox at once: those waiting for a connection go together in one
# MULTIAPPEND, so this is a whole export batch (the payloads are in memory anyway).
IMPORTS_IN_FLIGHT = 2 * CHUNK_MESSAGES
# One MULTIAPPEND takes at most this many waiting messages (and CHUNK_BYTES), so that the
# waiting imports spread over the append connections instead of one taking them all. 50: an
# export batch of CHUNK_MESSAGES (200) in four equal commands, one per append connection
# (`connections_per_mailbox` 4). Each command is one transaction in the target: with
# Dovecot's maildir, each commit re-syncs the folder's uidlist and directories with what
# the other connections saved (NOTES-imapbatch: 19 % of its CPU with 32), so fewer,
# larger commands cost the target less (bench/imap_bench.py, 2,000 x 4 KB: target imap
# CPU median ~0.65 s with 50 vs ~0.72-1.1 s with 32, NOTES-imapratio.md).
APPEND_BATCH = 50
# A store appends over its own connection and extras opened while imports wait, up to the
# side's `connections_per_mailbox` (`ConnectionLimits.per_mailbox`). The server's per-message
# cost of an APPEND is mostly its own (Dovecot writes and fsyncs each message: ~5 ms here) and
# overlaps across connections: in bench/imap_bench.py's setup 1 connection appended ~170
# messages/s, 2 ~1,000/s. The price: with more than one connection, messages arrive in the
# target folder in interleaved runs (their UIDs, "order received", are not the source's
# order; INTERNALDATE, the date clients sort by, is kept). connections_per_mailbox = 1 keeps
# the source's order.
# Export batches read from one source mailbox at once (`caps.exports_in_flight`), each over
# its own connection (the store's, and one extra opened like an appender's, within the
# side's `connections_per_mailbox`). Once the appends run over several connections, one
# source connection (a header FETCH for the skip rules, then the bodies, per batch) bounded
# the copy in bench/imap_bench.py; a second one lets one batch's bodies stream while the
# next one's headers are read.
EXPORTS_IN_FLIGHT = 2
# The code of the error a round raises when a folder's UIDVALIDITY is not the cursor's.
UIDVALIDITY_CHANGED = "uidvalidity-changed"
PLANNED = "planned:"  # id prefix of a folder plan mode did not create (as graph_io's)
# Header fields `inspect` reads: the subject for reports, and what shows protected mail.
INSPECT_FIELDS = ("Subject", "Content-Type", "Content-Class")

CAPS = Capabilities(
    exports=frozenset({MIME}),
    accepts=frozenset({MIME}),
    cursor="uid-watermark",
    folder_classes=frozenset({MAIL_FOLDER}),
    checkpoint_kind=CHECKPOINT_KIND,
    export_batch=CHUNK_MESSAGES,
    export_bytes=CHUNK_BYTES,
    imports_in_flight=IMPORTS_IN_FLIGHT,
    exports_in_flight=EXPORTS_IN_FLIGHT,
    # The first MULTIAPPEND waited for a whole first batch (200 small messages or 8 MB of
    # large ones) to be read, marked and handed over (bench/imap_bench.py): a quarter of
    # that starts the target sooner, the next batches being read meanwhile.
    first_batch_share=4,
    # APPEND makes the whole message or nothing (RFC 3501 6.3.11): an interrupted import's
    # copy is adopted by Message-ID. `moves` is the server's (`ImapStore.caps`).
    atomic_import=True,
    # `inspect` reads a few header fields; the export reads the whole message.
    inspect_before_export=True,
    # A folder STATUS counts no message in holds nothing a change round would report (no
    # new UID; without a cursor, no flag change or expunge to tell): not scanned.
    empty_means_nothing=True,
)


# -- ids, change keys, cursors ----------------------------------------------------------------


def item_id(folder: str, uidvalidity: int, uid: int) -> str:
    """The id of a message: UIDVALIDITY and UID first (digits), then the folder's full name
    (any characters, so it comes last)."""
    return f"{uidvalidity}:{uid}:{folder}"


def parse_item_id(value: str) -> tuple[str, int, int]:
    """(folder, UIDVALIDITY, UID) of an `item_id`."""
    validity, uid, folder = value.split(":", 2)
    return folder, int(validity), int(uid)


# The item_map identity of a message without a Message-ID (RFC 5322 3.6.4: the field
# "SHOULD" be present; old archives and some drafts lack it): its INTERNALDATE and
# RFC822.SIZE. A new UIDVALIDITY and a move (MOVE, RFC 6851 3.3: as COPY, whose "flags and
# internal date SHOULD be preserved", RFC 3501 6.4.7) leave both as they were, so
# `sync.resolve_moves` pairs the message with its copy instead of copying it twice.
# Two such messages of one date and size match each other: resolve_moves pairs only a
# single match, so they are copied again, never lost. *unverified*: that a server restored
# from a backup (the usual cause of a new UIDVALIDITY) keeps INTERNALDATE; where it does
# not, such a message is copied again, as it was before.
UNNAMED_IDENTITY = "imap-date-size:"


def ref_identity(ref: MessageRef) -> str:
    """A message's identity: its Message-ID, else its INTERNALDATE (UTC) and size."""
    named = message_identity(ref.message_id)
    if named is not None:
        return named
    return f"{UNNAMED_IDENTITY}{ref.internaldate.astimezone(UTC).isoformat()}:{ref.size}"


def state_key(flags: Iterable[str], keywords: Iterable[str]) -> str:
    """The change key of a message: a digest of its flags and keywords (case-folded:
    keywords are case-insensitive, RFC 3501 2.3.2)."""
    names = " ".join(sorted({f.casefold() for f in (*flags, *keywords)}))
    return "flags:" + hashlib.sha256(names.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Cursor:
    """A folder's saved place: the adapter's watermark, and (only for a server without
    QRESYNC) the UIDs reported so far, to tell which of them were expunged since."""

    mark: Watermark
    known: tuple[int, ...] | None = None

    def text(self) -> str:
        m = self.mark
        parts = [str(m.uidvalidity), str(m.last_uid), str(m.highestmodseq or "")]
        if self.known is not None:
            parts.append(sequence_set(self.known))
        return ":".join(parts)

    @classmethod
    def parse(cls, text: str) -> Cursor:
        validity, last, modseq, *rest = text.split(":", 3)
        mark = Watermark(int(validity), int(last), int(modseq) if modseq else None)
        if not rest:
            return cls(mark)
        return cls(mark, tuple(parse_sequence_set(rest[0])) if rest[0] else ())


# -- payloads ---------------------------------------------------------------------------------

# The IMAP keywords of the keyword registry (RFC 5788) start with "$" ($Forwarded, $MDNSent,
# $Junk ...): protocol state, not a user's tags. Every other keyword is a user's tag, which
# Exchange calls a category (resources/message `categories`).
PROTOCOL_KEYWORD = "$"
# What an IMAP keyword may hold: an atom (RFC 3501 9, `flag-keyword = atom`): no space,
# control, "(", ")", "{", "%", "*", '"', "\\" or "]". A category that is not one cannot
# be set on an IMAP copy.
KEYWORD_ATOM = re.compile(r'[^\x00-\x20\x7f(){%*"\\\]]+')


# RFC 5788's keyword for "the message was forwarded" (IANA IMAP keywords registry).
FORWARDED = "$Forwarded"


@dataclass(frozen=True)
class ImapState(MessageState):
    """The protocol's typed state plus what only IMAP keeps (so an IMAP -> IMAP copy loses
    nothing): the "$" keywords ($Forwarded, $MDNSent, $Junk ...). Another kind of target
    reads it as the `MessageState` it is."""

    keywords: tuple[str, ...] = ()


def message_state(
    flags: frozenset[str],
    keywords: frozenset[str],
    internaldate: datetime | None,
    importance: str | None = None,
) -> ImapState:
    """A message's flags, keywords and INTERNALDATE as the protocol's state: \\Seen is
    `read`, \\Draft `draft`, \\Flagged the follow-up flag, user keywords categories,
    \\Answered `answered`, $Forwarded `forwarded` (in any case: RFC 3501 9, "all alphabetic
    characters are case-insensitive"); `importance` as the message's headers give it
    (None: not read, a state-only export)."""
    protocol = tuple(sorted(k for k in keywords if k.startswith(PROTOCOL_KEYWORD)))
    return ImapState(
        read="\\Seen" in flags,
        draft="\\Draft" in flags,
        flag={"flagStatus": "flagged" if "\\Flagged" in flags else "notFlagged"},
        categories=tuple(sorted(k for k in keywords if not k.startswith(PROTOCOL_KEYWORD))),
        importance=importance,
        received=internaldate.isoformat() if internaldate else None,
        answered="\\Answered" in flags,
        forwarded=any(k.casefold() == FORWARDED.casefold() for k in protocol),
        keywords=protocol,
    )


def imap_flags(state: MessageState | None) -> tuple[frozenset[str], frozenset[str]]:
    """(system flags, keywords) that carry a state: the inverse of `message_state`. A
    follow-up flag that is `complete` is no \\Flagged (IMAP has no done state); a category
    that is no IMAP atom is left out (logged); any store's `answered` / `forwarded` are
    \\Answered / $Forwarded."""
    if state is None:
        return frozenset(), frozenset()
    flags = {"\\Seen"} if state.read else set()
    if state.draft:
        flags.add("\\Draft")
    if state.flag and state.flag.get("flagStatus") == "flagged":
        flags.add("\\Flagged")
    keywords = set()
    for name in state.categories:
        if KEYWORD_ATOM.fullmatch(name):
            keywords.add(name)
        else:
            log.warning("category %r left out: an IMAP keyword cannot hold it", name)
    if state.answered:
        flags.add("\\Answered")
    if isinstance(state, ImapState):
        keywords.update(state.keywords)
    if state.forwarded and not any(k.casefold() == FORWARDED.casefold() for k in keywords):
        keywords.add(FORWARDED)
    return frozenset(flags), frozenset(keywords)


# RFC 3501 7.1: PERMANENTFLAGS lists the flags a folder stores for good; "\\*" means new
# keywords may be created too. A flag a SELECT does not list is kept for the session only,
# or dropped: Dovecot's ACL plugin, for one, answers "[PERMANENTFLAGS (\\Deleted \\Seen)]"
# to an owner without the "w" right and drops \\Answered and every keyword from an APPEND
# without a word (tests/integration/test_imap_kept_flags.py).
ANSWERED = "\\Answered"
NEW_KEYWORDS = "\\*"


def kept_flags(
    permanent: frozenset[str] | None, flags: frozenset[str], keywords: frozenset[str]
) -> tuple[frozenset[str], frozenset[str]]:
    """The part of (flags, keywords) a folder with these PERMANENTFLAGS keeps: a flag or
    keyword it lists (in any case, RFC 3501 9), or any keyword where it says "\\*". None
    (the server did not say): all of them ("all flags can be changed permanently", RFC
    3501 7.1). \\Recent is the server's own (never set by a client)."""
    if permanent is None:
        return flags, keywords
    listed = {f.casefold() for f in permanent}
    new = NEW_KEYWORDS in permanent
    return (
        frozenset(f for f in flags if f.casefold() in listed or f == "\\Recent"),
        frozenset(k for k in keywords if new or k.casefold() in listed),
    )


def state_not_kept(
    permanent: frozenset[str] | None, flags: frozenset[str], keywords: frozenset[str]
) -> str | None:
    """What a folder with these PERMANENTFLAGS would drop of a message's state, in words
    (`Imported.lost`): its replied (\\Answered) / forwarded ($Forwarded) state, its other
    flags (\\Seen, \\Flagged, \\Draft) and its other keywords (categories, tags); None
    when it keeps all of it."""
    kept_f, kept_k = kept_flags(permanent, flags, keywords)
    dropped = sorted(flags - kept_f) + sorted(keywords - kept_k)
    verbs = {ANSWERED.casefold(), FORWARDED.casefold()}
    said = []
    if replied := [f for f in dropped if f.casefold() in verbs]:
        said.append("the replied/forwarded state (" + ", ".join(replied) + ")")
    if others := sorted(f for f in flags - kept_f if f.casefold() not in verbs):
        said.append("the flags " + ", ".join(others))
    if tags := sorted(k for k in keywords - kept_k if k.casefold() not in verbs):
        said.append("the keywords " + ", ".join(tags))
    return " and ".join(said) or None


def folder_drops(permanent: frozenset[str] | None) -> str | None:
    """What a folder with these PERMANENTFLAGS drops, in words, the same for every message
    (the pass detail says it once per folder): None when it keeps every flag a copy
    carries and new keywords."""
    if permanent is None:
        return None
    wanted = ("\\Seen", "\\Flagged", "\\Draft", ANSWERED)
    kept, _ = kept_flags(permanent, frozenset(wanted), frozenset())
    drops = [f for f in sorted(wanted) if f not in kept]
    if not kept_flags(permanent, frozenset(), frozenset({FORWARDED}))[1]:
        drops.append(FORWARDED)
    if NEW_KEYWORDS not in permanent:
        drops.append("new keywords")
    if not drops:
        return None
    return f"{', '.join(drops)} (PERMANENTFLAGS ({' '.join(sorted(permanent))}))"


def _received(state: MessageState | None) -> datetime | None:
    if state is None or not state.received:
        return None
    # Python 3.11's fromisoformat reads Graph's trailing "Z" too.
    when = datetime.fromisoformat(state.received)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _payload(fmt: str, item: str, message: FetchedMessage | MessageRef, raw: bytes) -> Payload:
    """The protocol's MIME payload of a message (`raw` empty: a state-only export)."""
    return Payload(
        fmt=fmt,
        data="",
        change_key=state_key(message.flags, message.keywords),
        mime=raw,
        state=message_state(
            message.flags,
            message.keywords,
            message.internaldate,
            header_importance(raw) if raw else None,
        ),
        source_id=item,
        size=len(raw) if raw else None,
    )


def _new_message(payload: Payload) -> NewMessage:
    """What to APPEND (or STORE, for an update) for a payload: its bytes, the flags and
    keywords of its state, its delivery time as INTERNALDATE."""
    flags, keywords = imap_flags(payload.state)
    return NewMessage(payload.mime, flags, keywords, _received(payload.state))


# -- folders ----------------------------------------------------------------------------------


def _display_paths(folders: list[ImapFolder]) -> dict[str, tuple[str, ...]]:
    """Each folder's path for the folder mapping: its own, except that a special-use
    folder whose ancestors hold no mail (\\Noselect containers such as Gmail's `[Gmail]`)
    and its subfolders are shown from the top.

    *unverified* (the one place): Gmail's layout as this assumes it, `[Gmail]` a \\Noselect
    container holding the special-use folders (Sent Mail, Trash, All Mail ...); not checked
    against Gmail here (tests/unit/test_imap_store_records.py builds that LIST answer). Any
    other layout is handled too: a special-use folder with a selectable ancestor keeps its
    path."""
    selectable = {f.path for f in folders if f.selectable}
    roots: dict[tuple[str, ...], tuple[str, ...]] = {}
    for f in folders:
        if f.special_use and f.special_use != "inbox" and len(f.path) > 1 and f.selectable:
            ancestors = [f.path[:n] for n in range(1, len(f.path))]
            if not any(a in selectable for a in ancestors):
                roots[f.path] = (f.path[-1],)
    out: dict[str, tuple[str, ...]] = {}
    for f in folders:
        path = f.path
        for n in range(len(f.path), 1, -1):
            if (top := roots.get(f.path[:n])) is not None:
                path = (*top, *f.path[n:])
                break
        out[f.name] = path
    return out


def folder_tree(listed: list[ImapFolder], include_virtual: bool = False) -> FolderTree:
    """The store's folders, parents before children; virtual views left out (counted)
    unless `include_virtual`; containers that hold no mail are no folders."""
    kept = [f for f in listed if f.selectable and (include_virtual or not f.virtual)]
    left_out = sum(1 for f in listed if f.selectable and f.virtual and not include_virtual)
    paths = _display_paths(listed)
    out = []
    for f in sorted(kept, key=lambda f: len(paths[f.name])):
        path = paths[f.name]
        well_known = f.special_use if len(path) == 1 else None
        out.append(Folder(f.name, path, well_known, MAIL_FOLDER, f.messages or 0))
    return FolderTree(out, left_out)


@dataclass(frozen=True)
class FolderTotal:
    """What reconciliation compares of one folder: messages and their bytes."""

    count: int
    size: int


# -- the change feed --------------------------------------------------------------------------


class UidRound:
    """One round of a folder's changes from a watermark cursor (None: everything)."""

    def __init__(self, store: ImapStore, folder: Folder, cursor: str | None) -> None:
        self.store, self.folder = store, folder
        self.start = Cursor.parse(cursor) if cursor else None

    async def pages(self) -> AsyncIterator[ChangePage]:
        self.store.scanning += 1
        try:
            async for page in self._pages():
                yield page
        finally:
            self.store.scanning -= 1

    async def _pages(self) -> AsyncIterator[ChangePage]:
        name = self.folder.id
        mark = self.start.mark if self.start else None
        present: set[int] = set()  # UIDs there (kept in the cursor without QRESYNC)
        first = True
        while True:
            limit = min(self.store.page, FIRST_PAGE) if first else self.store.page
            got = await self.store.folder_changes(name, mark, limit)
            if got.reset:
                raise self._reset(name, got.next.uidvalidity)
            validity = got.next.uidvalidity
            changes = [self._new(name, validity, r) for r in got.new]
            present.update(r.uid for r in got.new)
            if got.flag_changes is not None:
                changes += [
                    Change(
                        item_id(name, validity, c.uid), change_key=state_key(c.flags, c.keywords)
                    )
                    for c in got.flag_changes
                ]
            if got.vanished is not None:
                changes += [Change(item_id(name, validity, u), removed=True) for u in got.vanished]
            if first and self.start is not None and self.start.mark.last_uid:
                changes += await self._fallback(name, got, present)
            first = False
            if got.more:
                yield ChangePage(changes)
                mark = got.next
                continue
            known = None if self.store.server_caps.qresync else tuple(sorted(present))
            yield ChangePage(changes, Cursor(got.next, known).text())
            return

    async def describe(self, new: list[Change]) -> list[Change]:
        return new  # identity (the Message-ID) is part of the refs a page is made of

    async def _fallback(self, name: str, got: FolderChanges, present: set[int]) -> list[Change]:
        """What the adapter could not tell of the messages the cursor covers (None in its
        answer: no QRESYNC, no CONDSTORE or a folder without mod-sequences): those expunged
        (against the cursor's UIDs) and their flags (all re-read: the sync keeps the
        changed ones). Adds the UIDs still there to `present`."""
        assert self.start is not None
        if got.vanished is not None and got.flag_changes is not None:
            return []
        validity, uids = await self.store.run(lambda s: s.list_uids(name))
        if validity != self.start.mark.uidvalidity:
            raise self._reset(name, validity)
        below = sorted(u for u in uids if u <= self.start.mark.last_uid)
        present.update(below)
        changes: list[Change] = []
        if got.vanished is None and self.start.known is not None:
            gone = sorted(set(self.start.known) - set(below))
            changes += [Change(item_id(name, validity, u), removed=True) for u in gone]
        if got.flag_changes is None:
            changes += [
                Change(item_id(name, validity, r.uid), change_key=state_key(r.flags, r.keywords))
                for r in await self.store.refs(name, below)
            ]
        return changes

    def _new(self, name: str, validity: int, ref: MessageRef) -> Change:
        item = item_id(name, validity, ref.uid)
        if ref.header is not None:
            self.store._scanned.keep(item, ref.size, ref.header)
        return Change(
            item,
            change_key=state_key(ref.flags, ref.keywords),
            created=ref.internaldate.isoformat(),
            size=ref.size,
            kind=MAIL_CLASS,
            identity=ref_identity(ref),
        )

    def _reset(self, name: str, validity: int) -> RemoteError:
        was = self.start.mark.uidvalidity if self.start else None
        return RemoteError(
            f"IMAP folder {name!r} of {self.store.user} has a new UIDVALIDITY ({was} -> "
            f"{validity}): every UID saved for it is void; the folder is read again and its "
            "messages matched to their copies by Message-ID",
            service=SERVICE,
            code=UIDVALIDITY_CHANGED,
            user=self.store.user,
            folder=name,
        )


# -- the store --------------------------------------------------------------------------------


@dataclass
class _Waiting:
    """Imports into one folder waiting to be appended, and the imports flushing them.

    A few of the waiting imports (at most one per append connection) are its *flushers*:
    each takes a connection and appends the head of the queue as one MULTIAPPEND, again
    and again until the queue is empty; the others only wait for their answer. A batch
    short of APPEND_BATCH goes only while no other append runs: else the imports that
    free slots one by one would each be appended alone (measured: 1,500 APPENDs for 2,000
    messages, Dovecot's CPU x5), while waiting for the running append lets them gather."""

    messages: list[NewMessage] = field(default_factory=list)
    answers: list[asyncio.Future[str]] = field(default_factory=list)
    flushers: int = 0  # imports flushing the queue
    appending: int = 0  # appends sent and not answered
    # Set (and replaced) when a flusher may go on: a batch filled, an append ended.
    change: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, message: NewMessage, answer: asyncio.Future[str]) -> None:
        """Queue an import."""
        self.messages.append(message)
        self.answers.append(answer)
        if len(self.messages) == APPEND_BATCH:
            self.changed()

    def ready(self) -> bool:
        """Whether a flusher should append now: a full batch, or no other append running."""
        return bool(self.messages) and (len(self.messages) >= APPEND_BATCH or self.appending == 0)

    def changed(self) -> None:
        self.change.set()
        self.change = asyncio.Event()

    def take(self, count: int, size: int) -> _Waiting:
        """The first waiting imports (those not cancelled), at most `count` and `size` bytes
        (at least one)."""
        n, total = 0, 0
        while n < len(self.messages) and n < count:
            total += len(self.messages[n].raw)
            if n and total > size:
                break
            n += 1
        pairs = [
            (m, a) for m, a in zip(self.messages[:n], self.answers[:n], strict=True) if not a.done()
        ]
        del self.messages[:n], self.answers[:n]
        return _Waiting([m for m, _ in pairs], [a for _, a in pairs])


class _Extras:
    """The extra connections a store opened (`_Appenders`), closed together at its exit:
    a LOGOUT is a round trip each, and seven of them one after the other were ~0.02 s of
    a small move's end (bench/imap_bench.py)."""

    def __init__(self) -> None:
        self._open: list[AbstractAsyncContextManager[Any]] = []

    async def enter_async_context(self, manager: AbstractAsyncContextManager[T]) -> T:
        got = await manager.__aenter__()
        self._open.append(manager)
        return got

    async def __aenter__(self) -> _Extras:
        return self

    async def __aexit__(self, *exc: object) -> None:
        opened, self._open = self._open, []
        # Each exit only closes its connection (and frees its slot): none needs the error.
        await _closed_together(opened)


async def _closed_together(managers: list[AbstractAsyncContextManager[Any]]) -> None:
    """Exit the context managers at once; every exit runs to its end, then the first
    error (if any) is raised."""
    done = await asyncio.gather(*(m.__aexit__(None, None, None) for m in managers),
                                return_exceptions=True)  # fmt: skip
    for outcome in done:
        if isinstance(outcome, BaseException):
            raise outcome


class _Appenders:
    """The connections a store appends over: its own, plus up to `limit - 1` more opened
    while imports wait, or ahead of them (`warm`), only when the side's `ConnectionLimits`
    have room at once (never waiting for a slot: the store's own connection always works).
    An extra that cannot be opened (e.g. the server's per-user cap, [UNAVAILABLE]) stops
    the opening of more; the store's exit closes them (`stack`), after the openings under
    way ended (`settle`)."""

    def __init__(
        self,
        main: AsyncImapSession,
        *,
        connections: ImapConnections | None = None,
        credentials: Credentials | None = None,
        stack: _Extras | None = None,
        limit: int = 1,
        reserved: Callable[[], bool] | None = None,
    ) -> None:
        self._main = main
        # Whether `main` should be left to its other work now (the store's change round):
        # an extra connection is opened first, `main` taken only when none can be.
        self._reserved = reserved
        self._free = [main]
        self._opened = 1
        self._limit = limit if connections and credentials and stack else 1
        self._connections, self._credentials, self._stack = connections, credentials, stack
        # Those waiting for a connection, first come first served: a released connection is
        # handed to one of them (waking them all on each release cost O(waiting) each time:
        # with a batch of 400 imports waiting, most of the client's time).
        self._waiters: deque[asyncio.Future[AsyncImapSession]] = deque()
        self._warming: set[asyncio.Task[None]] = set()  # openings ahead of use (`warm`)
        self._warmed = asyncio.Event()  # set (and replaced) when one of them ends

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncImapSession]:
        session = await self._take()
        try:
            yield session
        finally:
            self._give(session)

    @property
    def limit(self) -> int:
        """The most connections these appends may use at once."""
        return self._limit

    def _give(self, session: AsyncImapSession) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(session)
                return
        self._free.append(session)

    def _pop_free(self, *, main_too: bool) -> AsyncImapSession | None:
        for k in range(len(self._free) - 1, -1, -1):
            if main_too or self._free[k] is not self._main:
                return self._free.pop(k)
        return None

    def warm(self) -> None:
        """Open the extra connections now, in the background, each handed to the first
        caller waiting for a connection or kept free: a copy's first calls then find them
        logged in instead of each waiting for a TLS handshake and a login of its own
        (bench/imap_bench.py: the first MULTIAPPENDs waited 0.1-0.25 s for theirs)."""
        for _ in range(self._limit - self._opened - len(self._warming)):
            task = asyncio.ensure_future(self._warm_one())
            self._warming.add(task)

    async def _warm_one(self) -> None:
        try:
            if (extra := await self._open_extra()) is not None:
                self._give(extra)
        except Exception as exc:  # a failed opening is the next caller's to meet
            log.debug("IMAP connection not opened ahead: %s", exc)
        finally:
            task = asyncio.current_task()
            self._warming.discard(task)
            self._warmed.set()
            self._warmed = asyncio.Event()

    async def settle(self) -> None:
        """Wait for the openings under way (`warm`): none may log in after the store's
        exit closed its connections."""
        while self._warming:
            await asyncio.gather(*self._warming, return_exceptions=True)

    async def _take(self) -> AsyncImapSession:
        spare_main = self._reserved is not None and self._reserved()
        while True:
            if (free := self._pop_free(main_too=not spare_main)) is not None:
                return free
            if (extra := await self._open_extra()) is not None:
                return extra
            if not self._warming:
                break
            # One being opened ahead is as near as a new one, and leaves the store's own
            # connection to its other work (`reserved`).
            await self._warmed.wait()
        if (free := self._pop_free(main_too=True)) is not None:  # e.g. released meanwhile
            return free
        waiter: asyncio.Future[AsyncImapSession] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give(waiter.result())  # handed over as this waiter was cancelled
            raise

    async def _open_extra(self) -> AsyncImapSession | None:
        conns, creds, stack = self._connections, self._credentials, self._stack
        if self._opened >= self._limit or conns is None or creds is None or stack is None:
            return None
        if not conns.has_room(creds.user):
            return None
        self._opened += 1
        try:
            return await stack.enter_async_context(conns.session(creds))
        except RemoteError as exc:
            self._limit = self._opened = self._opened - 1
            log.debug("no extra IMAP connection for %s's appends: %s", creds.user, exc)
            return None
        except BaseException:
            self._opened -= 1  # cancelled while connecting: nothing was opened
            raise


# Sizes `inspect` read and its export has not taken yet, at most this many: an item inspected
# and skipped is never exported, and an export finding a size missing reads them all again.
SIZES_KEPT = 4 * CHUNK_MESSAGES * EXPORTS_IN_FLIGHT


class _Sizes:
    """RFC822.SIZE of messages `inspect` read, by item id, for the export that follows it
    (`caps.inspect_before_export`): the export's FETCH of bodies needs them as its chunk
    bounds, and reading them again cost a UID FETCH per export batch. An item id names
    one UID under one UIDVALIDITY, whose message never changes (RFC 3501 2.3.1.1), so a
    size kept cannot be stale."""

    def __init__(self) -> None:
        self._by_id: dict[str, int] = {}

    def keep(self, sizes: dict[str, int]) -> None:
        self._by_id.update(sizes)
        while len(self._by_id) > SIZES_KEPT:  # the oldest first (insertion order)
            del self._by_id[next(iter(self._by_id))]

    def take(self, uids: dict[int, str]) -> dict[int, int] | None:
        """UID -> size of each of `uids` (UID -> item id), removed from the kept ones; None
        unless every one is known."""
        if not all(i in self._by_id for i in uids.values()):
            return None
        return {uid: self._by_id.pop(i) for uid, i in sorted(uids.items())}


# Header blocks (and sizes) the scan read and `inspect` has not taken yet, at most this many:
# a change round may run ahead of the copy (a new mailbox is copied while it is scanned).
SCANNED_KEPT = 8 * CHANGE_PAGE


class _Scanned:
    """The inspect fields (`INSPECT_FIELDS`) and RFC822.SIZE of new messages as their scan
    read them (`changes(fields=)`, in the FETCH that reads their Message-ID), by item id,
    for the `inspect` that follows: it then sends nothing. An item id names one UID under
    one UIDVALIDITY, whose message never changes (RFC 3501 2.3.1.1): nothing kept can be
    stale. When full, new ones are not kept (the copy takes them in scan order: those kept
    first are those it takes next); an item not kept is read by `inspect` as before."""

    def __init__(self) -> None:
        self._by_id: dict[str, tuple[int, bytes]] = {}

    def keep(self, item: str, size: int, block: bytes) -> None:
        if len(self._by_id) < SCANNED_KEPT:
            self._by_id[item] = (size, block)

    def take(self, ids: Iterable[str]) -> dict[str, tuple[int, bytes]]:
        """Those of `ids` kept, removed from the kept ones."""
        return {i: got for i in ids if (got := self._by_id.pop(i, None)) is not None}


def _sized(uid: int, size: int) -> MessageRef:
    """A ref that says only what `fetch` reads of it (UID, size); the FETCH answers the
    flags and INTERNALDATE with the body (`FetchedMessage`)."""
    return MessageRef(uid, frozenset(), frozenset(), _NO_DATE, size, None)


_NO_DATE = datetime.fromtimestamp(0, UTC)


class ImapStore:
    """One IMAP account as a mailbox store (one connection: commands go one at a time)."""

    def __init__(
        self,
        session: AsyncImapSession,
        *,
        label: str = "source",
        include_virtual: bool = False,
        plan: WriteRecorder | None = None,
        page: int = CHANGE_PAGE,
        meter: Meter | None = None,
        appenders: _Appenders | None = None,
        readers: _Appenders | None = None,
    ) -> None:
        self.session = session
        self.meter = meter or Meter()
        self.page = page
        self.label = label
        self.include_virtual = include_virtual
        self.plan = plan
        self.user = session.session.user
        self.server_caps = session.session.caps
        self._delimiter: str | None = None
        self._listed = False
        self._waiting: dict[str, _Waiting] = {}
        self._drains: set[asyncio.Future[None]] = set()  # flushers that took over (`_drain`)
        self._closing = False
        self._appenders = appenders or _Appenders(session)
        self._readers = readers or _Appenders(session)  # the connections exports read over
        self._sizes = _Sizes()
        self._scanned = _Scanned()
        self.scanning = 0  # change rounds reading (`UidRound.pages`)
        # Each target folder's PERMANENTFLAGS, read once (`_not_kept`).
        self._permanent: dict[str, frozenset[str] | None] = {}
        self._permanent_lock = asyncio.Lock()
        self._warm_tasks: set[asyncio.Future[Any]] = set()  # reads `warm` started

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        connections: ImapConnections,
        credentials: Credentials,
        *,
        label: str = "source",
        include_virtual: bool = False,
        plan: WriteRecorder | None = None,
        page: int = CHANGE_PAGE,
        meter: Meter | None = None,
    ) -> AsyncIterator[ImapStore]:
        """A store over a connection of `connections`, logged out on exit (with the extra
        connections its appends opened); `meter` counts its commands and writes (the
        side's: `Side.calls`/`writes`)."""
        async with connections.session(credentials) as session, _Extras() as extra:
            appenders = _Appenders(
                session,
                connections=connections,
                credentials=credentials,
                stack=extra,
                limit=connections.limits.per_mailbox,
            )
            # The exports read over connections of their own while the store's own one reads
            # a change round (a new mailbox is copied while it is scanned, sync.py): one
            # batch's FETCH waited there behind the scan's pages (bench/imap_bench.py, 2,000
            # x 4 KB: the first batch's inspect began at 0.46 s, after the third page).
            readers = _Appenders(
                session,
                connections=connections,
                credentials=credentials,
                stack=extra,
                limit=min(EXPORTS_IN_FLIGHT + 1, connections.limits.per_mailbox),
                reserved=lambda: store.scanning > 0,
            )
            store = cls(
                session,
                label=label,
                include_virtual=include_virtual,
                plan=plan,
                page=page,
                meter=meter,
                appenders=appenders,
                readers=readers,
            )
            try:
                yield store
            finally:
                await store._stop_drains()
                await store._settle()

    @property
    def caps(self) -> Capabilities:
        """`CAPS`, with `moves` where the server moves a message in one command (MOVE,
        RFC 6851) and says its new UID (UIDPLUS, RFC 4315): COPY + EXPUNGE killed half way
        would leave two copies, and a moved copy without its UID could not be updated;
        `import_batch` where it appends several messages in one command (MULTIAPPEND)."""
        return replace(
            CAPS,
            moves=self.server_caps.move and self.server_caps.uidplus,
            # One MULTIAPPEND per `import_items` call; without it each message goes alone.
            import_batch=APPEND_BATCH if self.server_caps.multiappend else 1,
        )

    def warm(
        self, *, export: bool = False, imports: bool = False, into: Collection[str] = ()
    ) -> None:
        """Get ready for a copy (`Warms`): open the export connections (`export`), or the
        append connections (`imports`) and read the PERMANENTFLAGS of the folders `into`,
        in the background. A pass's first export and first MULTIAPPEND otherwise each
        waited for these, one after the other, on the copy's critical path. Plan mode
        appends nothing: no append connection is opened then."""
        if export:
            self._readers.warm()
        if (imports or into) and self.plan is None:
            self._appenders.warm()
            for name in into:
                if not name.startswith(PLANNED) and name not in self._permanent:
                    self._warm_tasks.add(asyncio.ensure_future(self._permanent_of(name)))

    async def _permanent_of(self, name: str) -> frozenset[str] | None:
        """The folder's PERMANENTFLAGS, read once per store (`_not_kept`)."""
        async with self._permanent_lock:
            if name not in self._permanent:
                self._permanent[name] = await self._read_permanent(name)
        return self._permanent[name]

    async def _settle(self) -> None:
        """At the store's exit: what `warm` started has ended (its connections are then
        closed with the others)."""
        await self._appenders.settle()
        await self._readers.settle()
        if self._warm_tasks:
            await asyncio.gather(*self._warm_tasks, return_exceptions=True)

    async def run(self, call: Callable[[ImapSession], T], via: AsyncImapSession | None = None) -> T:
        """`call` on the store's connection, or on `via` (an export's)."""
        self.meter.calls += 1
        return await (via or self.session).run(call)

    def _writing(self) -> None:
        """Before each write sent: the plan-mode guard, and the side's write count."""
        before_write()
        self.meter.writes += 1

    async def folder_changes(
        self, name: str, mark: Watermark | None, limit: int | None = None
    ) -> FolderChanges:
        # The new messages' inspect fields come with their Message-ID: `inspect` then reads
        # nothing (one EXAMINE and one header FETCH per export batch less).
        page = limit or self.page
        return await self.run(lambda s: s.changes(name, mark, limit=page, fields=INSPECT_FIELDS))

    async def refs(
        self,
        name: str,
        uids: Iterable[int],
        *,
        message_ids: bool = True,
        via: AsyncImapSession | None = None,
    ) -> list[MessageRef]:
        wanted = sorted(uids)
        if not wanted:
            return []
        return await self.run(lambda s: s.refs(name, wanted, message_ids=message_ids), via)

    async def _headers(
        self, name: str, uids: Iterable[int], via: AsyncImapSession, sizes: dict[int, int]
    ) -> dict[int, bytes]:
        wanted = sorted(uids)
        if not wanted:
            return {}
        return await self.run(lambda s: s.headers(name, wanted, INSPECT_FIELDS, sizes=sizes), via)

    async def _size(self, name: str) -> int:
        return await self.run(lambda s: s.folder_size(name))

    # -- folders ----------------------------------------------------------------------------
    async def _list(self, status: bool = True) -> list[ImapFolder]:
        listed = await self.run(lambda s: s.list_folders(status=status))
        self._delimiter = next((f.delimiter for f in listed if f.delimiter), None)
        self._listed = True
        return listed

    async def list_folders(self) -> FolderTree:
        return folder_tree(await self._list(), self.include_virtual)

    async def folder_names(self) -> FolderTree:
        """The folders without their totals (`NamesFolders`): LIST alone, no STATUS per
        folder. A fresh Dovecot user's first STATUS of each folder builds its index: the
        target's listing took 0.04-0.07 s, the source's 0.01-0.03 (bench/imap_bench.py)."""
        return folder_tree(await self._list(status=False), self.include_virtual)

    async def create_folder(
        self, parent: Folder | None, name: str, path: tuple[str, ...], folder_class: str
    ) -> Folder | None:
        """CREATE the folder under `parent` (found as is if it exists); None for a folder
        class other than mail, or a name this server cannot hold (one holding its hierarchy
        delimiter; the folder is then reported as skipped)."""
        if folder_class != MAIL_FOLDER:
            return None
        if not self._listed:
            await self._list()
        delim = self._delimiter
        if parent is not None and delim is None:
            return None  # a flat namespace has no subfolders
        # A parent this plan would make is named by its id less the prefix.
        above = parent.id.removeprefix(PLANNED).split(delim) if parent and delim else ()
        parts = (*above, name)
        full = delim.join(parts) if delim else name
        if self.plan is not None or (parent is not None and parent.id.startswith(PLANNED)):
            self._record("CREATE", folder=full)
            return Folder(f"{PLANNED}{full}", path, None, MAIL_FOLDER, 0)
        self._writing()
        try:
            made = await self.run(lambda s: s.create_folder(parts, delim))
        except InvalidRequest as exc:
            log.warning("folder %r not created for %s: %s", full, self.user, exc.message)
            return None
        return Folder(made.name, path, None, MAIL_FOLDER, made.messages or 0)

    # -- changes ----------------------------------------------------------------------------
    def changes(self, folder: Folder, cursor: str | None) -> UidRound:
        return UidRound(self, folder, cursor)

    def cursor_lost(self, exc: RemoteError) -> bool:
        return exc.code == UIDVALIDITY_CHANGED

    # -- reading items ----------------------------------------------------------------------
    async def _valid_uids(
        self, name: str, ids: list[str], via: AsyncImapSession | None = None, fresh: bool = False
    ) -> dict[int, str]:
        """UID -> item id of those ids whose UIDVALIDITY is the folder's (the others name
        messages that no longer exist under those UIDs; a folder deleted since: none);
        selects the folder to read, unless the connection has it selected already, since
        before the newest of these UIDs was given (`ImapSession.validity`), and `fresh` is
        False.

        An id under another UIDVALIDITY than the selection's is checked with a new EXAMINE:
        a connection kept since an earlier pass or opened ahead (`warm`) may hold a
        selection from before the folder got a new UIDVALIDITY, which the scan (a fresh
        EXAMINE per page) already saw."""
        top = max((parse_item_id(i)[2] for i in ids), default=0)
        try:
            look = (lambda s: s.examine(name)) if fresh else (lambda s: s.validity(name, top))
            validity = await self.run(look, via)
            if not fresh and any(parse_item_id(i)[1] != validity for i in ids):
                validity = await self.run(lambda s: s.examine(name), via)
        except NotFound:
            return {}
        out: dict[int, str] = {}
        for i in ids:
            _, v, uid = parse_item_id(i)
            if v == validity:
                out[uid] = i
        return out

    async def inspect(self, refs: list[ItemRef]) -> dict[str, ItemInfo]:
        """Subject, Content-Type and Content-Class of each message (its header only): as
        its scan read them (`_Scanned`), else read over one of the export connections
        (`EXPORTS_IN_FLIGHT`)."""
        out: dict[str, ItemInfo] = {}
        unread: dict[str, list[str]] = {}
        for name, ids in _by_folder(refs).items():
            scanned = self._scanned.take(ids)
            out.update({i: _info(block) for i, (_, block) in scanned.items()})
            self._sizes.keep({i: size for i, (size, _) in scanned.items()})
            if rest := [i for i in ids if i not in scanned]:
                unread[name] = rest
        if not unread:
            return out
        async with self._readers.session() as via:
            for name, ids in unread.items():
                uids = await self._valid_uids(name, ids, via)
                sizes: dict[int, int] = {}
                blocks = await self._headers(name, uids, via, sizes)
                for uid, block in blocks.items():
                    if uid in uids:
                        out[uids[uid]] = _info(block)
                self._sizes.keep({uids[u]: n for u, n in sizes.items() if u in uids})
        return out

    async def export(
        self, refs: list[ItemRef], fmt: str, state_only: bool = False
    ) -> dict[str, Payload]:
        """The messages as MIME payloads with their state, read in chunks of the adapter's
        bounds (one chunk read ahead); `state_only`: their flags only (no body read). A
        message expunged since its scan is left out. Over one of the export connections:
        `EXPORTS_IN_FLIGHT` exports read at once."""
        _check_format(fmt, "export")
        out: dict[str, Payload] = {}
        async with self._readers.session() as via:
            for name, ids in _by_folder(refs).items():
                uids = await self._valid_uids(name, ids, via)
                known = None if state_only else self._sizes.take(uids)
                if known is not None:
                    # `inspect` read the sizes (the fetch's chunk bounds); flags and
                    # INTERNALDATE come with the bodies: no FETCH of refs first.
                    found = [_sized(uid, size) for uid, size in known.items()]
                else:
                    # Sizes and flags; the scan read the Message-ID.
                    found = await self.refs(name, uids, message_ids=False, via=via)
                if state_only:
                    out.update({uids[r.uid]: _payload(fmt, uids[r.uid], r, b"") for r in found})
                    continue
                self.meter.calls += 1
                async for message in via.fetch(name, found):
                    item = uids[message.uid]
                    out[item] = _payload(fmt, item, message, message.raw)
        return out

    async def change_keys(self, refs: list[ItemRef]) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, ids in _by_folder(refs).items():
            uids = await self._valid_uids(name, ids)
            found = await self.refs(name, uids)
            out.update({uids[r.uid]: state_key(r.flags, r.keywords) for r in found})
        return out

    async def copies(self, folder_id: str, exclude: set[str]) -> dict[str, list[ItemRef]]:
        """The folder's messages by identity (Message-ID), but those in `exclude`."""
        if folder_id.startswith(PLANNED):
            return {}
        got = await self.run(lambda s: s.changes(folder_id, None))
        out: dict[str, list[ItemRef]] = {}
        for r in got.new:
            ident = message_identity(r.message_id)
            i = item_id(folder_id, got.next.uidvalidity, r.uid)
            if ident is not None and i not in exclude:
                out.setdefault(ident, []).append(
                    ItemRef(folder_id, i, state_key(r.flags, r.keywords))
                )
        return out

    async def copies_of(
        self, folder_id: str, source_id: str, identity: str | None, exclude: set[str]
    ) -> list[ItemRef]:
        """The folder's messages with that Message-ID (an IMAP copy carries no stamp of its
        source id: its text is the source's, unchanged), but those in `exclude`."""
        if identity is None:
            return []
        return (await self.copies(folder_id, exclude)).get(identity, [])

    async def totals(self) -> dict[str, int]:
        """Messages per folder (STATUS MESSAGES)."""
        return {f.id: f.total for f in (await self.list_folders()).folders}

    async def folder_totals(self) -> dict[str, FolderTotal]:
        """Messages and bytes per folder (STATUS MESSAGES, and SIZE or the messages' sizes)."""
        out: dict[str, FolderTotal] = {}
        for f in (await self.list_folders()).folders:
            out[f.id] = FolderTotal(f.total, await self._size(f.id))
        return out

    # -- writing items ----------------------------------------------------------------------
    async def import_item(
        self, folder_id: str, payload: Payload, replace: ItemRef | None = None
    ) -> Imported:
        """APPEND the message (flags, keywords, INTERNALDATE kept), or (`replace`) give the
        copy the payload's flags and keywords: a message's text cannot change in IMAP."""
        _check_format(payload.fmt, "import")
        message = _new_message(payload)
        if replace is not None:
            return await self._set_state(replace, message)
        lost, key = await self._not_kept(folder_id, message)
        if self.plan is not None or folder_id.startswith(PLANNED):
            self._record("APPEND", folder=folder_id, bytes=len(message.raw),
                         flags=sorted(message.flags | message.keywords))  # fmt: skip
            return Imported(None, None, lost)
        new_id = await self._append(folder_id, message)
        return Imported(new_id, key, lost)

    async def import_items(
        self, folder_id: str, payloads: list[Payload]
    ) -> list[Imported | InvalidRequest]:
        """APPEND the messages as one MULTIAPPEND (`caps.import_batch` of them at most: the
        sync algorithm's batch) over one of the append connections; a batch the server
        refuses (MULTIAPPEND appends all or none, RFC 3502) goes again one message at a
        time, so a refusal is that message's alone. Plan mode records each APPEND as
        `import_item` does."""
        for payload in payloads:
            _check_format(payload.fmt, "import")
        messages = [_new_message(p) for p in payloads]
        kept = [await self._not_kept(folder_id, m) for m in messages]  # (lost, change key)
        if self.plan is not None or folder_id.startswith(PLANNED):
            for message in messages:
                self._record("APPEND", folder=folder_id, bytes=len(message.raw),
                             flags=sorted(message.flags | message.keywords))  # fmt: skip
            return [Imported(None, None, lost) for lost, _ in kept]
        if not self.server_caps.multiappend:  # not offered by `caps`: one at a time
            return [await self.import_item(folder_id, p) for p in payloads]
        async with self._appenders.session() as session:
            try:
                made = await self._append_now(session, folder_id, messages)
            except InvalidRequest as exc:
                if len(messages) == 1:
                    return [exc]
                out: list[Imported | InvalidRequest] = []
                for message, (lost, key) in zip(messages, kept, strict=True):
                    try:
                        [one] = await self._append_now(session, folder_id, [message])
                    except InvalidRequest as each:
                        out.append(each)
                        continue
                    out.append(Imported(one, key, lost))
                return out
        return [Imported(new_id, key, lost) for new_id, (lost, key) in zip(made, kept, strict=True)]

    async def _set_state(self, ref: ItemRef, message: NewMessage) -> Imported:
        name, uid = await self._existing(ref)
        lost, key = await self._not_kept(name, message)
        if self.plan is not None:
            self._record("UID STORE FLAGS", folder=name, uid=uid,
                         flags=sorted(message.flags | message.keywords))  # fmt: skip
            return Imported(ref.item_id, key, lost)
        self._writing()
        await self.run(lambda s: s.set_flags(name, uid, message.flags, message.keywords))
        return Imported(ref.item_id, key, lost)

    async def _append(self, name: str, message: NewMessage) -> str:
        """APPEND one message; the imports into `name` waiting meanwhile go with it in one
        MULTIAPPEND (all or none), up to APPEND_BATCH of them per command, over as many
        connections as `_Appenders` has. Without MULTIAPPEND each goes alone: a failure
        half way through several APPENDs would leave copies nobody knows the UIDs of."""
        if not self.server_caps.multiappend:
            async with self._appenders.session() as session:
                [made] = await self._append_now(session, name, [message])
            return made
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.setdefault(name, _Waiting())
        waiting.add(message, answer)
        try:
            # Let the imports started with this one queue their messages first (the
            # pipeline starts a batch's imports together): they go in one MULTIAPPEND.
            await asyncio.sleep(0)
            if waiting.messages and waiting.flushers < self._appenders.limit:
                await self._drain(name, waiting)
            return await answer
        except asyncio.CancelledError:
            answer.cancel()  # a message not yet taken is not appended (`take`)
            raise

    async def _drain(self, name: str, waiting: _Waiting) -> None:
        """Flush the queue as one of its flushers. One that leaves a queue some import still
        waits on (cancelled) hands it to a new flusher task: the waiting imports only wait
        for their answer."""
        waiting.flushers += 1
        try:
            await self._flush_queue(name, waiting)
        finally:
            waiting.flushers -= 1
            if any(not a.done() for a in waiting.answers) and not self._closing:
                task = asyncio.ensure_future(self._drain(name, waiting))
                self._drains.add(task)
                task.add_done_callback(self._drains.discard)

    async def _stop_drains(self) -> None:
        """At the store's exit: no flusher task outlives it (they append over its
        connections); what they were appending is cancelled like an interrupted import."""
        self._closing = True
        for task in list(self._drains):
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)

    async def _flush_queue(self, name: str, waiting: _Waiting) -> None:
        """Append the head of the queue, batch after batch, until it is empty."""
        while waiting.messages:
            if not waiting.ready():
                await waiting.change.wait()
                continue
            async with self._appenders.session() as session:
                if not waiting.ready():
                    continue  # another flusher appended meanwhile
                batch = waiting.take(APPEND_BATCH, CHUNK_BYTES)
                if not batch.messages:
                    continue  # all cancelled
                waiting.appending += 1
                try:
                    await self._flush(session, name, batch)
                finally:
                    waiting.appending -= 1
                    waiting.changed()

    async def _flush(self, session: AsyncImapSession, name: str, batch: _Waiting) -> None:
        """Append a batch; each waiting import gets its own answer (an id or the error)."""
        try:
            made = await self._append_now(session, name, batch.messages)
        except asyncio.CancelledError:
            for answer in batch.answers:
                answer.cancel()
            raise
        except InvalidRequest as exc:
            if len(batch.messages) == 1:
                _answer(batch.answers[0], exc)
                return
            # MULTIAPPEND appended none of them: each alone, so a refusal is the message's.
            for message, answer in zip(batch.messages, batch.answers, strict=True):
                try:
                    [one] = await self._append_now(session, name, [message])
                    _answer(answer, one)
                except RemoteError as each:
                    _answer(answer, each)
            return
        except Exception as exc:
            for answer in batch.answers:
                _answer(answer, exc)
            return
        for answer, new_id in zip(batch.answers, made, strict=True):
            _answer(answer, new_id)

    async def _append_now(
        self, session: AsyncImapSession, name: str, messages: list[NewMessage]
    ) -> list[str]:
        self._writing()
        # APPENDUID names the folder's UIDVALIDITY with the UIDs: no EXAMINE needed.
        ids = await session.run(lambda s: s.append_ids(name, messages))
        if any(i is None for i in ids):
            # Without UIDPLUS (RFC 4315) the server does not say which UID a message got:
            # the copy could neither be updated nor deleted later.
            raise RemoteError(
                f"IMAP server {self.session.session.endpoint.url} does not report the UIDs "
                f"of appended messages (no UIDPLUS): {self.user}'s folder {name!r} cannot "
                "be a migration target",
                service=SERVICE,
                user=self.user,
                folder=name,
                next_step="choose a target server that offers UIDPLUS (RFC 4315)",
            )
        return [item_id(name, i[0], i[1]) for i in ids if i is not None]

    async def move(self, ref: ItemRef, folder_id: str) -> Imported:
        """Move a message to another folder: its new id (from COPYUID) and change key (the
        flags travel with it); Imported(None, None) in plan mode. NotFound if it is not
        there. A server that does not say the new UID (no UIDPLUS: `caps.moves` is False
        there, so sync does not call this) is an error naming the folders: the next pass
        finds the moved copy by Message-ID (`sync.adopt_interrupted`)."""
        name, uid, before = await self._found(ref)
        # The flags travel with the message, but only those the destination keeps.
        lost, _ = await self._not_kept(folder_id, NewMessage(b"", before.flags, before.keywords))
        if self.plan is not None or folder_id.startswith(PLANNED):
            self._record("UID MOVE", folder=name, uid=uid, to=folder_id)
            return Imported(None, None, lost)
        self._writing()
        moved = await self.run(lambda s: s.move(name, [uid], folder_id))
        new_uid = moved.get(uid)
        current = await self.refs(folder_id, [new_uid]) if new_uid is not None else []
        if new_uid is None or not current:
            raise RemoteError(
                f"IMAP server {self.session.session.endpoint.url} moved message {uid} of "
                f"{self.user}'s folder {name!r} to {folder_id!r} without saying its new UID",
                service=SERVICE,
                user=self.user,
                folder=name,
                next_step="run the pass again: the moved copy is found by its Message-ID",
            )
        validity = await self.run(lambda s: s.examine(folder_id))
        new_id = item_id(folder_id, validity, new_uid)
        return Imported(new_id, state_key(current[0].flags, current[0].keywords), lost)

    async def delete(self, ref: ItemRef) -> None:
        """Delete a message (\\Deleted, then UID EXPUNGE of it alone); NotFound if it is
        not there."""
        name, uid = await self._existing(ref)
        if self.plan is not None:
            self._record("UID EXPUNGE", folder=name, uid=uid)
            return
        self._writing()
        await self.run(lambda s: s.delete(name, [uid]))

    async def _existing(self, ref: ItemRef) -> tuple[str, int]:
        """(folder, UID) of a message that is there now; NotFound if it is not."""
        name, uid, _ = await self._found(ref)
        return name, uid

    async def _found(self, ref: ItemRef) -> tuple[str, int, MessageRef]:
        """(folder, UID, flags) of a message that is there now; NotFound if it is not."""
        name, _, uid = parse_item_id(ref.item_id)
        # A new EXAMINE: a selection kept from before other connections appended (the
        # PERMANENTFLAGS SELECT, on the store's own connection) does not show their
        # messages in Dovecot's view until the folder is selected again.
        uids = await self._valid_uids(name, [ref.item_id], fresh=True)
        found = await self.refs(name, uids)
        if not found:
            raise NotFound(
                f"IMAP message {uid} of folder {name!r} of {self.user} is no longer there",
                service=SERVICE,
                user=self.user,
                folder=name,
            )
        return name, uid, found[0]

    # -- what a target folder keeps of a message's state ------------------------------------
    async def _not_kept(self, name: str, message: NewMessage) -> tuple[str | None, str]:
        """(what folder `name` drops of the message's flags and keywords, in words, or None;
        the change key of what it keeps). The folder's PERMANENTFLAGS are read once per
        store, with a read-write SELECT (plan mode too: a SELECT writes nothing), and only
        for messages with a flag or keyword beyond \\Seen; a folder this pass creates
        (plan mode) keeps everything."""
        if not (message.keywords or message.flags - {"\\Seen"}) or name.startswith(PLANNED):
            return None, state_key(message.flags, message.keywords)
        permanent = await self._permanent_of(name)
        if state_not_kept(permanent, message.flags, message.keywords) is None:
            return None, state_key(message.flags, message.keywords)
        flags, keywords = kept_flags(permanent, message.flags, message.keywords)
        # One wording per folder (not per message): the pass detail says each once.
        lost = f"what the target folder {name!r} drops: {folder_drops(permanent)}"
        return lost, state_key(flags, keywords)

    async def _read_permanent(self, name: str) -> frozenset[str] | None:
        try:
            permanent = await self.run(lambda s: s.permanent_flags(name))
        except (InvalidRequest, NotFound) as exc:
            # The APPEND says more about a folder that cannot be selected; not knowing what
            # it keeps proves nothing lost.
            log.warning("%s's folder %r: PERMANENTFLAGS not read: %s", self.user, name, exc)
            return None
        if drops := folder_drops(permanent):
            # Said once per folder; each message it drops state of is counted and listed.
            log.warning("%s's folder %r drops %s", self.user, name, drops)
        return permanent

    def update_refused(self, exc: RemoteError) -> bool:
        """The copy is gone (NotFound) or the server refused its flags: that item's
        conflict; a connection failure is not."""
        return isinstance(exc, NotFound | InvalidRequest)

    def _record(self, operation: str, **params: Any) -> None:
        if self.plan is not None:
            self.plan.record("imap", self.label, f"{operation} {self.user}", params)


# -- helpers ----------------------------------------------------------------------------------


def _answer(answer: asyncio.Future[str], result: str | BaseException) -> None:
    """Give a waiting import its answer, unless it has one (it was cancelled meanwhile)."""
    if answer.done():
        return
    if isinstance(result, BaseException):
        answer.set_exception(result)
    else:
        answer.set_result(result)


def _by_folder(refs: list[ItemRef]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in refs:
        out.setdefault(parse_item_id(r.item_id)[0], []).append(r.item_id)
    return out


def _check_format(fmt: str, what: str) -> None:
    if fmt != MIME:
        raise InvalidRequest(
            f"an IMAP store cannot {what} {fmt!r} payloads, only {MIME!r}", service=SERVICE
        )


_INFO_FIELDS = (b"subject", b"content-type", b"content-class")


def _info(block: bytes) -> ItemInfo:
    """ItemInfo of a header block: decoded subject (RFC 2047), content type and class.

    Read as the compat32 parser reads it (`plain_fields`, ~1/5 of its cost: this runs once per
    exported message, on the event loop), or by that parser where the block is anything
    but plain ASCII fields (`_parsed_info`); the subject decoded by `email.header`: the
    same text as policy.default's. tests/unit/test_imap_store_records.py holds both to
    the same answers."""
    fields = plain_fields(block, _INFO_FIELDS)
    if fields is None:
        return _parsed_info(block)
    subject, ctype, cclass = (fields.get(name) for name in _INFO_FIELDS)
    return ItemInfo(
        _decoded(subject) if subject is not None else None,
        _content_type(ctype) if ctype else "",
        (cclass or "").lower(),
    )


def _content_type(value: str) -> str:
    """`Message.get_content_type` of a Content-Type value (RFC 2045 5.2: a malformed one
    is text/plain)."""
    ctype = value.partition(";")[0].strip().lower()
    return ctype if ctype.count("/") == 1 else "text/plain"


def _parsed_info(block: bytes) -> ItemInfo:
    """`_info` by the compat32 parser (~1/10 of policy.default's cost)."""
    headers = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
    subject = headers.get("Subject")
    return ItemInfo(
        _decoded(str(subject)) if subject is not None else None,
        headers.get_content_type().lower() if headers.get("Content-Type") else "",
        str(headers.get("Content-Class") or "").lower(),
    )


def _decoded(value: str) -> str:
    """A header value unfolded (RFC 5322 2.2.3) with its encoded words decoded (RFC 2047);
    as it stands when it cannot be decoded."""
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", value)
    if "=?" not in unfolded and unfolded.isascii():
        return unfolded  # no encoded word (RFC 2047 2): what decoding would answer
    try:
        return str(email.header.make_header(email.header.decode_header(unfolded)))
    except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
        return unfolded


# -- the imap-sync mover (IMAP -> IMAP) -------------------------------------------------------

MOVER = "imap-sync"


# [source.imap]/[target.imap] -> the adapter's endpoint and bounds (engine/context opens
# imap sides with them).
endpoint_of = imap_endpoint
limits_of = imap_limits


@asynccontextmanager
async def imap_store(ctx: Context, side_label: str, subject: str) -> AsyncIterator[ImapStore]:
    """A ready `ImapStore` of `subject`'s mailbox on the imap side `side_label`, logged out
    (and its connection slot freed) on exit, on error and cancellation too.

    The login comes from the credential vault (or the side's master user): an InputError
    naming the user and `coexist credentials set` when there is none. Plan mode: the
    store records its writes in `ctx.plan` and sends none (reads are sent)."""
    side = ctx.side(side_label)
    server = side.store
    if not isinstance(server, ImapServer):
        raise capability_missing(side_label, side.kind, "imap store", None)
    item = ctx.journal.get_item("user", subject)
    credentials = server.credentials(subject, item)
    opening = ImapStore.open(
        server.connections,
        credentials,
        label=side_label,
        include_virtual=server.include_virtual,
        plan=ctx.plan,
        meter=server.meter,
    )
    async with AsyncExitStack() as stack:
        try:
            store = await stack.enter_async_context(opening)
        except AuthenticationError as exc:
            raise _login_refused(ctx, side_label, subject, item, exc) from exc
        yield store


def _login_refused(
    ctx: Context,
    side: str,
    subject: str,
    item: dict[str, Any] | None,
    exc: AuthenticationError,
) -> AuthenticationError:
    """A refused login said for the operator: the user by address, the side, and the
    commands that give the password again and continue."""
    address = str((item or {}).get("source_address") or subject)
    where = getattr(ctx.project, "directory", ".")
    return AuthenticationError(
        f"{address}: the {side} IMAP server refused the login: {exc.message}",
        service=SERVICE,
        code=exc.code,
        user=address,
        next_step=f"coexist credentials set --project {where} --user {address} --side {side}"
        f", then coexist retry --project {where}",
    )


A = TypeVar("A")
B = TypeVar("B")


async def enter_both(
    stack: AsyncExitStack,
    first: AbstractAsyncContextManager[A],
    second: AbstractAsyncContextManager[B],
) -> tuple[A, B]:
    """Enter two context managers at once, to be exited together when `stack` closes (two
    stores' logins on two servers need not wait for each other: a TLS handshake and a
    LOGIN each, ~0.02-0.04 s; nor their logouts). Both entries run to their end; if
    either failed, its error is raised (the first's if both did) and the one entered is
    exited by `stack`. The exits are not told the error that ended the block: a store's
    exit closes its connections whatever ended it."""
    got = await asyncio.gather(first.__aenter__(), second.__aenter__(), return_exceptions=True)
    entered = [
        m for m, g in zip((first, second), got, strict=True) if not isinstance(g, BaseException)
    ]

    async def close(*exc: object) -> None:
        # Both logged out at once (each a round trip or more per connection).
        await _closed_together(entered)

    stack.push_async_exit(close)
    for outcome in got:
        if isinstance(outcome, BaseException):
            raise outcome
    return got[0], got[1]  # type: ignore[return-value]


@asynccontextmanager
async def open_stores(
    ctx: Context, subject: str
) -> AsyncIterator[tuple[MailboxStore, MailboxStore]]:
    """A pass's stores for one user: its source and target IMAP mailboxes, logged in at
    once (`enter_both`)."""
    async with AsyncExitStack() as stack:
        src, tgt = await enter_both(
            stack, imap_store(ctx, "source", subject), imap_store(ctx, "target", subject)
        )
        yield src, tgt


MOVERS[MOVER] = StoreMover(open_stores)
