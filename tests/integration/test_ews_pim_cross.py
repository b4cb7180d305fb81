"""Microsoft 365 -> Amazon WorkMail for contacts, calendars and tasks (audriga's guide): the
Graph PIM stores as the source, `EwsPimTarget` over EWS (Basic, Exchange2010_SP2) as the
target, through the one sync algorithm; checked on the target with exchangelib."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from exchangelib import UTC as EWS_UTC
from exchangelib import EWSDateTime
from exchangelib.protocol import CachingProtocol
from exchangelib.recurrence import WeeklyPattern

from coexist.journal import Journal
from coexist.migrate import sync
from coexist.migrate.passes import Window
from coexist.migrate.stores.ews_pim import STAMP, EwsPimTarget
from coexist.migrate.stores.graph import Box
from coexist.migrate.stores.graph_pim import PIM_CLASSES, GraphPimStore
from coexist.sandbox import Sandbox
from coexist.sandbox.ews import EWS_PATH
from coexist.tenants.auth import TenantEndpoint
from coexist.tenants.ews import AdminLogin, EwsEndpoint, EwsLimits, EwsServer
from coexist.tenants.graph import GraphAdapter
from tests import ewsclient as ec
from tests.integration.test_ews_store import PASSWORD, RETRY, message, run, sync_context


@pytest.fixture
def workmail(sandbox: Sandbox) -> Sandbox:
    """Target an Amazon WorkMail organisation. exchangelib caches its protocols by endpoint
    and credentials, not auth type: one an earlier test built for the same URL and login
    over NTLM would be reused for Basic, so the cache is cleared."""
    ec.org(sandbox, "target", "workmail")
    CachingProtocol.clear_cache()
    return sandbox


@asynccontextmanager
async def graph(conn: dict[str, Any]) -> AsyncIterator[GraphAdapter]:
    async with GraphAdapter(TenantEndpoint.from_sandbox(conn, "source"), label="source") as g:
        yield g


async def seed(g: GraphAdapter, user: str) -> None:
    """A weekly series (6 Mondays) whose 2nd occurrence is moved and 3rd cancelled, a single
    event, a contact with a phone and an address, a To Do task with a checklist."""
    base = f"users/{user}"
    series = await g.send("POST", f"{base}/events", json={
        "subject": "Weekly sync", "location": {"displayName": "Room 1"},
        "start": {"dateTime": "2026-01-05T09:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-01-05T10:00:00", "timeZone": "UTC"},
        "recurrence": {
            "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"],
                        "firstDayOfWeek": "monday"},
            "range": {"type": "numbered", "startDate": "2026-01-05", "numberOfOccurrences": 6},
        },
    })  # fmt: skip
    occ = await g.list_all(f"{base}/events/{series['id']}/instances", {
        "startDateTime": "2026-01-01T00:00:00Z", "endDateTime": "2026-03-01T00:00:00Z"})  # fmt: skip
    occ.sort(key=lambda o: o["start"]["dateTime"])
    await g.send("PATCH", f"{base}/events/{occ[1]['id']}", json={
        "subject": "Weekly sync (moved)",
        "start": {"dateTime": "2026-01-12T10:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-01-12T11:00:00", "timeZone": "UTC"}})  # fmt: skip
    await g.send("DELETE", f"{base}/events/{occ[2]['id']}")
    await g.send("POST", f"{base}/events", json={
        "subject": "Dentist", "start": {"dateTime": "2026-02-03T14:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2026-02-03T15:00:00", "timeZone": "UTC"}})  # fmt: skip
    await g.send("POST", f"{base}/contacts", json={
        "givenName": "Ada", "surname": "Lovelace", "displayName": "Ada Lovelace",
        "emailAddresses": [{"address": "ada@example.org", "name": "Ada"}],
        "mobilePhone": "+44 1", "businessAddress": {"city": "London"}})  # fmt: skip
    lists = await g.list_all(f"{base}/todo/lists", {})
    default = next(x for x in lists if x.get("wellknownListName") == "defaultList")
    task = await g.send("POST", f"{base}/todo/lists/{default['id']}/tasks", json={
        "title": "File taxes", "status": "inProgress",
        "dueDateTime": {"dateTime": "2026-04-15T00:00:00", "timeZone": "UTC"}})  # fmt: skip
    await g.send("POST", f"{base}/todo/lists/{default['id']}/tasks/{task['id']}/checklistItems",
                 json={"displayName": "Find receipts"})  # fmt: skip


def test_m365_contacts_calendars_and_tasks_arrive_in_workmail(
    workmail: Sandbox, conn: dict[str, Any], tmp_path: Path
) -> None:
    """Each Graph contact, event and task arrives once in WorkMail's folder of its class; the
    series keeps its weekly pattern, its moved occurrence (an exception with the new time
    and subject) and its cancelled one; the task's checklist is in its body; a re-run copies
    nothing and changes nothing."""
    sb = workmail
    [src_user] = ec.mailboxes(sb, "source", 1)
    [tgt_user] = ec.mailboxes(sb, "target", 1)
    assert tgt_user.primary_smtp
    tgt_admin = ec.migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = sync_context(journal), src_user.id

    async def main() -> list[Counter[str]]:
        endpoint = EwsEndpoint(sb.base_url + EWS_PATH, auth="basic", version="Exchange2010_SP2",
                               ca_file=sb.connection["ca_file"], side="target", kind="workmail")  # fmt: skip
        srv = EwsServer(endpoint, AdminLogin(tgt_admin, PASSWORD), EwsLimits(4, 2), RETRY)
        passes: list[Counter[str]] = []
        try:
            async with graph(conn) as g, srv.mailbox(tgt_user.primary_smtp or "") as mb:
                await seed(g, src_user.id)
                for _ in range(2):
                    counts: Counter[str] = Counter()
                    for cls in PIM_CLASSES:
                        src = GraphPimStore(Box(g, src_user.id, ""), cls)
                        tgt = EwsPimTarget(mb, cls)
                        got: Counter[str] = Counter()
                        await sync.sync_mailbox(ctx, key, src, tgt, Window(), got, cls.kind)
                        counts.update(got + tgt.counts)
                    passes.append(counts)
        finally:
            await srv.close()
        return passes

    try:
        first, second = run(main)
    finally:
        journal.close()
    assert first["copied"] == 4, first
    assert second.get("copied", 0) == 0 and second.get("updated", 0) == 0, second
    acc = ec.account(sb, "target", tgt_admin, tgt_user.primary_smtp, kind="workmail", auth=ec.BASIC)
    subjects = sorted(str(i.subject) for i in acc.calendar.all())
    assert subjects == ["Dentist", "Weekly sync"]
    [series] = [i for i in acc.calendar.all() if i.subject == "Weekly sync"]
    master = next(iter(acc.fetch(ids=[(series.id, None)])))
    assert master.type == "RecurringMaster" and master.location == "Room 1"
    assert isinstance(master.recurrence.pattern, WeeklyPattern)
    assert master.recurrence.pattern.weekdays == [1] and master.recurrence.boundary.number == 6
    assert [o.original_start for o in master.modified_occurrences] == [
        EWSDateTime(2026, 1, 12, 9, 0, tzinfo=EWS_UTC)
    ]
    assert [o.start for o in master.deleted_occurrences] == [
        EWSDateTime(2026, 1, 19, 9, 0, tzinfo=EWS_UTC)
    ]
    moved = next(iter(acc.fetch(ids=[(master.modified_occurrences[0].id, None)])))
    assert moved.subject == "Weekly sync (moved)"
    assert moved.start == EWSDateTime(2026, 1, 12, 10, 0, tzinfo=EWS_UTC)
    [contact] = list(acc.contacts.all())
    assert (contact.given_name, contact.surname) == ("Ada", "Lovelace")
    assert [p.phone_number for p in contact.phone_numbers] == ["+44 1"]
    assert [e.email for e in contact.email_addresses] == ["ada@example.org"]
    [task] = list(acc.tasks.all())
    assert task.subject == "File taxes" and task.status == "InProgress"
    assert "Find receipts" in str(task.body)


def test_an_interrupted_cross_kind_copy_is_adopted_by_its_source_id_stamp(
    workmail: Sandbox, conn: dict[str, Any], tmp_path: Path
) -> None:
    """Each WorkMail copy carries its Graph source id (SourceId, a named property set at
    CreateItem); rows left as a pass killed between the copy and its record leaves them
    (`importing`, no copy recorded) are adopted by the next pass: the very copies the first
    pass made, nothing copied twice."""
    sb = workmail
    [src_user] = ec.mailboxes(sb, "source", 1)
    [tgt_user] = ec.mailboxes(sb, "target", 1)
    assert tgt_user.primary_smtp
    tgt_admin = ec.migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = sync_context(journal), src_user.id

    async def main() -> list[Counter[str]]:
        endpoint = EwsEndpoint(sb.base_url + EWS_PATH, auth="basic", version="Exchange2010_SP2",
                               ca_file=sb.connection["ca_file"], side="target", kind="workmail")  # fmt: skip
        srv = EwsServer(endpoint, AdminLogin(tgt_admin, PASSWORD), EwsLimits(4, 2), RETRY)
        passes: list[Counter[str]] = []
        try:
            async with graph(conn) as g, srv.mailbox(tgt_user.primary_smtp or "") as mb:
                await seed(g, src_user.id)
                for n in range(2):
                    if n == 1:  # as a kill after each CreateItem, before its record, leaves it
                        for r in journal.mapped_items(key):
                            journal.map_item(key, r["source_item_id"], status="importing",
                                             target_item_id=None, target_change_key=None)  # fmt: skip
                    counts: Counter[str] = Counter()
                    for cls in PIM_CLASSES:
                        src = GraphPimStore(Box(g, src_user.id, ""), cls)
                        got: Counter[str] = Counter()
                        await sync.sync_mailbox(ctx, key, src, EwsPimTarget(mb, cls), Window(),
                                                got, cls.kind)  # fmt: skip
                        counts.update(got)
                    passes.append(counts)
        finally:
            await srv.close()
        return passes

    try:
        first, second = run(main)
        after = {str(r["source_item_id"]): r for r in journal.mapped_items(key)}
    finally:
        journal.close()
    assert first["copied"] == 4 and second.get("copied", 0) == 0, (first, second)
    acc = ec.account(sb, "target", tgt_admin, tgt_user.primary_smtp, kind="workmail", auth=ec.BASIC)
    held = [i for f in (acc.calendar, acc.contacts, acc.tasks) for i in f.all()]
    assert len(held) == 4  # the series, the single event, the contact, the task: once each
    stamps = {str(getattr(i, STAMP)): str(i.id) for i in acc.fetch(ids=held, only_fields=[STAMP])}
    assert set(stamps) == set(after)  # each copy stamped with its source's id
    for source_id, row in after.items():  # adopted: the journal names the copy made first
        assert row["status"] == "copied" and row["target_item_id"] == stamps[source_id]


def test_the_graph_ews_mover_moves_mail_and_pim_and_says_so(
    workmail: Sandbox, conn: dict[str, Any], tmp_path: Path
) -> None:
    """graph-ews's pass (the mover, with a context holding the two sides): mail and the PIM
    items all copied, the task's checklist named in the detail, a second pass copies 0."""
    from types import SimpleNamespace

    from coexist.migrate.passes import MOVERS

    sb = workmail
    [src_user] = ec.mailboxes(sb, "source", 1)
    [tgt_user] = ec.mailboxes(sb, "target", 1)
    assert tgt_user.primary_smtp
    tgt_admin = ec.migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    sb.mail.insert_message("source", src_user.id, "inbox", message(1, "mover"), is_read=True)
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    journal.upsert_item("user", src_user.id, source_address=src_user.primary_smtp,
                        target_address=tgt_user.primary_smtp)  # fmt: skip
    ctx = sync_context(journal)
    ctx.project.migration.reconcile_tolerance = 0

    async def main() -> list[Any]:
        endpoint = EwsEndpoint(sb.base_url + EWS_PATH, auth="basic", version="Exchange2010_SP2",
                               ca_file=sb.connection["ca_file"], side="target", kind="workmail")  # fmt: skip
        srv = EwsServer(endpoint, AdminLogin(tgt_admin, PASSWORD), EwsLimits(4, 2), RETRY)
        try:
            async with graph(conn) as g:
                await seed(g, src_user.id)
                ctx.source = SimpleNamespace(graph=g, kind="m365")
                target = SimpleNamespace(store=srv, kind="workmail")
                ctx.side = lambda label: target
                mover = MOVERS["graph-ews"]
                return [await mover.run(ctx, src_user.id, "prestage", Window()) for _ in range(2)]
        finally:
            await srv.close()

    try:
        first, second = run(main)
    finally:
        journal.close()
    assert first.status == "ok", first.detail
    assert first.counts["copied"] == 5, first.counts  # 1 message, 2 events, 1 contact, 1 task
    assert first.counts["events_copied"] == 2 and first.counts["contacts_copied"] == 1
    assert "checklist entries" in first.detail
    assert second.counts.get("copied", 0) == 0, second.detail


