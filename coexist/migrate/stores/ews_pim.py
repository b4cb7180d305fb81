"""Contacts, calendars and tasks from Graph's PIM APIs into an EWS mailbox (Microsoft 365 ->
Exchange / WorkMail, audriga's M365 -> WorkMail guide), over the one sync algorithm.

`EwsPimTarget` is a target-only view of an `EwsStore` for one `graph_pim.PimClass`: it lists
and makes the folders of that class, accepts that class's JSON payload (`CONTACT_JSON`,
`EVENT_JSON`, `TASK_JSON`: the Graph resource as `GraphPimStore.export` writes it) and makes
an exchangelib Contact / CalendarItem / Task of it (CreateItem), stamped with the source id
in the same named property Graph copies carry (`graph_items.IDENTITY_PROP`), so a copy an
interrupted pass left is found (`copies_of`) and completed by an update.

- Events: subject, body, start/end in their own zone (Windows or IANA name), all-day,
  location, free/busy, sensitivity, importance, categories, reminder; the recurrence
  (Graph's six pattern types and three range types -> exchangelib's patterns and
  boundaries); after the master is made its exceptions are set on the matching occurrences
  and cancelled occurrences deleted (`_reproduce_exceptions`, by original start, as
  graph_pim does it on Graph). Attendees are not copied (a meeting request would go out).
- Contacts: names, company, job, e-mail addresses (3), phones, addresses, birthday, notes,
  categories.
- Tasks: subject, body, importance, status, start/due/completed dates, categories; a To Do
  checklist has no EWS counterpart: it is appended to the body (counted).
- Several requests per series (`atomic_import` False); an update rewrites every field and
  the exceptions again (`completes_on_update`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import replace
from typing import Any

from exchangelib import CalendarItem, Contact, ExtendedProperty, ItemId, Task
from exchangelib.ewsdatetime import EWSDate, EWSDateTime, EWSTimeZone
from exchangelib.indexed_properties import EmailAddress, PhoneNumber, PhysicalAddress
from exchangelib.recurrence import (
    AbsoluteMonthlyPattern,
    AbsoluteYearlyPattern,
    DailyPattern,
    Recurrence,
    RelativeMonthlyPattern,
    RelativeYearlyPattern,
    WeeklyPattern,
)

from coexist.errors import InvalidRequest
from coexist.migrate.passes import MOVERS
from coexist.migrate.stores.ews import (
    CAPS,
    GRAPH_EWS,
    PLANNED,
    EwsStore,
    _answer,
    _folder,
    _iso,
)
from coexist.migrate.stores.graph_pim import PimClass, series_window
from coexist.tenants.ews import SERVICE, EwsMailbox
from coexist.tenants.plan import WriteRecorder
from coexist.tenants.protocols import (
    Capabilities,
    Folder,
    Imported,
    ItemRef,
    Payload,
)

IDENTITY_SET = "5b1c2a8e-7f3d-4c61-9a0e-c0e715e0ce11"  # graph_items.IDENTITY_PROP's set
IDENTITY_NAME = "coexistSourceId"


class SourceId(ExtendedProperty):  # type: ignore[misc]
    """The source item's id on a copy: graph_items.IDENTITY_PROP, as an EWS named property."""

    property_set_id = IDENTITY_SET
    property_name = IDENTITY_NAME
    property_type = "String"


