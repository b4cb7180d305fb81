"""The sandbox under `realistic`: Microsoft 365's minutes, over HTTPS with the real clients.

Run at time scale 1, so nothing the tests look at comes due while they run: each
test reads the times the sandbox recorded (visible_at, mailbox_pending_at, ...),
checks them against the profile's seeded delays, and then moves a recorded time
into the past to see the other side of it. No test waits or measures a duration.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from coexist.sandbox import Sandbox, seed
from coexist.sandbox.graph.users import EXTERNAL_SERVICE, UNDERGOING_MIGRATION
from coexist.sandbox.model import User
from coexist.sandbox.server import profile_settings
from tests.clients import exo_http, graph_http, invoke

KEY = "target"
# Graph's Outlook faces of one mailbox: mail, contacts, calendar, To Do, and the
# import/export API's way in (settings/exchange).
OUTLOOK_FACES = ("messages", "mailFolders", "contacts", "calendars", "todo/lists")


@pytest.fixture
def realistic(sandbox: Sandbox) -> Iterator[dict[str, Any]]:
    """The session sandbox re-seeded under `realistic` (time scale 1); yields its connection."""
    sandbox.reset(seed.generate(7, 20, profile_settings("realistic", 7)))
    sandbox.write_connection()
    yield sandbox.connection


@pytest.fixture
def graph(realistic: dict[str, Any]) -> Iterator[httpx.Client]:
    with graph_http(realistic, KEY) as client:
        yield client


@pytest.fixture
def exo(realistic: dict[str, Any]) -> Iterator[httpx.Client]:
    with exo_http(realistic, KEY) as client:
        yield client


def new_mailuser(sandbox: Sandbox, exo: httpx.Client, conn: dict[str, Any], name: str) -> User:
    """A MailUser made through Exchange, as provisioning makes them; the sandbox's object."""
    before = time.time()
    resp = invoke(
        exo,
        conn,
        KEY,
        "New-MailUser",
        Name=name,
        ExternalEmailAddress=f"{name.replace(' ', '.')}@src.example",
    )
    after = time.time()
    assert resp.status_code == 200, resp.text
    user = sandbox.world.target.users[resp.json()["value"][0]["ExternalDirectoryObjectId"]]
    lag = sandbox.world.settings.delay("replication", user.alias)
    assert before + lag <= user.visible_at <= after + lag  # its own seeded lag, recorded
    return user


def license_it(sandbox: Sandbox, graph: httpx.Client, user: User) -> None:
    sku = sandbox.world.target.skus[0].sku_id
    with sandbox.world.lock:
        user.usage_location = "US"
    body = {"addLicenses": [{"skuId": sku, "disabledPlans": []}], "removeLicenses": []}
    resp = graph.post(f"users/{user.id}/assignLicense", json=body)
    assert resp.status_code == 200, resp.text


def error_code(resp: httpx.Response) -> str:
    code: str = resp.json()["error"]["code"]
    return code


def test_exchange_created_mailuser_reaches_graph_after_replication(
    sandbox: Sandbox, exo: httpx.Client, graph: httpx.Client, realistic: dict[str, Any]
) -> None:
    """Exchange has the new MailUser at once; Graph answers 404 until its visible_at."""
    user = new_mailuser(sandbox, exo, realistic, "Rita Late")
    found = invoke(exo, realistic, KEY, "Get-Recipient", Identity=user.id)
    assert found.status_code == 200 and found.json()["value"][0]["RecipientTypeDetails"] == (
        "MailUser"
    )
    gone = graph.get(f"users/{user.id}")
    assert gone.status_code == 404 and error_code(gone) == "Request_ResourceNotFound"
    with sandbox.world.lock:
        user.visible_at = time.time() - 1  # replication done
    assert graph.get(f"users/{user.id}").status_code == 200


