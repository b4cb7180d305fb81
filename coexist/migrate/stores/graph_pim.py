"""Contacts, calendars and To Do lists through their own Graph APIs, as MailboxStores.

The `graph-items` mover (`migrate.items`) moves them with the one sync algorithm
(`migrate.sync`), one store pair per class (`PIM_CLASSES`); this module spells every Graph
request of theirs.

- Folders (`caps.folder_rules` False: the project's mail folder rules do not apply): the
  default folder of the class (`/contacts`, the calendar with `isDefaultCalendar`, the To Do
  list with `wellknownListName` defaultList) is well known, so it maps to the target's
  default whatever either is called; contact folders (user-list-contactfolders, then
  contactfolder-list-childfolders per parent), other calendars and To Do lists map by name
  and are created through the class's API when missing.
- Changes (`caps.cursor` "listing"): these APIs have no per-folder delta in the faces the
  sandbox serves, so each round lists the folder in full and what it no longer lists is
  gone. A task's checklist is expanded into its listing.
- Export: one JSON payload per item in the class's format (`CONTACT_JSON`, `EVENT_JSON`,
  `TASK_JSON`): the listed resource; an event in the zone it was created in (a series
  copied from UTC times would drift by an hour across a daylight-saving change) and, for a
  series master, with its occurrences (event-list-instances) so the target can reproduce
  exceptions and cancellations; a task with its checklist.
- Import: the writable properties in one create stamped with the source id (the named
  extended property IDENTITY_PROP on contacts and events, a linkedResource on tasks, which
  have no extended properties: resources/todotask), then a series' exceptions PATCHed onto
  the matching occurrences and its cancelled occurrences deleted (event-update,
  event-delete), a task's checklist entry by entry (todotask-post-checklistitems). Several
  requests (`caps.atomic_import` False), but an update completes whatever a copy lacks
  (`caps.completes_on_update`): a copy an interrupted pass left is adopted (found by its
  stamp, `copies_of`) and brought in line, never made twice.
- Attendees are not copied: creating an event with attendees sends them invitations
  (user-post-events); such events are counted (`events_without_attendees`, `counts`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from coexist.errors import Conflict, InvalidRequest, NotFound, RemoteError
from coexist.migrate.stores.graph import Box
from coexist.migrate.stores.graph_items import (
    COPIES_IN_FLIGHT,
    IDENTITY_PROP,
    MAX_REQUEST,
    odata_string,
    stamp_expand,
    stamp_filter,
    stamp_of,
    update_conflict,
)
from coexist.tenants.protocols import (
    CONTACT_JSON,
    EVENT_JSON,
    TASK_JSON,
    Capabilities,
    Change,
    ChangePage,
    Folder,
    FolderTree,
    Imported,
    ItemInfo,
    ItemRef,
    Payload,
)

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
PAGE = {"$top": 100}


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


@dataclass(frozen=True)
class PimClass:
    """How one class of PIM item is listed, created, patched and recognised."""

    kind: str  # item_map kind (contact, event, task)
    folder_class: str  # MS-OXOSFLD PidTagContainerClass of its folders
    fmt: str  # its payload format
    well_known: str  # the well-known name of its default folder
    fields: tuple[str, ...]  # its writable properties
    folders: Callable[[str], str]  # user id -> folder collection path
    items: Callable[[str, str], str]  # user id, folder id -> item collection path
    item: Callable[[str, str, str], str]  # user id, folder id, item id -> item path
    name_of: str  # the folder's display-name property
    is_default: Callable[[dict[str, Any]], bool]  # whether a listed folder is the default
    stamp: Callable[[str], dict[str, Any]]  # source id -> what the create body adds
    find: Callable[[str], str]  # source id -> `$filter` for the items stamped with it
    # The default folder where the folder listing leaves it out (its item_map id).
    default_folder: str | None = None
    # user id, folder id -> its child folders, for a class whose folders nest.
    children: Callable[[str, str], str] | None = None
    zoned: bool = False  # items have start/end in a time zone, and series (events)
    checklist: bool = False  # items have a checklist, expanded in listings (tasks)
    # The stamp is a linkedResource, not an extended property (tasks: resources/todotask).
    linked_stamp: bool = False


def _contact_items(user: str, folder: str) -> str:
    # `/contacts` is the default Contacts folder (recorded as DEFAULT_CONTACTS on both sides).
    if folder == DEFAULT_CONTACTS:
        return f"users/{user}/contacts"
    return f"users/{user}/contactFolders/{folder}/contacts"


# user-list-contactfolders lists the folders under the default Contacts folder (`/contacts`
# is that folder itself); folders inside them are listed per parent and created there
# (contactfolder-list-childfolders, contactfolder-post-childfolders).
CONTACTS = PimClass(
    kind="contact",
    folder_class="IPF.Contact",
    fmt=CONTACT_JSON,
    well_known="contacts",
    fields=CONTACT_FIELDS,
    folders=lambda u: f"users/{u}/contactFolders",
    items=_contact_items,
    item=lambda u, f, i: f"users/{u}/contacts/{i}",
    name_of="displayName",
    is_default=lambda f: False,
    stamp=_extended_stamp,
    find=stamp_filter,
    default_folder=DEFAULT_CONTACTS,
    children=lambda u, f: f"users/{u}/contactFolders/{f}/childFolders",
)
EVENTS = PimClass(
    kind="event",
    folder_class="IPF.Appointment",
    fmt=EVENT_JSON,
    well_known="calendar",
    fields=EVENT_FIELDS,
    folders=lambda u: f"users/{u}/calendars",
    items=lambda u, f: f"users/{u}/calendars/{f}/events",
    item=lambda u, f, i: f"users/{u}/events/{i}",
    name_of="name",
    is_default=lambda f: bool(f.get("isDefaultCalendar")),
    stamp=_extended_stamp,
    find=stamp_filter,
    zoned=True,
)
# *unverified*: that a task's list id is the id of the mailbox folder it sits in (the
# sandbox serves one id space); only the To Do API's own ids are used here.
TASKS = PimClass(
    kind="task",
    folder_class="IPF.Task",
    fmt=TASK_JSON,
    well_known="tasks",
    fields=TASK_FIELDS,
    folders=lambda u: f"users/{u}/todo/lists",
    items=lambda u, f: f"users/{u}/todo/lists/{f}/tasks",
    item=lambda u, f, i: f"users/{u}/todo/lists/{f}/tasks/{i}",
    name_of="displayName",
    is_default=lambda f: f.get("wellknownListName") == "defaultList",
    stamp=_task_stamp,
    find=_task_filter,
    checklist=True,
    linked_stamp=True,
)
PIM_CLASSES = (CONTACTS, EVENTS, TASKS)  # in the order a pass moves them


def capabilities(cls: PimClass) -> Capabilities:
    """What a store of this class can do (see the module docstring)."""
    return Capabilities(
        exports=frozenset({cls.fmt}),
        accepts=frozenset({cls.fmt}),
        cursor="listing",
        folder_classes=frozenset({cls.folder_class}),
        checkpoint_kind=f"pim-{cls.kind}s",  # never saved: a listing has no cursor
        export_batch=1,
        export_bytes=MAX_REQUEST,
        imports_in_flight=COPIES_IN_FLIGHT,
        atomic_import=False,
        completes_on_update=True,
        folder_rules=False,
    )


def version(item: dict[str, Any]) -> str | None:
    """What changes when a PIM item changes: its changeKey (contacts, events); a todoTask has
    none (resources/todotask), so its @odata.etag, else lastModifiedDateTime."""
    value = item.get("changeKey") or item.get("@odata.etag") or item.get("lastModifiedDateTime")
    return str(value) if value else None


def copyable(item: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The writable properties that hold a value (Graph answers unset ones as null, empty
    strings, lists or objects; sending those back is noise)."""
    return {f: item[f] for f in fields if item.get(f) not in (None, "", [], {})}


