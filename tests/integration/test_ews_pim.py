"""Calendar items (recurrence, exceptions, cancelled occurrences), contacts and tasks over the
sandbox's EWS face, with exchangelib (sandbox CA, pinned version), on the same PIM store the
Graph faces use."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from exchangelib import UTC as EWS_UTC
from exchangelib import Contact, EWSDate, EWSDateTime, FileAttachment, Message, Task
from exchangelib.errors import ErrorInvalidFolderTypeForOperation
from exchangelib.folders import Folder
from exchangelib.indexed_properties import EmailAddress, PhoneNumber
from exchangelib.recurrence import WeeklyPattern

from coexist.sandbox import Sandbox
from coexist.sandbox.ews.face import ERRORS_KEY
from coexist.sandbox.graph.outlook_items import pim_store
from tests import ewsclient as ec

UTC = dt.UTC


@pytest.fixture
def ews(sandbox: Sandbox) -> Iterator[Sandbox]:
    """Source = Exchange 2016, target = Exchange 2019; no sandbox bug met while serving."""
    ec.org(sandbox, "source", "exchange2016")
    ec.org(sandbox, "target", "exchange2019")
    assert sandbox.ctx is not None
    sandbox.ctx.extra[ERRORS_KEY] = []
    yield sandbox
    assert sandbox.ctx.extra[ERRORS_KEY] == []


def _delegate(sb: Sandbox, key: str = "source", kind: str = "exchange2016") -> tuple[Any, Any]:
    user = ec.mailboxes(sb, key, 1)[0]
    assert user.primary_smtp
    login = ec.migration_account(sb, key, full_access=[user.primary_smtp])
    return ec.account(sb, key, login, user.primary_smtp, kind=kind), user


def test_recurring_series_with_exceptions(ews: Sandbox) -> None:
    """A weekly series created over EWS reads back as a RecurringMaster with its pattern and
    range, its exception (ModifiedOccurrences) and its cancelled occurrence
    (DeletedOccurrences); GetItem on the exception's id answers the exception."""
    account, _user = _delegate(ews)
    series = ec.weekly_series(account)
    moved, cancelled = ec.add_exception_and_cancel(ews, series.id)
    got = next(iter(account.fetch(ids=[(series.id, None)])))
    assert got.type == "RecurringMaster" and got.subject == "Weekly sync"
    assert got.location == "Room 1"
    assert isinstance(got.recurrence.pattern, WeeklyPattern)
    assert got.recurrence.pattern.weekdays == [1] and got.recurrence.boundary.number == 6
    assert [o.original_start for o in got.modified_occurrences] == [EWSDateTime.from_string(moved)]
    assert [o.start for o in got.deleted_occurrences] == [EWSDateTime.from_string(cancelled)]
    exception = next(iter(account.fetch(ids=[(got.modified_occurrences[0].id, None)])))
    assert exception.subject == "Weekly sync (moved)"
    listed = list(account.calendar.all())
    assert [i.id for i in listed] == [series.id]  # exceptions hang off their master


def test_series_export_upload_byte_identical(ews: Sandbox) -> None:
    """ExportItems -> UploadItems of a series with an exception and a cancellation between two
    Exchange organisations: the re-exported blob is byte-identical and the target master
    has the exception."""
    src, _u = _delegate(ews, "source")
    dst, _v = _delegate(ews, "target", "exchange2019")
    series = ec.weekly_series(src)
    ec.add_exception_and_cancel(ews, series.id)
    blob = src.export([series])[0]
    dst.upload([(dst.calendar, blob)])
    copy = next(iter(dst.calendar.all()))
    assert dst.export([copy])[0] == blob
    got = next(iter(dst.fetch(ids=[(copy.id, None)])))
    assert len(got.modified_occurrences) == 1 and len(got.deleted_occurrences) == 1


