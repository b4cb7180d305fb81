"""Contacts, events and tasks seeded through the source tenant's Graph faces over HTTPS, for
the mover tests of both movers."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from coexist.sandbox import Sandbox
from tests.clients import graph_http

SERIES_START = dt.datetime(2024, 1, 1, 9, 0)  # a Monday
# The seed's contact folders as the target should show them (path -> contacts).
EXPECTED_CONTACT_FOLDERS = {"Suppliers": ["Acme Ltd"], "Suppliers/Overseas": ["Globex"]}
EXPECTED_CHECKLIST = [("Find receipts", True), ("Fill in form", False)]  # of "File taxes"


@contextmanager
def graph(sandbox: Sandbox, side: str) -> Iterator[httpx.Client]:
    with graph_http(sandbox.connection, side) as client:
        yield client


def req(g: httpx.Client, method: str, url: str, **kw: Any) -> Any:
    """One Graph call; refusals the sandbox's chaos makes before any handler runs (429, 503,
    a reset connection) are sent again, which cannot create anything twice."""
    for _ in range(20):
        try:
            resp = g.request(method, url, **kw)
        except httpx.TransportError:
            continue
        if resp.status_code not in (429, 503):
            break
    assert resp.status_code < 300, (resp.status_code, resp.text)
    return resp.json() if resp.content else None


def seed_pim(sandbox: Sandbox, user: str) -> dict[str, Any]:
    """Contacts (default and a custom folder), a weekly series with one changed and one
    cancelled occurrence, a single event, and tasks in the default and a custom list."""
    zone = "W. Europe Standard Time"
    with graph(sandbox, "source") as g:
        ada = req(
            g,
            "POST",
            f"users/{user}/contacts",
            json={
                "givenName": "Ada",
                "surname": "Lovelace",
                "emailAddresses": [{"address": "ada@example.org"}],
            },
        )
        folder = req(g, "POST", f"users/{user}/contactFolders", json={"displayName": "Suppliers"})
        req(
            g,
            "POST",
            f"users/{user}/contactFolders/{folder['id']}/contacts",
            json={"displayName": "Acme Ltd", "companyName": "Acme"},
        )
        nested = req(
            g,
            "POST",
            f"users/{user}/contactFolders/{folder['id']}/childFolders",
            json={"displayName": "Overseas"},
        )
        req(
            g,
            "POST",
            f"users/{user}/contactFolders/{nested['id']}/contacts",
            json={"displayName": "Globex", "companyName": "Globex"},
        )
        series = req(
            g,
            "POST",
            f"users/{user}/events",
            json={
                "subject": "Weekly sync",
                "attendees": [{"emailAddress": {"address": "ada@example.org"}, "type": "required"}],
                "start": {"dateTime": SERIES_START.isoformat(), "timeZone": zone},
                "end": {
                    "dateTime": (SERIES_START + dt.timedelta(hours=1)).isoformat(),
                    "timeZone": zone,
                },
                "recurrence": {
                    "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
                    "range": {
                        "type": "numbered",
                        "startDate": "2024-01-01",
                        "numberOfOccurrences": 10,
                    },
                },
            },
        )
        window = {"startDateTime": "2023-12-01T00:00:00Z", "endDateTime": "2024-06-01T00:00:00Z"}
        occ = req(g, "GET", f"users/{user}/events/{series['id']}/instances", params=window)["value"]
        req(
            g,
            "PATCH",
            f"users/{user}/events/{occ[2]['id']}",
            json={"subject": "Weekly sync (moved)"},
        )
        req(g, "DELETE", f"users/{user}/events/{occ[5]['id']}")
        req(
            g,
            "POST",
            f"users/{user}/events",
            json={
                "subject": "Dentist",
                "start": {"dateTime": "2024-02-02T10:00:00", "timeZone": "UTC"},
                "end": {"dateTime": "2024-02-02T11:00:00", "timeZone": "UTC"},
            },
        )
        lists = req(g, "GET", f"users/{user}/todo/lists")["value"]
        default = next(x for x in lists if x["wellknownListName"] == "defaultList")
        taxes = req(
            g,
            "POST",
            f"users/{user}/todo/lists/{default['id']}/tasks",
            json={"title": "File taxes", "importance": "high"},
        )
        steps = f"users/{user}/todo/lists/{default['id']}/tasks/{taxes['id']}/checklistItems"
        req(g, "POST", steps, json={"displayName": "Find receipts", "isChecked": True})
        req(g, "POST", steps, json={"displayName": "Fill in form"})
        groceries = req(g, "POST", f"users/{user}/todo/lists", json={"displayName": "Groceries"})
        milk = req(
            g, "POST", f"users/{user}/todo/lists/{groceries['id']}/tasks", json={"title": "Milk"}
        )
    return {
        "window": window,
        "original_starts": [o["originalStart"] for o in occ],
        "ada": ada["id"],
        "milk": f"users/{user}/todo/lists/{groceries['id']}/tasks/{milk['id']}",
        "taxes_steps": steps,
    }  # fmt: skip


def contact_folders(g: httpx.Client, user: str) -> dict[str, list[str]]:
    """Contact folder path -> display names of its contacts, nested folders included."""
    out: dict[str, list[str]] = {}
    queue = [(f, "") for f in req(g, "GET", f"users/{user}/contactFolders")["value"]]
    while queue:
        f, parent = queue.pop(0)
        path = f"{parent}{f['displayName']}"
        base = f"users/{user}/contactFolders/{f['id']}"
        out[path] = [c["displayName"] for c in req(g, "GET", f"{base}/contacts")["value"]]
        queue += [(c, f"{path}/") for c in req(g, "GET", f"{base}/childFolders")["value"]]
    return out


def pim_in_target(sandbox: Sandbox, user: str, seeded: dict[str, Any]) -> dict[str, Any]:
    """What the target mailbox shows of the seeded items, through its Graph faces."""
    with graph(sandbox, "target") as g:
        contacts = {c["displayName"] for c in req(g, "GET", f"users/{user}/contacts")["value"]}
        in_folders = contact_folders(g, user)
        events = req(g, "GET", f"users/{user}/events")["value"]
        series = next(e for e in events if e["type"] == "seriesMaster")
        path = f"users/{user}/events/{series['id']}/instances"
        occ = req(g, "GET", path, params={**seeded["window"], "$top": 50})["value"]
        lists = req(g, "GET", f"users/{user}/todo/lists")["value"]
        tasks: dict[str, list[str]] = {}
        checklists: dict[str, list[tuple[str, bool]]] = {}
        for x in lists:
            path = f"users/{user}/todo/lists/{x['id']}/tasks"
            found = req(g, "GET", path, params={"$expand": "checklistItems"})["value"]
            tasks[x["displayName"]] = [t["title"] for t in found]
            for t in found:
                entries = t.get("checklistItems") or []
                checklists[t["title"]] = [(c["displayName"], c["isChecked"]) for c in entries]
    return {
        "contacts": contacts,
        "contact_folders": in_folders,
        "events": sorted(e["subject"] for e in events),
        "attendees": [a["emailAddress"]["address"] for a in series.get("attendees") or []],
        "occurrences": [o["originalStart"] for o in occ],
        "exceptions": [(o["subject"], o["originalStart"]) for o in occ if o["type"] == "exception"],
        "tasks": tasks,
        "checklists": checklists,
    }