def _name(item: dict[str, Any]) -> str | None:
    return item.get("subject") or item.get("displayName") or item.get("title")


def series_window(master: dict[str, Any]) -> tuple[str, str]:
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


def _instances(user: str, event_id: str, window: tuple[str, str]) -> tuple[str, dict[str, Any]]:
    """event-list-instances: the URL and its (required) window."""
    params = {"startDateTime": window[0], "endDateTime": window[1], "$top": 1000}
    return f"users/{user}/events/{event_id}/instances", params


class PimListing:
    """One round of a PIM folder: the whole folder, listed (no cursor). The store keeps what
    it listed, so the export reads no item twice."""

    def __init__(self, store: GraphPimStore, folder: Folder) -> None:
        self.store, self.folder = store, folder

    async def pages(self) -> AsyncIterator[ChangePage]:
        s = self.store
        path = s.cls.items(s.box.user_id, self.folder.id)
        items = await s.graph.list_all(path, {**PAGE, **s.expand})
        changes = []
        for item in items:
            s.listed[str(item["id"])] = item
            changes.append(
                Change(
                    str(item["id"]),
                    change_key=version(item),
                    created=item.get("createdDateTime"),
                    kind=s.cls.kind,
                    subject=_name(item),
                )
            )
        yield ChangePage(changes)

    async def describe(self, new: list[Change]) -> list[Change]:
        return new


