"""Graph To Do: `/users/{id}/todo/lists` and their tasks (learn.microsoft.com/graph/api/
resources/todotasklist, .../todotask, todo-list-lists, todotasklist-list-tasks,
todotasklist-post-tasks, todotask-update, todotask-delete).

Every mailbox has the default list ("Tasks", `wellknownListName: defaultList`).
Dates are dateTimeTimeZone values kept as given. Setting `status` to
`completed` stamps `completedDateTime` (UTC) when the client does not send one.
A task's `linkedResources` (resources/linkedresource) may be given in its create request
(todotasklist-post-tasks, "creates a todoTask ... and includes a linkedResource") or posted
later (todotask-post-linkedresources); they show only with `$expand=linkedResources` or at
`.../tasks/{id}/linkedResources`. Not modelled: the next occurrence To Do creates when a
recurring task is completed, attachments.
"""

from __future__ import annotations

import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..mailstore import iso, looks_like_id, utcnow
from ..model import User
from ..pim import TODO, PimFolder, PimItem, PimStore, format_local
from . import common, mail
from .common import GraphJSON, fail
from .outlook_items import etag, filtered, invalid_value, page, pim_of, writable

# Application permissions (todo-list-lists / todotasklist-post-tasks "Permissions").
READ = ("Tasks.Read.All", "Tasks.ReadWrite.All")
WRITE = ("Tasks.ReadWrite.All",)

TASK_FIELDS = frozenset(
    {
        "title", "body", "importance", "status", "dueDateTime", "startDateTime",
        "reminderDateTime", "completedDateTime", "isReminderOn", "recurrence", "categories",
        "checklistItems",
    }
)  # fmt: skip
LIST_FIELDS = frozenset({"displayName"})
LINK_FIELDS = frozenset({"webUrl", "applicationName", "displayName", "externalId"})
LINKS = "linkedResources"
STATUSES = ("notStarted", "inProgress", "completed", "waitingOnOthers", "deferred")
IMPORTANCE = ("low", "normal", "high")


def list_json(f: PimFolder) -> dict[str, Any]:
    """resources/todotasklist."""
    return {
        "@odata.etag": etag(f.change_key),
        "displayName": f.display_name,
        "isOwner": True,
        "isShared": False,
        "wellknownListName": "defaultList" if f.well_known else "none",
        "id": f.id,
    }


def task_json(item: PimItem, expand: frozenset[str] = frozenset()) -> dict[str, Any]:
    """resources/todotask. `checklistItems` and `linkedResources` are navigation properties:
    present only when `$expand` names them (todotask "Relationships")."""
    p = item.props
    out = {
        "@odata.etag": etag(item.change_key),
        "importance": p.get("importance") or "normal",
        "isReminderOn": bool(p.get("isReminderOn")),
        "status": p.get("status") or "notStarted",
        "title": p.get("title") or "",
        "createdDateTime": item.created,
        "lastModifiedDateTime": item.modified,
        "hasAttachments": False,
        "categories": list(p.get("categories") or []),
        "id": item.id,
        "body": p.get("body") or {"content": "", "contentType": "text"},
        "bodyLastModifiedDateTime": p.get("bodyLastModifiedDateTime") or item.created,
        "completedDateTime": p.get("completedDateTime"),
        "dueDateTime": p.get("dueDateTime"),
        "startDateTime": p.get("startDateTime"),
        "reminderDateTime": p.get("reminderDateTime"),
        "recurrence": p.get("recurrence"),
    }
    if "checklistitems" in expand:
        out["checklistItems"] = list(p.get("checklistItems") or [])
    if "linkedresources" in expand:
        out[LINKS] = list(p.get(LINKS) or [])
    return out


# A task with nothing set: its JSON names every property a $filter may reference.
_EMPTY_TASK = PimItem(0, "", "", "", "task", "", {}, "", "", "")


def _expanded(request: Request) -> frozenset[str]:
    wanted = request.query_params.get("$expand") or ""
    return frozenset(w.strip().lower() for w in wanted.split(",") if w.strip())


def _links(request: Request, value: Any) -> list[dict[str, Any]]:
    """linkedResource objects from a request body, each with its id."""
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise invalid_value(request, LINKS)
    out = []
    for v in value:
        link = writable(request, v, LINK_FIELDS, "linkedResource")
        out.append({"id": str(uuid.uuid4()), **{k: link.get(k) for k in sorted(LINK_FIELDS)}})
    return out


