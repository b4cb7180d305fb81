"""The coexistence lifecycle through the CLI, per post-migration mode and mail-user mode.

Each case runs discover → provision → prestage → cutover → rollback → cutover against
the sandbox and checks mail flow after every phase twice over: with
`coexist verify-mailflow --json` (the product's own probes) and independently in the
sandbox mailstore (every probe message exactly once in the whole pair of tenants, in
the mailbox that should be live, and no non-delivery report anywhere).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from coexist.engine.runner import set_item
from coexist.journal import Journal
from coexist.model import split_address
from coexist.sandbox import Sandbox, seed
from coexist.sandbox.mailstore import MAIL_DB
from coexist.sandbox.model import User
from coexist.settings import load_project

# 10 seeded source users → 4 user mailboxes in scope (one whose alias a Contoso person
# already owns at the destination domain): enough for every path, and fast.
USERS = 10
PREFIX = "MIGWIZ-"

CASES = [
    pytest.param("forward-on-source", "create", id="forward-on-source"),
    pytest.param("leave-forward-on-target", "create", id="leave-forward-on-target"),
    pytest.param("rename-source", "create", id="rename-source"),
    pytest.param("forward-on-source", "match", id="match-forward-on-source"),
]


def run_json(cli: Callable[..., Result], *args: str) -> dict[str, Any]:
    """Run a command with --json; it must succeed and print one JSON object."""
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.output)
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def users_by_key(project: Path, cli: Callable[..., Result]) -> dict[str, dict[str, Any]]:
    """status --json rows, keyed by source address."""
    rows = run_json(cli, "status", "--project", str(project))["users"]
    return {r["user"]: r for r in rows}


def journal_items(project: Path) -> dict[str, dict[str, Any]]:
    """The journal's user items (source object id → item), read as an operator's tool would."""
    from coexist.journal import Journal
    from coexist.settings import load_project

    journal = Journal.open(load_project(project).journal_url)
    try:
        return {i["key"]: i for i in journal.items(kind="user")}
    finally:
        journal.close()


# -- arranging a match ------------------------------------------------------------------
def add_matching_mailuser(sb: Sandbox, local: str) -> str:
    """A MailUser Contoso's admins pre-created for a Fabrikam user (`local@` the routing domain).

    It is the only target recipient with that local part: an unambiguous match.
    Returns its object id.
    """
    with sb.world.lock:
        target = sb.world.target
        alias = f"{local}.premade"
        user = User(
            id="00000000-0000-4000-8000-000000000001",
            display_name=f"{local} (pre-created)",
            name=alias,
            alias=alias,
            email_addresses=[f"SMTP:{local}@{seed.TARGET_ROUTING_DOMAIN}"],
            user_principal_name=f"{alias}@{seed.TARGET_ROUTING_DOMAIN}",
            recipient_type_details="MailUser",
            external_email_address=f"SMTP:{local}@partner.example",
        )
        user.legacy_exchange_dn = target.new_legacy_dn(alias)
        target.users[user.id] = user
        target.touch(user)
    return user.id


# -- the target address ------------------------------------------------------------------
def bare(address: str | None) -> str:
    return (address or "").split(":", 1)[-1].lower()


def source_addresses(sb: Sandbox, key: str) -> set[str]:
    """Every SMTP address of the source user (from the source tenant itself), and its UPN."""
    with sb.world.lock:
        user = sb.world.source.users[key]
        found = {bare(a) for a in user.email_addresses if a.lower().startswith("smtp:")}
        return found | {user.user_principal_name.lower()}


def target_object(sb: Sandbox, item: dict[str, Any]) -> User:
    with sb.world.lock:
        return sb.world.target.users[item["target_id"]]


def check_target_addresses(
    sb: Sandbox, project: Path, domains: set[str], *, created: bool = True
) -> None:
    """Every target object's primary is in `domains`, is no source address of its user, is the
    journaled target address, and the object holds the source's X500s (and, when coexist
    `created` it, the MOERA). New-MailUser alone would leave the source address primary."""
    for key, item in journal_items(project).items():
        obj = target_object(sb, item)
        primary = (obj.primary_smtp or "").lower()
        assert split_address(primary)[1] in domains, (item["source_address"], primary)
        assert primary not in source_addresses(sb, key), (item["source_address"], primary)
        assert bare(item["target_address"]) == primary, (item["target_address"], primary)
        proxies = {a.lower() for a in obj.email_addresses}
        if created:
            assert any(a.endswith("@" + seed.TARGET_INITIAL_DOMAIN) for a in proxies), proxies
        with sb.world.lock:
            src = sb.world.source.users[key]
        assert f"x500:{src.legacy_exchange_dn}".lower() in proxies
        for a in src.email_addresses:
            if a.lower().startswith("x500:"):
                assert a.lower() in proxies, (src.primary_smtp, a)


# -- where mail lands ----------------------------------------------------------------------
def probe_rows(sb: Sandbox) -> list[tuple[str, str, str]]:
    """(tenant, mailbox, subject) of every message mentioning a probe, anywhere in the pair."""
    db = sqlite3.connect(f"file:{sb.state_dir / MAIL_DB}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT tenant, mailbox, subject FROM messages WHERE subject LIKE '%coexist probe%'"
        ).fetchall()
    finally:
        db.close()
    return [(str(t), str(m), str(s)) for t, m, s in rows]


def expected_box(item: dict[str, Any], mode: str, kind: str) -> tuple[str, str]:
    """The mailbox that should be live for a probe of `kind`, by phase and mode (issue 3)."""
    to_target = item["phase"] == "cutover" and not (
        mode == "leave-forward-on-target" and kind == "source"
    )
    return ("target", item["target_id"]) if to_target else ("source", item["key"])


def check_mailflow(
    sb: Sandbox, project: Path, cli: Callable[..., Result], mode: str, phase: str
) -> None:
    """verify-mailflow reports every probe ok, and the mailstore agrees, message by message."""
    seen = {row[2] for row in probe_rows(sb)}
    report = cli("verify-mailflow", "--project", str(project), "--all", "--json", "--wait", "10")
    data = json.loads(report.stdout)
    bad = [p for p in data["probes"] if not p["ok"]]
    assert report.exit_code == 0 and data["ok"], (phase, bad)
    items = journal_items(project)
    assert {i["phase"] for i in items.values()} == {phase}
    kinds = {p["probe"] for p in data["probes"]}
    assert kinds == {"source", "target", "x500"}, kinds  # the X500 reply probe is sent too
    assert len(data["probes"]) == 3 * len(items)

    new = [row for row in probe_rows(sb) if row[2] not in seen]
    assert not [r for r in new if not r[2].startswith("coexist probe ")], f"NDRs: {new}"
    assert len(new) == len(data["probes"]), (phase, new)  # each probe landed exactly once
    assert len({r[2] for r in new}) == len(new)
    for tenant, mailbox, subject in new:
        _probe, _word, _token, kind, key = subject.split(" ")
        assert (tenant, mailbox) == expected_box(items[key], mode, kind), (phase, subject)


# -- rename-source: what the world must look like ----------------------------------------------
def source_snapshot(sb: Sandbox) -> dict[str, Any]:
    """Name, addresses and visibility of every source user, and the source contacts."""
    with sb.world.lock:
        src = sb.world.source
        return {
            "users": {
                u.id: (
                    u.name,
                    u.display_name,
                    sorted(u.email_addresses),
                    u.hidden_from_address_lists,
                )
                for u in src.users.values()
            },
            "contacts": {c.id: sorted(c.email_addresses) for c in src.contacts.values()},
        }


def check_renamed(sb: Sandbox, items: dict[str, dict[str, Any]]) -> None:
    """Each source mailbox is MIGWIZ-, hidden; a contact holds its original addresses."""
    with sb.world.lock:
        src = sb.world.source
        for key, item in items.items():
            user = src.users[key]
            assert user.name.startswith(PREFIX) and user.hidden_from_address_lists
            original = item["detail"]["source"]["primary_smtp"].lower()
            assert not any(a.lower() == f"smtp:{original}" for a in user.email_addresses)
            owner = src.address_owner(original)
            assert owner is not None and owner.id in src.contacts, original


# -- the test ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "mail_users"), CASES)
def test_lifecycle_mail_lands_where_it_should_in_every_phase(
    mode: str,
    mail_users: str,
    make_project: Callable[..., Path],
    sandbox: Sandbox,
    cli: Callable[..., Result],
) -> None:
    """Mail flows to the live mailbox after provision, prestage, cutover, rollback and re-cutover."""
    overrides: dict[str, Any] = {"cutover.mode": mode, "mail_users.mode": mail_users}
    if mail_users == "match":
        overrides["mail_users.forward_matched_to_source"] = True
    project = make_project(users=USERS, **overrides)
    p = str(project)

    run_json(cli, "discover", "--project", p)
    items = journal_items(project)
    assert len(items) >= 4, items  # the scope group's user mailboxes, nested ones too

    if mail_users == "match":
        provision_with_confirmation(sandbox, project, cli, items)
        domains = {seed.TARGET_DOMAIN, seed.TARGET_ROUTING_DOMAIN}  # matched: their own
        check_target_addresses(sandbox, project, domains, created=False)
    else:
        result = run_json(cli, "provision", "--project", p, "--all")
        assert not result["failed"] and not result["awaiting_confirmation"], result
        check_target_addresses(sandbox, project, {seed.TARGET_DOMAIN})
    check_mailflow(sandbox, project, cli, mode, "provisioned")

    result = run_json(cli, "prestage", "--project", p, "--all")
    assert not result["failed"], result
    check_mailflow(sandbox, project, cli, mode, "prestaged")

    before_cutover = source_snapshot(sandbox)
    result = run_json(cli, "cutover", "--project", p, "--all")
    assert not result["failed"] and result["mode"] == mode, result
    check_mailflow(sandbox, project, cli, mode, "cutover")
    if mode == "rename-source":
        check_renamed(sandbox, journal_items(project))
    elif mode == "leave-forward-on-target":
        assert source_snapshot(sandbox) == before_cutover  # the source is not touched

    # The probes above landed in the live target mailboxes: rollback names them and stops
    # until told that mail stays there (issue 10); --yes goes on.
    refused = cli("rollback", "--project", p, "--all", "--json")
    assert refused.exit_code == 2, refused.output
    counts = {
        a["user"]: a["messages"] for a in json.loads(refused.stdout)["delivered_since_cutover"]
    }
    assert set(counts) == {i["source_address"] for i in items.values()}, counts
    assert all(n and n > 0 for n in counts.values()), counts
    result = run_json(cli, "rollback", "--project", p, "--all", "--yes")
    assert not result["failed"] and result["users"] == len(items), result
    assert {r["phase"] for r in users_by_key(project, cli).values()} == {"rolled-back"}
    # The source is back as it was: names, addresses, visibility; the contacts are gone.
    assert source_snapshot(sandbox) == before_cutover
    check_mailflow(sandbox, project, cli, mode, "rolled-back")

    result = run_json(cli, "cutover", "--project", p, "--all")
    assert not result["failed"], result
    assert {r["phase"] for r in users_by_key(project, cli).values()} == {"cutover"}
    check_mailflow(sandbox, project, cli, mode, "cutover")
    if mode == "rename-source":
        check_renamed(sandbox, journal_items(project))


def provision_with_confirmation(
    sb: Sandbox, project: Path, cli: Callable[..., Result], items: dict[str, dict[str, Any]]
) -> None:
    """match mode: a single candidate is matched; the seed's ambiguous user waits for confirm.

    The seed gives Contoso a mailbox at a scoped Fabrikam alias and a GAL contact for the
    same Fabrikam user: two candidates on that local part.
    """
    p = str(project)
    conflicts = set(seed.conflicting_aliases(sb.world))
    ambiguous = [i for i in items.values() if i["detail"]["source"]["alias"] in conflicts]
    assert len(ambiguous) == 1, "the seed has a Contoso person owning one scoped Fabrikam alias"
    user = str(ambiguous[0]["source_address"])
    others = sorted(str(i["source_address"]) for i in items.values() if i not in ambiguous)
    premade = add_matching_mailuser(sb, others[0].split("@")[0])

    result = run_json(cli, "provision", "--project", p, "--all")
    assert not result["failed"], result
    waiting = result["awaiting_confirmation"]
    assert [w["user"] for w in waiting] == [user], waiting
    with sb.world.lock:
        mailboxes = [c for c in waiting[0]["candidates"] if c in sb.world.target.users]
        contacts = [c for c in waiting[0]["candidates"] if c in sb.world.target.contacts]
    assert len(mailboxes) == 1 and len(contacts) == 1, waiting
    rows = users_by_key(project, cli)
    assert (rows[user]["phase"], rows[user]["state"]) == ("discovered", "waiting")
    assert {rows[o]["phase"] for o in others} == {"provisioned"}
    assert journal_items(project)[ambiguous[0]["key"]].get("target_id") is None
    assert (
        rows[others[0]]["target"].lower()
        == f"{others[0].split('@')[0]}@{seed.TARGET_ROUTING_DOMAIN}"
    )
    with sb.world.lock:  # matched, not created, and now routing to the source
        mu = sb.world.target.users[premade]
        assert (mu.external_email_address or "").lower() == f"smtp:{others[0]}".lower()

    # Running again before the operator decides leaves the user waiting.
    again = run_json(cli, "provision", "--project", p, "--all")
    assert [w["user"] for w in again["awaiting_confirmation"]] == [user]
    assert check_no_new_objects_for(sb, user)

    # The contact is listed (it is why the match is ambiguous) but cannot take the mailbox.
    refused = cli("confirm", "--project", p, "--user", user, "--target", contacts[0])
    assert refused.exit_code == 2 and "MailContact" in refused.output, refused.output
    assert mailboxes[0] in refused.output  # the next step names the candidate that can
    confirmed = run_json(cli, "confirm", "--project", p, "--user", user, "--target", mailboxes[0])
    assert confirmed["target"] == mailboxes[0]
    # A second user cannot be confirmed onto the same target.
    key = next(k for k, i in items.items() if i["source_address"] == others[1])
    with Journal.open(load_project(project).journal_url) as j:
        row = j.get_item("user", key)
        assert row is not None
        kept = (row.get("detail") or {}).get("target_plan")
        set_item(j, "user", key, target_plan={**(kept or {}), "candidates": [mailboxes[0]]})
    taken = cli("confirm", "--project", p, "--user", others[1], "--target", mailboxes[0])
    said = " ".join(taken.output.split())  # the error is wrapped to the terminal width
    assert taken.exit_code == 2 and f"already the target of {user}" in said, said
    with Journal.open(load_project(project).journal_url) as j:
        set_item(j, "user", key, target_plan=kept)
    result = run_json(cli, "provision", "--project", p, "--all")
    assert not result["failed"] and not result["awaiting_confirmation"], result
    assert journal_items(project)[ambiguous[0]["key"]]["target_id"] == mailboxes[0]
    with sb.world.lock:  # the matched Contoso mailbox forwards back to the source until cutover
        box = sb.world.target.users[mailboxes[0]]
        assert (box.forwarding_smtp_address or "").lower() == f"smtp:{user}".lower()
        assert not box.deliver_to_mailbox_and_forward


def check_no_new_objects_for(sb: Sandbox, user: str) -> bool:
    """No target object routes to `user` other than the GAL contact the seed put there."""
    with sb.world.lock:
        target = sb.world.target
        routed = [
            u.id
            for u in target.users.values()
            if (u.external_email_address or "").lower() == f"smtp:{user}".lower()
            or (u.forwarding_smtp_address or "").lower() == f"smtp:{user}".lower()
        ]
    return not routed
