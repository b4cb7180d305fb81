"""Graph `POST /groups`: security groups are created; mail-enabled and Unified creates are refused."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from msgraph.generated.models.group import Group
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.reference_create import ReferenceCreate

from coexist.sandbox import Sandbox, seed
from tests.clients import graph_client, graph_http


def test_create_security_group_add_members_list_transitive(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """The SDK creates a security group, adds a user and a nested group via $ref; transitive lists both levels."""
    world = sandbox.world
    with world.lock:
        people = [u for u in world.source.users.values() if u.is_mailbox][:2]
    nested = seed.group_by_name(world.source, seed.SECURITY_GROUPS[0])

    async def run() -> None:
        client = graph_client(conn, "source")
        created = await client.groups.post(
            Group(
                display_name="Coexist - Wave 2",
                mail_enabled=False,
                security_enabled=True,
                mail_nickname="coexist-wave-2",
                description="Created by the test",
            )
        )
        assert created is not None and created.id
        assert created.security_enabled is True and created.mail_enabled is False
        assert created.group_types == [] and created.mail is None
        base = "https://graph.microsoft.com/v1.0/directoryObjects/"
        for oid in (people[0].id, nested.id):
            await client.groups.by_group_id(created.id).members.ref.post(
                ReferenceCreate(odata_id=base + oid)
            )
        with pytest.raises(ODataError) as err:
            await client.groups.by_group_id(created.id).members.ref.post(
                ReferenceCreate(odata_id=base + people[0].id)
            )
        assert err.value.response_status_code == 400
        members = await client.groups.by_group_id(created.id).transitive_members.get()
        assert members is not None and members.value is not None
        ids = {m.id for m in members.value}
        assert {people[0].id, nested.id} <= ids
        assert set(nested.members) <= ids  # the nested group's members come through

    asyncio.run(run())
    with world.lock:
        made = [g for g in world.source.groups.values() if g.display_name == "Coexist - Wave 2"]
    assert len(made) == 1 and made[0].kind == "Security" and made[0].alias == "coexist-wave-2"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"mailEnabled": True, "securityEnabled": True},
            "Cannot Create a mail-enabled security groups and or distribution list.",
        ),
        (
            {"mailEnabled": True, "securityEnabled": False},
            "Cannot Create a mail-enabled security groups and or distribution list.",
        ),
        (
            {"mailEnabled": True, "securityEnabled": False, "groupTypes": ["Unified"]},
            "The sandbox does not support creating Microsoft 365",
        ),
    ],
)
def test_mail_enabled_and_unified_creates_are_refused(
    sandbox: Sandbox, conn: dict[str, Any], body: dict[str, Any], message: str
) -> None:
    """Graph cannot create mail-enabled security groups or DLs (400); Unified is not modelled (400)."""
    payload = {"displayName": "Refused", "mailNickname": "refused", **body}
    with graph_http(conn, "source") as http:
        r = http.post("groups", json=payload)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "Request_BadRequest"
    assert r.json()["error"]["message"].startswith(message)
    with sandbox.world.lock:
        assert not any(g.display_name == "Refused" for g in sandbox.world.source.groups.values())


def test_required_properties_and_permission(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A create missing mailNickname is 400; the read-only app gets 403."""
    with graph_http(conn, "source") as http:
        r = http.post(
            "groups", json={"displayName": "X", "mailEnabled": False, "securityEnabled": True}
        )
        assert r.status_code == 400 and "mailNickname" in r.json()["error"]["message"]
        r = http.post(
            "groups",
            json={
                "displayName": "X",
                "mailEnabled": False,
                "securityEnabled": True,
                "mailNickname": "has space",
            },
        )
        assert r.status_code == 400
    app = sandbox.world.source.apps[1]
    readonly = {**conn, "tenants": {**conn["tenants"]}}
    readonly["tenants"]["source"] = {
        **conn["tenants"]["source"],
        "client_id": app.client_id,
        "client_secret": app.client_secret,
    }
    with graph_http(readonly, "source") as http:
        r = http.post(
            "groups",
            json={
                "displayName": "X",
                "mailEnabled": False,
                "securityEnabled": True,
                "mailNickname": "x",
            },
        )
    assert (r.status_code, r.json()["error"]["code"]) == (403, "Authorization_RequestDenied")
