"""Contacts, calendars (recurrence, instances, exceptions) and To Do over HTTPS with msgraph-sdk."""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
from typing import Any

import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.contact import Contact
from msgraph.generated.models.contact_folder import ContactFolder
from msgraph.generated.models.date_time_time_zone import DateTimeTimeZone
from msgraph.generated.models.day_of_week import DayOfWeek
from msgraph.generated.models.email_address import EmailAddress
from msgraph.generated.models.event import Event
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.patterned_recurrence import PatternedRecurrence
from msgraph.generated.models.recurrence_pattern import RecurrencePattern
from msgraph.generated.models.recurrence_pattern_type import RecurrencePatternType
from msgraph.generated.models.recurrence_range import RecurrenceRange
from msgraph.generated.models.recurrence_range_type import RecurrenceRangeType
from msgraph.generated.models.task_status import TaskStatus
from msgraph.generated.models.todo_task import TodoTask
from msgraph.generated.models.todo_task_list import TodoTaskList
from msgraph.generated.users.item.events.item.instances.instances_request_builder import (
    InstancesRequestBuilder,
)

from coexist.sandbox import Sandbox
from coexist.sandbox.model import App, User, new_guid
from tests.clients import graph_client, graph_http


def owner(sandbox: Sandbox) -> User:
    with sandbox.world.lock:
        return next(
            u
            for u in sandbox.world.tenants["source"].users.values()
            if u.recipient_type_details == "UserMailbox"
        )


