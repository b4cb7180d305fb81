"""Every Graph resource the sandbox serves is an instance of its type in the v1.0 CSDL.

One run per module (over the session sandbox, freshly seeded): a mailbox with
mail (folders, attachments, flags), contacts in nested folders, a recurring
event with an exception and a cancelled occurrence, To Do tasks with checklist
items; then

1. the CSDL-driven walk (`graph_walker`): every entity set and singleton, every
   navigation property and parameterless function of every object reached;
2. the writes and actions the sandbox serves, each answer checked against the
   return type the CSDL gives the operation of that name and binding (creates
   and updates against the entity type of their path): assignLicense, sendMail,
   move, createUploadSession, exportItems, createImportSession, creates and
   updates of every kind, delta rounds after a deletion (`@removed`);
3. `$batch`: one URL of every template that answered with data, batched, each
   inner body checked like the direct answer.

Findings are grouped by the sandbox module whose route answered, one test per
module, so a failure names the face and lists every violation with its URL.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from coexist import csdl
from coexist.csdl import TypeRef
from coexist.sandbox import Sandbox, graph, mailseed
from coexist.sandbox.model import User
from tests.clients import graph_http
from tests.contract.graph_walker import Finding, Report, RouteIndex, Walker
from tests.e2e import pim_seed

SIDE = "source"
ROUTES = RouteIndex(graph.routes())
# Every sandbox module that serves Graph routes gets its own test.
MODULES = sorted({r.endpoint.__module__.rsplit(".", 1)[-1] for r in ROUTES.routes})
# Floors for the GET walk, at what it reaches today (test_walk_reaches_every_kind_of_resource
# lists both when it fails): the types of the resources it read (user, group, orgContact,
# domain, organization, subscribedSku, exchangeSettings, mailFolder, message, fileAttachment,
# contactFolder, contact, calendar, event, todoTaskList, todoTask, checklistItem,
# mailboxFolder, mailboxItem) and the URL templates that answered with data.
MIN_TYPES_WALKED = 19
MIN_TEMPLATES_SERVED = 57
BATCH_MAX = 20  # json-batching


@dataclass
class Run:
    report: Report
    user: str


def mailbox_user(sb: Sandbox) -> User:
    """The first mailbox in /users order (by id): the walk meets it first."""
    users = [u for u in sb.world.tenants[SIDE].users.values() if u.is_mailbox and u.exchange_guid]
    return min(users, key=lambda u: u.id)


class Writes:
    """Writes and actions whose answers are checked against the CSDL as they are made."""

    def __init__(self, http: httpx.Client, walker: Walker) -> None:
        self.http, self.walker = http, walker

    def send(self, method: str, path: str, ref: TypeRef | None, **kw: Any) -> Any:
        resp = self.http.request(method, path, **kw)
        self.walker.report.requests += 1
        module = ROUTES.module(method, path)
        if resp.status_code >= 300:
            self.walker.finding(module, method, path, f"refused: {resp.status_code} {resp.text}")
            return None
        body = resp.json() if resp.content else None
        self.walker.check(method, path, body, ref, resp.status_code)
        return body

    def create(self, path: str, json: dict[str, Any]) -> Any:
        """POST to a collection: the answer is one entity of the collection's type."""
        ref = csdl.resolve_path(path)
        assert ref is not None and ref.collection, path
        return self.send("POST", path, TypeRef(ref.name), json=json)

    def update(self, path: str, json: dict[str, Any]) -> Any:
        return self.send("PATCH", path, csdl.resolve_path(path), json=json)

    def action(self, path: str, json: dict[str, Any] | None = None) -> Any:
        """POST to a bound action: the answer is the action's return type (or nothing)."""
        return self.send("POST", path, csdl.resolve_path(path), json=json or {})

    def get(self, path: str, **kw: Any) -> Any:
        return self.send("GET", path, csdl.resolve_path(path), **kw)