def _validate(request: Request, props: dict[str, Any]) -> None:
    if "status" in props and props["status"] not in STATUSES:
        raise invalid_value(request, "status")
    if "importance" in props and props["importance"] not in IMPORTANCE:
        raise invalid_value(request, "importance")
    for name in ("dueDateTime", "startDateTime", "reminderDateTime", "completedDateTime"):
        value = props.get(name)
        if value is not None and not (isinstance(value, dict) and value.get("dateTime")):
            raise invalid_value(request, name)
    items = props.get("checklistItems")
    if items is not None and not isinstance(items, list):
        raise invalid_value(request, "checklistItems")


def _stamp(props: dict[str, Any], before: dict[str, Any] | None) -> dict[str, Any]:
    """Derived fields: completion time, checklist item ids, body modification time."""
    now = utcnow()
    if props.get("status") == "completed" and not props.get("completedDateTime"):
        props["completedDateTime"] = {
            "dateTime": format_local(now.replace(tzinfo=None)),
            "timeZone": "UTC",
        }
    if props.get("status") != "completed" and (before or {}).get("status") == "completed":
        props["completedDateTime"] = None
    if "checklistItems" in props:
        props["checklistItems"] = [
            {
                "displayName": c.get("displayName") or "",
                "isChecked": bool(c.get("isChecked")),
                "createdDateTime": c.get("createdDateTime") or iso(now),
                "checkedDateTime": c.get("checkedDateTime"),
                "id": c.get("id") or str(uuid.uuid4()),
            }
            for c in props["checklistItems"]
            if isinstance(c, dict)
        ]
    if before is None or props.get("body") != before.get("body"):
        props["bodyLastModifiedDateTime"] = now.strftime("%Y-%m-%dT%H:%M:%S.%f0Z")
    return props


def _list(request: Request, pim: PimStore, key: str, user: User) -> PimFolder:
    list_id = request.path_params["list_id"]
    found = pim.folder(key, user.id, list_id, TODO)
    if found is None:
        raise mail.item_not_found(request) if looks_like_id(list_id) else mail.malformed_id(request)
    return found


def _task(request: Request, pim: PimStore, key: str, user: User) -> PimItem:
    folder = _list(request, pim, key, user)
    task_id = request.path_params["task_id"]
    item = pim.item(key, user.id, task_id) if looks_like_id(task_id) else None
    if item is None or item.kind != "task" or item.folder_id != folder.id:
        raise mail.item_not_found(request)
    return item


def _entity(request: Request, fragment: str, obj: dict[str, Any], status: int = 200) -> Response:
    body = {"@odata.context": common.context_url(request, fragment)}
    body.update(obj)
    return GraphJSON(body, status_code=status)


def _ctx(request: Request) -> str:
    return f"users('{request.path_params['user_id']}')/todo"


async def list_lists(request: Request) -> Response:
    with mail.outlook(request, READ) as (_p, key, user):
        values = [list_json(f) for f in pim_of(request).folders(key, user.id, TODO)]
        return page(request, f"{_ctx(request)}/lists", values)


async def create_list(request: Request) -> Response:
    payload = await common.json_body(request)
    with mail.outlook(request, WRITE) as (_p, key, user):
        props = writable(request, payload, LIST_FIELDS, "todoTaskList")
        name = props.get("displayName")
        if not isinstance(name, str) or not name.strip():
            raise invalid_value(request, "displayName")
        created = pim_of(request).create_folder(key, user.id, TODO, name)
        return _entity(request, f"{_ctx(request)}/lists/$entity", list_json(created), 201)


async def get_list(request: Request) -> Response:
    with mail.outlook(request, READ) as (_p, key, user):
        found = _list(request, pim_of(request), key, user)
        return _entity(request, f"{_ctx(request)}/lists/$entity", list_json(found))


async def update_list(request: Request) -> Response:
    payload = await common.json_body(request)
    with mail.outlook(request, WRITE) as (_p, key, user):
        props = writable(request, payload, LIST_FIELDS, "todoTaskList")
        pim = pim_of(request)
        found = _list(request, pim, key, user)
        pim.update_folder(found.id, props.get("displayName"))
        updated = pim.folder(key, user.id, found.id)
        assert updated is not None
        return _entity(request, f"{_ctx(request)}/lists/$entity", list_json(updated))