def test_contacts_crud(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Create, list, get, PATCH and delete a contact (default folder and a child folder) with the SDK."""
    user = owner(sandbox)

    async def run() -> None:
        me = graph_client(conn, "source").users.by_user_id(user.id)
        created = await me.contacts.post(
            Contact(
                given_name="Zoë",
                surname="Ünal",
                company_name="Contoso",
                job_title="CFO",
                email_addresses=[EmailAddress(address="zoe@partner.example", name="Zoë")],
                business_phones=["+1 555 0100"],
                mobile_phone="+1 555 0101",
                categories=["VIP"],
                personal_notes="met at expo",
                birthday=dt.datetime(1980, 5, 17, 11, tzinfo=dt.UTC),
            )
        )
        assert created is not None and created.display_name == "Zoë Ünal"
        listed = await me.contacts.get()
        assert [c.id for c in listed.value] == [created.id]
        await me.contacts.by_contact_id(created.id).patch(Contact(job_title="CEO"))
        got = await me.contacts.by_contact_id(created.id).get()
        assert got.job_title == "CEO" and got.company_name == "Contoso"
        assert got.email_addresses[0].address == "zoe@partner.example"
        folder = await me.contact_folders.post(ContactFolder(display_name="Partners"))
        inner = await me.contact_folders.by_contact_folder_id(folder.id).contacts.post(
            Contact(given_name="Ann")
        )
        assert inner.parent_folder_id == folder.id
        assert [f.display_name for f in (await me.contact_folders.get()).value] == ["Partners"]
        await me.contacts.by_contact_id(created.id).delete()
        with pytest.raises(ODataError) as err:
            await me.contacts.by_contact_id(created.id).get()
        assert err.value.response_status_code == 404

    asyncio.run(run())


def _window(start: str, end: str) -> RequestConfiguration[Any]:
    params = InstancesRequestBuilder.InstancesRequestBuilderGetQueryParameters(
        start_date_time=start, end_date_time=end
    )
    return RequestConfiguration(query_parameters=params)


def test_weekly_series_with_exception_and_cancellation(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """A weekly series (W. Europe time): one occurrence moved, one deleted; instances shows exactly that."""
    user = owner(sandbox)

    async def run() -> None:
        me = graph_client(conn, "source").users.by_user_id(user.id)
        series = await me.calendar.events.post(
            Event(
                subject="Standup",
                start=DateTimeTimeZone(
                    date_time="2024-03-04T09:00:00", time_zone="W. Europe Standard Time"
                ),
                end=DateTimeTimeZone(
                    date_time="2024-03-04T09:30:00", time_zone="W. Europe Standard Time"
                ),
                recurrence=PatternedRecurrence(
                    pattern=RecurrencePattern(
                        type=RecurrencePatternType.Weekly,
                        interval=1,
                        days_of_week=[DayOfWeek.Monday],
                    ),
                    range=RecurrenceRange(
                        type=RecurrenceRangeType.Numbered,
                        start_date=dt.date(2024, 3, 4),
                        number_of_occurrences=6,
                    ),
                ),
            )
        )
        assert series.type.value == "seriesMaster"
        window = _window("2024-03-01T00:00:00Z", "2024-05-01T00:00:00Z")
        first = (
            await me.events.by_event_id(series.id).instances.get(request_configuration=window)
        ).value
        # 6 Mondays; Europe switches to summer time on 31 March: 08:00Z, then 07:00Z.
        assert [i.start.date_time[:16] for i in first] == [
            "2024-03-04T08:00", "2024-03-11T08:00", "2024-03-18T08:00", "2024-03-25T08:00",
            "2024-04-01T07:00", "2024-04-08T07:00",
        ]  # fmt: skip
        assert all(i.type.value == "occurrence" and i.series_master_id == series.id for i in first)
        moved, gone = first[1], first[3]
        await me.events.by_event_id(moved.id).patch(
            Event(subject="Standup (moved)", start=DateTimeTimeZone(date_time="2024-03-12T10:00:00", time_zone="UTC"),
                  end=DateTimeTimeZone(date_time="2024-03-12T10:30:00", time_zone="UTC"))
        )  # fmt: skip
        await me.events.by_event_id(gone.id).delete()
        after = (
            await me.events.by_event_id(series.id).instances.get(request_configuration=window)
        ).value
        assert len(after) == 5
        exception = next(i for i in after if i.id == moved.id)
        assert exception.type.value == "exception" and exception.subject == "Standup (moved)"
        assert exception.start.date_time.startswith("2024-03-12T10:00")
        assert gone.id not in {i.id for i in after}
        listed = (await me.calendar.events.get()).value
        assert [e.id for e in listed] == [series.id]

    asyncio.run(run())


def test_instances_requires_a_window(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """instances without startDateTime/endDateTime is Graph's 400."""
    user = owner(sandbox)
    http = graph_http(conn, "source")
    r = http.post(f"users/{user.id}/events", json={
        "subject": "x", "start": {"dateTime": "2024-01-01T10:00:00", "timeZone": "UTC"},
        "end": {"dateTime": "2024-01-01T11:00:00", "timeZone": "UTC"}})  # fmt: skip
    assert r.status_code == 201, r.text
    assert r.json()["type"] == "singleInstance"
    bad = http.get(f"users/{user.id}/events/{r.json()['id']}/instances")
    assert bad.status_code == 400


def test_todo_lists_and_tasks_crud(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """To Do: default list exists; create a list, create/patch (complete)/list/delete a task."""
    user = owner(sandbox)

    async def run() -> None:
        todo = graph_client(conn, "source").users.by_user_id(user.id).todo
        lists = (await todo.lists.get()).value
        assert [(x.display_name, x.wellknown_list_name.value) for x in lists] == [
            ("Tasks", "defaultList")
        ]
        mine = await todo.lists.post(TodoTaskList(display_name="Migration"))
        task = await todo.lists.by_todo_task_list_id(mine.id).tasks.post(
            TodoTask(title="Cut over", categories=["Ops"],
                     due_date_time=DateTimeTimeZone(date_time="2024-06-01T00:00:00", time_zone="UTC"))
        )  # fmt: skip
        assert task.status == TaskStatus.NotStarted
        done = (
            await todo.lists.by_todo_task_list_id(mine.id)
            .tasks.by_todo_task_id(task.id)
            .patch(TodoTask(status=TaskStatus.Completed))
        )
        assert done.status == TaskStatus.Completed and done.completed_date_time is not None
        tasks = (await todo.lists.by_todo_task_list_id(mine.id).tasks.get()).value
        assert [(t.title, t.due_date_time.date_time[:10]) for t in tasks] == [
            ("Cut over", "2024-06-01")
        ]
        await todo.lists.by_todo_task_list_id(mine.id).tasks.by_todo_task_id(task.id).delete()
        assert (await todo.lists.by_todo_task_list_id(mine.id).tasks.get()).value == []

    asyncio.run(run())


def test_pim_without_permission_is_403(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """An app without Contacts/Calendars/Tasks roles gets Exchange's 403 ErrorAccessDenied."""
    user = owner(sandbox)
    app = App(client_id=new_guid(), display_name="no-pim", client_secret="s-" + new_guid(),
              graph_roles=["Mail.Read"])  # fmt: skip
    with sandbox.world.lock:
        sandbox.world.source.apps.append(app)
        sandbox.world.source.touch()
    limited = copy.deepcopy(conn)
    limited["tenants"]["source"].update(client_id=app.client_id, client_secret=app.client_secret)
    http = graph_http(limited, "source")
    for path in ("contacts", "calendar/events", "todo/lists"):
        r = http.get(f"users/{user.id}/{path}")
        assert r.status_code == 403, r.text
        assert r.json()["error"]["code"] == "ErrorAccessDenied"


STAMP = "String {5b1c2a8e-7f3d-4c61-9a0e-c0e715e0ce11} Name coexistSourceId"
EXPAND = f"singleValueExtendedProperties($filter=id eq '{STAMP}')"


def stamped(value: str) -> str:
    return f"singleValueExtendedProperties/Any(ep: ep/id eq '{STAMP}' and ep/value eq '{value}')"


def listed(http: Any, url: str, **params: str) -> Any:
    r = http.get(url, params=params)
    assert r.status_code == 200, r.text
    return r.json()["value"]


@pytest.mark.parametrize("unverified", [True, False])
def test_identity_on_contacts_events_and_tasks(
    sandbox: Sandbox, conn: dict[str, Any], unverified: bool
) -> None:
    """Contacts and events keep extended properties from their create (and PATCH), filter and
    expand on them; tasks keep linkedResources from their create. Filters Graph does not
    document are refused (400) when Settings.unverified_identity_filters is False."""
    sandbox.world.settings.unverified_identity_filters = unverified
    user = owner(sandbox)
    me = f"users/{user.id}"
    with graph_http(conn, "source") as http:
        svep = [{"id": STAMP, "value": "src-contact"}]
        contact = http.post(
            f"{me}/contacts", json={"displayName": "Kim", "singleValueExtendedProperties": svep}
        )
        assert contact.status_code == 201 and "singleValueExtendedProperties" not in contact.json()
        http.post(f"{me}/contacts", json={"displayName": "Kim"})
        cid = contact.json()["id"]
        patched = http.patch(f"{me}/contacts/{cid}", json={
            "jobTitle": "CFO",
            "singleValueExtendedProperties": [{"id": "Integer 0x3A45", "value": "3"}]})  # fmt: skip
        assert patched.status_code == 200, patched.text
        got = http.get(f"{me}/contacts/{cid}", params={"$expand": EXPAND}).json()
        assert got["singleValueExtendedProperties"] == svep and got["jobTitle"] == "CFO"
        contacts = http.get(f"{me}/contacts", params={"$filter": stamped("src-contact")})
        if unverified:
            assert [c["id"] for c in contacts.json()["value"]] == [cid]
        else:
            assert contacts.status_code == 400
            assert contacts.json()["error"]["code"] == "ErrorInvalidUrlQueryFilter"

        when = {"dateTime": "2024-02-02T10:00:00", "timeZone": "UTC"}
        event = http.post(f"{me}/events", json={
            "subject": "Kick-off", "start": when, "end": when,
            "singleValueExtendedProperties": [{"id": STAMP, "value": "src-event"}]})  # fmt: skip
        assert event.status_code == 201, event.text
        eid = event.json()["id"]
        everywhere = listed(
            http, f"{me}/events", **{"$filter": stamped("src-event"), "$expand": EXPAND}
        )
        assert [(e["id"], e["singleValueExtendedProperties"][0]["value"]) for e in everywhere] == [
            (eid, "src-event")
        ]
        calendar = http.get(f"{me}/calendar").json()["id"]
        one_calendar = http.get(
            f"{me}/calendars/{calendar}/events", params={"$filter": stamped("src-event")}
        )
        assert one_calendar.status_code == (200 if unverified else 400), one_calendar.text

        default = next(
            x for x in listed(http, f"{me}/todo/lists") if x["wellknownListName"] == "defaultList"
        )
        tasks = f"{me}/todo/lists/{default['id']}/tasks"
        link = {"applicationName": "coexist", "externalId": "src-task", "displayName": "Migrated"}
        task = http.post(tasks, json={"title": "Pay", "linkedResources": [link]})
        assert task.status_code == 201, task.text
        [made] = task.json()["linkedResources"]
        assert made["id"] and {k: made[k] for k in link} == link
        tid = task.json()["id"]
        assert "linkedResources" not in http.get(f"{tasks}/{tid}").json()
        expanded = http.get(f"{tasks}/{tid}", params={"$expand": "linkedResources"}).json()
        assert expanded["linkedResources"] == [made]
        assert listed(http, f"{tasks}/{tid}/linkedResources") == [made]
        http.post(tasks, json={"title": "Pay"})
        flt = (
            "linkedResources/any(r: r/applicationName eq 'coexist' and r/externalId eq 'src-task')"
        )
        found = http.get(tasks, params={"$filter": flt})
        if unverified:
            assert [t["id"] for t in found.json()["value"]] == [tid]
        else:
            assert found.status_code == 400
