"""Graph /users through msgraph-sdk over HTTPS: paging, $select, $filter, $count, get, PATCH."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.user import User as GraphUser
from msgraph.generated.users.item.user_item_request_builder import UserItemRequestBuilder
from msgraph.generated.users.users_request_builder import UsersRequestBuilder

from coexist.sandbox import Sandbox
from coexist.sandbox.model import User, new_guid
from tests.clients import graph_client, graph_http

Query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters
ItemQuery = UserItemRequestBuilder.UserItemRequestBuilderGetQueryParameters


def add_user(sandbox: Sandbox, key: str, alias: str, display: str, **fields: Any) -> User:
    """Create an Entra user directly in the sandbox state."""
    tenant = sandbox.world.tenants[key]
    domain = next(d.name for d in tenant.domains if d.is_default)
    with sandbox.world.lock:
        user = User(
            id=new_guid(),
            display_name=display,
            alias=alias,
            user_principal_name=f"{alias}@{domain}",
            **fields,
        )
        tenant.users[user.id] = user
        tenant.touch(user)
    return user


def visible_ids(sandbox: Sandbox, key: str) -> set[str]:
    now = time.time()
    return {u.id for u in sandbox.world.tenants[key].users.values() if u.visible_at <= now}


def test_paging_with_top_serves_every_user_once(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """$top=7 pages follow @odata.nextLink (SDK with_url) and yield each user exactly once."""
    for i in range(5):
        add_user(sandbox, "source", f"pager{i}", f"Pager {i}")
    expected = visible_ids(sandbox, "source")
    assert len(expected) > 40

    async def run() -> tuple[list[str], int]:
        client = graph_client(conn, "source")
        cfg = RequestConfiguration(query_parameters=Query(top=7))
        page = await client.users.get(request_configuration=cfg)
        seen: list[str] = []
        pages = 0
        while page is not None:
            pages += 1
            assert page.value is not None and len(page.value) <= 7
            seen += [u.id for u in page.value if u.id]
            if not page.odata_next_link:
                break
            assert page.odata_next_link.startswith(conn["base_url"] + "/v1.0/users?")
            page = await client.users.with_url(page.odata_next_link).get()
        return seen, pages

    seen, pages = asyncio.run(run())
    assert sorted(seen) == sorted(expected)
    assert pages == -(-len(expected) // 7)


def test_default_properties_and_select(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Without $select Graph's default set comes back; $select returns only what was asked."""
    with graph_http(conn, "source") as http:
        plain = http.get("users", params={"$top": "1"}).json()
        picked = http.get("users", params={"$top": "2", "$select": "displayName,usageLocation"})
    first = plain["value"][0]
    assert set(first) == {
        "businessPhones", "displayName", "givenName", "jobTitle", "mail", "mobilePhone",
        "officeLocation", "preferredLanguage", "surname", "userPrincipalName", "id",
    }  # fmt: skip
    assert plain["@odata.context"].endswith("/v1.0/$metadata#users")
    body = picked.json()
    assert body["@odata.context"].endswith("$metadata#users(displayName,usageLocation)")
    assert all(set(u) == {"displayName", "usageLocation"} for u in body["value"])