def seed_mail(w: Writes, sb: Sandbox, user: User) -> dict[str, str]:
    """Seeded mail (mailseed) plus Graph-created folders and messages with attachments."""
    mailseed.seed_mailbox(sb.mail, SIDE, user.id, seed=11, items=40)
    base = f"users/{user.id}"
    folder = w.create(f"{base}/mailFolders", {"displayName": "Contract"})
    w.create(f"{base}/mailFolders/{folder['id']}/childFolders", {"displayName": "Nested"})
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = {
        "subject": "Contract with attachment",
        "body": {"contentType": "html", "content": "<p>hello</p>"},
        "toRecipients": [{"emailAddress": {"address": "ada@example.org", "name": "Ada"}}],
        "attachments": [
            {
                "@odata.type": "#microsoft.graph.fileAttachment",
                "name": "note.txt",
                "contentType": "text/plain",
                "contentBytes": base64.b64encode(b"note").decode(),
            }
        ],
        "singleValueExtendedProperties": [
            {"id": "Integer 0x0E07", "value": "1"},
            {"id": "SystemTime 0x0E06", "value": now},
        ],
    }
    first = w.create(f"{base}/mailFolders/inbox/messages", message)
    second = w.create(f"{base}/mailFolders/inbox/messages", {**message, "subject": "To move"})
    w.create(
        f"{base}/messages/{first['id']}/attachments",
        {
            "@odata.type": "#microsoft.graph.fileAttachment",
            "name": "more.bin",
            "contentBytes": base64.b64encode(b"\x00\x01").decode(),
        },
    )
    w.update(f"{base}/messages/{first['id']}", {"isRead": False, "flag": {"flagStatus": "flagged"}})
    w.action(
        f"{base}/messages/{first['id']}/attachments/createUploadSession",
        {"AttachmentItem": {"attachmentType": "file", "name": "big.bin", "size": 4 * 1024 * 1024}},
    )
    moved = w.action(f"{base}/messages/{second['id']}/move", {"destinationId": folder["id"]})
    return {"folder": folder["id"], "moved": moved["id"] if moved else ""}


def seed_pim(w: Writes, sb: Sandbox, user: User) -> None:
    """pim_seed's contacts/events/tasks, plus one write of every PIM kind, checked."""
    pim_seed.seed_pim(sb, user.user_principal_name)
    base = f"users/{user.id}"
    contact = w.create(
        f"{base}/contacts",
        {"givenName": "Grace", "surname": "Hopper", "emailAddresses": [{"address": "g@x.org"}]},
    )
    w.update(f"{base}/contacts/{contact['id']}", {"jobTitle": "Rear Admiral"})
    folder = w.create(f"{base}/contactFolders", {"displayName": "Contract"})
    w.create(f"{base}/contactFolders/{folder['id']}/childFolders", {"displayName": "Inner"})
    cal = w.create(f"{base}/calendars", {"name": "Contract calendar"})
    event = w.create(
        f"{base}/calendars/{cal['id']}/events",
        {
            "subject": "Review",
            "start": {"dateTime": "2024-03-01T10:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2024-03-01T11:00:00", "timeZone": "UTC"},
        },
    )
    w.update(f"{base}/events/{event['id']}", {"subject": "Review (moved)"})
    lst = w.create(f"{base}/todo/lists", {"displayName": "Contract list"})
    w.update(f"{base}/todo/lists/{lst['id']}", {"displayName": "Contract list 2"})
    task = w.create(
        f"{base}/todo/lists/{lst['id']}/tasks", {"title": "Sign", "status": "completed"}
    )
    steps = f"{base}/todo/lists/{lst['id']}/tasks/{task['id']}/checklistItems"
    item = w.create(steps, {"displayName": "Read it"})
    w.update(f"{steps}/{item['id']}", {"isChecked": True})
    w.update(f"{base}/todo/lists/{lst['id']}/tasks/{task['id']}", {"importance": "high"})


