"""`coexist automatch` and `coexist confirm` through the CLI: an IMAP source's users (a
CodeTwo CSV) matched to the sandbox target's users by ordered rules, journaled where the
movers read the target; twice (changed, then unchanged), in plan mode, with other rules,
and `--create-missing` (POST /users, license, mailbox) with no password anywhere."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from coexist import commands
from coexist.cli import main
from coexist.journal import Journal
from coexist.sandbox import Sandbox, seed
from coexist.sandbox.model import User, new_guid
from coexist.settings import load_project
from coexist.vault import ENV_KEY, new_key

KEY = new_key()
DOMAIN = seed.TARGET_DOMAIN
# (local part, display name) of the target users the rules are to find.
TARGETS = [
    ("am-ann", "Ann Automatch"),
    ("am-bob", "Bob Automatch"),
    ("cyril.automatch", "C. Automatch"),
    ("am-dee1", "Dee Automatch"),
    ("am-dee2", "Dee  automatch"),  # the same display name, but for case and spacing
]
# Login; password; First Name; Last Name; Display Name (CodeTwo's columns).
CSV = f"""Login;Password;First Name;Last Name;Display Name
am-ann@{DOMAIN};pw-ann-1;Ann;Automatch;Someone Else
am-bob@oldmail.example;pw-bob-2;;;
cm@oldmail.example;pw-cm-3;Cyril;Automatch;Cyril
dp@oldmail.example;pw-dp-4;;;Dee Automatch
am-eve@oldmail.example;pw-eve-5;Eve;Automatch;Eve Automatch
"""
PASSWORDS = [line.split(";")[1] for line in CSV.splitlines()[1:]]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env={ENV_KEY: KEY}, catch_exceptions=False)


def run_json(*args: str) -> dict[str, Any]:
    r = run(*args, "--json")
    assert r.exit_code == 0, r.output[-3000:]
    data: dict[str, Any] = json.loads(r.stdout)
    assert not data.get("failed"), data["failed"]
    return data


def add_targets(sb: Sandbox) -> None:
    """The target mailboxes of TARGETS (addresses no seeded user has)."""
    with sb.world.lock:
        tenant = sb.world.target
        for alias, name in TARGETS:
            address = f"{alias}@{DOMAIN}"
            assert tenant.address_owner(address) is None
            user = User(
                id=new_guid(),
                display_name=name,
                name=alias,
                alias=alias,
                email_addresses=[f"SMTP:{address}"],
                user_principal_name=address,
                recipient_type_details="UserMailbox",
                exchange_guid=new_guid(),
                usage_location="US",
            )
            tenant.users[user.id] = user
            tenant.touch(user)


@pytest.fixture
def imap_project(sandbox: Sandbox, tmp_path: Path) -> Path:
    """An IMAP source (never contacted here) into the sandbox target, its users imported
    from a CodeTwo CSV as batch wave1."""
    add_targets(sandbox)
    sandbox.write_connection()
    directory = tmp_path / "project"
    commands.init(
        directory,
        overrides={
            "project.name": "automatch",
            "source.kind": "imap",
            "source.imap.host": "imap.oldmail.example",
            "target.sandbox_connection": str(sandbox.state_dir / "connection.json"),
            "domains.destination_domain": DOMAIN,
            "prestage.license_sku": "ENTERPRISEPACK",
            "prestage.usage_location": "US",
            "engine.max_attempts": 6,
        },
    )
    (tmp_path / "codetwo.csv").write_text(CSV)
    r = run(
        "batch",
        "import",
        "--project",
        str(directory),
        str(tmp_path / "codetwo.csv"),
        "--name",
        "wave1",
    )
    assert r.exit_code == 0, r.output
    return directory


def journal_users(project: Path) -> dict[str, dict[str, Any]]:
    with Journal.open(load_project(project).journal_url) as j:
        return {str(i["source_address"]): i for i in j.items(kind="user")}


def matches(result: dict[str, Any]) -> dict[str, tuple[str, str | None, str | None]]:
    return {m["user"]: (m["status"], m["rule"], m["target"]) for m in result["matches"]}


def test_rules_match_journal_and_rerun_unchanged(imap_project: Path) -> None:
    """A plan writes nothing; the run matches by each rule, journals the target where the
    movers read it, leaves the ambiguous user waiting; a re-run changes nothing; a re-run
    with other rules keeps the confirmed and unchanged matches; human output shows
    addresses and names, never an id."""
    p = str(imap_project)
    planned = run_json("automatch", "--project", p, "--batch", "wave1", "--plan")
    assert planned["plan"] and planned["would_change"] == 5
    assert all(not u.get("target_id") for u in journal_users(imap_project).values())

    first = run_json("automatch", "--project", p, "--batch", "wave1")
    assert matches(first) == {
        f"am-ann@{DOMAIN}": ("matched", "same-address", f"am-ann@{DOMAIN}"),
        "am-bob@oldmail.example": ("matched", "local-part", f"am-bob@{DOMAIN}"),
        "cm@oldmail.example": ("matched", "first-last", f"cyril.automatch@{DOMAIN}"),
        "dp@oldmail.example": ("ambiguous", "display-name", None),
        "am-eve@oldmail.example": ("unmatched", None, None),
    }
    assert first["changed"] == 5
    users = journal_users(imap_project)
    assert users["am-bob@oldmail.example"]["target_address"] == f"am-bob@{DOMAIN}"
    assert users["am-bob@oldmail.example"]["target_id"]
    assert users["dp@oldmail.example"]["state"] == "waiting"
    assert users["dp@oldmail.example"]["detail"]["waiting_for"].startswith("automatch: 2 target")

    again = run_json("automatch", "--project", p, "--batch", "wave1")
    assert again["changed"] == 0 and matches(again) == matches(first)
    assert not any(m["changed"] for m in again["matches"])

    r = run("confirm", "--project", p, "dp@oldmail.example", f"am-dee2@{DOMAIN}")
    assert r.exit_code == 0 and f"am-dee2@{DOMAIN} (Dee  automatch)" in r.output, r.output
    assert journal_users(imap_project)["dp@oldmail.example"]["state"] == "ok"

    other = run("automatch", "--project", p, "--batch", "wave1", "--rules", "display-name")
    assert other.exit_code == 0, other.output
    text = " ".join(other.output.split())
    assert f"dp@oldmail.example → am-dee2@{DOMAIN} (Dee automatch) [confirmed] (unchanged)" in text
    assert (
        f"am-bob@oldmail.example → am-bob@{DOMAIN} (Bob Automatch) [rule local-part] (unchanged)"
        in text
    )
    # Ann's display name in the file is no target's: her earlier match stays.
    assert (
        f"am-ann@{DOMAIN} → am-ann@{DOMAIN} (Ann Automatch) [rule same-address] (unchanged)" in text
    )
    assert "changed 0" in text
    ids = [str(u["target_id"]) for u in journal_users(imap_project).values() if u["target_id"]]
    assert ids and not any(i in other.output for i in ids)


def test_create_missing_creates_licenses_and_waits_for_the_mailbox(
    imap_project: Path, sandbox: Sandbox
) -> None:
    """The unmatched user gets a target user (planned first: the password redacted), its
    license and mailbox; a re-run creates nothing; no password of the file or the new user
    shows in any output or the journal."""
    p = str(imap_project)
    outputs = [run("automatch", "--project", p, "--batch", "wave1").output]
    plan = run(
        "automatch",
        "--project",
        p,
        "--users",
        "am-eve@oldmail.example",
        "--create-missing",
        "--plan",
    )
    assert plan.exit_code == 0, plan.output
    assert "POST /users" in plan.output and "[redacted]" in plan.output
    assert sandbox.world.target.address_owner(f"am-eve@{DOMAIN}") is None

    made = run_json("automatch", "--project", p, "--batch", "wave1", "--create-missing")
    eve = journal_users(imap_project)["am-eve@oldmail.example"]
    assert eve["target_address"] == f"am-eve@{DOMAIN}"
    assert matches(made)["am-eve@oldmail.example"] == ("created", None, f"am-eve@{DOMAIN}")
    with sandbox.world.lock:
        created = sandbox.world.target.users[eve["target_id"]]
        assert created.display_name == "Eve Automatch" and created.usage_location == "US"
        count = len(sandbox.world.target.users)
    if eve["state"] == "waiting":  # the mailbox comes minutes after the license
        assert "mailbox" in eve["detail"]["waiting_for"]
    # retry re-runs automatch for its waiting users: the ambiguous one, and Eve if she waits.
    retried = run_json("retry", "--project", p)
    assert retried["retried"] == {"automatch": 2 if eve["state"] == "waiting" else 1}

    again = run_json("automatch", "--project", p, "--batch", "wave1", "--create-missing")
    assert again["changed"] == 0
    assert len(sandbox.world.target.users) == count
    assert journal_users(imap_project)["am-eve@oldmail.example"]["state"] == "ok"
    outputs += [plan.output, json.dumps(made), json.dumps(again)]
    journal_text = json.dumps(list(journal_users(imap_project).values()), default=str)
    for secret in PASSWORDS:
        assert not any(secret in o for o in [*outputs, journal_text])
    assert "passwordProfile" not in journal_text