def test_filter_on_common_properties(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """eq, startswith, and/or, accountEnabled, mail and proxyAddresses/any work as in Graph."""
    a = add_user(
        sandbox, "source", "zed.one", "Zed One", account_enabled=False, usage_location="FR"
    )
    b = add_user(sandbox, "source", "zed.two", "Zed Two", recipient_type_details="MailUser")
    with sandbox.world.lock:
        b.email_addresses = ["SMTP:zed.two@fabrikam.example", "smtp:zt@legacy.example"]
        sandbox.world.source.touch(b)

    async def ids(flt: str, **kw: Any) -> set[str]:
        client = graph_client(conn, "source")
        cfg = RequestConfiguration(query_parameters=Query(filter=flt, select=["id"], **kw))
        res = await client.users.get(request_configuration=cfg)
        assert res is not None and res.value is not None
        return {u.id for u in res.value if u.id}

    async def run() -> None:
        assert await ids("startswith(displayName,'Zed ')") == {a.id, b.id}
        assert await ids(f"userPrincipalName eq '{a.user_principal_name.upper()}'") == {a.id}
        assert await ids("startswith(displayName,'Zed') and accountEnabled eq false") == {a.id}
        flt = "displayName eq 'Zed One' or mail eq 'zed.two@fabrikam.example'"
        assert await ids(flt) == {a.id, b.id}
        assert await ids("proxyAddresses/any(x:x eq 'smtp:zt@legacy.example')") == {b.id}
        assert await ids("usageLocation eq 'FR' and startswith(displayName,'Zed')") == {a.id}

    asyncio.run(run())


def test_count_requires_consistency_level(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """$count=true needs ConsistencyLevel: eventual (else 400); with it @odata.count is total."""

    async def run() -> None:
        client = graph_client(conn, "source")
        cfg = RequestConfiguration(query_parameters=Query(count=True, top=3))
        with pytest.raises(ODataError) as err:
            await client.users.get(request_configuration=cfg)
        assert err.value.response_status_code == 400
        assert err.value.error is not None and err.value.error.code == "Request_BadRequest"
        cfg.headers.add("ConsistencyLevel", "eventual")
        res = await client.users.get(request_configuration=cfg)
        assert res is not None and res.odata_count == len(visible_ids(sandbox, "source"))
        assert res.value is not None and len(res.value) == 3

    asyncio.run(run())


def test_advanced_filter_needs_eventual(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """endswith() is an advanced query: 400 Request_UnsupportedQuery without the header."""
    with graph_http(conn, "source") as http:
        params = {"$filter": "endswith(mail,'@fabrikam.example')"}
        bad = http.get("users", params=params)
        params["$count"] = "true"
        good = http.get("users", params=params, headers={"ConsistencyLevel": "eventual"})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == "Request_UnsupportedQuery"
    assert good.status_code == 200 and good.json()["@odata.count"] > 0


def test_top_out_of_range_is_rejected(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """$top outside 1..999 answers Graph's 400 error body."""
    with graph_http(conn, "source") as http:
        for top in ("0", "1000"):
            r = http.get("users", params={"$top": top})
            assert r.status_code == 400
            assert set(r.json()["error"]) == {"code", "message", "innerError"}
        assert http.get("users", params={"$top": "999"}).status_code == 200


def test_get_by_upn_and_not_found(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """/users/{upn} finds the user (cert credential); unknown ids raise Request_ResourceNotFound."""
    u = add_user(sandbox, "source", "upn.lookup", "Upn Lookup", department="Legal")

    async def run() -> None:
        client = graph_client(conn, "source", kind="cert")
        got = await client.users.by_user_id(u.user_principal_name).get()
        assert got is not None and got.id == u.id and got.display_name == "Upn Lookup"
        with pytest.raises(ODataError) as err:
            await client.users.by_user_id("nobody@fabrikam.example").get()
        assert err.value.response_status_code == 404
        assert err.value.error is not None and err.value.error.code == "Request_ResourceNotFound"

    asyncio.run(run())


def test_replication_lag_hides_new_user(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """A user whose visible_at is in the future 404s on get and is absent from lists."""
    u = add_user(sandbox, "source", "lagging", "Lagging User", visible_at=time.time() + 3600)
    with graph_http(conn, "source") as http:
        assert http.get(f"users/{u.id}").status_code == 404
        flt = {"$filter": "displayName eq 'Lagging User'"}
        assert http.get("users", params=flt).json()["value"] == []


def test_patch_usage_location(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """PATCH usageLocation answers 204 and the next read shows it; read-only props are refused."""
    u = add_user(sandbox, "source", "patchme", "Patch Me")

    async def run() -> None:
        client = graph_client(conn, "source")
        await client.users.by_user_id(u.id).patch(GraphUser(usage_location="DE"))
        cfg = RequestConfiguration(query_parameters=ItemQuery(select=["usageLocation"]))
        got = await client.users.by_user_id(u.id).get(request_configuration=cfg)
        assert got is not None and got.usage_location == "DE"
        with pytest.raises(ODataError) as err:
            await client.users.by_user_id(u.id).patch(GraphUser(proxy_addresses=["smtp:x@y.z"]))
        assert err.value.response_status_code == 400

    asyncio.run(run())
    assert u.usage_location == "DE"


def test_settings_exchange_for_mailboxes_only(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """/users/{id}/settings/exchange gives primaryMailboxId for a mailbox, 404 otherwise."""
    mbx = add_user(
        sandbox, "source", "mbx.owner", "Mbx Owner",
        recipient_type_details="UserMailbox", exchange_guid=new_guid(),
    )  # fmt: skip
    plain = add_user(sandbox, "source", "no.mailbox", "No Mailbox")

    async def run() -> None:
        client = graph_client(conn, "source")
        got = await client.users.by_user_id(mbx.id).settings.exchange.get()
        assert got is not None and got.primary_mailbox_id
        assert mbx.exchange_guid is not None and mbx.exchange_guid in got.primary_mailbox_id
        with pytest.raises(ODataError) as err:
            await client.users.by_user_id(plain.id).settings.exchange.get()
        assert err.value.response_status_code == 404

    asyncio.run(run())
