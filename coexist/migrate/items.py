"""The fallback mover: Microsoft Graph's mail, contacts, calendar and To Do APIs.

For tenants where the mailbox import/export API (`migrate.stores.graph_io`) is not available.

Mail is the sync algorithm (`migrate.sync`) between two mail API stores
(`migrate.stores.graph_items.GraphItemsStore`): scan by message delta, moves by the mail
API's move, copy as MIME plus the state MIME does not carry in one JSON create, update by
PATCH of that state, recovery of an interrupted copy by deleting the partial copy (found by
its stamp) and copying again; see that module for each Graph spelling. Deletions are
reported (`deletions = keep`) or mirrored, for every kind below too.

Contacts, calendar events and To Do tasks: every folder/calendar/list is listed in full each
pass (these APIs have no per-folder delta in the sandbox's faces); new items are created in
the matching target folder (default -> default, others by name, created when missing) and
recorded in item_map with kind contact / event / task; changed ones are PATCHed; vanished
ones are reported as deletions. A recurring series is created from its master (with its
recurrence), then each exception is PATCHed onto the matching occurrence and each cancelled
occurrence (one the source's `instances` no longer lists) is deleted (event-list-instances,
event-update, event-delete). The pass window applies to mail only: PIM items move in full
with the pre-stage pass, so the calendar is complete before cutover.

Identity (what recognises a copy a killed pass left behind; never delivery time, subject or
size, which Microsoft does not promise to keep): every copy carries its source item's id,
stamped in its create request, as the named extended property IDENTITY_PROP on messages,
contacts and events, and as a linkedResource (applicationName TASK_APP, externalId) on To Do
tasks, which have no extended properties (resources/todotask). A message copy also carries
the source's Internet Message-ID (`internetMessageId`, set on create). An interrupted copy
is found with `$filter` on the target folder (by Message-ID and by stamp), and an item is
taken as ours only if its own stamp says so when read back; items other rows map are never
touched. Filters Graph does not document (contacts, a calendar's events, task links:
sandbox/graph/outlook_items.UNVERIFIED_FILTERS) fall back, when refused, to reading the
stamp of every unmapped item in the folder.

Not reproduced (documented gaps of this API surface, which the full-fidelity mover keeps):
MIME byte identity (Exchange renders its own MIME from the properties), internet headers
other than `x-` ones (resources/internetmessageheader), attendees of events (creating an
event with attendees sends them invitations, user-post-events). Events copied without their
attendees are counted (`events_without_attendees`) and named in the pass detail, never
dropped silently. To Do checklists are copied entry by entry.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coexist.engine.context import Context
from coexist.errors import InvalidRequest, NotFound, RemoteError
from coexist.migrate import sync
from coexist.migrate.passes import MOVERS, PassResult, Window
from coexist.migrate.stores.graph import Box
from coexist.migrate.stores.graph_items import (
    DELTA_PAGE as DELTA_PAGE,  # re-exported: tests/e2e/test_items_mover.py reads it here
)
from coexist.migrate.stores.graph_items import (
    IDENTITY_PROP,
    GraphItemsStore,
    odata_string,
    stamp_expand,
    stamp_filter,
    stamp_of,
    update_conflict,
)
from coexist.migrate.sync import handle_deletions
from coexist.provisioning.convert import target_id
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.protocols import MAIL_CLASS

TASK_APP = "coexist"  # linkedResource.applicationName stamped on a task copy
TASK_LINK_NAME = "Migrated by coexist"

# Writable properties per resource (learn.microsoft.com/graph/api/resources/<type>).
CONTACT_FIELDS = (
    "categories", "birthday", "fileAs", "displayName", "givenName", "initials", "middleName",
    "nickName", "surname", "title", "yomiGivenName", "yomiSurname", "yomiCompanyName",
    "generation", "imAddresses", "jobTitle", "companyName", "department", "officeLocation",
    "profession", "businessHomePage", "assistantName", "manager", "homePhones", "mobilePhone",
    "businessPhones", "spouseName", "personalNotes", "children", "emailAddresses", "homeAddress",
    "businessAddress", "otherAddress",
)  # fmt: skip
EVENT_FIELDS = (
    "subject", "body", "start", "end", "location", "locations", "isAllDay", "showAs",
    "sensitivity", "importance", "categories", "recurrence", "reminderMinutesBeforeStart",
    "isReminderOn", "responseRequested", "allowNewTimeProposals", "hideAttendees",
)  # fmt: skip
# What an exception may change relative to its series (event-update on an occurrence).
EXCEPTION_FIELDS = tuple(f for f in EVENT_FIELDS if f != "recurrence")
# Fields of a series master a PATCH may carry without dropping the series' exceptions.
SERIES_SAFE_FIELDS = tuple(f for f in EVENT_FIELDS if f not in ("recurrence", "start", "end"))
TASK_FIELDS = (
    "title", "body", "importance", "status", "dueDateTime", "startDateTime",
    "reminderDateTime", "completedDateTime", "isReminderOn", "recurrence", "categories",
)  # fmt: skip
CHECKLIST_FIELDS = ("displayName", "isChecked", "checkedDateTime", "createdDateTime")
# How far ahead a series without an end is expanded to find its exceptions and cancellations.
NO_END_HORIZON = dt.timedelta(days=2 * 365)
DEFAULT_CONTACTS = "contacts"  # item_map folder id of the default Contacts folder


def mapped_targets(ctx: Context, key: str) -> set[str]:
    """Target items the journal maps to a source item: never a leftover to clean up."""
    return {str(r["target_item_id"]) for r in ctx.journal.mapped_items(key) if r["target_item_id"]}


def _instant(value: Any) -> dt.datetime | None:
    """A Graph timestamp as an aware datetime (UTC when it names no zone); Outlook writes up
    to 7 fractional digits ("2024-01-15T09:00:00.0000000"), Python reads 6."""
    if not value:
        return None
    text = str(value).replace("Z", "+00:00")
    head, dot, rest = text.partition(".")
    if dot:
        digits = "".join(c for c in rest if c.isdigit())
        text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
    t = dt.datetime.fromisoformat(text)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


# -- deletions -------------------------------------------------------------------------------------

# Item class (mailboxItem.type, MS-OXCMSG PidTagMessageClass) -> the fallback mover's kind.
_KIND_OF_CLASS = {"ipm.contact": "contact", "ipm.appointment": "event", "ipm.task": "task"}


def kind_of(kind: str) -> str:
    """The item family of a recorded kind: mail, contact, event or task."""
    low = kind.lower()
    if low in ("mail", "contact", "event", "task"):
        return low
    if low.startswith("ipm.note"):
        return "mail"  # IPM.Note and its subclasses (S/MIME, voicemail...)
    return _KIND_OF_CLASS.get(low, low)


# Each item family's item URL (user id, folder id, item id): the one place it is spelled;
# CONTACTS/EVENTS/TASKS below use these too.
# *unverified* for To Do: that a task's list id is the id of the mailbox folder it sits in
# (the sandbox serves one id space).
ITEM_PATHS: dict[str, Callable[[str, str, str], str]] = {
    "mail": lambda u, f, i: f"users/{u}/messages/{i}",
    "contact": lambda u, f, i: f"users/{u}/contacts/{i}",
    "event": lambda u, f, i: f"users/{u}/events/{i}",
    "task": lambda u, f, i: f"users/{u}/todo/lists/{f}/tasks/{i}",
}


def delete_path(row: dict[str, Any], user: str) -> str | None:
    """The Graph URL that deletes the target copy of `row`, or None for an unknown kind."""
    path = ITEM_PATHS.get(kind_of(str(row["kind"] or "mail")))
    if path is None:
        return None
    return path(user, str(row["target_folder_id"]), str(row["target_item_id"]))


async def delete_copy(graph: GraphAdapter, user: str, row: dict[str, Any]) -> bool:
    """Delete a row's target copy through the Graph API of its kind (False: an unknown kind,
    left `gone` in the item map)."""
    path = delete_path(row, user)
    if path is None:
        return False
    await graph.send("DELETE", path)
    return True


# -- contacts, events, tasks --------------------------------------------------------------------------


@dataclass(frozen=True)
class PimKind:
    """How one kind of PIM item is listed, created and patched."""

    kind: str  # item_map kind
    fields: tuple[str, ...]
    folders: Callable[[str], str]  # user id -> folder collection path
    items: Callable[[str, str], str]  # user id, folder id -> item collection path
    item: Callable[[str, str, str], str]  # user id, folder id, item id -> item path
    name_of: str  # the folder's display-name property
    stamp: Callable[[str], dict[str, Any]]  # source id -> what the create body adds
    find: Callable[[str], str]  # source id -> `$filter` for the items stamped with it


def _extended_stamp(source_id: str) -> dict[str, Any]:
    return {"singleValueExtendedProperties": [{"id": IDENTITY_PROP, "value": source_id}]}


def _task_stamp(source_id: str) -> dict[str, Any]:
    # todotasklist-post-tasks: a task's linkedResources may be given in its create request.
    link = {"applicationName": TASK_APP, "externalId": source_id, "displayName": TASK_LINK_NAME}
    return {"linkedResources": [link]}


def _task_filter(source_id: str) -> str:
    return (
        f"linkedResources/any(r: r/applicationName eq {odata_string(TASK_APP)}"
        f" and r/externalId eq {odata_string(source_id)})"
    )


CONTACTS = PimKind(
    "contact",
    CONTACT_FIELDS,
    lambda u: f"users/{u}/contactFolders",
    lambda u, f: f"users/{u}/contactFolders/{f}/contacts",
    ITEM_PATHS["contact"],
    "displayName",
    _extended_stamp,
    stamp_filter,
)
EVENTS = PimKind(
    "event",
    EVENT_FIELDS,
    lambda u: f"users/{u}/calendars",
    lambda u, f: f"users/{u}/calendars/{f}/events",
    ITEM_PATHS["event"],
    "name",
    _extended_stamp,
    stamp_filter,
)
TASKS = PimKind(
    "task",
    TASK_FIELDS,
    lambda u: f"users/{u}/todo/lists",
    lambda u, f: f"users/{u}/todo/lists/{f}/tasks",
    ITEM_PATHS["task"],
    "displayName",
    _task_stamp,
    _task_filter,
)


def _version(item: dict[str, Any]) -> str | None:
    """What changes when a PIM item changes: its changeKey (contacts, events); a todoTask has
    none (resources/todotask), so its @odata.etag, else lastModifiedDateTime."""
    value = item.get("changeKey") or item.get("@odata.etag") or item.get("lastModifiedDateTime")
    return str(value) if value else None


def _list_params(kind: PimKind) -> dict[str, Any]:
    # A task's checklist is a navigation property (todotask "Relationships"): expanded so
    # one listing brings it; *unverified*: $expand=checklistItems on a task collection.
    return {"$top": 100, "$expand": "checklistItems"} if kind is TASKS else {"$top": 100}


def _copyable(item: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The writable properties that hold a value (Graph answers unset ones as null, empty
    strings, lists or objects; sending those back is noise)."""
    return {f: item[f] for f in fields if item.get(f) not in (None, "", [], {})}