STAMP = "coexist_source_id"
for _cls in (CalendarItem, Contact, Task):
    try:
        _cls.get_field_by_fieldname(STAMP)
    except Exception:  # InvalidField: not registered yet
        _cls.register(STAMP, SourceId)

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
WEEK_INDEX = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": 5}
# exchangelib's DAY, WEEK_DAY, WEEKEND_DAY (recurrence: 8, 9, 10) for Graph day sets.
DAY, WEEK_DAY, WEEKEND_DAY = 8, 9, 10
TASK_STATUS = {
    "notStarted": "NotStarted",
    "inProgress": "InProgress",
    "completed": "Completed",
    "waitingOnOthers": "WaitingOnOthers",
    "deferred": "Deferred",
}
FREE_BUSY = {
    "free": "Free",
    "tentative": "Tentative",
    "busy": "Busy",
    "oof": "OOF",
    "workingElsewhere": "WorkingElsewhere",
    "unknown": "NoData",
}
PHONES = {
    "mobilePhone": ["MobilePhone"],
    "businessPhones": ["BusinessPhone", "BusinessPhone2"],
    "homePhones": ["HomePhone", "HomePhone2"],
}
ADDRESSES = {"homeAddress": "Home", "businessAddress": "Business", "otherAddress": "Other"}


# -- Graph JSON -> exchangelib values (pure) ---------------------------------------------------


def zone(name: str | None) -> EWSTimeZone:
    """A Graph timeZone value (a Windows name as Outlook writes it, or an IANA name)."""
    if not name or name == "UTC":
        return EWSTimeZone("UTC")
    try:
        return EWSTimeZone.from_ms_id(name)
    except Exception:  # not a Windows name exchangelib knows
        pass
    try:
        return EWSTimeZone(name)
    except Exception as exc:  # neither: the item is skipped with this reason, not guessed
        raise InvalidRequest(f"unknown time zone {name!r}", service=SERVICE) from exc


def when(value: dict[str, Any] | None) -> EWSDateTime | None:
    """A Graph dateTimeTimeZone as an aware EWSDateTime in its own zone."""
    if not value or not value.get("dateTime"):
        return None
    text = str(value["dateTime"])
    head, dot, rest = text.partition(".")
    naive = dt.datetime.fromisoformat(head if not dot else f"{head}.{rest[:6]}")
    tz = zone(value.get("timeZone"))
    return EWSDateTime.from_datetime(naive.replace(tzinfo=None)).replace(tzinfo=tz)


def day(value: Any) -> EWSDate | None:
    """A Graph date ("2026-01-05") or dateTimeTimeZone as an EWSDate."""
    if not value:
        return None
    text = str(value.get("dateTime") if isinstance(value, dict) else value)
    return EWSDate.from_date(dt.date.fromisoformat(text[:10]))


def _weekday(days: list[str]) -> int:
    """One EWS weekday for a relative pattern's Graph daysOfWeek (a set where EWS has one)."""
    got = {str(d).lower() for d in days}
    if got == set(WEEKDAYS):
        return DAY
    if got == set(WEEKDAYS[:5]):
        return WEEK_DAY
    if got == set(WEEKDAYS[5:]):
        return WEEKEND_DAY
    return WEEKDAYS.index(sorted(got, key=WEEKDAYS.index)[0]) + 1


def recurrence(value: dict[str, Any] | None) -> Recurrence | None:
    """Graph's patternedRecurrence (resources/patternedrecurrence) as exchangelib's."""
    if not value or not value.get("pattern"):
        return None
    p, r = value["pattern"], value.get("range") or {}
    kind, interval = str(p.get("type")), int(p.get("interval") or 1)
    days = list(p.get("daysOfWeek") or [])
    index = WEEK_INDEX.get(str(p.get("index") or "first"), 1)
    pattern: Any
    if kind == "daily":
        pattern = DailyPattern(interval=interval)
    elif kind == "weekly":
        weekdays = [WEEKDAYS.index(str(d).lower()) + 1 for d in days]
        first = WEEKDAYS.index(str(p.get("firstDayOfWeek") or "sunday").lower()) + 1
        pattern = WeeklyPattern(interval=interval, weekdays=weekdays, first_day_of_week=first)
    elif kind == "absoluteMonthly":
        pattern = AbsoluteMonthlyPattern(interval=interval, day_of_month=int(p["dayOfMonth"]))
    elif kind == "relativeMonthly":
        pattern = RelativeMonthlyPattern(
            interval=interval, weekday=_weekday(days), week_number=index
        )
    elif kind == "absoluteYearly":
        pattern = AbsoluteYearlyPattern(day_of_month=int(p["dayOfMonth"]), month=int(p["month"]))
    elif kind == "relativeYearly":
        pattern = RelativeYearlyPattern(
            weekday=_weekday(days), week_number=index, month=int(p["month"])
        )
    else:
        raise InvalidRequest(f"a recurrence of type {kind!r} has no EWS form", service=SERVICE)
    start = day(r.get("startDate"))
    rtype = str(r.get("type") or "noEnd")
    if rtype == "endDate" and r.get("endDate"):
        return Recurrence(pattern=pattern, start=start, end=day(r["endDate"]))
    if rtype == "numbered" and r.get("numberOfOccurrences"):
        return Recurrence(pattern=pattern, start=start, number=int(r["numberOfOccurrences"]))
    return Recurrence(pattern=pattern, start=start)