class GraphPimStore:
    """One mailbox's contacts, calendars or To Do lists (one `PimClass`) through Graph."""

    def __init__(self, box: Box, cls: PimClass) -> None:
        self.box, self.cls, self.graph = box, cls, box.graph
        self.caps = capabilities(cls)
        self.listed: dict[str, dict[str, Any]] = {}  # source item id -> as last listed
        self.counts: Counter[str] = Counter()  # what the pass detail reports of this class
        # A task's checklist is a navigation property (todotask "Relationships"): expanded
        # so one listing brings it; *unverified*: $expand=checklistItems on a collection.
        self.expand = {"$expand": "checklistItems"} if cls.checklist else {}

    def _item(self, ref: ItemRef) -> str:
        return self.cls.item(self.box.user_id, ref.folder_id, ref.item_id)

    # -- folders

    async def list_folders(self) -> FolderTree:
        """Every folder of the class, parents before children; the default one well known."""
        user, cls = self.box.user_id, self.cls
        out: list[Folder] = []
        if cls.default_folder:
            out.append(
                Folder(cls.default_folder, ("Contacts",), cls.well_known, cls.folder_class, 0)
            )
        queue: list[tuple[dict[str, Any], tuple[str, ...]]] = [
            (f, ()) for f in await self.graph.list_all(cls.folders(user), PAGE)
        ]
        while queue:
            raw, parent = queue.pop(0)
            path = (*parent, str(raw[cls.name_of]))
            known = cls.well_known if cls.is_default(raw) else None
            out.append(Folder(str(raw["id"]), path, known, cls.folder_class, 0))
            if cls.children:
                inside = await self.graph.list_all(cls.children(user, str(raw["id"])), PAGE)
                queue += [(c, path) for c in inside]
        return FolderTree(out)

    async def create_folder(
        self, parent: Folder | None, name: str, path: tuple[str, ...], folder_class: str
    ) -> Folder | None:
        """A contact folder (at the top or in another, contactfolder-post-childfolders), a
        calendar (user-post-calendars) or a To Do list (todo-post-lists); None for another
        class, or under a folder not made yet (plan mode)."""
        cls = self.cls
        if folder_class != cls.folder_class:
            return None
        if parent is None:
            where = cls.folders(self.box.user_id)
        elif cls.children and not parent.id.startswith("planned:"):
            where = cls.children(self.box.user_id, parent.id)
        else:
            return None
        try:
            made = await self.graph.send("POST", where, json={cls.name_of: name})
        except Conflict:  # made by an earlier, interrupted pass: look it up
            siblings = await self.graph.list_all(where, PAGE)
            made = next(s for s in siblings if str(s[cls.name_of]).casefold() == name.casefold())
        if made is None:  # plan mode
            return Folder(f"planned:{'/'.join(path)}", path, None, folder_class, 0)
        return Folder(str(made["id"]), path, None, folder_class, 0)

    # -- source

    def changes(self, folder: Folder, cursor: str | None) -> PimListing:
        return PimListing(self, folder)

    def cursor_lost(self, exc: RemoteError) -> bool:
        return False  # a listing has no cursor to lose

    async def inspect(self, refs: list[ItemRef]) -> dict[str, ItemInfo]:
        """The subject of each listed item (the skip rules have nothing else to read here:
        no PIM item is protected mail)."""
        return {
            r.item_id: ItemInfo(_name(self.listed[r.item_id]))
            for r in refs
            if r.item_id in self.listed
        }

    async def export(
        self, refs: list[ItemRef], fmt: str, state_only: bool = False
    ) -> dict[str, Payload]:
        """Each item as listed (read again if it was not), an event in its own zone with a
        series' occurrences; an item gone since its listing is left out."""
        out: dict[str, Payload] = {}
        for ref in refs:
            try:
                item = await self._read(ref)
                doc: dict[str, Any] = {"item": item}
                if item.get("type") == "seriesMaster":
                    url, params = _instances(self.box.user_id, ref.item_id, series_window(item))
                    doc["instances"] = await self.graph.list_all(url, params)
            except NotFound:
                continue
            out[ref.item_id] = Payload(
                self.cls.fmt, json.dumps(doc), version(item), source_id=ref.item_id
            )
        return out

    async def _read(self, ref: ItemRef) -> dict[str, Any]:
        item = self.listed.get(ref.item_id)
        if item is None:
            item = dict(await self.graph.send("GET", self._item(ref), params=self.expand or None))
        tz = item.get("originalStartTimeZone")
        if not self.cls.zoned or not tz or tz == "UTC":
            return item
        # Responses give times in UTC unless `Prefer: outlook.timezone` names a zone
        # (event-get, "Request headers").
        own = await self.graph.send(
            "GET", self._item(ref), headers={"Prefer": f'outlook.timezone="{tz}"'}
        )
        return dict(own)

    # -- target

    async def import_item(
        self, folder_id: str, payload: Payload, replace: ItemRef | None = None
    ) -> Imported:
        """Create the copy (stamped), or PATCH it; then its exceptions or checklist."""
        doc = json.loads(payload.data)
        item: dict[str, Any] = doc["item"]
        series = self.cls.zoned and item.get("type") == "seriesMaster"
        if replace is None:
            if self.cls.zoned and item.get("attendees"):
                self.counts["events_without_attendees"] += 1
            body = {**copyable(item, self.cls.fields), **self.cls.stamp(payload.source_id)}
            path = self.cls.items(self.box.user_id, folder_id)
            made = await self.graph.send("POST", path, json=body)
            if made is None:  # plan mode
                return Imported(None, None)
            ref = ItemRef(folder_id, str(made["id"]))
        else:
            # Changing a series' pattern or times drops its exceptions (Outlook's rule), so
            # a series is updated in its other properties only; *unverified* completeness.
            fields = SERIES_SAFE_FIELDS if series else self.cls.fields
            ref = replace
            made = await self.graph.send("PATCH", self._item(ref), json=copyable(item, fields))
        if series and made is not None:
            await self._reproduce_exceptions(ref.item_id, item, doc.get("instances") or [])
        if self.cls.checklist:
            await self._sync_checklist(ref, item, replace=replace is not None)
        return Imported(ref.item_id, version(made or {}))

    async def _reproduce_exceptions(
        self, target_id: str, master: dict[str, Any], source: list[dict[str, Any]]
    ) -> None:
        """Exceptions PATCHed onto the target's occurrences; cancelled ones deleted."""
        url, params = _instances(self.box.user_id, target_id, series_window(master))
        by_start = {_instant(i.get("originalStart")): i for i in source}
        for occ in await self.graph.list_all(url, params):
            original = by_start.get(_instant(occ.get("originalStart")))
            path = f"users/{self.box.user_id}/events/{occ['id']}"
            if original is None:
                await self.graph.send("DELETE", path)  # cancelled at the source
                self.counts["occurrences_cancelled"] += 1
            elif original.get("type") == "exception":
                await self.graph.send("PATCH", path, json=copyable(original, EXCEPTION_FIELDS))
                self.counts["exceptions_copied"] += 1

    async def _sync_checklist(self, ref: ItemRef, task: dict[str, Any], *, replace: bool) -> None:
        """The task's checklist in the target: its entries are created one by one
        (todotask-post-checklistitems); `replace` first deletes what the copy has, so a
        changed or half-copied checklist ends up exactly like the source's."""
        base = f"{self._item(ref)}/checklistItems"
        if replace:
            for entry in await self.graph.list_all(base, PAGE):
                with contextlib.suppress(NotFound):
                    await self.graph.send("DELETE", f"{base}/{entry['id']}")
        for entry in task.get("checklistItems") or []:
            await self.graph.send("POST", base, json=copyable(entry, CHECKLIST_FIELDS))

    def update_refused(self, exc: RemoteError) -> bool:
        return update_conflict(exc)

    async def copies(self, folder_id: str, exclude: set[str]) -> dict[str, list[ItemRef]]:
        """The folder's copies by the source id they are stamped with (a PIM item has no
        identity across stores but the stamp), but those in `exclude`."""
        out: dict[str, list[ItemRef]] = {}
        listed = await self.graph.list_all(self.cls.items(self.box.user_id, folder_id), PAGE)
        for item in listed:
            ref = ItemRef(folder_id, str(item["id"]))
            if ref.item_id not in exclude and (stamp := await self._stamp(ref)) is not None:
                out.setdefault(stamp, []).append(ref)
        return out

    async def copies_of(
        self, folder_id: str, source_id: str, identity: str | None, exclude: set[str]
    ) -> list[ItemRef]:
        """Unmapped items of the folder stamped with `source_id`, by `$filter`; where the
        service refuses the filter (one Graph does not document, UNVERIFIED_FILTERS in
        sandbox/graph/outlook_items) every unmapped item's stamp is read instead. Either way
        an item counts only if its stamp, read back, names `source_id`."""
        path = self.cls.items(self.box.user_id, folder_id)
        try:
            listed = await self.graph.list_all(
                path, {"$filter": self.cls.find(source_id), "$select": "id", **PAGE}
            )
        except InvalidRequest:
            listed = await self.graph.list_all(path, {"$select": "id", **PAGE})
        refs = [ItemRef(folder_id, str(i["id"])) for i in listed]
        return [r for r in refs if r.item_id not in exclude and await self._stamp(r) == source_id]

    async def _stamp(self, ref: ItemRef) -> str | None:
        """The source id a target item is stamped with (None: not coexist's copy)."""
        try:
            if self.cls.linked_stamp:  # todotask-list-linkedresources
                links = await self.graph.list_all(f"{self._item(ref)}/linkedResources", PAGE)
                return next(
                    (str(x["externalId"]) for x in links if x.get("applicationName") == TASK_APP),
                    None,
                )
            item = await self.graph.send(
                "GET", self._item(ref), params={"$select": "id", "$expand": stamp_expand()}
            )
        except NotFound:
            return None
        return stamp_of(item)

    async def move(self, ref: ItemRef, folder_id: str) -> Imported:
        """Never called (`caps.moves` is False): a PIM item has no identity that would pair
        it with a copy in another folder."""
        raise NotImplementedError("GraphPimStore.move: caps.moves is False")

    async def change_keys(self, refs: list[ItemRef]) -> dict[str, str]:
        out: dict[str, str] = {}
        for ref in refs:
            with contextlib.suppress(NotFound):
                if key := version(await self.graph.send("GET", self._item(ref)) or {}):
                    out[ref.item_id] = key
        return out

    async def delete(self, ref: ItemRef) -> None:
        await self.graph.send("DELETE", self._item(ref))

    async def totals(self) -> dict[str, int]:
        """Items per folder, counted by listing each (these APIs give no folder totals)."""
        out: dict[str, int] = {}
        for f in (await self.list_folders()).folders:
            path = self.cls.items(self.box.user_id, f.id)
            out[f.id] = len(await self.graph.list_all(path, {"$select": "id", **PAGE}))
        return out