def test_contacts_and_tasks(ews: Sandbox) -> None:
    """A Contact (names, company, e-mail addresses, phones) and a Task (due date, status) made
    over EWS read back with their typed properties."""
    account, _user = _delegate(ews)
    Contact(account=account, folder=account.contacts, given_name="Ada", surname="Lovelace",
            display_name="Ada Lovelace", company_name="Analytical",
            email_addresses=[EmailAddress(email="ada@example.org", label="EmailAddress1")],
            phone_numbers=[PhoneNumber(label="MobilePhone", phone_number="+44 1")]).save()  # fmt: skip
    contact = next(iter(account.contacts.all()))
    assert (contact.given_name, contact.surname, contact.company_name) == (
        "Ada", "Lovelace", "Analytical")  # fmt: skip
    assert [e.email for e in contact.email_addresses] == ["ada@example.org"]
    assert [(p.label, p.phone_number) for p in contact.phone_numbers] == [("MobilePhone", "+44 1")]
    Task(account=account, folder=account.tasks, subject="File taxes",
         due_date=EWSDate(2026, 4, 15), status="InProgress").save()  # fmt: skip
    task = next(iter(account.tasks.all()))
    assert task.subject == "File taxes" and task.status == "InProgress"
    assert task.due_date == EWSDate(2026, 4, 15)


def test_calendar_sync_folder_items(ews: Sandbox) -> None:
    """SyncFolderItems over the calendar reports the series as created, then its deletion."""
    account, _user = _delegate(ews)
    series = ec.weekly_series(account)
    first = list(account.calendar.sync_items())
    assert [(k, i.id) for k, i in first] == [("create", series.id)]
    state = account.calendar.item_sync_state
    series.delete()
    second = list(account.calendar.sync_items(sync_state=state))
    assert [k for k, _ in second] == ["delete"]


def test_notes(ews: Sandbox) -> None:
    """A sticky note (ItemClass IPM.StickyNote) saved in Notes reads back with its class,
    subject and body, and travels byte-identical through ExportItems -> UploadItems."""
    src, _u = _delegate(ews, "source")
    dst, _v = _delegate(ews, "target", "exchange2019")
    Message(account=src, folder=src.notes, item_class="IPM.StickyNote", subject="Call Bob",
            body="Call Bob about the contract").save()  # fmt: skip
    note = next(iter(src.notes.all()))
    assert (note.item_class, note.subject, note.body) == (
        "IPM.StickyNote", "Call Bob", "Call Bob about the contract")  # fmt: skip
    blob = src.export([note])[0]
    dst.upload([(dst.notes, blob)])
    assert dst.export([next(iter(dst.notes.all()))])[0] == blob
    assert "Notes" not in {f.display_name for f in _graph_mail_folder_names(ews)}


def _graph_mail_folder_names(sb: Sandbox) -> list[Any]:
    """The mail folders the Graph mail face lists for the mailbox (the notes folder, kept in
    the PIM store, is not among them)."""
    user = ec.mailboxes(sb, "source", 1)[0]
    return sb.mail.child_folders("source", user.id)


def test_update_pim_items(ews: Sandbox) -> None:
    """UpdateItem changes a task's status and due date, a contact's e-mail address and an
    event's subject and location; the untouched properties stay."""
    account, _user = _delegate(ews)
    Task(account=account, folder=account.tasks, subject="Renew passport",
         due_date=EWSDate(2026, 5, 1), status="NotStarted").save()  # fmt: skip
    task = next(iter(account.tasks.all()))
    task.status = "InProgress"
    task.due_date = EWSDate(2026, 6, 1)
    task.save(update_fields=["status", "due_date"])
    again = next(iter(account.tasks.all()))
    assert (again.subject, again.status, again.due_date) == (
        "Renew passport", "InProgress", EWSDate(2026, 6, 1))  # fmt: skip
    Contact(account=account, folder=account.contacts, display_name="Grace Hopper",
            given_name="Grace", surname="Hopper",
            email_addresses=[EmailAddress(email="grace@old.example", label="EmailAddress1")]).save()  # fmt: skip
    contact = next(iter(account.contacts.all()))
    contact.email_addresses = [EmailAddress(email="grace@new.example", label="EmailAddress1")]
    contact.save(update_fields=["email_addresses"])
    contact = next(iter(account.contacts.all()))
    assert [e.email for e in contact.email_addresses] == ["grace@new.example"]
    assert contact.surname == "Hopper"
    series = ec.weekly_series(account)
    series.subject, series.location = "Weekly sync (renamed)", "Room 2"
    series.save(update_fields=["subject", "location"])
    got = next(iter(account.fetch(ids=[(series.id, None)])))
    assert (got.subject, got.location, got.type) == (
        "Weekly sync (renamed)",
        "Room 2",
        "RecurringMaster",
    )


