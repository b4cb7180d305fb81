"""Calendar items, contacts and tasks over EWS, on the sandbox's PIM store (`pim.py`).

The PIM store keeps items as Graph shapes them (graph/calendar.py, contacts.py, todo.py own
the rules): an event's `start`/`end` are `dateTimeTimeZone`, a series master carries a
`recurrence` (patternedRecurrence) and `cancelled` (UTC original starts of deleted
occurrences), its exceptions are items of `type` "exception" with `seriesMasterId` and
`originalStart`. This module maps those to the EWS types and back:

- CalendarItem: Subject, Body, Start, End, IsAllDayEvent, Location, UID, CalendarItemType
  (Single | RecurringMaster), Recurrence (RecurrenceType: the six patterns, NoEnd/EndDate/
  Numbered ranges), ModifiedOccurrences (exceptions: ItemId, Start, End, OriginalStart),
  DeletedOccurrences (Start).
- Contact: DisplayName, GivenName, Surname, CompanyName, JobTitle, EmailAddresses
  (EmailAddress1..3), PhoneNumbers (BusinessPhone, HomePhone, MobilePhone), Birthday, Body.
- Task: Subject, Body, Importance, DueDate, StartDate, CompleteDate, Status.

Everything else the types have is not stored, so it is not returned (as Exchange returns only
properties an item has).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Any
from xml.etree import ElementTree as ET

from ..mailstore import iso
from ..pim import (
    CALENDAR,
    CONTACTS,
    INDEXES,
    ITEM_CLASS,
    TODO,
    PimItem,
    PimStore,
    format_local,
    occurrence_dates,
    parse_local,
    to_utc,
    zone,
)
from . import attachments, soap
from .orgs import UNVERIFIED
from .soap import NS, T, t

# Notes (IPM.StickyNote) live in the PIM store too, in a folder of kind NOTES the Graph faces
# never list (they ask for their own kinds); created the first time EWS opens "notes".
NOTES, NOTE = "notes", "note"
KIND_OF_FOLDER = {"calendar": CALENDAR, "contacts": CONTACTS, "tasks": TODO, "notes": NOTES}
ITEM_OF_FOLDER = {CALENDAR: "event", CONTACTS: "contact", TODO: "task", NOTES: NOTE}
ELEMENT = {"event": "CalendarItem", "contact": "Contact", "task": "Task",
           NOTE: UNVERIFIED.note_element}  # fmt: skip
TYPE_OF_ELEMENT = {"CalendarItem": "CalendarItemType", "Contact": "ContactItemType",
                   "Task": "TaskType", "Message": "MessageType", "Item": "ItemType"}  # fmt: skip
CLASS_OF_ITEM = {**ITEM_CLASS, NOTE: "IPM.StickyNote"}

# PidTagSearchKey (MS-OXCPRPT 2.2.1.9, PtypBinary): "Whenever a copy of an object is created,
# the key is also copied from the original object" — what tells an ExportItems/UploadItems
# copy of a contact, task or note (which have no Message-ID or UID) from another item. Kept
# among the item's MAPI properties in the form the Graph faces store them
# (`graph.outlook_items.EXTENDED`, ids as "Binary 0x300B"); an item made without one has a
# key derived from its id (stable for its life: PIM items are not moved here).
SEARCH_KEY = "Binary 0x300B"
EXTENDED = "singleValueExtendedProperties"


def search_key(item: PimItem) -> str:
    """The item's PidTagSearchKey, base64 (as EWS and Graph carry PtypBinary)."""
    stored = (item.props.get(EXTENDED) or {}).get(SEARCH_KEY)
    if stored:
        return str(stored)
    return base64.b64encode(hashlib.sha256(item.id.encode()).digest()[:16]).decode()


def props_with_search_key(item: PimItem) -> dict[str, Any]:
    """The item's properties with its search key stored: what an exported blob carries, so
    the copy UploadItems makes of it has the same key."""
    extended = {**(item.props.get(EXTENDED) or {}), SEARCH_KEY: search_key(item)}
    return {**item.props, EXTENDED: extended}


