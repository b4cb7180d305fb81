"""Preflight reads every outbound spam policy, rule and remote domain, and asks Exchange for the role.

Issue 9 acceptance: preflight names a custom outbound policy (scoped by a group) that
blocks one migrating user and passes the others; verify-mailflow then sees that user's
probe bounce with 5.7.520 and nobody else's; a remote domain matching the destination
blocks; a tenant whose app is granted through Exchange RBAC (no `wids`) passes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from coexist.sandbox import Sandbox, seed
from coexist.sandbox.identity import grant_through_exchange_rbac
from coexist.sandbox.model import Group, OutboundSpamPolicy, OutboundSpamRule, RemoteDomain
from coexist.sandbox.routing import route

Cli = Callable[..., Result]
USERS = 10
POLICY = "Board - no external forwarding"


def preflight(cli: Cli, project: Path) -> tuple[int, dict[str, Any]]:
    r = cli("preflight", "--project", str(project), "--json")
    return r.exit_code, json.loads(r.output)


def row(result: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in result["checks"] if c["check"] == name)
    return found


def run_json(cli: Cli, *args: str) -> dict[str, Any]:
    r = cli(*args, "--json")
    assert r.exit_code == 0, (args, r.output)
    data: dict[str, Any] = json.loads(r.stdout)
    return data


def scoped_source_users(sb: Sandbox) -> list[str]:
    """Object ids of the seed's scope-group users (nested groups included), sorted by address."""
    with sb.world.lock:
        src = sb.world.source
        scope = next(g for g in src.groups.values() if g.display_name == seed.SCOPE_GROUP)
        ids, todo = set(), list(scope.members)
        while todo:
            oid = todo.pop()
            if oid in src.groups:
                todo += src.groups[oid].members
            elif oid in src.users and src.users[oid].recipient_type_details == "UserMailbox":
                ids.add(oid)
        return sorted(ids, key=lambda i: src.users[i].primary_smtp or "")


def block_through_nested_group(sb: Sandbox, user_id: str) -> None:
    """Source: a custom policy (AutoForwardingMode Off) for members of 'Board', whose member
    'Board Assistants' (a nested DL) holds the user; Default stays On."""
    with sb.world.lock:
        src = sb.world.source
        inner = Group(
            id="0b0a0000-0000-4000-8000-000000000001",
            display_name="Board Assistants",
            name="Board Assistants",
            alias="boardassistants",
            kind="Distribution",
            email_addresses=[f"SMTP:boardassistants@{seed.SOURCE_DOMAIN}"],
            members=[user_id],
        )
        outer = Group(
            id="0b0a0000-0000-4000-8000-000000000002",
            display_name="Board",
            name="Board",
            alias="board",
            kind="MailSecurity",
            email_addresses=[f"SMTP:board@{seed.SOURCE_DOMAIN}"],
            members=[inner.id],
        )
        for g in (inner, outer):
            src.groups[g.id] = g
            src.touch(g)
        src.outbound_spam_policies.append(OutboundSpamPolicy(POLICY, "Off"))
        # A disabled rule of higher priority must not count.
        src.outbound_spam_policies.append(OutboundSpamPolicy("Legacy", "Off"))
        src.outbound_spam_rules += [
            OutboundSpamRule(
                "Legacy", "Legacy", 0, enabled=False, sender_domains=[seed.SOURCE_DOMAIN]
            ),
            OutboundSpamRule(POLICY, POLICY, 1, member_of=[outer.id]),
        ]
        src.touch()


@pytest.mark.parametrize("shown_as", ["Name", "PrimarySmtpAddress"])
def test_custom_policy_blocks_one_user_and_probe_bounces_for_that_user_only(
    shown_as: str, make_project: Callable[..., Path], sandbox: Sandbox, cli: Cli
) -> None:
    """Preflight (before and after discover) names the group-scoped custom policy for the one
    user it blocks and no one else; after cutover only that user's probe NDRs 5.7.520."""
    project = make_project(users=USERS)
    with sandbox.world.lock:
        sandbox.world.settings.rule_recipients_shown_as = shown_as
    ids = scoped_source_users(sandbox)
    assert len(ids) >= 3
    blocked_id = ids[1]
    with sandbox.world.lock:
        blocked = sandbox.world.source.users[blocked_id].primary_smtp or ""
    block_through_nested_group(sandbox, blocked_id)

    for discovered in (False, True):
        if discovered:
            run_json(cli, "discover", "--project", str(project))
        code, result = preflight(cli, project)
        assert code == 1 and result["ok"] is False
        src = row(result, "source auto-forwarding")
        assert src["status"] == "fail", src
        assert [b["user"] for b in src["blocked"]] == [blocked]
        assert src["blocked"][0]["policy"] == POLICY and src["blocked"][0]["rule"] == POLICY
        # Before discover the scope group's users stand in (mail users too); after, the journal's.
        assert ("1 of " if not discovered else f"1 of {len(ids)} migrating") in src["detail"]
        assert (
            blocked in src["detail"] and f"custom outbound spam policy '{POLICY}'" in src["detail"]
        )
        assert (
            f'Set-HostedOutboundSpamFilterPolicy -Identity "{POLICY}" -AutoForwardingMode On'
            in src["fix"]
        )
        assert row(result, "target auto-forwarding")["status"] == "ok"

    for command in ("provision", "prestage", "cutover"):
        assert not run_json(cli, command, "--project", str(project), "--all")["failed"], command
    # The sandbox delivers (or bounces) each probe within its sendMail request, so every probe
    # that lands has landed when verify-mailflow first looks; --wait only bounds how long it
    # keeps looking for the bounced one, which never comes (10 s of polling before).
    report = json.loads(
        cli("verify-mailflow", "--project", str(project), "--all", "--json", "--wait", "1").stdout
    )
    failing = {(p["user"], p["probe"]) for p in report["probes"] if not p["ok"]}
    assert failing == {(blocked, "source")}, failing
    for oid in ids:
        with sandbox.world.lock:
            address = sandbox.world.source.users[oid].primary_smtp or ""
        d = route(sandbox.world, address)
        if oid == blocked_id:
            assert (d.outcome, d.tenant, d.ndr_code) == ("ndr", "source", "5.7.520")
        else:
            assert d.outcome == "delivered" and d.tenant == "target", address


