"""The EWS store's pure parts for PIM folders: which folder classes it lists and makes, and a
calendar item's identity."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from coexist.migrate.stores.ews import (
    CAPS,
    WORKMAIL_CAPS,
    change_fields,
    change_of,
    folder_tree,
    moved_classes,
)
from coexist.tenants.protocols import MIME

LISTED = [
    {"id": "in", "parent": "root", "name": "Inbox", "folder_class": "IPF.Note"},
    {"id": "cal", "parent": "root", "name": "Calendar", "folder_class": "IPF.Appointment"},
    {"id": "team", "parent": "cal", "name": "Team", "folder_class": "IPF.Appointment"},
    {"id": "con", "parent": "root", "name": "Contacts", "folder_class": "IPF.Contact"},
    {
        "id": "qc",
        "parent": "con",
        "name": "QuickContacts",
        "folder_class": "IPF.Contact.MOC.QuickContacts",
    },
    {"id": "tsk", "parent": "root", "name": "Tasks", "folder_class": "IPF.Task"},
    {"id": "nts", "parent": "root", "name": "Notes", "folder_class": "IPF.StickyNote"},
    {"id": "jrn", "parent": "root", "name": "Journal", "folder_class": "IPF.Journal"},
]
WELL_KNOWN = {"in": "inbox", "cal": "calendar", "con": "contacts", "tsk": "tasks", "nts": "notes"}


def test_exchange_lists_pim_folders_with_their_class_and_well_known_name() -> None:
    """Between Exchange mailboxes (the stream) calendars, contacts, tasks and notes are listed
    with their exact class; derived system classes and journals are left out."""
    tree = folder_tree("root", LISTED, WELL_KNOWN, moved_classes(CAPS))
    got = {f.path: (f.folder_class, f.well_known) for f in tree.folders}
    assert got == {
        ("Inbox",): ("IPF.Note", "inbox"),
        ("Calendar",): ("IPF.Appointment", "calendar"),
        ("Calendar", "Team"): ("IPF.Appointment", None),
        ("Contacts",): ("IPF.Contact", "contacts"),
        ("Tasks",): ("IPF.Task", "tasks"),
        ("Notes",): ("IPF.StickyNote", "notes"),
    }
    assert tree.left_out == 2


def test_mime_stores_list_mail_only() -> None:
    """WorkMail (MIME) and a MIME-only target list mail folders alone: PIM has no MIME form."""
    for caps in (WORKMAIL_CAPS, replace(CAPS, accepts=frozenset({MIME}))):
        tree = folder_tree("root", LISTED, WELL_KNOWN, moved_classes(caps))
        assert [f.path for f in tree.folders] == [("Inbox",)]


def test_a_calendar_item_is_identified_by_its_uid() -> None:
    """A calendar item's change carries identity uid:<UID>; a contact none; the calendar's
    feed asks for the UID, not the Message-ID."""
    cal = SimpleNamespace(id="a", changekey="k", item_class="IPM.Appointment", uid="U-1",
                          datetime_received=None, size=10, subject="Weekly")  # fmt: skip
    con = SimpleNamespace(id="b", changekey="k", item_class="IPM.Contact",
                          datetime_received=None, size=10, subject="Ada")  # fmt: skip
    a, b = change_of("create", cal), change_of("create", con)
    assert a is not None and a.identity == "uid:U-1" and a.kind == "IPM.Appointment"
    assert b is not None and b.identity is None and b.kind == "IPM.Contact"
    assert "uid" in change_fields("IPF.Appointment")
    assert "message_id" not in change_fields("IPF.Contact")
    assert "message_id" in change_fields("IPF.Note")


def test_graph_zones_and_recurrences_become_exchangelib_values() -> None:
    """A Windows zone name and an IANA one are read, an unknown one is an InvalidRequest
    (the sync skips that item with the reason); a relative monthly pattern on weekdays maps
    to EWS's Weekday set, a numbered range to its count."""
    import pytest
    from exchangelib.recurrence import RelativeMonthlyPattern

    from coexist.errors import InvalidRequest
    from coexist.migrate.stores.ews_pim import WEEK_DAY, recurrence, when, zone

    assert zone("W. Europe Standard Time").key == "Europe/Berlin"
    assert zone("Europe/Paris").key == "Europe/Paris"
    with pytest.raises(InvalidRequest):
        zone("Nowhere/Atlantis")
    start = when({"dateTime": "2026-03-02T09:00:00.0000000", "timeZone": "UTC"})
    assert start is not None and start.isoformat() == "2026-03-02T09:00:00+00:00"
    rec = recurrence({
        "pattern": {"type": "relativeMonthly", "interval": 1, "index": "last",
                    "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"]},
        "range": {"type": "numbered", "startDate": "2026-03-02", "numberOfOccurrences": 4},
    })  # fmt: skip
    assert rec is not None and isinstance(rec.pattern, RelativeMonthlyPattern)
    assert (rec.pattern.weekday, rec.pattern.week_number, rec.boundary.number) == (WEEK_DAY, 5, 4)