# EWS DistinguishedPropertySetId -> the property set's GUID (MS-OXPROPS 1.3.2, the EWS
# schema's DistinguishedPropertySetType), so a named property asked for by either spelling
# finds the one stored in Graph's id form ("String {guid} Name X").
PROPERTY_SETS = {
    "Meeting": "6ED8DA90-450B-101B-98DA-00AA003F1305",
    "Appointment": "00062002-0000-0000-C000-000000000046",
    "Common": "00062008-0000-0000-C000-000000000046",
    "PublicStrings": "00020329-0000-0000-C000-000000000046",
    "Address": "00062004-0000-0000-C000-000000000046",
    "InternetHeaders": "00020386-0000-0000-C000-000000000046",
    "CalendarAssistant": "11000E07-B51B-40D6-AF21-CAA85EDAB1D0",
    "UnifiedMessaging": "4442858E-A9E3-4E80-B900-317A210CC15B",
    "Task": "00062003-0000-0000-C000-000000000046",
    "Sharing": "00062040-0000-0000-C000-000000000046",
}


def extended_id(uri: ET.Element) -> str | None:
    """An ExtendedFieldURI as the id Graph gives the property ("Integer 0x1090", "String
    {guid} Name X", "Integer {guid} Id 0x8005"), None when it names none."""
    kind = uri.get("PropertyType", "")
    tag = uri.get("PropertyTag")
    if tag is not None:
        return f"{kind} 0x{int(tag, 0) if tag.lower().startswith('0x') else int(tag):04X}"
    guid = uri.get("PropertySetId") or PROPERTY_SETS.get(uri.get("DistinguishedPropertySetId", ""))
    name, number = uri.get("PropertyName"), uri.get("PropertyId")
    if guid is None or (name is None and number is None):
        return None
    if name is not None:
        return f"{kind} {{{guid}}} Name {name}"
    return f"{kind} {{{guid}}} Id 0x{int(str(number), 0):04X}"


def extended_wanted(shape: ET.Element | None) -> list[tuple[dict[str, str], str]]:
    """The extended properties a shape asks for: (the ExtendedFieldURI's attributes, to echo;
    the property's id, `extended_id`)."""
    out: list[tuple[dict[str, str], str]] = []
    for uri in (
        shape.iterfind("t:AdditionalProperties/t:ExtendedFieldURI", NS) if shape is not None else []
    ):
        pid = extended_id(uri)
        if pid is not None:
            out.append((dict(uri.attrib), pid))
    return out


def extended_values(node: ET.Element) -> dict[str, str]:
    """The extended properties a CreateItem/UpdateItem element sets: id -> value."""
    out: dict[str, str] = {}
    for prop in node.iterfind("t:ExtendedProperty", NS):
        uri = prop.find("t:ExtendedFieldURI", NS)
        value = soap.text_of(prop, "t:Value")
        pid = extended_id(uri) if uri is not None else None
        if pid is not None and value is not None:
            out[pid] = value
    return out


def stored_extended(item: PimItem, pid: str) -> str | None:
    """The value of the item's extended property `pid` (its PidTagSearchKey is always had)."""
    from ..graph.odata import same_property_id

    if same_property_id(pid, SEARCH_KEY):
        return search_key(item)
    for key, value in (item.props.get(EXTENDED) or {}).items():
        if same_property_id(str(key), pid):
            return str(value)
    return None


def extended_xml(item: PimItem, wanted: Sequence[tuple[dict[str, str], str]]) -> list[ET.Element]:
    """The requested extended properties (`extended_wanted`) the item has. Those set at
    CreateItem or UpdateItem are kept (`UNVERIFIED.pim_extended_kept` for WorkMail), as
    Exchange keeps a named property set on any item (MS-OXCPRPT, MS-OXPROPS)."""
    out: list[ET.Element] = []
    for attrs, pid in wanted:
        value = stored_extended(item, pid)
        if value is not None:
            out.append(t("ExtendedProperty", None, t("ExtendedFieldURI", attrs),
                         t("Value", text=value)))  # fmt: skip
    return out


def accepts(kind: str, element: str) -> bool:
    """Whether a CreateItem element may be saved as an item of `kind`."""
    if kind == NOTE:
        return element in ("Message", "Item", "PostItem")
    return ELEMENT.get(kind) == element


