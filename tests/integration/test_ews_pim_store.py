"""Calendars (a series with an exception and a cancelled occurrence), contacts, tasks and notes
through the EWS store and the one sync algorithm, Exchange 2016 -> Exchange 2019 as
EXCHANGE_STREAM (ExportItems -> UploadItems), checked on the target with exchangelib."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from exchangelib import UTC as EWS_UTC
from exchangelib import CalendarItem, Contact, EWSDateTime, Message, Task
from exchangelib.folders import Folder as EwsFolder
from exchangelib.indexed_properties import PhoneNumber
from exchangelib.recurrence import WeeklyPattern

from coexist.journal import Journal
from coexist.migrate import sync
from coexist.migrate.passes import Window
from coexist.migrate.stores.ews import EwsStore
from coexist.sandbox import Sandbox
from coexist.tenants.plan import WriteRecorder
from tests import ewsclient as ec
from tests.integration.test_ews_store import (
    MimeOnly,
    run,
    seed,
    server,
    store,
    sync_context,
    sync_pass,
)

PIM = ("IPF.Appointment", "IPF.Contact", "IPF.Task", "IPF.StickyNote")


@pytest.fixture
def orgs(sandbox: Sandbox) -> Sandbox:
    """Source an Exchange 2016 organisation, target an Exchange 2019 one."""
    ec.org(sandbox, "source", "exchange2016")
    ec.org(sandbox, "target", "exchange2019")
    return sandbox


class Pair:
    """A source and a target mailbox, their admins, and exchangelib accounts on both."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        [src] = ec.mailboxes(sb, "source", 1)
        [tgt] = ec.mailboxes(sb, "target", 1)
        assert src.primary_smtp and tgt.primary_smtp
        self.src_addr, self.tgt_addr = src.primary_smtp, tgt.primary_smtp
        self.src_id = src.id
        self.src_admin = ec.migration_account(sb, "source", full_access=[self.src_addr])
        self.tgt_admin = ec.migration_account(sb, "target", full_access=[self.tgt_addr])

    def src(self) -> Any:
        return ec.account(self.sb, "source", self.src_admin, self.src_addr)

    def tgt(self) -> Any:
        return ec.account(self.sb, "target", self.tgt_admin, self.tgt_addr, kind="exchange2019")

    async def sync(self, ctx: Any, plan: WriteRecorder | None = None) -> Counter[str]:
        async with AsyncExitStack() as stack:
            s = await stack.enter_async_context(
                store(server(self.sb, "source", self.src_admin), self.src_addr, "source")
            )
            t = await stack.enter_async_context(
                store(server(self.sb, "target", self.tgt_admin), self.tgt_addr, "target")
            )
            if plan is not None:
                t = EwsStore(t.mailbox, label="target", plan=plan)
            return await sync_pass(ctx, self.src_addr, s, t)


def seed_pim(sb: Sandbox, account: Any) -> None:
    """A weekly series with an exception and a cancelled occurrence, a single meeting, a
    calendar 'Team' with an event, a contact with a phone, a task, a sticky note."""
    series = ec.weekly_series(account)
    ec.add_exception_and_cancel(sb, series.id)
    start = EWSDateTime(2026, 2, 3, 14, 0, tzinfo=EWS_UTC)
    CalendarItem(account=account, folder=account.calendar, subject="Dentist", start=start,
                 end=start + dt.timedelta(hours=1)).save()  # fmt: skip
    team = EwsFolder(parent=account.calendar, name="Team", folder_class="IPF.Appointment")
    team.save()
    CalendarItem(account=account, folder=team, subject="Offsite", start=start,
                 end=start + dt.timedelta(hours=8)).save()  # fmt: skip
    Contact(account=account, folder=account.contacts, display_name="Ada Lovelace",
            given_name="Ada", surname="Lovelace",
            phone_numbers=[PhoneNumber(label="MobilePhone", phone_number="+44 1")]).save()  # fmt: skip
    Task(account=account, folder=account.tasks, subject="File taxes", status="InProgress").save()
    Message(account=account, folder=account.notes, item_class="IPM.StickyNote",
            subject="Call Bob", body="Call Bob about the contract").save()  # fmt: skip


def pim_items(account: Any) -> dict[str, list[tuple[str, str]]]:
    """Per PIM folder path: (item class, subject) of each item, sorted."""
    out: dict[str, list[tuple[str, str]]] = {}
    for f in account.msg_folder_root.walk():
        if f.folder_class in PIM:
            items = [(str(i.item_class), str(i.subject)) for i in f.all()]
            out[f.name] = sorted(items)
    return out


