"""Crash safety: SIGKILL the CLI at random points of provision, prestage and cutover, re-run.

The sandbox runs in this process (session fixture); the CLI runs as a subprocess and is
killed with SIGKILL once the sandbox shows it has made a seeded-random amount of progress
(plus a seeded-random jitter), so every kill lands mid-run at a different write. After a
final complete run the tenants must hold exactly the expected objects.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from coexist import commands
from coexist.journal import Journal
from coexist.sandbox import Sandbox, seed
from coexist.sandbox.model import User
from coexist.sandbox.server import profile_settings
from coexist.settings import load_project
from tests.cli_env import assert_no_unawaited_coroutine, cli_env
from tests.e2e.conftest import TEST_RETRY, prepare_for_coexistence, write_project

# With 68 seeded users the seed's scope group (nested membership) holds 31 user mailboxes.
USERS = 68
MIN_BATCH = 30
PREFIX = "MIGWIZ-"
REPO = Path(__file__).resolve().parents[2]


def fresh_project(sb: Sandbox, directory: Path, **overrides: Any) -> Path:
    """Re-seed the sandbox (68 users) and write a project for it in `directory`."""
    sb.reset(seed.generate(7, USERS, profile_settings("fast", 7)))
    service = prepare_for_coexistence(sb)
    sb.write_connection()
    return write_project(directory, sb, service, **overrides)


def cli(project: Path, command: str) -> subprocess.Popen[bytes]:
    """Start `python -m coexist.cli COMMAND --project DIR --all --json` as a child process."""
    log = (project / f"{command}.log").open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coexist.cli",
            command,
            "--project",
            str(project),
            "--all",
            "--json",
        ],
        cwd=REPO,
        stdout=log,
        stderr=log,
        env=cli_env(),
    )


def run_to_completion(project: Path, command: str) -> None:
    proc = cli(project, command)
    code = proc.wait(timeout=120)
    output = (project / f"{command}.log").read_text()  # the killed runs' output too
    assert code == 0, (command, code, output[-3000:])
    assert_no_unawaited_coroutine(output, command)


def kill_when(
    sb: Sandbox, project: Path, command: str, progress: Callable[[], int], at: int, jitter: float
) -> bool:
    """Run `command`; SIGKILL it once `progress()` reaches `at` (plus `jitter` s).

    Returns whether the kill happened (False: the run finished first).
    """
    proc = cli(project, command)
    while proc.poll() is None:
        with sb.world.lock:
            if progress() >= at:
                # Jitter and kill while the sandbox is held: the command cannot get another
                # answer meanwhile, so one with tenant writes left is killed mid-run, not
                # raced to its end (a loaded machine once let it finish first).
                time.sleep(jitter)
                if proc.poll() is not None:
                    break
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return True
        time.sleep(0.005)
    return False


def crash_repeatedly(
    sb: Sandbox,
    project: Path,
    command: str,
    progress: Callable[[], int],
    total: int,
    rng: random.Random,
    kills: int,
) -> int:
    """Kill `command` at `kills` seeded-random progress points in (0, total); return kills made."""
    made = 0
    for at in sorted(rng.sample(range(1, total), kills)):
        with sb.world.lock:
            start = progress()
        made += kill_when(
            sb, project, command, progress, max(at, start + 1), rng.uniform(0.0, 0.03)
        )
    return made


def journal_items(project: Path) -> list[dict[str, Any]]:
    journal = Journal.open(load_project(project).journal_url)
    try:
        return journal.items(kind="user")
    finally:
        journal.close()


def journal_steps(project: Path, prefix: str) -> list[dict[str, Any]]:
    journal = Journal.open(load_project(project).journal_url)
    try:
        return [s for s in journal.steps() if str(s["name"]).startswith(prefix)]
    finally:
        journal.close()


def bare(address: str | None) -> str:
    return (address or "").split(":", 1)[-1].lower() if address else ""


def target_recipients(sb: Sandbox) -> set[tuple[Any, ...]]:
    """The target's recipients, minus the generated ids: what "the expected objects" means."""
    with sb.world.lock:
        tenant = sb.world.target
        users = {
            (
                "user",
                u.user_principal_name.lower(),
                u.recipient_type_details,
                u.name,
                bare(u.external_email_address),
                tuple(sorted(a.lower() for a in u.email_addresses)),
            )
            for u in tenant.users.values()
        }
        contacts = {
            (
                "contact",
                c.name,
                bare(c.external_email_address),
                tuple(sorted(a.lower() for a in c.email_addresses)),
            )
            for c in tenant.contacts.values()
        }
    return users | contacts