_IMPORTANCE = {"low": "Low", "normal": "Normal", "high": "High"}
_STATUS = {"notStarted": "NotStarted", "inProgress": "InProgress", "completed": "Completed",
           "waitingOnOthers": "WaitingOnOthers", "deferred": "Deferred"}  # fmt: skip
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"]  # fmt: skip
_PATTERN = {"daily": "DailyRecurrence", "weekly": "WeeklyRecurrence",
            "absoluteMonthly": "AbsoluteMonthlyRecurrence",
            "relativeMonthly": "RelativeMonthlyRecurrence",
            "absoluteYearly": "AbsoluteYearlyRecurrence",
            "relativeYearly": "RelativeYearlyRecurrence"}  # fmt: skip
_RANGE = {"noEnd": "NoEndRecurrence", "endDate": "EndDateRecurrence",
          "numbered": "NumberedRecurrence"}  # fmt: skip
EMAIL_KEYS = ("EmailAddress1", "EmailAddress2", "EmailAddress3")


def _utc(dtz: dict[str, Any] | None) -> str | None:
    """A Graph dateTimeTimeZone as EWS's UTC dateTime."""
    if not dtz or not dtz.get("dateTime"):
        return None
    return iso(to_utc(parse_local(str(dtz["dateTime"])), zone(str(dtz.get("timeZone") or "UTC"))))


def _dtz(value: str) -> dict[str, str]:
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return {
        "dateTime": format_local(when.astimezone(dt.UTC).replace(tzinfo=None)),
        "timeZone": "UTC",
    }


def _body(props: dict[str, Any], key: str = "body") -> ET.Element | None:
    body = props.get(key)
    if isinstance(body, dict) and body.get("content"):
        kind = "HTML" if str(body.get("contentType", "text")).lower() == "html" else "Text"
        return t("Body", {"BodyType": kind}, text=body["content"])
    if isinstance(body, str) and body:
        return t("Body", {"BodyType": "Text"}, text=body)
    return None


def _date_only(value: str) -> str:
    return value[:10]


def recurrence_xml(rec: dict[str, Any]) -> ET.Element:
    pattern, rng = rec["pattern"], rec["range"]
    kind = str(pattern["type"])
    parts: list[ET.Element] = []
    days = " ".join(d.capitalize() for d in pattern.get("daysOfWeek") or [])
    index = str(pattern.get("index") or "first").capitalize()
    interval = str(pattern.get("interval") or 1)
    if kind == "daily":
        parts = [t("Interval", text=interval)]
    elif kind == "weekly":
        parts = [t("Interval", text=interval), t("DaysOfWeek", text=days)]
        if pattern.get("firstDayOfWeek"):
            parts.append(t("FirstDayOfWeek", text=str(pattern["firstDayOfWeek"]).capitalize()))
    elif kind == "absoluteMonthly":
        parts = [t("Interval", text=interval), t("DayOfMonth", text=pattern.get("dayOfMonth") or 1)]
    elif kind == "relativeMonthly":
        parts = [t("Interval", text=interval), t("DaysOfWeek", text=days),
                 t("DayOfWeekIndex", text=index)]  # fmt: skip
    elif kind == "absoluteYearly":
        parts = [t("DayOfMonth", text=pattern.get("dayOfMonth") or 1),
                 t("Month", text=_MONTHS[int(pattern.get("month") or 1) - 1])]  # fmt: skip
    else:
        parts = [t("DaysOfWeek", text=days), t("DayOfWeekIndex", text=index),
                 t("Month", text=_MONTHS[int(pattern.get("month") or 1) - 1])]  # fmt: skip
    range_parts = [t("StartDate", text=_date_only(str(rng["startDate"])))]
    if rng["type"] == "endDate":
        range_parts.append(t("EndDate", text=_date_only(str(rng["endDate"]))))
    elif rng["type"] == "numbered":
        range_parts.append(t("NumberOfOccurrences", text=rng.get("numberOfOccurrences") or 1))
    return t(
        "Recurrence",
        None,
        t(_PATTERN[kind], None, parts),
        t(_RANGE[str(rng["type"])], None, range_parts),
    )