async def delete_list(request: Request) -> Response:
    with mail.outlook(request, WRITE) as (_p, key, user):
        pim = pim_of(request)
        found = _list(request, pim, key, user)
        if found.well_known is not None:
            # *unverified*: To Do refuses to delete the default list (code and wording).
            raise fail(400, "invalidRequest", "The default list cannot be deleted.", request)
        pim.delete_folder(found.id)
        return Response(status_code=204)


async def list_tasks(request: Request) -> Response:
    with mail.outlook(request, READ) as (_p, key, user):
        pim = pim_of(request)
        folder = _list(request, pim, key, user)
        expand = _expanded(request)
        rows = [
            (task_json(i, expand), {LINKS: list(i.props.get(LINKS) or [])})
            for i in pim.items(key, user.id, "task", folder.id)
        ]
        # No filter on linkedResources is documented: outlook_items.UNVERIFIED_FILTERS.
        known = frozenset({*task_json(_EMPTY_TASK), LINKS, "checklistItems"})
        values = filtered(request, rows, known, "todoTask", unverified=(LINKS,))
        return page(request, f"{_ctx(request)}/lists('{folder.id}')/tasks", values)


async def create_task(request: Request) -> Response:
    payload = await common.json_body(request)
    with mail.outlook(request, WRITE) as (_p, key, user):
        links = _links(request, payload.pop(LINKS)) if LINKS in payload else None
        props = writable(request, payload, TASK_FIELDS, "todoTask")
        _validate(request, props)
        if links:
            props[LINKS] = links
        pim = pim_of(request)
        folder = _list(request, pim, key, user)
        item = pim.create_item(key, user.id, folder.id, "task", _stamp(props, None))
        # The create answer shows the links it made (todotasklist-post-tasks, "Response").
        shown = frozenset({"linkedresources"}) if links else frozenset()
        return _entity(
            request,
            f"{_ctx(request)}/lists('{folder.id}')/tasks/$entity",
            task_json(item, shown),
            201,
        )


async def get_task(request: Request) -> Response:
    with mail.outlook(request, READ) as (_p, key, user):
        item = _task(request, pim_of(request), key, user)
        return _entity(
            request,
            f"{_ctx(request)}/lists('{item.folder_id}')/tasks/$entity",
            task_json(item, _expanded(request)),
        )


async def update_task(request: Request) -> Response:
    payload = await common.json_body(request)
    with mail.outlook(request, WRITE) as (_p, key, user):
        patch = writable(request, payload, TASK_FIELDS, "todoTask")
        _validate(request, patch)
        pim = pim_of(request)
        item = _task(request, pim, key, user)
        props = _stamp({**item.props, **patch}, item.props)
        updated = pim.update_item(item.id, props)
        return _entity(
            request, f"{_ctx(request)}/lists('{item.folder_id}')/tasks/$entity", task_json(updated)
        )


async def delete_task(request: Request) -> Response:
    with mail.outlook(request, WRITE) as (_p, key, user):
        pim = pim_of(request)
        pim.delete_item(_task(request, pim, key, user).id)
        return Response(status_code=204)


# -- checklistItems (todotask-list-checklistitems, todotask-post-checklistitems, ...) ----------

CHECKLIST_FIELDS = frozenset({"displayName", "isChecked", "checkedDateTime", "createdDateTime"})


def _checklist_ctx(request: Request, item: PimItem) -> str:
    return f"{_ctx(request)}/lists('{item.folder_id}')/tasks('{item.id}')/checklistItems"


def _entry(request: Request, item: PimItem) -> tuple[int, dict[str, Any]]:
    entry_id = request.path_params["entry_id"]
    for n, c in enumerate(item.props.get("checklistItems") or []):
        if c.get("id") == entry_id:
            return n, c
    raise mail.item_not_found(request)


def _save_checklist(pim: PimStore, item: PimItem, entries: list[dict[str, Any]]) -> PimItem:
    # The checklist is stored on the task item, so changing it gives the task a new change
    # key (*unverified*: that Graph's todoTask changeKey moves with its checklist).
    return pim.update_item(item.id, _stamp({**item.props, "checklistItems": entries}, item.props))


async def list_checklist(request: Request) -> Response:
    with mail.outlook(request, READ) as (_p, key, user):
        item = _task(request, pim_of(request), key, user)
        return page(
            request, _checklist_ctx(request, item), list(item.props.get("checklistItems") or [])
        )