class PimCopier:
    """Copies one mailbox's contacts, calendars and To Do lists into the target."""

    def __init__(
        self, ctx: Context, key: str, src: GraphAdapter, tgt: GraphAdapter, ids: tuple[str, str]
    ) -> None:
        self.ctx, self.key, self.src, self.tgt = ctx, key, src, tgt
        self.src_user, self.tgt_user = ids
        self.counts: Counter[str] = Counter()
        self.conflicts: list[str] = []  # names of items whose update was refused

    async def run(self) -> None:
        for kind in (CONTACTS, EVENTS, TASKS):
            for source_folder, target_folder in await self._folders(kind):
                await self._sync_folder(kind, source_folder, target_folder)

    # -- folders

    async def _folders(self, kind: PimKind) -> list[tuple[str, str]]:
        """(source folder id, target folder id) pairs: default to default, others by path
        (contact folders nest; calendars and To Do lists do not), created when missing."""
        src = await self._folder_list(kind, self.src, self.src_user)
        tgt = await self._folder_list(kind, self.tgt, self.tgt_user)
        target_of: dict[tuple[str, ...], str] = {}
        pairs = []
        for fid, path, default in src:  # parents come before their children
            match = next(
                (t for t in tgt if (t[2] and default) or (not t[2] and not default and
                                                          sync.same_path(t[1], path))),
                None,
            )  # fmt: skip
            if match is None:
                made = await self._create_folder(kind, path, target_of.get(path[:-1]))
                if made is None:  # plan mode, or its parent could not be made
                    continue
                match = (made, path, False)
                tgt.append(match)
            target_of[path] = match[0]
            pairs.append((fid, match[0]))
        return pairs

    async def _create_folder(
        self, kind: PimKind, path: tuple[str, ...], parent: str | None
    ) -> str | None:
        if len(path) == 1:
            where = kind.folders(self.tgt_user)
        elif parent is None or parent.startswith("planned:"):
            return None
        else:  # contactfolder-post-childfolders
            where = f"users/{self.tgt_user}/contactFolders/{parent}/childFolders"
        made = await self.tgt.send("POST", where, json={kind.name_of: path[-1]})
        return str(made["id"]) if made is not None else None

    async def _folder_list(
        self, kind: PimKind, graph: GraphAdapter, user: str
    ) -> list[tuple[str, tuple[str, ...], bool]]:
        """(id, path of names, is default) of every folder of the kind, parents first."""
        if kind is CONTACTS:
            # user-list-contactfolders lists the folders under the default Contacts folder;
            # `/contacts` is that folder itself (recorded as DEFAULT_CONTACTS on both sides).
            # Folders inside them are listed per parent (contactfolder-list-childfolders).
            out: list[tuple[str, tuple[str, ...], bool]] = [(DEFAULT_CONTACTS, ("Contacts",), True)]
            top = await graph.list_all(kind.folders(user), {"$top": 100})
            queue: list[tuple[dict[str, Any], tuple[str, ...]]] = [(f, ()) for f in top]
            while queue:
                raw, parent = queue.pop(0)
                path = (*parent, str(raw["displayName"]))
                out.append((str(raw["id"]), path, False))
                children = f"users/{user}/contactFolders/{raw['id']}/childFolders"
                queue += [(c, path) for c in await graph.list_all(children, {"$top": 100})]
            return out
        rows = await graph.list_all(kind.folders(user), {"$top": 100})
        if kind is EVENTS:
            return [
                (str(c["id"]), (str(c["name"]),), bool(c.get("isDefaultCalendar"))) for c in rows
            ]
        return [
            (str(t["id"]), (str(t["displayName"]),), t.get("wellknownListName") == "defaultList")
            for t in rows
        ]

    def _items_path(self, kind: PimKind, user: str, folder: str) -> str:
        if kind is CONTACTS and folder == DEFAULT_CONTACTS:
            return f"users/{user}/contacts"
        return kind.items(user, folder)

    # -- items

    async def _sync_folder(self, kind: PimKind, source: str, target: str) -> None:
        await self._recover_interrupted(kind, source, target)
        present = await self.src.list_all(
            self._items_path(kind, self.src_user, source), _list_params(kind)
        )
        seen = set()
        for item in present:
            sid = str(item["id"])
            seen.add(sid)
            known = self.ctx.journal.mapped(self.key, sid)
            if known is None or known["status"] == "pending":
                await self._create(kind, source, target, item)
            elif known["status"] in ("copied", "changed") and (
                known["source_change_key"] != _version(item)
            ):
                await self._update(kind, target, known, item)
        for row in self.ctx.journal.mapped_items(self.key, folder_id=source, status="copied"):
            if row["kind"] == kind.kind and row["source_item_id"] not in seen:
                self.ctx.journal.map_item(self.key, row["source_item_id"], status="gone")

    async def _in_own_zone(self, event: dict[str, Any]) -> dict[str, Any]:
        """The event with start/end in the zone it was created in.

        Responses give times in UTC unless `Prefer: outlook.timezone` names a zone (event-get,
        "Request headers"); a series created from UTC times would drift by an hour across a
        daylight-saving change, so a series keeps its own zone (`originalStartTimeZone`).
        """
        tz = event.get("originalStartTimeZone")
        if not tz or tz == "UTC":
            return event
        data = await self.src.send(
            "GET",
            f"users/{self.src_user}/events/{event['id']}",
            headers={"Prefer": f'outlook.timezone="{tz}"'},
        )
        return dict(data)

    async def _create(self, kind: PimKind, source: str, target: str, item: dict[str, Any]) -> None:
        sid = str(item["id"])
        if kind is EVENTS:
            item = await self._in_own_zone(item)
        self.ctx.journal.map_item(
            self.key,
            sid,
            source_folder_id=source,
            kind=kind.kind,
            status="importing",
            target_folder_id=target,
            subject=item.get("subject") or item.get("displayName") or item.get("title"),
            source_created=item.get("createdDateTime"),
        )
        body = {**_copyable(item, kind.fields), **kind.stamp(sid)}
        if kind is EVENTS and item.get("attendees"):
            self.counts["events_without_attendees"] += 1
        made = await self.tgt.send("POST", self._items_path(kind, self.tgt_user, target), json=body)
        if made is None:  # plan mode
            return
        if kind is EVENTS and item.get("type") == "seriesMaster":
            await self._reproduce_exceptions(item, str(made["id"]))
        if kind is TASKS:
            await self._sync_checklist(target, str(made["id"]), item, replace=False)
        self.ctx.journal.map_item(
            self.key,
            sid,
            status="copied",
            source_change_key=_version(item),
            target_item_id=made["id"],
            target_change_key=_version(made),
        )
        self.counts[f"{kind.kind}s_copied"] += 1
        self.counts["copied"] += 1

    async def _update(
        self, kind: PimKind, target: str, known: dict[str, Any], item: dict[str, Any]
    ) -> None:
        fields = kind.fields
        if kind is EVENTS and item.get("type") == "seriesMaster":
            # Changing a series' pattern or times drops its exceptions (Outlook's rule), so a
            # series is updated in its other properties only; *unverified* completeness.
            fields = SERIES_SAFE_FIELDS
        try:
            made = await self.tgt.send(
                "PATCH",
                kind.item(self.tgt_user, target, str(known["target_item_id"])),
                json=_copyable(item, fields),
            )
        except RemoteError as exc:
            if not update_conflict(exc):
                raise
            self.ctx.journal.map_item(
                self.key, known["source_item_id"], reason=f"not updated: {exc.message}"
            )
            self.counts["update_conflicts"] += 1
            self.conflicts.append(str(known["subject"] or known["source_item_id"]))
            return
        if kind is TASKS:
            await self._sync_checklist(target, str(known["target_item_id"]), item, replace=True)
        self.ctx.journal.map_item(
            self.key,
            known["source_item_id"],
            status="copied",
            source_change_key=_version(item),
            target_change_key=_version(made or {}),
        )
        self.counts["updated"] += 1

    async def _sync_checklist(
        self, target_list: str, task_id: str, source_task: dict[str, Any], *, replace: bool
    ) -> None:
        """The task's checklist in the target: its entries are created one by one
        (todotask-post-checklistitems); `replace` first deletes what the copy has, so a
        changed or half-copied checklist ends up exactly like the source's."""
        base = f"{TASKS.item(self.tgt_user, target_list, task_id)}/checklistItems"
        if replace:
            for entry in await self.tgt.list_all(base, {"$top": 100}):
                with contextlib.suppress(NotFound):
                    await self.tgt.send("DELETE", f"{base}/{entry['id']}")
        for entry in source_task.get("checklistItems") or []:
            await self.tgt.send("POST", base, json=_copyable(entry, CHECKLIST_FIELDS))

    async def _reproduce_exceptions(self, master: dict[str, Any], target_id_: str) -> None:
        """Exceptions PATCHed onto the target's occurrences; cancelled ones deleted."""
        start, end = _series_window(master)
        params = {"startDateTime": start, "endDateTime": end, "$top": 1000}
        source = await self.src.list_all(
            f"users/{self.src_user}/events/{master['id']}/instances", params
        )
        target = await self.tgt.list_all(
            f"users/{self.tgt_user}/events/{target_id_}/instances", params
        )
        by_start = {_instant(i.get("originalStart")): i for i in source}
        for occ in target:
            original = by_start.get(_instant(occ.get("originalStart")))
            path = f"users/{self.tgt_user}/events/{occ['id']}"
            if original is None:
                await self.tgt.send("DELETE", path)  # cancelled at the source
                self.counts["occurrences_cancelled"] += 1
            elif original.get("type") == "exception":
                await self.tgt.send("PATCH", path, json=_copyable(original, EXCEPTION_FIELDS))
                self.counts["exceptions_copied"] += 1

    async def _recover_interrupted(self, kind: PimKind, source: str, target: str) -> None:
        """Items marked `importing` by a pass that died: adopt the copy it made (found by
        identity, `_copies`), finishing what the create left undone (a series' exceptions,
        a task's checklist); copies made twice over are deleted; none found: pending."""
        stuck = [
            r
            for r in self.ctx.journal.mapped_items(self.key, folder_id=source, status="importing")
            if r["kind"] == kind.kind
        ]
        if not stuck:
            return
        taken = mapped_targets(self.ctx, self.key)
        originals = {
            str(i["id"]): i
            for i in await self.src.list_all(
                self._items_path(kind, self.src_user, source), _list_params(kind)
            )
        }
        for r in stuck:
            copies = await self._copies(kind, target, str(r["source_item_id"]), taken)
            original = originals.get(r["source_item_id"])
            if not copies:
                self.ctx.journal.map_item(self.key, r["source_item_id"], status="pending")
                continue
            found, *extra = copies
            for item_id in extra:
                with contextlib.suppress(NotFound):
                    await self.tgt.send("DELETE", kind.item(self.tgt_user, target, item_id))
            if kind is EVENTS and original and original.get("type") == "seriesMaster":
                await self._reproduce_exceptions(original, found)
            if kind is TASKS and original:  # the dead pass may have stopped mid-checklist
                await self._sync_checklist(target, found, original, replace=True)
            made = await self.tgt.send("GET", kind.item(self.tgt_user, target, found))
            taken.add(found)
            self.ctx.journal.map_item(
                self.key,
                r["source_item_id"],
                status="copied",
                target_item_id=found,
                target_change_key=_version(made or {}),
            )

    async def _copies(
        self, kind: PimKind, folder: str, source_id: str, taken: set[str]
    ) -> list[str]:
        """Unmapped items of the target folder stamped with `source_id`, by `$filter`; where
        the service refuses the filter (one Graph does not document, UNVERIFIED_FILTERS in
        sandbox/graph/outlook_items) every unmapped item's stamp is read instead. Either way
        an item counts only if its stamp, read back, names `source_id`."""
        path = self._items_path(kind, self.tgt_user, folder)
        try:
            listed = await self.tgt.list_all(
                path, {"$filter": kind.find(source_id), "$select": "id", "$top": 100}
            )
        except InvalidRequest:
            listed = await self.tgt.list_all(path, {"$select": "id", "$top": 100})
        out = []
        for item in listed:
            item_id = str(item["id"])
            if item_id not in taken and await self._stamp(kind, folder, item_id) == source_id:
                out.append(item_id)
        return out

    async def _stamp(self, kind: PimKind, folder: str, item_id: str) -> str | None:
        """The source id a target item is stamped with (None: not coexist's copy)."""
        path = kind.item(self.tgt_user, folder, item_id)
        try:
            if kind is TASKS:  # todotask-list-linkedresources
                links = await self.tgt.list_all(f"{path}/linkedResources", {"$top": 100})
                return next(
                    (str(x["externalId"]) for x in links if x.get("applicationName") == TASK_APP),
                    None,
                )
            item = await self.tgt.send(
                "GET", path, params={"$select": "id", "$expand": stamp_expand()}
            )
        except NotFound:
            return None
        return stamp_of(item)