def recurrence_from_xml(node: ET.Element) -> dict[str, Any]:
    pattern: dict[str, Any] = {}
    rng: dict[str, Any] = {}
    by_element = {v: k for k, v in _PATTERN.items()}
    by_range = {v: k for k, v in _RANGE.items()}
    for child in node:
        local = child.tag.rsplit("}", 1)[-1]
        if local in by_element:
            pattern["type"] = by_element[local]
            pattern["interval"] = int(soap.text_of(child, "t:Interval") or 1)
            days = (soap.text_of(child, "t:DaysOfWeek") or "").split()
            if days:
                pattern["daysOfWeek"] = [d.lower() for d in days if d.capitalize() in _DAYS]
            if soap.text_of(child, "t:DayOfMonth"):
                pattern["dayOfMonth"] = int(soap.text_of(child, "t:DayOfMonth") or 1)
            if soap.text_of(child, "t:DayOfWeekIndex"):
                pattern["index"] = str(soap.text_of(child, "t:DayOfWeekIndex")).lower()
            if soap.text_of(child, "t:Month"):
                pattern["month"] = _MONTHS.index(str(soap.text_of(child, "t:Month"))) + 1
            if soap.text_of(child, "t:FirstDayOfWeek"):
                pattern["firstDayOfWeek"] = str(soap.text_of(child, "t:FirstDayOfWeek")).lower()
        elif local in by_range:
            rng["type"] = by_range[local]
            rng["startDate"] = _date_only(soap.text_of(child, "t:StartDate") or "")
            if soap.text_of(child, "t:EndDate"):
                rng["endDate"] = _date_only(soap.text_of(child, "t:EndDate") or "")
            if soap.text_of(child, "t:NumberOfOccurrences"):
                rng["numberOfOccurrences"] = int(soap.text_of(child, "t:NumberOfOccurrences") or 1)
    if pattern.get("index") and pattern["index"] not in INDEXES:
        pattern["index"] = "first"
    return {"pattern": pattern, "range": rng}


def _exceptions(pim: PimStore, master: PimItem) -> list[PimItem]:
    return [
        x for x in pim.items(master.tenant, master.mailbox, "event", master.folder_id)
        if x.props.get("type") == "exception" and x.props.get("seriesMasterId") == master.id
    ]  # fmt: skip


def _original_starts(master: PimItem) -> list[str]:
    """UTC starts of every occurrence of a series (bounded: ranges without end stop at 2 y)."""
    props = master.props
    start = props.get("start") or {}
    wall = parse_local(str(start.get("dateTime")))
    tz = zone(str(start.get("timeZone") or "UTC"))
    until = dt.date.today() + dt.timedelta(days=730)
    return [iso(to_utc(dt.datetime.combine(day, wall.time()), tz))
            for day in occurrence_dates(props["recurrence"], until)]  # fmt: skip


def _calendar_type(p: dict[str, Any]) -> str:
    kind = p.get("type")
    if kind == "seriesMaster" and p.get("recurrence"):
        return "RecurringMaster"
    return {"exception": "Exception", "occurrence": "Occurrence"}.get(str(kind), "Single")


def _shifted(
    item: PimItem, item_id: str, key: str, start: dt.datetime, length: dt.timedelta
) -> PimItem:
    props = {k: v for k, v in item.props.items() if k not in ("recurrence", "cancelled")}
    props.update(type="occurrence", originalStart=key, seriesMasterId=item.id,
                 start={"dateTime": format_local(start.replace(tzinfo=None)), "timeZone": "UTC"},
                 end={"dateTime": format_local((start + length).replace(tzinfo=None)), "timeZone": "UTC"})  # fmt: skip
    return PimItem(item.seq, item_id, item.tenant, item.mailbox, item.kind, item.folder_id, props,
                   item.created, item.modified, item.change_key)  # fmt: skip