async def create_checklist(request: Request) -> Response:
    payload = await common.json_body(request)
    with mail.outlook(request, WRITE) as (_p, key, user):
        entry = writable(request, payload, CHECKLIST_FIELDS, "checklistItem")
        if not isinstance(entry.get("displayName"), str) or not entry["displayName"]:
            raise invalid_value(request, "displayName")
        entry["id"] = str(uuid.uuid4())
        pim = pim_of(request)
        item = _task(request, pim, key, user)
        updated = _save_checklist(pim, item, [*(item.props.get("checklistItems") or []), entry])
        made = next(c for c in updated.props["checklistItems"] if c["id"] == entry["id"])
        return _entity(request, f"{_checklist_ctx(request, item)}/$entity", made, 201)


async def get_checklist_entry(request: Request) -> Response:
    with mail.outlook(request, READ) as (_p, key, user):
        item = _task(request, pim_of(request), key, user)
        return _entity(
            request, f"{_checklist_ctx(request, item)}/$entity", _entry(request, item)[1]
        )


async def update_checklist_entry(request: Request) -> Response:
    payload = await common.json_body(request)
    with mail.outlook(request, WRITE) as (_p, key, user):
        patch = writable(request, payload, CHECKLIST_FIELDS, "checklistItem")
        pim = pim_of(request)
        item = _task(request, pim, key, user)
        n, entry = _entry(request, item)
        entries = list(item.props.get("checklistItems") or [])
        entries[n] = {**entry, **patch}
        updated = _save_checklist(pim, item, entries)
        return _entity(
            request, f"{_checklist_ctx(request, item)}/$entity", updated.props["checklistItems"][n]
        )


async def delete_checklist_entry(request: Request) -> Response:
    with mail.outlook(request, WRITE) as (_p, key, user):
        pim = pim_of(request)
        item = _task(request, pim, key, user)
        n = _entry(request, item)[0]
        entries = list(item.props.get("checklistItems") or [])
        del entries[n]
        _save_checklist(pim, item, entries)
        return Response(status_code=204)


# -- linkedResources (todotask-list-linkedresources, todotask-post-linkedresources) ---------------


def _links_ctx(request: Request, item: PimItem) -> str:
    return f"{_ctx(request)}/lists('{item.folder_id}')/tasks('{item.id}')/linkedResources"


async def list_links(request: Request) -> Response:
    with mail.outlook(request, READ) as (_p, key, user):
        item = _task(request, pim_of(request), key, user)
        return page(request, _links_ctx(request, item), list(item.props.get(LINKS) or []))


async def create_link(request: Request) -> Response:
    payload = await common.json_body(request)
    with mail.outlook(request, WRITE) as (_p, key, user):
        pim = pim_of(request)
        item = _task(request, pim, key, user)
        (made,) = _links(request, [payload])
        pim.update_item(item.id, {**item.props, LINKS: [*(item.props.get(LINKS) or []), made]})
        return _entity(request, f"{_links_ctx(request, item)}/$entity", made, 201)


def routes() -> list[BaseRoute]:
    base = "/v1.0/users/{user_id}/todo/lists"
    one = f"{base}/{{list_id}}"
    task = f"{one}/tasks/{{task_id}}"
    return [
        Route(base, list_lists, methods=["GET"]),
        Route(base, create_list, methods=["POST"]),
        Route(one, get_list, methods=["GET"]),
        Route(one, update_list, methods=["PATCH"]),
        Route(one, delete_list, methods=["DELETE"]),
        Route(f"{one}/tasks", list_tasks, methods=["GET"]),
        Route(f"{one}/tasks", create_task, methods=["POST"]),
        Route(task, get_task, methods=["GET"]),
        Route(task, update_task, methods=["PATCH"]),
        Route(task, delete_task, methods=["DELETE"]),
        Route(f"{task}/linkedResources", list_links, methods=["GET"]),
        Route(f"{task}/linkedResources", create_link, methods=["POST"]),
        Route(f"{task}/checklistItems", list_checklist, methods=["GET"]),
        Route(f"{task}/checklistItems", create_checklist, methods=["POST"]),
        Route(f"{task}/checklistItems/{{entry_id}}", get_checklist_entry, methods=["GET"]),
        Route(f"{task}/checklistItems/{{entry_id}}", update_checklist_entry, methods=["PATCH"]),
        Route(f"{task}/checklistItems/{{entry_id}}", delete_checklist_entry, methods=["DELETE"]),
    ]
