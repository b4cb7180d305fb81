"""Distribution groups, dynamic groups, domains and policies through InvokeCommand."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from coexist.sandbox import Sandbox
from coexist.sandbox.model import RemoteDomain, User
from tests.clients import exo_http, invoke, tenant

KEY = "target"


@pytest.fixture
def exo(sandbox: Sandbox, conn: dict[str, Any]) -> Iterator[httpx.Client]:
    t = sandbox.world.target
    dom = next(d.name for d in t.domains if d.is_default)
    with sandbox.world.lock:
        for i, alias in enumerate(("gmem1", "gmem2")):
            u = User(
                id=f"c0000000-0000-4000-8000-00000000000{i}",
                display_name=alias,
                name=alias,
                alias=alias,
                user_principal_name=f"{alias}@{dom}",
                email_addresses=[f"SMTP:{alias}@{dom}"],
                recipient_type_details="UserMailbox",
                exchange_guid=f"c0000000-0000-4000-8000-0000000000e{i}",
            )
            t.users[u.id] = u
            t.touch(u)
    with exo_http(conn, KEY) as client:
        yield client


def ok(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    value: list[dict[str, Any]] = resp.json()["value"]
    return value


def test_new_distribution_group_with_members(
    sandbox: Sandbox, exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """New-DistributionGroup -Members creates the group and its membership, visible to Get-*Member."""
    row = ok(
        invoke(
            exo,
            conn,
            KEY,
            "New-DistributionGroup",
            Name="Sales",
            Members=["gmem1", "gmem2@" + tenant(conn, KEY)["domains"][1]],
        )
    )[0]
    assert (
        row["RecipientTypeDetails"] == "MailUniversalDistributionGroup"
        and row["GroupType"] == "Universal"
    )
    members = ok(invoke(exo, conn, KEY, "Get-DistributionGroupMember", Identity="Sales"))
    assert sorted(m["Alias"] for m in members) == ["gmem1", "gmem2"]
    group = sandbox.world.target.groups[row["ExternalDirectoryObjectId"]]
    assert group.kind == "Distribution" and len(group.members) == 2


def test_security_group_type(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """-Type Security makes a mail-enabled security group."""
    row = ok(invoke(exo, conn, KEY, "New-DistributionGroup", Name="Sec", Type="Security"))[0]
    assert row["RecipientTypeDetails"] == "MailUniversalSecurityGroup"
    assert row["GroupType"] == "Universal, SecurityEnabled"


def test_add_and_remove_member(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """Add/Remove-DistributionGroupMember change membership; a duplicate add is an error."""
    ok(invoke(exo, conn, KEY, "New-DistributionGroup", Name="Ops"))
    ok(invoke(exo, conn, KEY, "Add-DistributionGroupMember", Identity="Ops", Member="gmem1"))
    dup = invoke(exo, conn, KEY, "Add-DistributionGroupMember", Identity="Ops", Member="gmem1")
    assert (
        dup.status_code == 400
        and "is already a member of the group" in dup.json()["error"]["details"][0]["message"]
    )
    ok(
        invoke(
            exo,
            conn,
            KEY,
            "Remove-DistributionGroupMember",
            Identity="Ops",
            Member="gmem1",
            Confirm=False,
        )
    )
    assert ok(invoke(exo, conn, KEY, "Get-DistributionGroupMember", Identity="Ops")) == []
    missing = invoke(
        exo, conn, KEY, "Remove-DistributionGroupMember", Identity="Ops", Member="gmem1"
    )
    assert (
        missing.status_code == 400
        and "isn't a member" in missing.json()["error"]["details"][0]["message"]
    )


def test_removed_member_leaves_groups(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """Removing a recipient removes it from every group it was in."""
    ok(
        invoke(
            exo,
            conn,
            KEY,
            "New-MailContact",
            Name="Ext Vic",
            ExternalEmailAddress="vic@src.example",
        )
    )
    ok(invoke(exo, conn, KEY, "New-DistributionGroup", Name="Vics", Members=["Ext Vic"]))
    ok(invoke(exo, conn, KEY, "Remove-MailContact", Identity="Ext Vic"))
    assert ok(invoke(exo, conn, KEY, "Get-DistributionGroupMember", Identity="Vics")) == []


def test_set_distribution_group_addresses(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """Set-DistributionGroup -EmailAddresses @{Add} adds an X500 proxy to the group."""
    ok(invoke(exo, conn, KEY, "New-DistributionGroup", Name="Legacy"))
    ok(
        invoke(
            exo,
            conn,
            KEY,
            "Set-DistributionGroup",
            Identity="Legacy",
            EmailAddresses={"Add": ["X500:/o=Src/cn=legacy"]},
        )
    )
    row = ok(invoke(exo, conn, KEY, "Get-DistributionGroup", Identity="X500:/o=Src/cn=legacy"))[0]
    assert row["Name"] == "Legacy"


def test_dynamic_distribution_group(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """New-DynamicDistributionGroup takes -IncludedRecipients or -RecipientFilter, not both."""
    pre = ok(
        invoke(
            exo,
            conn,
            KEY,
            "New-DynamicDistributionGroup",
            Name="All Boxes",
            IncludedRecipients="MailboxUsers",
        )
    )[0]
    assert (
        pre["RecipientTypeDetails"] == "DynamicDistributionGroup"
        and pre["IncludedRecipients"] == "MailboxUsers"
    )
    custom = ok(
        invoke(
            exo,
            conn,
            KEY,
            "New-DynamicDistributionGroup",
            Name="Sales Dyn",
            RecipientFilter="Department -eq 'Sales'",
        )
    )[0]
    assert custom["RecipientFilter"] == "Department -eq 'Sales'"
    assert sorted(
        r["Name"] for r in ok(invoke(exo, conn, KEY, "Get-DynamicDistributionGroup"))
    ) == ["All Boxes", "Sales Dyn"]
    both = invoke(
        exo,
        conn,
        KEY,
        "New-DynamicDistributionGroup",
        Name="X",
        IncludedRecipients="MailboxUsers",
        RecipientFilter="x",
    )
    assert both.status_code == 400
    assert "Parameter set cannot be resolved" in both.json()["error"]["details"][0]["message"]


def test_accepted_domains(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """Get-AcceptedDomain lists the tenant's verified domains with Default and InitialDomain."""
    rows = ok(invoke(exo, conn, KEY, "Get-AcceptedDomain"))
    t = tenant(conn, KEY)
    assert {r["DomainName"] for r in rows} >= {t["initial_domain"]}
    initial = next(r for r in rows if r["DomainName"] == t["initial_domain"])
    assert initial["InitialDomain"] is True and initial["DomainType"] == "Authoritative"


def test_outbound_policy_and_remote_domains(
    sandbox: Sandbox, exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """The Default outbound spam policy carries the tenant's AutoForwardingMode; remote domains list."""
    with sandbox.world.lock:
        sandbox.world.target.auto_forwarding_mode = "On"
        sandbox.world.target.remote_domains.append(
            RemoteDomain("Src", "src.example", auto_forward_enabled=False)
        )
        sandbox.world.target.touch()
    policy = ok(invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterPolicy"))
    assert [(p["Identity"], p["AutoForwardingMode"]) for p in policy] == [("Default", "On")]
    remote = ok(invoke(exo, conn, KEY, "Get-RemoteDomain", Identity="src.example"))
    assert remote[0]["AutoForwardEnabled"] is False
    assert invoke(exo, conn, KEY, "Get-RemoteDomain", Identity="nope.example").status_code == 404


def test_organization_config(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """Get-OrganizationConfig answers the tenant's organization object."""
    row = ok(invoke(exo, conn, KEY, "Get-OrganizationConfig"))[0]
    assert row["Name"] == tenant(conn, KEY)["initial_domain"]