def occurrence(pim: PimStore, master: PimItem, key: str, item_id: str) -> PimItem | None:
    """The occurrence of a series starting (originally) at `key` (UTC), if it has one: its
    exception if there is one, else the master's properties at that time."""
    if master.props.get("type") != "seriesMaster" or key in (master.props.get("cancelled") or []):
        return None
    if key not in _original_starts(master):
        return None
    found = pim.find(item_id)
    if found is not None:
        return found
    length = _span(master)
    start = dt.datetime.fromisoformat(key.replace("Z", "+00:00"))
    return _shifted(master, item_id, key, start.astimezone(dt.UTC), length)


def _span(item: PimItem) -> dt.timedelta:
    s, e = _utc(item.props.get("start")), _utc(item.props.get("end"))
    if s is None or e is None:
        return dt.timedelta(0)
    return dt.datetime.fromisoformat(e.replace("Z", "+00:00")) - dt.datetime.fromisoformat(
        s.replace("Z", "+00:00")
    )


def calendar_view(pim: PimStore, items: list[PimItem], start: dt.datetime, end: dt.datetime,
                  occurrence_id: Any) -> list[PimItem]:  # fmt: skip
    """Single items, occurrences and exceptions overlapping [start, end), by start time."""
    out: list[tuple[str, PimItem]] = []

    def overlaps(i: PimItem) -> str | None:
        s, e = _utc(i.props.get("start")), _utc(i.props.get("end"))
        if s is None or e is None:
            return None
        return s if s < iso(end) and e > iso(start) else None

    for item in items:
        if item.props.get("type") == "exception":
            continue
        if item.props.get("type") == "seriesMaster" and item.props.get("recurrence"):
            cancelled = set(item.props.get("cancelled") or [])
            length = _span(item)
            for key in _original_starts(item):
                if key in cancelled:
                    continue
                occ_id = occurrence_id(item.id, key)
                occ = pim.find(occ_id) or _shifted(
                    item, occ_id, key, dt.datetime.fromisoformat(key.replace("Z", "+00:00")), length
                )
                when = overlaps(occ)
                if when is not None:
                    out.append((when, occ))
        else:
            when = overlaps(item)
            if when is not None:
                out.append((when, item))
    out.sort(key=lambda pair: pair[0])
    return [i for _w, i in out]