def _body(value: Any) -> str | None:
    if isinstance(value, dict):
        return str(value.get("content") or "") or None
    return str(value) if value else None


def event_fields(e: dict[str, Any], *, exception: bool = False) -> dict[str, Any]:
    """The CalendarItem attributes of a Graph event (an exception: no recurrence)."""
    out: dict[str, Any] = {
        "subject": e.get("subject") or "",
        "body": _body(e.get("body")),
        "location": (e.get("location") or {}).get("displayName") or None,
        "is_all_day": bool(e.get("isAllDay")),
        "categories": list(e.get("categories") or []) or None,
    }
    start, end = when(e.get("start")), when(e.get("end"))
    if out["is_all_day"]:
        out["start"], out["end"] = day(e.get("start")), day(e.get("end"))
    else:
        out["start"], out["end"] = start, end
    if (fb := FREE_BUSY.get(str(e.get("showAs")))) is not None:
        out["legacy_free_busy_status"] = fb
    if e.get("sensitivity") in ("normal", "personal", "private", "confidential"):
        out["sensitivity"] = str(e["sensitivity"]).capitalize()
    if e.get("importance") in ("low", "normal", "high"):
        out["importance"] = str(e["importance"]).capitalize()
    if e.get("isReminderOn") is not None:
        out["reminder_is_set"] = bool(e["isReminderOn"])
        out["reminder_minutes_before_start"] = int(e.get("reminderMinutesBeforeStart") or 0)
    if not exception:
        out["recurrence"] = recurrence(e.get("recurrence"))
    return out


def contact_fields(c: dict[str, Any]) -> dict[str, Any]:
    """The Contact attributes of a Graph contact (resources/contact)."""
    mails = [
        EmailAddress(email=str(m["address"]), label=f"EmailAddress{i + 1}")
        for i, m in enumerate((c.get("emailAddresses") or [])[:3])
        if m.get("address")
    ]
    phones = []
    for key, labels in PHONES.items():
        got = c.get(key)
        values = [got] if isinstance(got, str) else list(got or [])
        phones += [
            PhoneNumber(label=lb, phone_number=str(v))
            for lb, v in zip(labels, values, strict=False)
            if v
        ]
    addresses = [
        PhysicalAddress(
            label=label,
            street=a.get("street"),
            city=a.get("city"),
            state=a.get("state"),
            country=a.get("countryOrRegion"),
            zipcode=a.get("postalCode"),
        )
        for key, label in ADDRESSES.items()
        if (a := c.get(key)) and any(a.values())
    ]
    return {
        "display_name": c.get("displayName") or "",
        "given_name": c.get("givenName"),
        "middle_name": c.get("middleName"),
        "surname": c.get("surname"),
        "nickname": c.get("nickName"),
        "company_name": c.get("companyName"),
        "department": c.get("department"),
        "job_title": c.get("jobTitle"),
        "email_addresses": mails or None,
        "phone_numbers": phones or None,
        "physical_addresses": addresses or None,
        "birthday": when({"dateTime": str(c["birthday"])[:19], "timeZone": "UTC"})
        if c.get("birthday")
        else None,
        "body": c.get("personalNotes") or None,
        "categories": list(c.get("categories") or []) or None,
    }