def test_pim_folders_move_as_the_stream_once_with_series_intact(
    orgs: Sandbox, tmp_path: Path
) -> None:
    """Calendar (series with exception + cancellation, a single event, a sub-calendar),
    contacts, tasks and notes arrive once each in the folder of their class; the target's
    series has its pattern, its moved and its cancelled occurrence; a re-run copies 0."""
    pair = Pair(orgs)
    seed_pim(orgs, pair.src())
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)
    try:
        first = run(lambda: pair.sync(ctx))
        second = run(lambda: pair.sync(ctx))
    finally:
        journal.close()
    src, tgt = pair.src(), pair.tgt()
    want = pim_items(src)
    assert {k: v for k, v in want.items() if v} == {
        "Calendar": [("IPM.Appointment", "Dentist"), ("IPM.Appointment", "Weekly sync")],
        "Team": [("IPM.Appointment", "Offsite")],
        "Contacts": [("IPM.Contact", "Ada Lovelace")],
        "Tasks": [("IPM.Task", "File taxes")],
        "Notes": [("IPM.StickyNote", "Call Bob")],
    }
    got = pim_items(tgt)
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in want.items() if v}
    classes = {f.name: f.folder_class for f in tgt.msg_folder_root.walk()}
    assert classes["Team"] == "IPF.Appointment"
    assert first["copied"] == 6 and second.get("copied", 0) == 0
    [series] = [i for i in tgt.calendar.all() if i.subject == "Weekly sync"]
    master = next(iter(tgt.fetch(ids=[(series.id, None)])))
    assert master.type == "RecurringMaster"
    assert isinstance(master.recurrence.pattern, WeeklyPattern)
    assert master.recurrence.pattern.weekdays == [1] and master.recurrence.boundary.number == 6
    assert [o.original_start for o in master.modified_occurrences] == [
        EWSDateTime(2026, 1, 12, 9, 0, tzinfo=EWS_UTC)
    ]
    assert [o.start for o in master.deleted_occurrences] == [
        EWSDateTime(2026, 1, 19, 9, 0, tzinfo=EWS_UTC)
    ]
    moved = next(iter(tgt.fetch(ids=[(master.modified_occurrences[0].id, None)])))
    assert moved.subject == "Weekly sync (moved)"
    assert moved.start == EWSDateTime(2026, 1, 12, 10, 0, tzinfo=EWS_UTC)


def test_a_changed_time_and_phone_are_updates_and_a_stale_state_restarts_cleanly(
    orgs: Sandbox, tmp_path: Path
) -> None:
    """A meeting moved to another time and a contact's new phone at the source become
    updates of their copies (no second copy); after the sync states go stale the next
    pass copies nothing and the target still holds each item once."""
    pair = Pair(orgs)
    seed_pim(orgs, pair.src())
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)
    try:
        run(lambda: pair.sync(ctx))
        src = pair.src()
        [dentist] = [i for i in src.calendar.all() if i.subject == "Dentist"]
        later = EWSDateTime(2026, 2, 3, 16, 0, tzinfo=EWS_UTC)
        dentist.start, dentist.end = later, later + dt.timedelta(hours=1)
        dentist.save(update_fields=["start", "end"])
        [ada] = list(src.contacts.all())
        ada.phone_numbers = [PhoneNumber(label="MobilePhone", phone_number="+44 2")]
        ada.save(update_fields=["phone_numbers"])
        changed = run(lambda: pair.sync(ctx))
        orgs.world.expire_sync_states()
        restarted = run(lambda: pair.sync(ctx))
    finally:
        journal.close()
    assert changed.get("copied", 0) == 0 and changed["updated"] == 2, changed
    assert restarted.get("copied", 0) == 0 and restarted.get("updated", 0) == 0, restarted
    tgt = pair.tgt()
    [copy] = [i for i in tgt.calendar.all() if i.subject == "Dentist"]
    assert copy.start == later
    [contact] = list(tgt.contacts.all())
    assert [p.phone_number for p in contact.phone_numbers] == ["+44 2"]
    assert pim_items(tgt) == pim_items(pair.src())


def test_plan_mode_writes_no_pim_item(orgs: Sandbox, tmp_path: Path) -> None:
    """A planned pass records the folder creations and uploads of the PIM items and the
    target's PIM folders stay empty."""
    pair = Pair(orgs)
    seed_pim(orgs, pair.src())
    before = pim_items(pair.tgt())
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)
    plan = WriteRecorder()
    ctx.plan = plan
    ctx.planning = True
    try:
        counts = run(lambda: pair.sync(ctx, plan))
    finally:
        journal.close()
    assert counts["copied"] == 6
    ops = Counter(w.operation.split(" ", 1)[0] for w in plan.writes)
    assert ops["UploadItems"] == 6 and ops["CreateFolder"] == 1, ops
    assert pim_items(pair.tgt()) == before