def test_calendar_view_expands_the_series(ews: Sandbox) -> None:
    """FindItem with a CalendarView expands a series: occurrences at their times, the
    exception at its moved time, the cancelled occurrence left out; GetItem answers an
    occurrence's id."""
    account, _user = _delegate(ews)
    series = ec.weekly_series(account)
    ec.add_exception_and_cancel(ews, series.id)
    start = EWSDateTime(2026, 1, 1, tzinfo=EWS_UTC)
    seen = list(account.calendar.view(start=start, end=start + dt.timedelta(days=60)))
    assert [(i.type, i.start.isoformat()) for i in seen] == [
        ("Occurrence", "2026-01-05T09:00:00+00:00"),
        ("Exception", "2026-01-12T10:00:00+00:00"),
        ("Occurrence", "2026-01-26T09:00:00+00:00"),
        ("Occurrence", "2026-02-02T09:00:00+00:00"),
        ("Occurrence", "2026-02-09T09:00:00+00:00"),
    ]
    occ = next(iter(account.fetch(ids=[(seen[0].id, None)])))
    assert occ.type == "Occurrence" and occ.subject == "Weekly sync"


@pytest.mark.parametrize(("kind", "auth", "photo"), [("exchange2016", "NTLM", True),
                                                     ("workmail", "basic", False)])  # fmt: skip
def test_contact_photo(ews: Sandbox, kind: str, auth: str, photo: bool) -> None:
    """A contact photo added with CreateAttachment (IsContactPhoto): on Exchange the contact
    has a picture; on WorkMail it arrives as a plain attachment. GetAttachment returns its
    bytes either way."""
    ec.org(ews, "target", kind)
    user = ec.mailboxes(ews, "target", 1)[0]
    assert user.primary_smtp
    login = ec.migration_account(ews, "target", full_access=["*"])
    account = ec.account(ews, "target", login, user.primary_smtp, kind=kind, auth=auth)
    contact = Contact(account=account, folder=account.contacts, display_name="Pic", given_name="P")
    contact.save()
    contact.attach(FileAttachment(name="photo.jpg", content_type="image/jpeg",
                                  content=b"\xff\xd8jpeg", is_contact_photo=True))  # fmt: skip
    got = next(iter(account.contacts.all()))
    assert got.has_picture is photo
    assert [a.is_contact_photo for a in got.attachments] == [photo]
    assert got.attachments[0].content == b"\xff\xd8jpeg"


def test_message_attachment(ews: Sandbox) -> None:
    """CreateAttachment adds a MIME part to a message; GetItem lists it; GetAttachment reads it."""
    account, _user = _delegate(ews)
    msg = Message(account=account, folder=account.inbox, subject="with file", body="see file")
    msg.save()
    msg.attach(FileAttachment(name="a.txt", content_type="text/plain", content=b"hello"))
    got = next(iter(account.inbox.all()))
    assert got.has_attachments and [a.name for a in got.attachments] == ["a.txt"]
    assert got.attachments[0].content == b"hello"


def test_secondary_pim_folders(ews: Sandbox) -> None:
    """A calendar made by a Graph client (no parent) is a child of Calendar over EWS; a
    contact folder made over EWS is a child of Contacts, holds contacts, and is a child
    contact folder in the shared PIM store; a mail-class folder under Contacts is refused."""
    account, user = _delegate(ews)
    assert ews.ctx is not None
    pim = pim_store(ews.ctx)
    pim.create_folder("source", user.id, "calendar", "Holidays")
    assert [f.name for f in account.calendar.children] == ["Holidays"]
    work = Folder(parent=account.contacts, name="Work", folder_class="IPF.Contact")
    work.save()
    Contact(account=account, folder=work, display_name="Alan Turing", given_name="Alan").save()
    assert [c.display_name for c in work.all()] == ["Alan Turing"]
    contacts = pim.default_folder("source", user.id, "contacts")
    assert [
        f.display_name for f in pim.folders("source", user.id, "contacts", parent=contacts.id)
    ] == ["Work"]
    with pytest.raises(ErrorInvalidFolderTypeForOperation):
        Folder(parent=account.contacts, name="Mail here", folder_class="IPF.Note").save()
    names = {f.name for f in account.msg_folder_root.walk()}
    assert {"Holidays", "Work"} <= names