def task_fields(t: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The Task attributes of a To Do task, and how many checklist entries went into its body
    (EWS tasks have no checklist)."""
    body = _body(t.get("body")) or ""
    checklist = list(t.get("checklistItems") or [])
    if checklist:
        lines = [
            f"[{'x' if i.get('isChecked') else ' '}] {i.get('displayName')}" for i in checklist
        ]
        body = "\n".join([body, *lines]) if body else "\n".join(lines)
    out: dict[str, Any] = {
        "subject": t.get("title") or "",
        "body": body or None,
        "status": TASK_STATUS.get(str(t.get("status")), "NotStarted"),
        "due_date": day(t.get("dueDateTime")),
        "start_date": day(t.get("startDateTime")),
        "categories": list(t.get("categories") or []) or None,
    }
    if t.get("importance") in ("low", "normal", "high"):
        out["importance"] = str(t["importance"]).capitalize()
    if out["status"] == "Completed" and t.get("completedDateTime"):
        out["complete_date"] = day(t["completedDateTime"])
    return out, len(checklist)


def _original(value: Any) -> str | None:
    """An occurrence's original start as a UTC instant text (to pair source and target)."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.replace("Z", "+00:00")
        head, dot, rest = text.partition(".")
        if dot:
            digits = "".join(ch for ch in rest if ch.isdigit())
            text = f"{head}.{digits[:6]}{rest[len(digits) :]}"
        parsed = dt.datetime.fromisoformat(text)
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
        return parsed.astimezone(dt.UTC).isoformat()
    return _iso(value)


# -- the store ---------------------------------------------------------------------------------


class EwsPimTarget(EwsStore):
    """One class of PIM item (`cls`) of an EWS mailbox, as the target of a Graph PIM store."""

    def __init__(
        self,
        mailbox: EwsMailbox,
        cls: PimClass,
        *,
        label: str = "target",
        plan: WriteRecorder | None = None,
    ) -> None:
        super().__init__(mailbox, label=label, plan=plan)
        self.cls = cls
        self.counts: Counter[str] = Counter()

    @property
    def caps(self) -> Capabilities:
        return replace(
            CAPS,
            exports=frozenset(),
            accepts=frozenset({self.cls.fmt}),
            folder_classes=frozenset({self.cls.folder_class}),
            moves=False,
            atomic_import=False,
            completes_on_update=True,
            folder_rules=False,
            imports_in_flight=2,
        )

    def moved_classes(self) -> frozenset[str]:
        return frozenset({self.cls.folder_class})

    async def create_folder(
        self, parent: Folder | None, name: str, path: tuple[str, ...], folder_class: str
    ) -> Folder | None:
        """A folder of the class; one asked for at the top goes under the class's default
        folder (Exchange serves secondary calendars, contact folders and task folders there,
        as Graph-made ones appear over EWS), where a later pass finds it by name."""
        if parent is None and folder_class == self.cls.folder_class:
            tree = await self.list_folders()
            parent = next((f for f in tree.folders if f.well_known == self.cls.well_known), None)
            path = (*(parent.path if parent else ()), name)
        return await super().create_folder(parent, name, path, folder_class)

    # -- import ------------------------------------------------------------------------------

    async def import_item(
        self, folder_id: str, payload: Payload, replace: ItemRef | None = None
    ) -> Imported:
        if payload.fmt != self.cls.fmt:
            raise InvalidRequest(
                f"an EWS {self.cls.kind} target cannot import {payload.fmt!r}", service=SERVICE
            )
        doc = json.loads(payload.data)
        item: dict[str, Any] = doc["item"]
        if self.cls.kind == "event":
            fields = event_fields(item)
            if item.get("attendees"):
                self.counts["events_without_attendees"] += 1
        elif self.cls.kind == "contact":
            fields = contact_fields(item)
        else:
            fields, entries = task_fields(item)
            self.counts["checklist_items_in_body"] += entries
        fields[STAMP] = payload.source_id
        if self.plan is not None or folder_id.startswith(PLANNED):
            op = "UpdateItem" if replace else "CreateItem"
            self._record(op, folder=folder_id, kind=self.cls.kind)
            return Imported(None, None)
        model = {"event": CalendarItem, "contact": Contact, "task": Task}[self.cls.kind]

        def write(account: Any) -> tuple[str, str]:
            if replace is None:
                # CalendarItem.save sends no meeting request by default (SendToNone).
                made = model(account=account, folder=_folder(account, folder_id), **fields)
                made.save()
                return str(made.id), str(made.changekey)
            [got] = list(account.fetch(ids=[ItemId(replace.item_id, None)]))
            got = _answer(got)
            # The stamp was set at creation and stays with the item (an UpdateItem changes
            # only the fields it names); it is not written again.
            changed = {k: v for k, v in fields.items() if k != STAMP}
            for name, value in changed.items():
                setattr(got, name, value)
            got.save(update_fields=list(changed))
            return str(got.id), str(got.changekey)

        self._writing()
        made_id, key = await self._call(
            write, "CreateItem" if replace is None else "UpdateItem", write=True
        )
        if self.cls.kind == "event" and item.get("type") == "seriesMaster":
            key = await self._reproduce_exceptions(made_id, item, doc.get("instances") or [])
        return Imported(made_id, key)

    async def _reproduce_exceptions(
        self, master_id: str, master: dict[str, Any], source: list[dict[str, Any]]
    ) -> str | None:
        """The source series' exceptions set on the copy's occurrences (UpdateItem) and its
        cancelled occurrences deleted (DeleteItem), paired by original start; returns the
        master's change key after them."""
        by_start = {_original(i.get("originalStart")): i for i in source}
        begin, end = series_window(master)
        counts = self.counts

        def apply(account: Any) -> str | None:
            start = EWSDateTime.from_string(begin)
            stop = EWSDateTime.from_string(end)
            [copy] = list(account.fetch(ids=[ItemId(master_id, None)], only_fields=["uid"]))
            copy = _answer(copy)
            seen = [
                i
                for i in account.calendar.view(start=start, end=stop)
                if not isinstance(i, Exception) and i.uid == copy.uid
            ]
            ids = [ItemId(i.id, None) for i in seen]
            occurrences = _items_of(account.fetch(ids=ids)) if ids else []
            for occ in occurrences:
                original = by_start.get(_original(occ.original_start or occ.start))
                if original is None:
                    occ.delete()  # SendToNone by default
                    counts["occurrences_cancelled"] += 1
                elif original.get("type") == "exception":
                    fields = event_fields(original, exception=True)
                    for name, value in fields.items():
                        setattr(occ, name, value)
                    occ.save(update_fields=list(fields))
                    counts["exceptions_copied"] += 1
            [after] = list(account.fetch(ids=[ItemId(master_id, None)], only_fields=["uid"]))
            return str(_answer(after).changekey)

        key: str | None = await self._call(apply, "UpdateItem (occurrences)", write=True)
        return key

    # -- finding copies ----------------------------------------------------------------------

    async def copies(self, folder_id: str, exclude: set[str]) -> dict[str, list[ItemRef]]:
        """The folder's copies by the source id they are stamped with, but `exclude`."""
        if folder_id.startswith(PLANNED):
            return {}
        model = {"event": CalendarItem, "contact": Contact, "task": Task}[self.cls.kind]

        def read(account: Any) -> list[tuple[str, str, str | None]]:
            folder = _folder(account, folder_id)
            ids = [
                ItemId(i.id, None)
                for i in folder.all().only("item_class")
                if not isinstance(i, Exception)
            ]
            if not ids:
                return []
            got = _items_of(account.fetch(ids=ids, only_fields=[STAMP]))
            return [
                (str(i.id), str(i.changekey), getattr(i, STAMP, None))
                for i in got
                if isinstance(i, model)
            ]

        out: dict[str, list[ItemRef]] = {}
        for item_id, key, stamp in await self._call(read, "FindItem"):
            if stamp and item_id not in exclude:
                out.setdefault(str(stamp), []).append(ItemRef(folder_id, item_id, key))
        return out

    async def copies_of(
        self, folder_id: str, source_id: str, identity: str | None, exclude: set[str]
    ) -> list[ItemRef]:
        return (await self.copies(folder_id, exclude)).get(source_id, [])


def _items_of(answers: Any) -> list[Any]:
    return [a for a in (_answer(x, gone_ok=True) for x in answers) if a is not None]


# -- the graph-ews mover -----------------------------------------------------------------------


class GraphEwsMover:
    """`graph-ews` (Microsoft 365 -> Exchange / WorkMail): mail through Graph's mail API as
    MIME with its state (rows of kind IPM.Note), then contacts, calendars and To Do tasks one
    class at a time from Graph's PIM APIs into `EwsPimTarget` (rows of kind contact, event,
    task; no pass window, as graph-items moves them), then deletions and the mail reconcile.
    Shaped like `items.ItemsMover`, whose PIM half it shares."""

    async def run(self, ctx: Any, subject: str, kind: str, window: Any) -> Any:
        from coexist.migrate import reconcile, sync
        from coexist.migrate.passes import Window
        from coexist.migrate.stores.ews import open_graph_to_ews
        from coexist.migrate.stores.graph_pim import PIM_CLASSES, GraphPimStore
        from coexist.tenants.protocols import MAIL_CLASS

        if kind == "cutover":
            window = Window()  # the cutover pass moves everything not yet moved
        counts: Counter[str] = Counter()
        async with open_graph_to_ews(ctx, subject) as (src, tgt):
            assert isinstance(tgt, EwsStore)
            plan, stores = await sync.sync_mailbox(
                ctx, subject, src, tgt, window, counts, MAIL_CLASS
            )
            conflicts = list(stores.conflicts)
            box = src.box  # type: ignore[attr-defined]
            for cls in PIM_CLASSES:
                pim_src = GraphPimStore(box, cls)
                pim_tgt = EwsPimTarget(tgt.mailbox, cls, plan=tgt.plan)
                got: Counter[str] = Counter()
                _, pim_stores = await sync.sync_mailbox(
                    ctx, subject, pim_src, pim_tgt, Window(), got, cls.kind
                )
                counts.update(got + pim_tgt.counts)
                counts[f"{cls.kind}s_copied"] += got["copied"]
                conflicts += pim_stores.conflicts

            async def delete(row: dict[str, Any]) -> bool:
                await tgt.delete(sync.copy_of(row))
                return True

            await sync.handle_deletions(ctx, subject, counts, delete)
            report = await reconcile.reconcile(ctx, subject, plan, await tgt.totals())
        notes = []
        if counts["events_without_attendees"]:
            notes.append(
                f"{counts['events_without_attendees']} events copied without their attendees"
                " (a meeting request would go out)"
            )
        if counts["checklist_items_in_body"]:
            notes.append(
                f"{counts['checklist_items_in_body']} To Do checklist entries written into"
                " their task's body (EWS tasks have no checklist)"
            )
        if note := sync.conflicts_note(conflicts):
            notes.append(note)
        return reconcile.pass_result(ctx, kind, plan, report, counts, notes, subject=subject)


MOVERS[GRAPH_EWS] = GraphEwsMover()