def test_licensed_mailbox_is_provisioned_then_served_by_graph_later(
    sandbox: Sandbox, exo: httpx.Client, graph: httpx.Client, realistic: dict[str, Any]
) -> None:
    """Licensing records the seeded provisioning delay; Graph serves the mailbox only after
    the further seeded REST delay, and answers 404 MailboxNotEnabledForRESTAPI meanwhile."""
    user = new_mailuser(sandbox, exo, realistic, "Pat Pending")
    with sandbox.world.lock:
        user.visible_at = 0.0
    before = time.time()
    license_it(sandbox, graph, user)
    after = time.time()
    settings = sandbox.world.settings
    provisioning = settings.delay("provisioning", user.alias)
    assert 300 <= provisioning <= 1800
    assert user.mailbox_pending_at is not None
    assert before + provisioning <= user.mailbox_pending_at <= after + provisioning
    assert user.rest_ready_at == user.mailbox_pending_at + settings.delay("rest", user.alias)

    not_yet = graph.get(f"users/{user.id}/settings/exchange")
    assert not_yet.status_code == 404 and error_code(not_yet) == "MailboxNotEnabledForRESTAPI"
    with sandbox.world.lock:  # Exchange finishes the mailbox; Graph does not serve it yet
        sandbox.world.target.settle(user.mailbox_pending_at)
        user.rest_ready_at = max(user.rest_ready_at, time.time() + 3600)
    kind = invoke(exo, realistic, KEY, "Get-Recipient", Identity=user.id).json()["value"][0]
    assert kind["RecipientTypeDetails"] == "UserMailbox"
    for face in (*OUTLOOK_FACES, "settings/exchange"):
        resp = graph.get(f"users/{user.id}/{face}")
        assert resp.status_code == 404, (face, resp.text)
        assert error_code(resp) == "MailboxNotEnabledForRESTAPI", face
    with sandbox.world.lock:
        user.rest_ready_at = time.time() - 1
    for face in (*OUTLOOK_FACES, "settings/exchange"):
        assert graph.get(f"users/{user.id}/{face}").status_code == 200, face


@pytest.mark.parametrize(
    ("refusal", "message"),
    [("none", None), ("migrating", UNDERGOING_MIGRATION), ("external", EXTERNAL_SERVICE)],
)
def test_graph_patch_of_an_exchange_created_user(
    refusal: str,
    message: str | None,
    sandbox: Sandbox,
    exo: httpx.Client,
    graph: httpx.Client,
    realistic: dict[str, Any],
) -> None:
    """Each documented answer to PATCH of a new MailUser, chosen by `graph_patch_refusal`."""
    sandbox.world.settings.graph_patch_refusal = refusal
    user = new_mailuser(sandbox, exo, realistic, f"Pia {refusal}")
    with sandbox.world.lock:
        user.visible_at = 0.0
    resp = graph.patch(f"users/{user.id}", json={"usageLocation": "US"})
    if message is None:
        assert resp.status_code == 204, resp.text
        assert user.usage_location == "US"
        return
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"] == {
        **resp.json()["error"],
        "code": "Request_BadRequest",
        "message": message,
    }
    assert user.usage_location is None
    with sandbox.world.lock:  # the DualWrite window ends; an external master never lets go
        user.graph_writable_at = time.time() - 1
    again = graph.patch(f"users/{user.id}", json={"usageLocation": "US"})
    assert again.status_code == (204 if refusal == "migrating" else 400), again.text


def test_seeded_users_are_patched_as_before(sandbox: Sandbox, graph: httpx.Client) -> None:
    """Users not created through Exchange are never refused (the refusal is about its objects)."""
    seeded = next(u for u in sandbox.world.target.users.values() if u.is_mailbox)
    resp = graph.patch(f"users/{seeded.id}", json={"department": "Finance"})
    assert resp.status_code == 204, resp.text


def test_group_member_still_replicating_is_unknown_to_graph(
    sandbox: Sandbox, exo: httpx.Client, graph: httpx.Client, realistic: dict[str, Any]
) -> None:
    """Adding a MailUser Graph does not see yet to a Graph-made security group is a 404."""
    made = graph.post(
        "groups",
        json={
            "displayName": "SG Realistic",
            "mailEnabled": False,
            "securityEnabled": True,
            "mailNickname": "sgrealistic",
        },
    )
    assert made.status_code == 201, made.text
    group = made.json()["id"]
    assert graph.get(f"groups/{group}").status_code == 200  # Graph reads its own write back
    user = new_mailuser(sandbox, exo, realistic, "Mo Member")
    ref = {"@odata.id": f"{realistic['tenants'][KEY]['graph_url']}/directoryObjects/{user.id}"}
    early = graph.post(f"groups/{group}/members/$ref", json=ref)
    assert early.status_code == 404 and error_code(early) == "Request_ResourceNotFound"
    with sandbox.world.lock:
        user.visible_at = time.time() - 1
    assert graph.post(f"groups/{group}/members/$ref", json=ref).status_code == 204
