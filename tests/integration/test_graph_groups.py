"""Graph /groups through msgraph-sdk: filters with quotes, (transitive) members, read-only DLs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kiota_abstractions.base_request_configuration import RequestConfiguration
from msgraph.generated.groups.groups_request_builder import GroupsRequestBuilder
from msgraph.generated.groups.item.transitive_members.transitive_members_request_builder import (
    TransitiveMembersRequestBuilder,
)
from msgraph.generated.models.group import Group as GraphGroup
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.models.org_contact import OrgContact
from msgraph.generated.models.reference_create import ReferenceCreate
from msgraph.generated.models.user import User as GraphUser

from coexist.sandbox import Sandbox
from coexist.sandbox.model import Contact, Group, GroupKind, User, new_guid
from tests.clients import graph_client, graph_http

GroupQuery = GroupsRequestBuilder.GroupsRequestBuilderGetQueryParameters
MembersQuery = TransitiveMembersRequestBuilder.TransitiveMembersRequestBuilderGetQueryParameters


def add_group(
    sandbox: Sandbox, name: str, kind: GroupKind = "Security", members: list[str] | None = None
) -> Group:
    tenant = sandbox.world.source
    with sandbox.world.lock:
        alias = "".join(ch for ch in name if ch.isalnum())
        g = Group(id=new_guid(), display_name=name, alias=alias, kind=kind, members=members or [])
        if g.mail_enabled:
            g.email_addresses = [f"SMTP:{alias}@fabrikam.example"]
        tenant.groups[g.id] = g
        tenant.touch(g)
    return g


def add_user(sandbox: Sandbox, alias: str) -> User:
    tenant = sandbox.world.source
    with sandbox.world.lock:
        u = User(
            id=new_guid(),
            display_name=alias.title(),
            user_principal_name=f"{alias}@fabrikam.example",
        )
        tenant.users[u.id] = u
        tenant.touch(u)
    return u


def add_contact(sandbox: Sandbox, name: str) -> Contact:
    tenant = sandbox.world.source
    with sandbox.world.lock:
        c = Contact(
            id=new_guid(),
            display_name=name,
            external_email_address="SMTP:partner@outside.example",
            email_addresses=["SMTP:partner@outside.example"],
        )
        tenant.contacts[c.id] = c
        tenant.touch(c)
    return c


def test_filter_by_display_name_with_spaces_and_quote(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """$filter=displayName eq '…' matches a name with spaces and an escaped quote ('')."""
    g = add_group(sandbox, "O'Brien Sales Team (EMEA)")
    add_group(sandbox, "O Brien Sales Team (EMEA)")

    async def run() -> list[GraphGroup]:
        client = graph_client(conn, "source")
        flt = "displayName eq 'O''Brien Sales Team (EMEA)'"
        res = await client.groups.get(
            request_configuration=RequestConfiguration(query_parameters=GroupQuery(filter=flt))
        )
        assert res is not None and res.value is not None
        return res.value

    found = asyncio.run(run())
    assert [x.id for x in found] == [g.id]
    assert found[0].security_enabled is True and found[0].mail_enabled is False


def test_mail_enabled_and_security_filters(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """DLs and mail-enabled security groups are visible with their flags; dynamic DLs are not."""
    dl = add_group(sandbox, "Zz Distribution", "Distribution")
    mesg = add_group(sandbox, "Zz Mail Security", "MailSecurity")
    dyn = add_group(sandbox, "Zz Dynamic", "Dynamic")
    with graph_http(conn, "source") as http:
        flt = "startswith(displayName,'Zz ') and mailEnabled eq true"
        body = http.get("groups", params={"$filter": flt}).json()
        by_id = {x["id"]: x for x in body["value"]}
        assert set(by_id) == {dl.id, mesg.id}
        assert by_id[dl.id]["securityEnabled"] is False and by_id[dl.id]["groupTypes"] == []
        assert by_id[mesg.id]["securityEnabled"] is True
        assert by_id[dl.id]["mail"] == "ZzDistribution@fabrikam.example"
        assert http.get(f"groups/{dyn.id}").status_code == 404


def test_transitive_members_of_nested_groups(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """transitiveMembers resolves nesting (with a cycle), pages, and types every member."""
    users = [add_user(sandbox, f"nest{i}") for i in range(6)]
    contact = add_contact(sandbox, "Partner Contact")
    inner = add_group(sandbox, "Nest Inner", members=[u.id for u in users[3:]] + [contact.id])
    outer = add_group(sandbox, "Nest Outer", members=[u.id for u in users[:3]] + [inner.id])
    with sandbox.world.lock:
        inner.members.append(outer.id)  # a cycle must not loop or duplicate
        sandbox.world.source.touch(inner)

    async def run() -> list[Any]:
        client = graph_client(conn, "source")
        cfg = RequestConfiguration(query_parameters=MembersQuery(top=3))
        builder = client.groups.by_group_id(outer.id).transitive_members
        page = await builder.get(request_configuration=cfg)
        out: list[Any] = []
        while page is not None:
            out += page.value or []
            if not page.odata_next_link:
                break
            page = await builder.with_url(page.odata_next_link).get()
        direct = await client.groups.by_group_id(outer.id).members.get()
        assert direct is not None and direct.value is not None and len(direct.value) == 4
        return out

    members = asyncio.run(run())
    ids = [m.id for m in members]
    assert sorted(ids) == sorted([u.id for u in users] + [contact.id, inner.id])
    kinds = {m.id: type(m) for m in members}
    assert kinds[users[0].id] is GraphUser
    assert kinds[inner.id] is GraphGroup
    assert kinds[contact.id] is OrgContact


def test_mail_enabled_groups_are_read_only(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Adding a member to a DL raises ODataError Request_BadRequest; a security group accepts it."""
    dl = add_group(sandbox, "Readonly DL", "Distribution")
    sg = add_group(sandbox, "Writable SG")
    u = add_user(sandbox, "joiner")
    ref = ReferenceCreate(odata_id=f"{conn['base_url']}/v1.0/directoryObjects/{u.id}")

    async def run() -> None:
        client = graph_client(conn, "source")
        with pytest.raises(ODataError) as err:
            await client.groups.by_group_id(dl.id).members.ref.post(ref)
        assert err.value.response_status_code == 400
        assert err.value.error is not None and err.value.error.code == "Request_BadRequest"
        assert "mail-enabled" in (err.value.error.message or "")
        with pytest.raises(ODataError):
            await client.groups.by_group_id(dl.id).patch(GraphGroup(description="x"))
        await client.groups.by_group_id(sg.id).members.ref.post(ref)

    asyncio.run(run())
    assert u.id in sg.members and u.id not in dl.members
