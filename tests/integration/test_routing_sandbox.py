"""Routing against the served sandbox: what the real clients read is what routing acts on."""

from __future__ import annotations

from typing import Any

from azure.identity import ClientSecretCredential

from coexist.sandbox import Sandbox, seed
from coexist.sandbox.routing import route
from tests.clients import GRAPH_SCOPE, exo_http, graph_http, invoke, tenant


def test_policies_read_over_exo_rest_are_what_routing_enforces(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """Seeded AutoForwardingMode/remote domain as EXO REST reports them block a cross-tenant forward."""
    with exo_http(conn, "source") as client:
        policy = invoke(client, conn, "source", "Get-HostedOutboundSpamFilterPolicy").json()
        remote = invoke(client, conn, "source", "Get-RemoteDomain").json()
    assert policy["value"][0]["AutoForwardingMode"] == "Automatic"
    assert [(r["DomainName"], r["AutoForwardEnabled"]) for r in remote["value"]] == [("*", True)]
    world = sandbox.world
    with world.lock:
        src = next(
            u for u in world.source.users.values() if u.recipient_type_details == "UserMailbox"
        )
        dst = next(
            u for u in world.target.users.values() if u.recipient_type_details == "UserMailbox"
        )
        src.forwarding_smtp_address = f"smtp:{dst.primary_smtp}"
        world.source.touch(src)
    d = route(world, src.primary_smtp or "")
    assert (d.outcome, d.ndr_code) == ("ndr", "5.7.520")


def test_addresses_listed_by_graph_route_to_their_mailbox(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """Every SMTP proxy Graph lists for the scope group's members routes to that user's mailbox."""
    world = sandbox.world
    scope = seed.group_by_name(world.source, seed.SCOPE_GROUP)
    members = seed.transitive_members(world.source, scope)
    with graph_http(conn, "source") as client:
        page = client.get("users", params={"$select": "id,mail,proxyAddresses", "$top": "999"})
    assert page.status_code == 200
    listed = [u for u in page.json()["value"] if u["id"] in members]
    assert len(listed) == len(members)
    for user in listed:
        for proxy in user["proxyAddresses"]:
            if proxy.lower().startswith("smtp:"):
                assert route(world, proxy[5:]).mailbox == user["mail"]


def test_readonly_app_reads_but_cannot_write(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """The seeded apps[1] (User.Read.All only) gets a token, lists users, and is refused a PATCH."""
    t = tenant(conn, "source")
    app = sandbox.world.source.apps[1]
    assert app.display_name == seed.READONLY_APP and app.client_secret
    cred = ClientSecretCredential(
        t["tenant_id"],
        app.client_id,
        app.client_secret,
        authority=t["authority"],
        disable_instance_discovery=True,
        connection_verify=conn["ca_file"],
        retry_total=0,
    )
    token = cred.get_token(GRAPH_SCOPE).token
    with graph_http(conn, "source", token=token) as client:
        assert client.get("users", params={"$top": "5"}).status_code == 200
        user = next(iter(sandbox.world.source.users.values()))
        denied = client.patch(f"users/{user.id}", json={"jobTitle": "x"})
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "Authorization_RequestDenied"
