"""Graph authorization: application roles per endpoint (403) and token validity (401)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from msgraph.generated.models.o_data_errors.o_data_error import ODataError

from coexist.sandbox import Sandbox
from coexist.sandbox.identity import GRAPH_RESOURCE
from coexist.sandbox.model import App, new_guid
from tests.clients import graph_client, graph_http


def limited_app(sandbox: Sandbox, conn: dict[str, Any], roles: list[str]) -> dict[str, Any]:
    """Register a second app holding only `roles` in the source tenant; its connection dict."""
    app = App(
        client_id=new_guid(), display_name="limited", client_secret="limited-" + new_guid(),
        graph_roles=roles,
    )  # fmt: skip
    with sandbox.world.lock:
        sandbox.world.source.apps.append(app)
        sandbox.world.source.touch()
    limited = copy.deepcopy(conn)
    limited["tenants"]["source"].update(client_id=app.client_id, client_secret=app.client_secret)
    return limited


def test_missing_role_is_403(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """An app with only Organization.Read.All reads SKUs but gets Authorization_RequestDenied on users."""
    limited = limited_app(sandbox, conn, ["Organization.Read.All"])

    async def run() -> None:
        client = graph_client(limited, "source")
        skus = await client.subscribed_skus.get()
        assert skus is not None
        with pytest.raises(ODataError) as err:
            await client.users.get()
        assert err.value.response_status_code == 403
        assert err.value.error is not None and err.value.error.code == "Authorization_RequestDenied"

    asyncio.run(run())


def test_read_role_cannot_write(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """User.Read.All lists users but PATCH answers 403; inside $batch the 403 is per request."""
    limited = limited_app(sandbox, conn, ["User.Read.All"])
    user = next(iter(sandbox.world.source.users.values()))
    with graph_http(limited, "source") as http:
        assert http.get("users", params={"$top": "1"}).status_code == 200
        r = http.patch(f"users/{user.id}", json={"usageLocation": "US"})
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "Authorization_RequestDenied"
        batch = http.post(
            "$batch",
            json={
                "requests": [
                    {"id": "r", "method": "GET", "url": "/users?$top=1"},
                    {"id": "g", "method": "GET", "url": "/groups?$top=1"},
                ]
            },
        )
    assert [x["status"] for x in batch.json()["responses"]] == [200, 403]


def test_expired_token_is_401(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A token past its lifetime answers 401 InvalidAuthenticationToken."""
    assert sandbox.ctx is not None
    tenant = sandbox.world.source
    token = sandbox.ctx.issuer.issue(tenant, tenant.apps[0], GRAPH_RESOURCE, lifetime_s=-10)
    with graph_http(conn, "source", token=token) as http:
        r = http.get("users")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "InvalidAuthenticationToken"


def test_certificate_credential_reads_users(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """The certificate (client assertion) credential works through msgraph-sdk as well as the secret."""

    async def run() -> int:
        res = await graph_client(conn, "source", kind="cert").users.get()
        assert res is not None and res.value is not None
        return len(res.value)

    assert asyncio.run(run()) > 0