def test_changes_in_m365_become_updates_in_workmail_and_plan_mode_writes_nothing(
    workmail: Sandbox, conn: dict[str, Any], tmp_path: Path
) -> None:
    """A planned pass records the creates and writes nothing; then a real pass copies; a
    meeting moved to another time and a contact's new mobile number in Microsoft 365 become
    updates of their WorkMail copies (no second copy), the series keeps its exception."""
    from coexist.tenants.plan import WriteRecorder

    sb = workmail
    [src_user] = ec.mailboxes(sb, "source", 1)
    [tgt_user] = ec.mailboxes(sb, "target", 1)
    assert tgt_user.primary_smtp
    tgt_admin = ec.migration_account(sb, "target", full_access=[tgt_user.primary_smtp])
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx, key = sync_context(journal), src_user.id
    plan = WriteRecorder()

    # The planned pass keeps its own journal (as `--plan` leaves the real one untouched).
    planning = sync_context(Journal.open(f"sqlite:///{tmp_path / 'plan.sqlite'}"))
    planning.plan, planning.planning = plan, True

    async def one_pass(g: GraphAdapter, mb: Any, recorder: Any = None) -> Counter[str]:
        counts: Counter[str] = Counter()
        here = planning if recorder is not None else ctx
        for cls in PIM_CLASSES:
            got: Counter[str] = Counter()
            src, tgt = GraphPimStore(Box(g, src_user.id, ""), cls), EwsPimTarget(mb, cls)
            tgt.plan = recorder
            await sync.sync_mailbox(here, key, src, tgt, Window(), got, cls.kind)
            counts.update(got)
        return counts

    async def main() -> tuple[Counter[str], Counter[str], Counter[str]]:
        endpoint = EwsEndpoint(sb.base_url + EWS_PATH, auth="basic", version="Exchange2010_SP2",
                               ca_file=sb.connection["ca_file"], side="target", kind="workmail")  # fmt: skip
        srv = EwsServer(endpoint, AdminLogin(tgt_admin, PASSWORD), EwsLimits(4, 2), RETRY)
        try:
            async with graph(conn) as g, srv.mailbox(tgt_user.primary_smtp or "") as mb:
                await seed(g, src_user.id)
                planned = await one_pass(g, mb, plan)
                first = await one_pass(g, mb)
                base = f"users/{src_user.id}"
                events = await g.list_all(f"{base}/events", {})
                dentist = next(e for e in events if e["subject"] == "Dentist")
                await g.send("PATCH", f"{base}/events/{dentist['id']}", json={
                    "start": {"dateTime": "2026-02-03T16:00:00", "timeZone": "UTC"},
                    "end": {"dateTime": "2026-02-03T17:00:00", "timeZone": "UTC"}})  # fmt: skip
                [ada] = await g.list_all(f"{base}/contacts", {})
                await g.send("PATCH", f"{base}/contacts/{ada['id']}", json={"mobilePhone": "+44 2"})
                changed = await one_pass(g, mb)
                return planned, first, changed
        finally:
            await srv.close()

    try:
        planned, first, changed = run(main)
    finally:
        journal.close()
        planning.journal.close()
    ops = Counter(w.operation.split(" ", 1)[0] for w in plan.writes)
    assert planned["copied"] == 4 and ops["CreateItem"] == 4, (planned, ops)
    assert first["copied"] == 4, first
    assert changed.get("copied", 0) == 0 and changed["updated"] == 2, changed
    acc = ec.account(sb, "target", tgt_admin, tgt_user.primary_smtp, kind="workmail", auth=ec.BASIC)
    [copy] = [i for i in acc.calendar.all() if i.subject == "Dentist"]
    assert copy.start == EWSDateTime(2026, 2, 3, 16, 0, tzinfo=EWS_UTC)
    [contact] = list(acc.contacts.all())
    assert [p.phone_number for p in contact.phone_numbers] == ["+44 2"]
    assert sorted(str(i.subject) for i in acc.calendar.all()) == ["Dentist", "Weekly sync"]