def _series_window(master: dict[str, Any]) -> tuple[str, str]:
    """The span to expand a series over: its start to its range's end (or a horizon)."""
    start = _instant((master.get("start") or {}).get("dateTime"))
    assert start is not None
    rng = (master.get("recurrence") or {}).get("range") or {}
    if rng.get("type") == "endDate" and rng.get("endDate"):
        end = dt.datetime.fromisoformat(str(rng["endDate"])).replace(tzinfo=dt.UTC)
        end += dt.timedelta(days=2)
    else:
        end = max(start, dt.datetime.now(dt.UTC)) + NO_END_HORIZON
    begin = start - dt.timedelta(days=1)
    return begin.strftime("%Y-%m-%dT%H:%M:%SZ"), end.strftime("%Y-%m-%dT%H:%M:%SZ")


# -- the mover -------------------------------------------------------------------------------------


class ItemsMover:
    """`[migration] mover = "graph-items"`."""

    async def run(self, ctx: Context, subject: str, kind: str, window: Window) -> PassResult:
        from coexist.migrate import reconcile

        if kind == "cutover":
            window = Window()  # the cutover pass moves everything not yet moved
        src = GraphItemsStore(Box(ctx.source.graph, subject, ""))
        tgt = GraphItemsStore(Box(ctx.target.graph, target_id(ctx, subject), ""))
        counts: Counter[str] = Counter()
        # Mail rows only: contacts, events and tasks are PimCopier's (their own rows).
        plan, stores = await sync.sync_mailbox(ctx, subject, src, tgt, window, counts, MAIL_CLASS)
        pim = PimCopier(
            ctx, subject, src.box.graph, tgt.box.graph, (src.box.user_id, tgt.box.user_id)
        )
        await pim.run()
        counts.update(pim.counts)
        await handle_deletions(
            ctx, subject, counts, lambda r: delete_copy(tgt.box.graph, tgt.box.user_id, r)
        )
        report = await reconcile.reconcile(ctx, subject, plan, await tgt.totals())
        notes = []
        if counts["events_without_attendees"]:
            notes.append(
                f"{counts['events_without_attendees']} events copied without their attendees"
                " (Graph would invite them; graph-import-export keeps them)"
            )
        if note := sync.conflicts_note(stores.conflicts + pim.conflicts):
            notes.append(note)
        return reconcile.pass_result(ctx, kind, plan, report, counts, notes)


MOVERS["graph-items"] = ItemsMover()
