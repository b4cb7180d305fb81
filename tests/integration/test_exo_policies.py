"""Outbound spam policies and rules, remote domains, and RBAC for apps, over InvokeCommand."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from coexist.sandbox import Sandbox
from coexist.sandbox.identity import grant_through_exchange_rbac
from coexist.sandbox.model import (
    OutboundSpamPolicy,
    OutboundSpamRule,
    RemoteDomain,
    Tenant,
    User,
    World,
)
from tests.clients import EXO_SCOPE, bearer, exo_http, invoke

KEY = "source"


def mailboxes(t: Tenant) -> list[User]:
    return sorted(
        (u for u in t.users.values() if u.recipient_type_details == "UserMailbox"),
        key=lambda u: u.name,
    )


def arrange(sb: Sandbox) -> tuple[User, User, str]:
    """Two custom policies with rules (one disabled), a remote domain; returns the users
    and the id of the group the enabled rule scopes."""
    t = sb.world.source
    with sb.world.lock:
        a, b = mailboxes(t)[:2]
        group = next(g for g in t.groups.values() if g.kind in ("Distribution", "MailSecurity"))
        t.outbound_spam_policies += [
            OutboundSpamPolicy("Execs no forward", "Off"),
            OutboundSpamPolicy("Migration", "On"),
        ]
        t.outbound_spam_rules += [
            OutboundSpamRule(
                "Migration",
                "Migration",
                1,
                enabled=False,
                senders=[a.id],
                except_sender_domains=["sub.example"],
            ),
            OutboundSpamRule(
                "Execs no forward",
                "Execs no forward",
                0,
                member_of=[group.id],
                except_senders=[b.id],
                sender_domains=["fabrikam.example"],
                comments="board",
            ),
        ]
        t.remote_domains.append(RemoteDomain("Contoso", "*.contoso.example", False))
        t.touch()
    return a, b, group.id


def ok(resp: httpx.Response) -> list[dict[str, Any]]:
    assert resp.status_code == 200, resp.text
    rows: list[dict[str, Any]] = resp.json()["value"]
    return rows


def test_policies_list_default_and_custom(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Get-HostedOutboundSpamFilterPolicy lists Default (IsDefault) and custom policies."""
    arrange(sandbox)
    with exo_http(conn, KEY) as exo:
        rows = ok(invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterPolicy"))
        one = ok(invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterPolicy", Identity="Migration"))
        missing = invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterPolicy", Identity="Nope")
    assert [(r["Name"], r["IsDefault"], r["AutoForwardingMode"]) for r in rows] == [
        ("Default", True, "Automatic"),
        ("Execs no forward", False, "Off"),
        ("Migration", False, "On"),
    ]
    assert [r["Identity"] for r in one] == ["Migration"]
    assert missing.status_code == 404


def test_rules_show_scope_priority_and_state(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Get-HostedOutboundSpamFilterRule: priority order, Exchange's property names, State filter."""
    a, b, gid = arrange(sandbox)
    group = sandbox.world.source.groups[gid]
    with exo_http(conn, KEY) as exo:
        rows = ok(invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterRule"))
        enabled = ok(invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterRule", State="Enabled"))
        disabled = ok(invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterRule", State="disabled"))
        one = ok(invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterRule", Identity="Migration"))
        bad_state = invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterRule", State="Maybe")
        missing = invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterRule", Identity="Nope")
    assert [r["Name"] for r in rows] == ["Execs no forward", "Migration"]
    execs = rows[0]
    assert execs["HostedOutboundSpamFilterPolicy"] == "Execs no forward"
    assert (execs["Priority"], execs["State"], execs["Comments"]) == (0, "Enabled", "board")
    assert execs["FromMemberOf"] == [group.name] and execs["ExceptIfFrom"] == [b.name]
    assert execs["SenderDomainIs"] == ["fabrikam.example"] and execs["From"] == []
    assert [r["Name"] for r in enabled] == ["Execs no forward"]
    assert [(r["Name"], r["State"]) for r in disabled] == [("Migration", "Disabled")]
    assert one[0]["From"] == [a.name] and one[0]["ExceptIfSenderDomainIs"] == ["sub.example"]
    assert bad_state.status_code == 400 and "State" in bad_state.text
    assert missing.status_code == 404


def test_rule_recipients_can_show_as_addresses(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """With the setting, rule recipients print as primary SMTP addresses (*unverified* form)."""
    _, b, gid = arrange(sandbox)
    group = sandbox.world.source.groups[gid]
    with sandbox.world.lock:
        sandbox.world.settings.rule_recipients_shown_as = "PrimarySmtpAddress"
    with exo_http(conn, KEY) as exo:
        rows = ok(
            invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterRule", Identity="Execs no forward")
        )
    assert rows[0]["FromMemberOf"] == [group.primary_smtp]
    assert rows[0]["ExceptIfFrom"] == [b.primary_smtp]


def test_remote_domains_keep_default_and_list_wildcards(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """Get-RemoteDomain lists Default ('*') and a '*.domain' entry with AutoForwardEnabled."""
    arrange(sandbox)
    with exo_http(conn, KEY) as exo:
        rows = ok(invoke(exo, conn, KEY, "Get-RemoteDomain"))
    assert [(r["Name"], r["DomainName"], r["AutoForwardEnabled"]) for r in rows] == [
        ("Default", "*", True),
        ("Contoso", "*.contoso.example", False),
    ]


def test_policies_rules_and_remote_domains_survive_a_restart(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """state.json keeps policies, rules and remote domains; a bare tenant gets the defaults."""
    arrange(sandbox)
    with sandbox.world.lock:
        sandbox.world.save(tmp_path)
        before = sandbox.world.source
        policies, rules = list(before.outbound_spam_policies), list(before.outbound_spam_rules)
        remote = list(before.remote_domains)
    again = World.load(tmp_path).source
    assert again.outbound_spam_policies == policies and again.outbound_spam_rules == rules
    assert again.remote_domains == remote
    bare = Tenant("t", "T", "t.onmicrosoft.com")
    assert [(p.name, p.is_default) for p in bare.outbound_spam_policies] == [("Default", True)]
    assert [r.domain_name for r in bare.remote_domains] == ["*"]


def test_state_saved_before_policies_keeps_the_default_mode(tmp_path: Path) -> None:
    """An older state.json (only `auto_forwarding_mode`) loads into the Default policy."""
    from coexist.sandbox import seed

    data = seed.generate(seed=3, users=5).to_dict()
    for t in data["tenants"].values():
        t.pop("outbound_spam_policies")
        t.pop("outbound_spam_rules")
        t["auto_forwarding_mode"] = "On"
    world = World.from_dict(data)
    assert world.source.auto_forwarding_mode == "On"
    assert world.source.default_outbound_policy.name == "Default"


# -- RBAC for apps --------------------------------------------------------------------------
def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def test_app_granted_through_exchange_rbac_runs_cmdlets_without_wids(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """A role-group grant (no Entra role): the token has no wids, Exchange authorises reads and writes."""
    with sandbox.world.lock:
        grant_through_exchange_rbac(sandbox.world.source.apps[0])
    token = bearer(conn, KEY, EXO_SCOPE)
    assert not claims(token).get("wids")
    with exo_http(conn, KEY, token) as exo:
        assert invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterRule").status_code == 200
        resp = invoke(
            exo, conn, KEY, "New-MailContact", Name="Rbac C", ExternalEmailAddress="c@x.example"
        )
    assert resp.status_code == 200, resp.text


def test_recipient_management_cannot_read_outbound_spam_policies(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """Recipient Management may read and write recipients but not outbound spam policies (403)."""
    with sandbox.world.lock:
        grant_through_exchange_rbac(sandbox.world.source.apps[0], "Recipient Management")
    with exo_http(conn, KEY) as exo:
        assert invoke(exo, conn, KEY, "Get-Recipient", ResultSize=1).status_code == 200
        for cmdlet in ("Get-HostedOutboundSpamFilterPolicy", "Get-HostedOutboundSpamFilterRule"):
            resp = invoke(exo, conn, KEY, cmdlet)
            assert resp.status_code == 403 and set(resp.content) == {0}, cmdlet


@pytest.mark.parametrize(
    ("roles", "groups", "status"),
    [
        ([], [], 403),  # ManageAsApp alone: no Exchange role anywhere
        ([], ["View-Only Organization Management"], 200),
        (["Global Reader"], [], 200),
    ],
)
def test_read_needs_some_exchange_grant(
    sandbox: Sandbox, conn: dict[str, Any], roles: list[str], groups: list[str], status: int
) -> None:
    """A read needs an Entra role or a role group; either alone is enough."""
    with sandbox.world.lock:
        app = sandbox.world.source.apps[0]
        app.exchange_roles, app.exchange_role_groups = roles, groups
    with exo_http(conn, KEY) as exo:
        assert invoke(exo, conn, KEY, "Get-HostedOutboundSpamFilterPolicy").status_code == status


def test_unknown_role_group_is_refused_by_the_setting() -> None:
    """The sandbox setting names a real built-in role group or fails loudly."""
    from coexist.sandbox.model import App

    with pytest.raises(ValueError, match="role group"):
        grant_through_exchange_rbac(App("c", "d"), "Helpdesk")