def test_remote_domain_matching_the_destination_blocks(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Cli
) -> None:
    """A source remote domain '*.<destination>' with AutoForwardEnabled false fails preflight
    for every user, naming it and Set-RemoteDomain; one for another domain does not."""
    project = make_project(users=USERS)
    with sandbox.world.lock:
        src = sandbox.world.source
        src.remote_domains.append(RemoteDomain("Elsewhere", "elsewhere.example", False))
        src.touch()
    code, result = preflight(cli, project)
    assert code == 0 and row(result, "source auto-forwarding")["status"] == "ok", result
    with sandbox.world.lock:
        src.remote_domains.append(RemoteDomain("Contoso", f"*.{seed.TARGET_DOMAIN}", False))
        src.touch()
    code, result = preflight(cli, project)
    assert code == 1
    rd = row(result, "source auto-forwarding")
    assert rd["status"] == "fail"
    assert {b["remote_domain"] for b in rd["blocked"]} == {"Contoso"}
    with sandbox.world.lock:
        mailboxes = {
            sandbox.world.source.users[i].primary_smtp for i in scoped_source_users(sandbox)
        }
    assert mailboxes <= {b["user"] for b in rd["blocked"]}  # every scoped user, before discover
    assert (
        "remote domain 'Contoso'" in rd["detail"] and "AutoForwardEnabled is false" in rd["detail"]
    )
    assert 'Set-RemoteDomain -Identity "Contoso" -AutoForwardEnabled $true' in rd["fix"]


def test_target_policy_by_domain_blocks_prestage_forwards(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Cli
) -> None:
    """A target custom policy scoped to the destination domain blocks the pre-staged mailboxes'
    forwards back to the source, even before they exist (their planned address matches)."""
    project = make_project(users=USERS)
    with sandbox.world.lock:
        tgt = sandbox.world.target
        tgt.outbound_spam_policies.append(OutboundSpamPolicy("Contoso staff", "Off"))
        tgt.outbound_spam_rules.append(
            OutboundSpamRule(
                "Contoso staff", "Contoso staff", 0, sender_domains=[seed.TARGET_DOMAIN]
            )
        )
        tgt.touch()
    code, result = preflight(cli, project)
    assert code == 1
    target = row(result, "target auto-forwarding")
    assert target["status"] == "fail" and {b["policy"] for b in target["blocked"]} == {
        "Contoso staff"
    }
    assert row(result, "source auto-forwarding")["status"] == "ok"


@pytest.mark.parametrize(
    ("role_group", "forwarding"),
    [("Organization Management", "ok"), ("Recipient Management", "warn")],
)
def test_app_granted_through_exchange_rbac_passes(
    role_group: str,
    forwarding: str,
    make_project: Callable[..., Path],
    sandbox: Sandbox,
    cli: Cli,
) -> None:
    """Both apps granted through an Exchange role group (tokens without wids): preflight
    passes, the missing wids is a warning; a recipient-only grant cannot read the policies
    (a warning naming the roles that can), which does not block."""
    project = make_project(users=USERS)
    with sandbox.world.lock:
        for tenant in sandbox.world.tenants.values():
            grant_through_exchange_rbac(tenant.apps[0], role_group)
            tenant.touch()
    code, result = preflight(cli, project)
    assert code == 0 and result["ok"] is True, result
    for side in ("source", "target"):
        assert row(result, f"{side} exchange permissions")["status"] == "ok"
        wids = row(result, f"{side} exchange role")
        assert wids["status"] == "warn" and "wids" in wids["detail"]
        assert row(result, f"{side} auto-forwarding")["status"] == forwarding
    if forwarding == "warn":
        fix = row(result, "source auto-forwarding")["fix"]
        assert "View-Only Organization Management" in fix


def test_app_without_any_exchange_role_fails(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Cli
) -> None:
    """No Entra role and no role group: Exchange refuses the role probe and preflight fails."""
    project = make_project(users=USERS)
    with sandbox.world.lock:
        sandbox.world.target.apps[0].exchange_roles = []
        sandbox.world.target.touch()
    code, result = preflight(cli, project)
    assert code == 1
    perms = row(result, "target exchange permissions")
    assert perms["status"] == "fail" and "Exchange Administrator" in perms["detail"]
    assert row(result, "source exchange permissions")["status"] == "ok"
    refused = row(result, "target exchange role")
    assert refused["status"] == "fail" and "Get-Recipient" in refused["detail"]
    assert "role group" in refused["fix"]
    assert row(result, "source exchange role")["status"] == "ok"
