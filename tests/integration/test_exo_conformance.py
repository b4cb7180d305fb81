"""Every cmdlet the sandbox serves obeys the cmdlet reference, over HTTPS with httpx.

The list comes from the dispatch table, so a newly served cmdlet cannot escape:
each needs a valid call below, and for each the sandbox refuses a parameter the
reference lacks, an on-premises-only parameter and a missing mandatory one, in
Exchange Online's error shape, naming the parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from coexist.exospec import cmdlet_spec, resolve_parameter_set
from coexist.sandbox import Sandbox
from coexist.sandbox.exo.invoke import served_cmdlets
from coexist.sandbox.model import Contact, Group, OutboundSpamPolicy, OutboundSpamRule, User
from tests.clients import exo_http, invoke

KEY = "target"


def arrange(sb: Sandbox) -> None:
    """A mailbox, a mail user, a contact, a distribution group, a dynamic group and a
    custom outbound spam policy with its rule."""
    t = sb.world.target
    dom = next(d.name for d in t.domains if d.is_default)
    with sb.world.lock:
        alice = User(
            id="a0000000-0000-4000-8000-000000000001",
            display_name="Conf Alice",
            name="Conf Alice",
            alias="confalice",
            user_principal_name=f"confalice@{dom}",
            email_addresses=[f"SMTP:confalice@{dom}"],
            recipient_type_details="UserMailbox",
            exchange_guid="a0000000-0000-4000-8000-0000000000e1",
            legacy_exchange_dn=t.new_legacy_dn("confalice"),
        )
        bob = User(
            id="a0000000-0000-4000-8000-000000000002",
            display_name="Conf Bob",
            name="Conf Bob",
            alias="confbob",
            user_principal_name=f"confbob@{dom}",
            email_addresses=[f"SMTP:confbob@{dom}"],
            recipient_type_details="MailUser",
            external_email_address="SMTP:bob@elsewhere.example",
        )
        carol = Contact(
            id="a0000000-0000-4000-8000-000000000003",
            display_name="Conf Carol",
            name="Conf Carol",
            alias="confcarol",
            email_addresses=["SMTP:carol@elsewhere.example"],
            external_email_address="SMTP:carol@elsewhere.example",
        )
        team = Group(
            id="a0000000-0000-4000-8000-000000000004",
            display_name="Conf Team",
            name="Conf Team",
            alias="confteam",
            email_addresses=[f"SMTP:confteam@{dom}"],
            kind="Distribution",
            members=[alice.id],
        )
        dyn = Group(
            id="a0000000-0000-4000-8000-000000000005",
            display_name="Conf Dyn",
            name="Conf Dyn",
            alias="confdyn",
            email_addresses=[f"SMTP:confdyn@{dom}"],
            kind="Dynamic",
            included_recipients="MailboxUsers",
        )
        for o in (alice, bob):
            t.users[o.id] = o
        t.contacts[carol.id] = carol
        t.groups[team.id] = team
        t.groups[dyn.id] = dyn
        # A custom outbound spam policy scoped by a rule, so rule output is served too.
        t.outbound_spam_policies.append(OutboundSpamPolicy("Conf Forwarding", "On"))
        t.outbound_spam_rules.append(
            OutboundSpamRule("Conf Forwarding", "Conf Forwarding", 0, member_of=[team.id])
        )
        for o in (alice, bob, carol, team, dyn):
            t.touch(o)


# One valid call per served cmdlet; writes use names that do not collide.
VALID: dict[str, Callable[[], dict[str, Any]]] = {
    "Get-Mailbox": lambda: {"Identity": "Conf Alice"},
    "Set-Mailbox": lambda: {"Identity": "confalice", "DisplayName": "Alice C"},
    "Get-MailboxStatistics": lambda: {"Identity": "confalice"},
    "Get-Recipient": lambda: {"Identity": "confbob"},
    "Get-User": lambda: {"Identity": "confalice"},
    "Set-User": lambda: {"Identity": "confalice", "Department": "Sales"},
    "Get-MailUser": lambda: {"Identity": "confbob"},
    "New-MailUser": lambda: {"Name": "Conf New", "ExternalEmailAddress": "new@elsewhere.example"},
    "Set-MailUser": lambda: {"Identity": "confbob", "DisplayName": "Bob C"},
    "Remove-MailUser": lambda: {"Identity": "confbob", "Confirm": False},
    "Get-MailContact": lambda: {"Identity": "confcarol"},
    "New-MailContact": lambda: {
        "Name": "Conf Dan",
        "ExternalEmailAddress": "dan@elsewhere.example",
    },
    "Set-MailContact": lambda: {"Identity": "confcarol", "DisplayName": "Carol C"},
    "Remove-MailContact": lambda: {"Identity": "confcarol"},
    "Get-DistributionGroup": lambda: {"Identity": "confteam"},
    "New-DistributionGroup": lambda: {"Name": "Conf Group2", "Type": "Security"},
    "Set-DistributionGroup": lambda: {"Identity": "confteam", "DisplayName": "Team C"},
    "Get-DistributionGroupMember": lambda: {"Identity": "confteam"},
    "Add-DistributionGroupMember": lambda: {"Identity": "confteam", "Member": "confbob"},
    "Remove-DistributionGroupMember": lambda: {"Identity": "confteam", "Member": "confalice"},
    "Get-DynamicDistributionGroup": lambda: {"Identity": "confdyn"},
    "New-DynamicDistributionGroup": lambda: {
        "Name": "Conf Dyn2",
        "IncludedRecipients": "MailboxUsers",
    },
    "Get-AcceptedDomain": lambda: {},
    "Get-RemoteDomain": lambda: {"Identity": "Default"},
    "Get-HostedOutboundSpamFilterPolicy": lambda: {"Identity": "Default"},
    "Get-HostedOutboundSpamFilterRule": lambda: {"State": "Enabled"},
    "Get-OrganizationConfig": lambda: {},
}


@pytest.fixture
def exo(sandbox: Sandbox, conn: dict[str, Any]) -> Iterator[httpx.Client]:
    arrange(sandbox)
    with exo_http(conn, KEY) as client:
        yield client


def assert_refused(resp: httpx.Response, name: str) -> None:
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["code"] == "BadRequest" and error["message"] == "Invalid Operation"
    assert name in error["details"][0]["message"]
    assert name in error["innererror"]["internalexception"]["message"]


def test_every_served_cmdlet_has_a_valid_call() -> None:
    """The dispatch table and this test's valid calls list the same cmdlets."""
    assert sorted(VALID) == served_cmdlets()


