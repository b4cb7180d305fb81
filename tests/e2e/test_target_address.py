"""The target address, as Exchange Online makes it: provisioned, read back, repaired, guarded.

New-MailUser makes the ExternalEmailAddress — the *source* address — the primary of the new
target MailUser (office-docs-powershell New-MailUser.md). `provision` sets the address list
and journals what Exchange reads back; a journal that holds a source address (recorded from
New-MailUser's output by older versions) is repaired by `provision`; cutover refuses to
forward a user, or point its contact, at one of its own source addresses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from coexist.journal import Journal
from coexist.sandbox import Sandbox, seed
from coexist.sandbox.model import User
from coexist.settings import load_project
from tests.e2e.test_idempotence import journal_snapshot, world_state
from tests.e2e.test_lifecycle import (
    bare,
    check_mailflow,
    check_target_addresses,
    journal_items,
    run_json,
    target_object,
)

USERS = 10


def corrupt(sb: Sandbox, project: Path, *, objects: bool) -> dict[str, str]:
    """What older versions left on a real tenant: the journal's target address is the source
    address (New-MailUser's output); with `objects`, the target objects also never got their
    planned primary (a MailUser keeps the source address primary; a licensed mailbox had it
    scrubbed, so its MOERA is primary). Returns key -> planned primary."""
    planned: dict[str, str] = {}
    with Journal.open(load_project(project).journal_url) as journal:
        for item in journal.items(kind="user"):
            key = item["key"]
            plan = (item.get("detail") or {})["target_plan"]
            planned[key] = plan["primary_smtp"]
            journal.update_item("user", key, target_address=item["source_address"])
            if not objects:
                continue
            with sb.world.lock:
                obj = sb.world.target.users[item["target_id"]]
                rest = [a for a in obj.email_addresses if bare(a) != planned[key].lower()]
                rest = ["smtp:" + a[5:] if a.startswith("SMTP:") else a for a in rest]
                moera = next(a for a in rest if a.endswith("@" + seed.TARGET_INITIAL_DOMAIN))
                if obj.recipient_type_details == "MailUser":
                    first = f"SMTP:{item['source_address']}"
                else:
                    first, rest = "SMTP:" + moera[5:], [a for a in rest if a != moera]
                obj.email_addresses = [first, *rest]
                sb.world.target.touch(obj)
    return planned


@pytest.mark.parametrize("keeps_external", [True, False], ids=["keeps-external", "drops-external"])
def test_provision_sets_and_reads_back_a_destination_primary(
    keeps_external: bool,
    make_project: Callable[..., Path],
    sandbox: Sandbox,
    cli: Callable[..., Result],
) -> None:
    """After provision every target primary is the planned destination address, whether or not
    Exchange keeps the external address as a proxy; a second run writes nothing."""
    project = make_project(users=USERS)
    with sandbox.world.lock:
        sandbox.world.settings.mailuser_external_proxy = keeps_external
    p = str(project)
    run_json(cli, "discover", "--project", p)
    first = run_json(cli, "provision", "--project", p, "--all")
    assert not first["failed"] and first["changed"] == len(journal_items(project)), first
    check_target_addresses(sandbox, project, {seed.TARGET_DOMAIN})
    for item in journal_items(project).values():
        plan = item["detail"]["target_plan"]
        assert item["target_address"] == plan["primary_smtp"]
        assert item["detail"]["last_step"] == "provision.target-address"
        external = bare(target_object(sandbox, item).external_email_address)
        held = any(bare(a) == external for a in target_object(sandbox, item).email_addresses)
        assert held is keeps_external

    journal, world = journal_snapshot(project), world_state(sandbox)
    second = run_json(cli, "provision", "--project", p, "--all")
    assert not second["failed"] and second["changed"] == 0, second
    assert journal_snapshot(project) == journal and world_state(sandbox) == world

    result = run_json(cli, "prestage", "--project", p, "--all")
    assert not result["failed"], result
    result = run_json(cli, "cutover", "--project", p, "--all")
    assert not result["failed"], result
    check_mailflow(sandbox, project, cli, "forward-on-source", "cutover")


def test_provision_repairs_a_journal_holding_the_source_address(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Callable[..., Result]
) -> None:
    """A forced bad journal (target address = source address, objects without their planned
    primary) is observed, corrected and journaled by provision; --plan lists the repair and
    sends nothing; a second run changes nothing; an admin's own primary is kept and journaled;
    cutover then delivers exactly once."""
    project = make_project(users=USERS)
    p = str(project)
    run_json(cli, "discover", "--project", p)
    run_json(cli, "provision", "--project", p, "--all")
    items = journal_items(project)
    # Half the users prestaged (target mailboxes), half still MailUsers.
    keys = sorted(items)
    half = [str(items[k]["source_address"]) for k in keys[: len(keys) // 2]]
    run_json(cli, "prestage", "--project", p, "--users", ",".join(half))
    planned = corrupt(sandbox, project, objects=True)

    world, journal = world_state(sandbox), journal_snapshot(project)
    plan = run_json(cli, "provision", "--project", p, "--all", "--plan")
    assert world_state(sandbox) == world and journal_snapshot(project) == journal
    fixes = {w["step"].split(":", 1)[1]: w for w in plan["writes"]}
    assert set(fixes) == set(items), plan["writes"]
    for key, w in fixes.items():
        assert w["operation"] in ("Set-MailUser", "Set-Mailbox"), w
        assert w["params"]["EmailAddresses"][0] == f"SMTP:{planned[key]}", w

    result = run_json(cli, "provision", "--project", p, "--all")
    assert not result["failed"] and result["changed"] == len(items), result
    check_target_addresses(sandbox, project, {seed.TARGET_DOMAIN})
    for key, item in journal_items(project).items():
        assert item["target_address"] == planned[key]
    journal, world = journal_snapshot(project), world_state(sandbox)
    again = run_json(cli, "provision", "--project", p, "--all")
    assert again["changed"] == 0 and not again["failed"], again
    assert journal_snapshot(project) == journal and world_state(sandbox) == world

    # An admin's own choice of primary (not a source address) is kept; the journal follows it.
    key = keys[-1]
    chosen = f"chosen.{key[:8]}@{seed.TARGET_DOMAIN}"
    with sandbox.world.lock:
        obj = sandbox.world.target.users[items[key]["target_id"]]
        obj.email_addresses = [
            f"SMTP:{chosen}",
            *("smtp:" + a[5:] if a.startswith("SMTP:") else a for a in obj.email_addresses),
        ]
        sandbox.world.target.touch(obj)
    kept = run_json(cli, "provision", "--project", p, "--all")
    assert kept["changed"] == 0 and not kept["failed"], kept
    assert journal_items(project)[key]["target_address"] == chosen
    assert target_object(sandbox, items[key]).primary_smtp == chosen

    run_json(cli, "prestage", "--project", p, "--all")
    result = run_json(cli, "cutover", "--project", p, "--all")
    assert not result["failed"], result
    check_mailflow(sandbox, project, cli, "forward-on-source", "cutover")


@pytest.mark.parametrize("mode", ["forward-on-source", "rename-source"])
def test_cutover_refuses_a_source_address_as_target_then_provision_repairs_it(
    mode: str, make_project: Callable[..., Path], sandbox: Sandbox, cli: Callable[..., Result]
) -> None:
    """With the source address journaled as target, cutover writes nothing for the user and
    says so (user, address, next command); provision corrects the journal; cutover then works."""
    project = make_project(users=USERS, **{"cutover.mode": mode})
    p = str(project)
    run_json(cli, "discover", "--project", p)
    run_json(cli, "provision", "--project", p, "--all")
    run_json(cli, "prestage", "--project", p, "--all")
    planned = corrupt(sandbox, project, objects=False)
    lost = sorted(planned)[0]  # and one user has no target address journaled at all
    with Journal.open(load_project(project).journal_url) as journal:
        journal.update_item("user", lost, target_address=None)
    world = world_state(sandbox)

    result = cli("cutover", "--project", p, "--all", "--json")
    data = json.loads(result.stdout)
    items = journal_items(project)
    assert len(data["failed"]) == len(items), data
    for failure in data["failed"]:
        user = str(items[failure["item"]]["source_address"])
        assert failure["user"] == user  # people read addresses; `item` is the journal key
        assert failure["step"] == "cutover.target-address"
        if failure["item"] == lost:
            said = f"no target address is journaled for {user}"
        else:
            said = f"the target address {user} is one of {user}'s own source addresses"
        assert said in failure["error"], failure
        assert failure["next"].startswith(f"coexist provision --users {user}"), failure
    # Nothing of the cutover was written: the tenants are as before, no user is cut over.
    assert world_state(sandbox) == world
    assert {i["phase"] for i in journal_items(project).values()} == {"prestaged"}

    repaired = run_json(cli, "provision", "--project", p, "--all")
    assert repaired["changed"] == 0 and not repaired["failed"], repaired  # the journal only
    for key, item in journal_items(project).items():
        assert item["target_address"] == planned[key]
    result = run_json(cli, "cutover", "--project", p, "--all")
    assert not result["failed"], result
    check_mailflow(sandbox, project, cli, mode, "cutover")


def test_matched_mailuser_with_the_source_address_as_primary_gets_a_destination_primary(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Callable[..., Result]
) -> None:
    """match mode: a MailUser an admin made with New-MailUser (the source address primary)
    is given the planned destination primary, and cutover forwards there without a loop."""
    project = make_project(
        users=USERS,
        **{"mail_users.mode": "match", "mail_users.forward_matched_to_source": True},
    )
    p = str(project)
    run_json(cli, "discover", "--project", p)
    conflicts = set(seed.conflicting_aliases(sandbox.world))
    item = next(
        i
        for i in journal_items(project).values()
        if i["detail"]["source"]["alias"] not in conflicts
    )
    source = str(item["source_address"])
    local = source.split("@")[0]
    with sandbox.world.lock:
        target = sandbox.world.target
        premade = User(
            id="00000000-0000-4000-8000-0000000000aa",
            display_name=f"{local} (admin-made)",
            name=f"{local}.admin",
            alias=local,
            email_addresses=[f"SMTP:{source}", f"smtp:{local}@{seed.TARGET_INITIAL_DOMAIN}"],
            user_principal_name=f"{local}.admin@{seed.TARGET_DOMAIN}",
            recipient_type_details="MailUser",
            external_email_address=f"SMTP:{source}",
        )
        premade.legacy_exchange_dn = target.new_legacy_dn(local)
        target.users[premade.id] = premade
        target.touch(premade)
    result = run_json(cli, "provision", "--project", p, "--all")
    assert not result["failed"], result
    got = journal_items(project)[item["key"]]
    assert got["target_id"] == premade.id
    assert got["target_address"] == f"{local}@{seed.TARGET_DOMAIN}"
    with sandbox.world.lock:
        assert premade.primary_smtp == got["target_address"]
        assert bare(premade.external_email_address) == source.lower()