def item_xml(
    pim: PimStore,
    item: PimItem,
    wanted: set[str],
    all_props: bool,
    photo_kept: bool = True,
    extended: Sequence[tuple[dict[str, str], str]] = (),
) -> ET.Element:
    """The EWS element of a PIM item; `wanted` are the requested property names (all of them
    when `all_props`), `extended` the requested extended properties (`extended_xml`).
    `photo_kept`: a contact photo is one (Exchange), not a plain attachment (WorkMail)."""
    p = item.props
    files = attachments.from_props(p)
    parts: list[ET.Element] = [t("ItemId", {"Id": item.id, "ChangeKey": item.change_key})]
    fields: dict[str, Any] = {
        "ParentFolderId": t("ParentFolderId", {"Id": item.folder_id}),
        "ItemClass": t("ItemClass", text=p.get("itemClass") or CLASS_OF_ITEM[item.kind]),
        "DateTimeCreated": t("DateTimeCreated", text=item.created),
        "LastModifiedTime": t("LastModifiedTime", text=item.modified),
        "Body": _body(p, "personalNotes" if item.kind == "contact" else "body"),
        "Attachments": attachments.listing(item.id, item.change_key, files, photo_kept)
        if files else None,
        "HasAttachments": t("HasAttachments", text="true" if files else "false"),
        "Categories": t("Categories", None, [t("String", text=c) for c in p.get("categories") or []])
        if p.get("categories") else None,
    }  # fmt: skip
    if item.kind == "event":
        master = _calendar_type(p) == "RecurringMaster"
        loc = (p.get("location") or {}).get("displayName")
        fields.update(
            Subject=t("Subject", text=p.get("subject") or ""),
            Start=t("Start", text=_utc(p.get("start"))),
            End=t("End", text=_utc(p.get("end"))),
            IsAllDayEvent=t("IsAllDayEvent", text="true" if p.get("isAllDay") else "false"),
            Location=t("Location", text=loc) if loc else None,
            UID=t("UID", text=p["iCalUId"]) if p.get("iCalUId") else None,
            CalendarItemType=t("CalendarItemType", text=_calendar_type(p)),
            OriginalStart=t("OriginalStart", text=p["originalStart"])
            if p.get("type") in ("exception", "occurrence") and p.get("originalStart")
            else None,
            IsRecurring=t(
                "IsRecurring", text="true" if p.get("type") != "singleInstance" else "false"
            ),
            Organizer=t(
                "Organizer",
                None,
                t(
                    "Mailbox",
                    None,
                    t("Name", text=p["organizer"]["emailAddress"].get("name") or ""),
                    t("EmailAddress", text=p["organizer"]["emailAddress"].get("address") or ""),
                    t("RoutingType", text="SMTP"),
                ),
            )
            if isinstance(p.get("organizer"), dict) and p["organizer"].get("emailAddress")
            else None,
            Importance=t("Importance", text=_IMPORTANCE.get(str(p.get("importance")), "Normal")),
        )
        if master:
            fields["Recurrence"] = recurrence_xml(p["recurrence"])
            exc = _exceptions(pim, item)
            if exc:
                fields["ModifiedOccurrences"] = t("ModifiedOccurrences", None, [
                    t("Occurrence", None, t("ItemId", {"Id": x.id, "ChangeKey": x.change_key}),
                      t("Start", text=_utc(x.props.get("start"))),
                      t("End", text=_utc(x.props.get("end"))),
                      t("OriginalStart", text=x.props.get("originalStart")))
                    for x in exc])  # fmt: skip
            cancelled = sorted(p.get("cancelled") or [])
            if cancelled:
                fields["DeletedOccurrences"] = t("DeletedOccurrences", None, [
                    t("DeletedOccurrence", None, t("Start", text=c)) for c in cancelled])  # fmt: skip
    elif item.kind == "contact":
        emails = [
            e for e in p.get("emailAddresses") or [] if isinstance(e, dict) and e.get("address")
        ]
        phones = [("BusinessPhone", (p.get("businessPhones") or [None])[0]),
                  ("HomePhone", (p.get("homePhones") or [None])[0]),
                  ("MobilePhone", p.get("mobilePhone"))]  # fmt: skip
        fields.update(
            Subject=t("Subject", text=p.get("displayName") or ""),
            HasPicture=t("HasPicture", text="true" if photo_kept and any(
                f.get("isContactPhoto") for f in files) else "false"),
            DisplayName=t("DisplayName", text=p.get("displayName") or ""),
            GivenName=t("GivenName", text=p["givenName"]) if p.get("givenName") else None,
            Surname=t("Surname", text=p["surname"]) if p.get("surname") else None,
            CompanyName=t("CompanyName", text=p["companyName"]) if p.get("companyName") else None,
            JobTitle=t("JobTitle", text=p["jobTitle"]) if p.get("jobTitle") else None,
            Birthday=t("Birthday", text=_utc({"dateTime": str(p["birthday"])[:19], "timeZone": "UTC"}))
            if p.get("birthday") else None,
            EmailAddresses=t("EmailAddresses", None, [
                t("Entry", {"Key": key}, text=e["address"]) for key, e in zip(EMAIL_KEYS, emails, strict=False)])
            if emails else None,
            PhoneNumbers=t("PhoneNumbers", None, [t("Entry", {"Key": k}, text=v) for k, v in phones if v])
            if any(v for _k, v in phones) else None,
        )  # fmt: skip
    elif item.kind == NOTE:
        fields.update(Subject=t("Subject", text=p.get("subject") or ""))
    else:  # task
        fields.update(
            Subject=t("Subject", text=p.get("title") or ""),
            Importance=t("Importance", text=_IMPORTANCE.get(str(p.get("importance")), "Normal")),
            DueDate=t("DueDate", text=_utc(p.get("dueDateTime"))) if p.get("dueDateTime") else None,
            StartDate=t("StartDate", text=_utc(p.get("startDateTime"))) if p.get("startDateTime") else None,
            CompleteDate=t("CompleteDate", text=_utc(p.get("completedDateTime")))
            if p.get("completedDateTime") else None,
            Status=t("Status", text=_STATUS.get(str(p.get("status")), "NotStarted")),
            IsComplete=t("IsComplete", text="true" if p.get("status") == "completed" else "false"),
        )  # fmt: skip
    for name, node in fields.items():
        if node is not None and (all_props or name in wanted):
            parts.append(node)
    parts += extended_xml(item, extended)
    element = ELEMENT[item.kind]
    return soap.ordered(t(element), f"{{{T}}}{TYPE_OF_ELEMENT[element]}", parts)