def scoped(project: Path) -> list[dict[str, Any]]:
    items = [i for i in journal_items(project) if (i.get("detail") or {}).get("in_scope", True)]
    assert len(items) >= MIN_BATCH, len(items)
    return items


def test_provision_survives_sigkill_and_ends_with_exactly_the_expected_mailusers(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Provision of a 31-user batch killed 4 times mid-run ends like an uninterrupted run."""
    # Reference: the same seeded tenants provisioned without interruption.
    reference = fresh_project(sandbox, tmp_path / "reference")
    commands.discover(reference)
    done = commands.provision(reference, all_users=True, retry=TEST_RETRY)
    assert not done["failed"], done["failed"]
    expected = target_recipients(sandbox)

    project = fresh_project(sandbox, tmp_path / "crashed")
    commands.discover(project)
    items = scoped(project)
    assert len(items) == len(journal_items(reference))
    with sandbox.world.lock:
        baseline = set(sandbox.world.target.users)

    def created() -> int:
        return len(set(sandbox.world.target.users) - baseline)

    kills = crash_repeatedly(
        sandbox, project, "provision", created, len(items), random.Random(31), kills=4
    )
    assert kills >= 3, "the kills should land mid-run"
    run_to_completion(project, "provision")

    got = target_recipients(sandbox)
    assert got == expected, {
        "unexpected": sorted(got - expected),
        "missing": sorted(expected - got),
    }
    final = journal_items(project)
    assert {(i["phase"], i["state"]) for i in final} == {("provisioned", "ok")}
    assert {s["status"] for s in journal_steps(project, "provision.")} == {"ok"}
    with sandbox.world.lock:
        target = sandbox.world.target
        source = sandbox.world.source
        for item in final:
            src = source.users[item["key"]]
            routes = [
                u
                for u in target.users.values()
                if bare(u.external_email_address) == str(src.primary_smtp).lower()
            ]
            assert len(routes) == 1, (src.primary_smtp, [u.name for u in routes])
            mailuser = routes[0]
            assert mailuser.recipient_type_details == "MailUser"
            # The address planned (and journaled) before the first write: a retry that
            # created a second object would have needed a numeric-suffixed one.
            plan = (item.get("detail") or {})["target_plan"]
            assert mailuser.primary_smtp == item["target_address"] == plan["primary_smtp"]
            proxies = {a.lower() for a in mailuser.email_addresses}
            assert f"x500:{src.legacy_exchange_dn}".lower() in proxies
            for x in src.email_addresses:
                if x.lower().startswith("x500:"):
                    assert x.lower() in proxies, (src.primary_smtp, x)


def half_made(sb: Sandbox, baseline: set[str]) -> list[User]:
    """MailUsers made by New-MailUser whose address update has not come yet: Exchange made
    their external (source) address primary, so it is not in the destination domain."""
    return [
        u
        for uid, u in sb.world.target.users.items()
        if uid not in baseline
        and u.recipient_type_details == "MailUser"
        and not (u.primary_smtp or "").lower().endswith("@" + seed.TARGET_DOMAIN)
    ]


def kill_between_create_and_update(sb: Sandbox, project: Path, baseline: set[str]) -> bool:
    """Run provision; SIGKILL it while a MailUser it made still has the source address primary.

    The kill is sent holding the sandbox's world lock, which every cmdlet takes: no address
    update can land between seeing the half-made object and the kill. False: the run
    finished without one being seen.
    """
    proc = cli(project, "provision")
    while proc.poll() is None:
        with sb.world.lock:
            if half_made(sb, baseline):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                return True
        time.sleep(0.0005)
    return False


def test_provision_killed_between_new_mailuser_and_the_address_update_is_finished(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A run killed after New-MailUser but before the address list is set leaves, after a
    re-run, exactly one target object per user, with the planned destination primary."""
    for attempt in range(3):
        project = fresh_project(sandbox, tmp_path / f"project{attempt}")
        commands.discover(project)
        items = scoped(project)
        with sandbox.world.lock:
            baseline = set(sandbox.world.target.users)
        if kill_between_create_and_update(sandbox, project, baseline):
            break
    else:
        pytest.fail("no run was caught between New-MailUser and its address update")
    with sandbox.world.lock:
        stranded = {u.id for u in half_made(sandbox, baseline)}
    assert stranded
    # The killed run journaled no target id for them: recovery must find them by the plan.
    assert not {i.get("target_id") for i in journal_items(project)} & stranded

    run_to_completion(project, "provision")

    final = journal_items(project)
    assert len(final) == len(items)
    assert {(i["phase"], i["state"]) for i in final} == {("provisioned", "ok")}
    with sandbox.world.lock:
        target, source = sandbox.world.target, sandbox.world.source
        assert not half_made(sandbox, baseline)
        assert stranded <= set(target.users)  # finished, not made again
        for item in final:
            src = source.users[item["key"]]
            plan = (item.get("detail") or {})["target_plan"]
            mine = [
                u
                for uid, u in target.users.items()
                if uid not in baseline
                and bare(u.external_email_address) == str(src.primary_smtp).lower()
            ]
            assert len(mine) == 1, (src.primary_smtp, [u.name for u in mine])
            made = mine[0]
            assert made.user_principal_name == plan["primary_smtp"]
            assert made.primary_smtp == item["target_address"] == plan["primary_smtp"]
            assert f"x500:{src.legacy_exchange_dn}".lower() in {
                a.lower() for a in made.email_addresses
            }


def renamed(u: User) -> bool:
    return u.name.startswith(PREFIX)


def test_rename_source_cutover_survives_sigkill_and_never_leaves_a_half_renamed_source(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """rename-source cutover (and prestage) killed mid-run ends fully renamed, contacts once."""
    project = fresh_project(sandbox, tmp_path / "project", **{"cutover.mode": "rename-source"})
    commands.discover(project)
    assert not commands.provision(project, all_users=True, retry=TEST_RETRY)["failed"]
    items = scoped(project)
    keys = [i["key"] for i in items]
    rng = random.Random(47)

    with sandbox.world.lock:
        target_ids = {
            i["key"]: sandbox.world.target.address_owner(i["target_address"]) for i in items
        }

    def licensed() -> int:
        return sum(1 for u in target_ids.values() if isinstance(u, User) and u.assigned_licenses)

    kill_when(sandbox, project, "prestage", licensed, rng.randrange(1, len(items)), 0.0)
    run_to_completion(project, "prestage")

    with sandbox.world.lock:
        source = sandbox.world.source
        original = {
            k: (list(source.users[k].email_addresses), source.users[k].legacy_exchange_dn)
            for k in keys
        }
        contacts_before = set(source.contacts)

    def progress() -> int:
        users = [source.users[k] for k in keys]
        new_contacts = len(set(source.contacts) - contacts_before)
        forwarded = sum(1 for u in users if renamed(u) and u.forwarding_address)
        return sum(1 for u in users if renamed(u)) + new_contacts + forwarded

    kills = crash_repeatedly(sandbox, project, "cutover", progress, 3 * len(keys), rng, kills=5)
    assert kills >= 3, "the kills should land mid-run"
    run_to_completion(project, "cutover")

    targets = {i["key"]: str(i["target_address"]).lower() for i in items}
    with sandbox.world.lock:
        new_contacts = [source.contacts[c] for c in set(source.contacts) - contacts_before]
        assert len(new_contacts) == len(keys), "one contact per user, no duplicates"
        for key in keys:
            mailbox = source.users[key]
            addresses, legacy_dn = original[key]
            assert renamed(mailbox) and mailbox.hidden_from_address_lists, mailbox.name
            assert not {a.lower() for a in mailbox.email_addresses} & {
                a.lower() for a in addresses
            }, mailbox.email_addresses
            assert mailbox.legacy_exchange_dn == legacy_dn
            mine = [
                c
                for c in source.contacts.values()
                if bare(c.external_email_address) == targets[key]
            ]
            assert len(mine) == 1, (key, [c.name for c in mine])
            contact = mine[0]
            carried = {a.lower() for a in contact.email_addresses}
            for a in addresses:
                if a.lower().startswith(("smtp:", "x500:")):
                    assert a.lower() in carried, (contact.name, a)
            assert contact.primary_smtp == next(a[5:] for a in addresses if a.startswith("SMTP:"))
            assert mailbox.forwarding_address == contact.id, (mailbox.name, contact.id)
    final = journal_items(project)
    assert {(i["phase"], i["state"]) for i in final} == {("cutover", "ok")}
    assert {s["status"] for s in journal_steps(project, "cutover.")} == {"ok"}
    flow = commands.verify_mailflow(project, all_users=True, wait_s=5)
    bad = [p for p in flow["probes"] if not p["ok"]]
    assert flow["ok"], bad[:5]