def directory_actions(w: Writes, sb: Sandbox, user: User) -> None:
    """A security group created, a member added, a license assigned, mail sent."""
    group = w.create(
        "groups",
        {
            "displayName": "Contract group",
            "mailEnabled": False,
            "mailNickname": "contractgroup",
            "securityEnabled": True,
        },
    )
    ref = {"@odata.id": f"https://graph.microsoft.com/v1.0/directoryObjects/{user.id}"}
    w.send("POST", f"groups/{group['id']}/members/$ref", None, json=ref)
    tenant = sb.world.tenants[SIDE]
    with sb.world.lock:
        sku = next(s for s in tenant.skus if tenant.consumed_units(s.sku_id) < s.enabled)
        who = min(
            (u for u in tenant.users.values() if sku.sku_id not in u.assigned_licenses),
            key=lambda u: u.id,
        )
    w.update(f"users/{who.id}", {"usageLocation": "US"})
    w.action(
        f"users/{who.id}/assignLicense",
        {"addLicenses": [{"skuId": sku.sku_id}], "removeLicenses": []},
    )
    domain = next(d.name for d in tenant.domains if d.is_verified)
    w.create(  # automatch --create-missing (user-post-users' required properties)
        "users",
        {
            "accountEnabled": True,
            "displayName": "Contract User",
            "mailNickname": "contractuser",
            "userPrincipalName": f"contractuser@{domain}",
            "passwordProfile": {"forceChangePasswordNextSignIn": True, "password": "x-Y-9-z!"},
            "usageLocation": "US",
        },
    )
    w.action(
        f"users/{user.id}/sendMail",
        {
            "message": {
                "subject": "Contract probe",
                "body": {"contentType": "text", "content": "hi"},
                "toRecipients": [{"emailAddress": {"address": user.primary_smtp}}],
            },
            "saveToSentItems": True,
        },
    )


def delta_rounds(w: Writes, user: User, folder: str) -> None:
    """Message and mailbox-item delta over the "Contract" folder: a round, a deletion, the
    next round (with `@removed`); exportItems (one id unknown) and createImportSession."""
    base = f"users/{user.id}"
    link = drain(w, f"{base}/mailFolders/{folder}/messages/delta()")
    listed = w.get(f"{base}/mailFolders/{folder}/messages") or {}
    victim = (listed.get("value") or [{}])[0].get("id")
    settings = w.get(f"{base}/settings/exchange") or {}
    mailbox = f"admin/exchange/mailboxes/{quote(str(settings.get('primaryMailboxId')), safe='')}"
    folders = (w.get(f"{mailbox}/folders") or {}).get("value") or []
    io_folder = next((f for f in folders if f.get("displayName") == "Contract"), None)
    io_link = None
    if io_folder is not None:
        items = f"{mailbox}/folders/{io_folder['id']}/items"
        io_link = drain(w, f"{items}/delta()")
        ids = [i["id"] for i in (w.get(items) or {}).get("value", [])[:2]]
        w.action(f"{mailbox}/exportItems", {"ItemIds": [*ids, "AAMkAGUnknown"]})
    else:
        w.walker.finding("exchange_io", "GET", f"{mailbox}/folders", "no folder 'Contract'")
    w.action(f"{mailbox}/createImportSession")
    drain(w, f"{mailbox}/folders/delta()")
    if victim:
        w.send("DELETE", f"{base}/messages/{victim}", None)
    for delta in (link, io_link):
        if delta:
            drain(w, delta, csdl.resolve_path(delta.split("/v1.0/", 1)[1]))


def drain(w: Writes, url: str, ref: TypeRef | None = None) -> str | None:
    """Follow a delta round to its deltaLink (every page checked); return the deltaLink."""
    ref = ref or csdl.resolve_path(url)
    for _ in range(50):
        body = w.send("GET", url, ref)
        if not isinstance(body, dict):
            return None
        if "@odata.deltaLink" in body:
            return str(body["@odata.deltaLink"])
        url = str(body.get("@odata.nextLink") or "")
        if not url:
            return None
    return None