def props_from_xml(kind: str, spec: ET.Element) -> dict[str, Any]:
    """Graph-shaped properties of a CreateItem CalendarItem/Contact/Task."""

    def text(name: str) -> str | None:
        return soap.text_of(spec, f"t:{name}")

    body_node = spec.find("t:Body", NS)
    body = None
    if body_node is not None and body_node.text:
        body = {"contentType": "html" if body_node.get("BodyType") == "HTML" else "text",
                "content": body_node.text}  # fmt: skip
    cats = [c.text or "" for c in spec.iterfind("t:Categories/t:String", NS)]
    props: dict[str, Any] = {}
    if cats:
        props["categories"] = cats
    if kind == "event":
        start, end = text("Start"), text("End")
        if not start or not end:
            raise ValueError("a calendar item needs Start and End")
        props.update(subject=text("Subject") or "", start=_dtz(start), end=_dtz(end),
                     isAllDay=soap.is_true(text("IsAllDayEvent")))  # fmt: skip
        if text("Location"):
            props["location"] = {"displayName": text("Location")}
        if body:
            props["body"] = body
        if text("Importance"):
            props["importance"] = str(text("Importance")).lower()
        if text("UID"):
            props["iCalUId"] = text("UID")
        rec = spec.find("t:Recurrence", NS)
        if rec is not None:
            props["recurrence"] = recurrence_from_xml(rec)
        props["type"] = "seriesMaster" if rec is not None else "singleInstance"
    elif kind == "contact":
        emails = {e.get("Key"): e.text for e in spec.iterfind("t:EmailAddresses/t:Entry", NS)}
        phones = {e.get("Key"): e.text for e in spec.iterfind("t:PhoneNumbers/t:Entry", NS)}
        display = text("DisplayName") or " ".join(
            x for x in (text("GivenName"), text("Surname")) if x
        )
        props.update(displayName=display)
        for graph, ews in (("givenName", "GivenName"), ("surname", "Surname"),
                           ("companyName", "CompanyName"), ("jobTitle", "JobTitle")):  # fmt: skip
            if text(ews):
                props[graph] = text(ews)
        if text("Birthday"):
            props["birthday"] = str(text("Birthday"))[:10] + "T00:00:00Z"
        props["emailAddresses"] = [
            {"name": display, "address": emails[k]} for k in EMAIL_KEYS if emails.get(k)
        ]
        props["businessPhones"] = [phones["BusinessPhone"]] if phones.get("BusinessPhone") else []
        props["homePhones"] = [phones["HomePhone"]] if phones.get("HomePhone") else []
        if phones.get("MobilePhone"):
            props["mobilePhone"] = phones["MobilePhone"]
        if body:
            props["personalNotes"] = body["content"]
    elif kind == NOTE:
        props["subject"] = text("Subject") or ""
        props["itemClass"] = text("ItemClass") or "IPM.StickyNote"
        if body:
            props["body"] = body
    else:
        props["title"] = text("Subject") or ""
        status = {v: k for k, v in _STATUS.items()}.get(
            text("Status") or "NotStarted", "notStarted"
        )
        props["status"] = status
        props["importance"] = (text("Importance") or "Normal").lower()
        for graph, ews in (("dueDateTime", "DueDate"), ("startDateTime", "StartDate"),
                           ("completedDateTime", "CompleteDate")):  # fmt: skip
            if text(ews):
                props[graph] = _dtz(str(text(ews)))
        if body:
            props["body"] = body
    return props


def exceptions_of(pim: PimStore, master: PimItem) -> list[dict[str, Any]]:
    """The props of a series' exceptions (what an export carries with its master)."""
    return [x.props for x in _exceptions(pim, master)]


def original_starts(master: PimItem) -> list[str]:
    return _original_starts(master)