@pytest.mark.parametrize("cmdlet", served_cmdlets())
def test_cmdlet_conformance(cmdlet: str, exo: httpx.Client, conn: dict[str, Any]) -> None:
    """Unknown, on-premises-only and missing mandatory parameters fail naming it; a valid call works."""
    valid = VALID[cmdlet]()
    spec = cmdlet_spec(cmdlet)
    assert_refused(
        invoke(exo, conn, KEY, cmdlet, **valid, NotAParameterAtAll=1), "NotAParameterAtAll"
    )
    on_prem = next((p.name for p in spec.canonical_parameters if not p.exchange_online), None)
    if on_prem is not None:
        assert_refused(invoke(exo, conn, KEY, cmdlet, **valid, **{on_prem: "x"}), on_prem)
    chosen = next(s for s in spec.sets if s.name == resolve_parameter_set(cmdlet, valid))
    for mandatory in sorted(chosen.required):
        partial = {k: v for k, v in valid.items() if k != mandatory}
        assert_refused(invoke(exo, conn, KEY, cmdlet, **partial), mandatory)
    ok = invoke(exo, conn, KEY, cmdlet, **valid)
    assert ok.status_code == 200, ok.text
    assert isinstance(ok.json()["value"], list)


def test_set_mailbox_primary_smtp_address_is_refused(
    exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """Set-Mailbox -PrimarySmtpAddress (on-premises only) fails as an unknown parameter."""
    resp = invoke(
        exo, conn, KEY, "Set-Mailbox", Identity="confalice", PrimarySmtpAddress="a@b.example"
    )
    assert_refused(resp, "PrimarySmtpAddress")
    assert "AmbiguousParameterSetException" in resp.json()["error"]["details"][0]["message"]


def test_unknown_cmdlet_is_forbidden(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """A cmdlet that does not exist answers 403 with a non-JSON body, as EXO does."""
    resp = invoke(exo, conn, KEY, "Get-NoSuchThing")
    assert resp.status_code == 403
    assert set(resp.content) == {0}


def test_spec_cmdlet_not_served_is_forbidden_not_faked(
    exo: httpx.Client, conn: dict[str, Any]
) -> None:
    """A reference cmdlet the sandbox does not serve is refused (403), never a fake success."""
    resp = invoke(exo, conn, KEY, "Get-InboxRule", Mailbox="confalice")
    assert resp.status_code == 403
    assert "not served" in resp.headers["X-Sandbox-Diagnostic"]


def test_valid_but_unmodeled_parameter_is_refused(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """A real EXO parameter the sandbox does not model is refused by name, not ignored."""
    resp = invoke(exo, conn, KEY, "Set-Mailbox", Identity="confalice", CustomAttribute1="x")
    assert_refused(resp, "CustomAttribute1")


def test_parameter_names_and_switches_are_loose(exo: httpx.Client, conn: dict[str, Any]) -> None:
    """Parameter names bind in any case and switches accept true."""
    resp = invoke(
        exo, conn, KEY, "set-mailbox", identity="confalice", hiddenfromaddresslistsenabled="true"
    )
    assert resp.status_code == 200, resp.text
    got = invoke(exo, conn, KEY, "Get-Mailbox", Identity="confalice").json()["value"][0]
    assert got["HiddenFromAddressListsEnabled"] is True