def batched(w: Writes, report: Report) -> None:
    """One URL of every template that answered with data, through $batch, checked inside."""
    examples = [(u, t) for u, t in report.examples.values() if not u.startswith("http")]
    for start in range(0, len(examples), BATCH_MAX):
        chunk = examples[start : start + BATCH_MAX]
        requests = [
            {"id": str(n), "method": "GET", "url": "/" + u} for n, (u, _) in enumerate(chunk)
        ]
        resp = w.http.post("$batch", json={"requests": requests})
        if resp.status_code != 200:
            w.walker.finding("batch", "POST", "$batch", f"refused: {resp.status_code}")
            continue
        for r in resp.json().get("responses", []):
            url, ref = chunk[int(r["id"])]
            if r.get("status") == 200:
                w.walker.check("GET", url, r.get("body"), ref, 200)
            elif int(r.get("status", 0)) >= 500:
                w.walker.finding("batch", "POST", f"$batch -> {url}", f"inner {r['status']}")


@pytest.fixture(scope="module")
def run(sandbox_server: Sandbox) -> Iterator[Run]:
    """Seed the session sandbox, walk it from the CSDL, exercise its actions and $batch."""
    sb = sandbox_server
    sb.reset()
    user = mailbox_user(sb)
    with graph_http(sb.connection, SIDE) as http:
        walker = Walker(http, csdl.model(), ROUTES)
        w = Writes(http, walker)
        mail = seed_mail(w, sb, user)
        seed_pim(w, sb, user)
        directory_actions(w, sb, user)
        walker.run()
        delta_rounds(w, user, mail["folder"])
        batched(w, walker.report)
    yield Run(walker.report, user.user_principal_name)


def by_module(findings: list[Finding]) -> dict[str, list[Finding]]:
    out: dict[str, list[Finding]] = defaultdict(list)
    for f in findings:
        out[f.module].append(f)
    return out


_INDEX = re.compile(r"\[\d+\]")


def summary(findings: list[Finding]) -> str:
    """One line per distinct violation (list indices folded), with its count and first URLs."""
    groups: dict[tuple[str, str], list[Finding]] = defaultdict(list)
    for f in findings:
        groups[(f.module, _INDEX.sub("[]", f.message))].append(f)
    lines = []
    for (module, message), fs in sorted(groups.items()):
        urls = sorted({f"{f.method} {f.url}" for f in fs})
        shown = "\n      ".join(urls[:3]) + (
            f"\n      ... {len(urls) - 3} more" if len(urls) > 3 else ""
        )
        lines.append(f"[{module}] {message}  ({len(fs)}x)\n      {shown}")
    return "\n".join(lines)


@pytest.mark.parametrize("module", MODULES)
def test_graph_face_conforms_to_the_v1_csdl(run: Run, module: str) -> None:
    """Every answer a sandbox Graph module served (GET walk, writes, actions, $batch) holds only
    v1.0 properties, navigation properties and enum members of its type, in v1.0 shapes."""
    found = by_module(run.report.findings).get(module, [])
    if found:
        pytest.fail(
            f"{len(found)} contract violations in sandbox/graph/{module}.py:\n{summary(found)}"
        )


def test_no_finding_outside_the_served_modules(run: Run) -> None:
    """Every finding is attributed to a module that serves routes (none to 'unserved')."""
    stray = [f for m, fs in by_module(run.report.findings).items() if m not in MODULES for f in fs]
    if stray:
        pytest.fail(summary(stray))


def test_walk_reaches_every_kind_of_resource(run: Run) -> None:
    """The GET walk reached the seeded kinds (floors on types and on URL templates answering
    with data), so a walker that visits little cannot pass."""
    walked = sorted(run.report.walked)
    served = sorted(run.report.served)
    refused = [f"{t} {sorted(s)}" for t, s in sorted(run.report.refused.items())]
    detail = (
        ("types:\n  " + "\n  ".join(walked) + "\ntemplates with data:\n  " + "\n  ".join(served))
        + "\ntemplates answering errors:\n  "
        + "\n  ".join(refused)
    )
    assert len(walked) >= MIN_TYPES_WALKED, f"only {len(walked)} types walked; {detail}"
    assert len(served) >= MIN_TEMPLATES_SERVED, f"only {len(served)} templates; {detail}"