def test_a_mime_only_target_skips_the_pim_folders_and_takes_the_mail(
    orgs: Sandbox, tmp_path: Path
) -> None:
    """Exchange -> a MIME-only target (as WorkMail): PIM items have no MIME form, so their
    folders are skipped and nothing of them is written; the pass does not fail."""
    pair = Pair(orgs)
    seed_pim(orgs, pair.src())
    seed(orgs, pair.src_id, 2)
    before = pim_items(pair.tgt())
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)

    async def main() -> tuple[Counter[str], list[str]]:
        async with AsyncExitStack() as stack:
            s = await stack.enter_async_context(
                store(server(orgs, "source", pair.src_admin), pair.src_addr, "source")
            )
            t = await stack.enter_async_context(
                store(server(orgs, "target", pair.tgt_admin), pair.tgt_addr, "target")
            )
            counts: Counter[str] = Counter()
            plan, _stores = await sync.sync_mailbox(
                ctx, pair.src_addr, s, MimeOnly(t.mailbox, label="target"), Window(), counts
            )
            return counts, plan.skipped_folders

    try:
        counts, skipped = run(main)
    finally:
        journal.close()
    assert counts["copied"] == 2  # the mail
    assert {"Calendar", "Calendar/Team", "Contacts", "Tasks", "Notes"} <= set(skipped), skipped
    assert pim_items(pair.tgt()) == before


def test_the_target_finds_its_calendar_copies_by_uid(orgs: Sandbox, tmp_path: Path) -> None:
    """After a pass the target store finds each calendar copy by the source item's identity
    (uid:<UID>): what adopts a copy an interrupted pass left instead of copying it again."""
    pair = Pair(orgs)
    seed_pim(orgs, pair.src())
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)

    async def main() -> tuple[set[str], dict[str, Any]]:
        await pair.sync(ctx)
        rows = [r for r in journal.mapped_items(pair.src_addr) if r["status"] == "copied"]
        cal = [r for r in rows if str(r["source_identity"] or "").startswith("uid:")]
        async with store(server(orgs, "target", pair.tgt_admin), pair.tgt_addr, "target") as t:
            await t.list_folders()
            found: dict[str, Any] = {}
            for folder in {str(r["target_folder_id"]) for r in cal}:
                found.update(await t.copies(folder, set()))
        return {str(r["source_identity"]) for r in cal}, found

    try:
        identities, found = run(main)
    finally:
        journal.close()
    assert len(identities) == 3  # the series, the single meeting, the sub-calendar's event
    assert set(found) == identities and all(len(v) == 1 for v in found.values())


def test_an_interrupted_contact_task_or_note_copy_is_adopted_by_its_search_key(
    orgs: Sandbox, tmp_path: Path
) -> None:
    """Contacts, tasks and notes carry their PidTagSearchKey into the copy (skey: identity):
    rows left as a pass killed between the copy and its record leaves them (`importing`, no
    copy recorded) are adopted by the next pass, which copies nothing twice."""
    pair = Pair(orgs)
    seed_pim(orgs, pair.src())
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)
    try:
        run(lambda: pair.sync(ctx))
        rows = [r for r in journal.mapped_items(pair.src_addr) if r["status"] == "copied"]
        keyed = [r for r in rows if str(r["source_identity"] or "").startswith("skey:")]
        for r in keyed:
            journal.map_item(pair.src_addr, r["source_item_id"], status="importing",
                             target_item_id=None, target_change_key=None)  # fmt: skip
        again = run(lambda: pair.sync(ctx))
        after = {r["source_item_id"]: r for r in journal.mapped_items(pair.src_addr)}
    finally:
        journal.close()
    assert len(keyed) == 3  # the contact, the task, the note
    assert again.get("copied", 0) == 0
    for r in keyed:  # each adopted: the very copy the first pass made (or its update)
        assert after[r["source_item_id"]]["target_item_id"]
    got = pim_items(pair.tgt())
    assert got["Contacts"] == [("IPM.Contact", "Ada Lovelace")]
    assert got["Tasks"] == [("IPM.Task", "File taxes")]
    assert got["Notes"] == [("IPM.StickyNote", "Call Bob")]


def test_a_new_exception_at_the_source_updates_the_copied_series(
    orgs: Sandbox, tmp_path: Path
) -> None:
    """After the series is copied, one more occurrence cancelled at the source (DeleteItem on
    the occurrence) reaches the copy on the next pass as an update of the series: the copy
    then has two cancelled occurrences and still one exception, and one series."""
    pair = Pair(orgs)
    seed_pim(orgs, pair.src())
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)
    try:
        run(lambda: pair.sync(ctx))
        src = pair.src()
        start = EWSDateTime(2026, 1, 1, tzinfo=EWS_UTC)
        view = list(src.calendar.view(start=start, end=start + dt.timedelta(days=60)))
        last = [i for i in view if i.subject == "Weekly sync" and i.type == "Occurrence"][-1]
        last.delete()
        again = run(lambda: pair.sync(ctx))
    finally:
        journal.close()
    assert again.get("copied", 0) == 0 and again["updated"] == 1, again
    tgt = pair.tgt()
    [series] = [i for i in tgt.calendar.all() if i.subject == "Weekly sync"]
    master = next(iter(tgt.fetch(ids=[(series.id, None)])))
    assert len(master.deleted_occurrences) == 2 and len(master.modified_occurrences) == 1
