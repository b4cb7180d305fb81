"""Files and logs: owner-only files, a log file per run with no secret in it, `-v` everywhere.

Issue 10: journal.db and project.toml were created 0644 (the journal holds names, addresses,
LegacyExchangeDNs); the sandbox's state.json held both client secrets at 0644; there were
no log files and no --verbose.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from coexist import commands, logs
from coexist.cli import main
from coexist.journal import Journal
from coexist.sandbox import Sandbox, seed
from coexist.settings import load_project
from tests.clients import graph_http
from tests.e2e.conftest import prepare_for_coexistence

Cli = Callable[..., Result]
MakeProject = Callable[..., Path]


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Umask 000 while the test runs: files are owner-only because coexist creates them so,
    not because the umask happened to be strict."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, str]:
    """Every file and directory under `root` (itself included) → its mode, in octal."""
    found = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): oct(stat.S_IMODE(p.stat().st_mode)) for p in found}


def not_owner_only(root: Path) -> dict[str, str]:
    return {
        name: mode
        for name, mode in modes(root).items()
        if mode != ("0o700" if (root / name).is_dir() else "0o600")
    }


def test_new_files_are_owner_only(
    sandbox: Sandbox, tmp_path: Path, cli: Cli, open_umask: None
) -> None:
    """With a umask of 000, everything coexist creates is 0600 / 0700: the project directory
    and project.toml, the journal, the run logs, an exported report, and a new sandbox's
    state (state.json with the client secrets, keys, CA, connection.json, mail.db, pim.db)."""
    service = prepare_for_coexistence(sandbox)
    sandbox.write_connection()
    project = tmp_path / "wave1"
    assert cli("init", str(project)).exit_code == 0
    conn = str(sandbox.state_dir / "connection.json")
    commands.init(
        project,
        force=True,
        overrides={
            "source.sandbox_connection": conn,
            "target.sandbox_connection": conn,
            "domains.destination_domain": seed.TARGET_DOMAIN,
            "scope.group": seed.SCOPE_GROUP,
            "verify.service_mailbox": service,
        },
    )
    assert cli("discover", "--project", str(project)).exit_code == 0
    report = project / "wave1-export.csv"
    assert cli("batch", "export", "--project", str(project), "--output", str(report)).exit_code == 0
    made = modes(project)
    assert {"project.toml", "journal.db", "logs", "wave1-export.csv"} <= set(made)
    # discover's and export's (init's went to the user's log directory: no project yet)
    assert len(list((project / "logs").iterdir())) == 2
    assert not_owner_only(project) == {}

    state = tmp_path / "sandbox-state"
    with Sandbox(state, seed=3, users=5) as fresh:
        user = next(iter(fresh.world.source.users.values()))
        with graph_http(fresh.connection, "source") as http:  # creates pim.db
            assert http.get(f"users/{user.id}/contacts").status_code == 200
        fresh.save()
    expected = {"state.json", "connection.json", "mail.db", "pim.db", "ca.pem", "server.pem"}
    assert expected <= set(modes(state)) and {"source-app.pem", "target-app.pem"} <= set(
        modes(state)
    )
    assert not_owner_only(state) == {}


# -- a log per run, secrets redacted ---------------------------------------------------------------
def secret_project(sandbox: Sandbox, directory: Path) -> tuple[Path, dict[str, str]]:
    """A project that signs in with client secrets from the environment (not certificates),
    with the full-fidelity mover: the run handles secrets, tokens, generated passwords and
    pre-authenticated import URLs. Returns the project and its environment."""
    service = prepare_for_coexistence(sandbox)
    sandbox.write_connection()
    conn = sandbox.connection
    overrides: dict[str, Any] = {
        "domains.destination_domain": seed.TARGET_DOMAIN,
        "scope.group": seed.SCOPE_GROUP,
        "prestage.license_sku": "ENTERPRISEPACK",
        "prestage.usage_location": "US",
        "verify.service_mailbox": service,
        "migration.mover": "graph-import-export",
        "engine.max_attempts": 6,
    }
    env = {}
    for side in ("source", "target"):
        t = conn["tenants"][side]
        overrides.update(
            {
                f"{side}.tenant_id": t["tenant_id"],
                f"{side}.client_id": t["client_id"],
                f"{side}.authority": t["authority"],
                f"{side}.graph_url": t["graph_url"],
                f"{side}.exo_url": t["exo_url"],
                f"{side}.ca_file": conn["ca_file"],
            }
        )
        env[f"COEXIST_{side.upper()}_CLIENT_SECRET"] = t["client_secret"]
    commands.init(directory, overrides=overrides)
    return directory, env


def old_mail(subject: str) -> bytes:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.org", subject
    msg["Message-ID"] = f"<{subject.replace(' ', '.')}@example.org>"
    msg["Date"] = "Mon, 15 Jan 2024 09:00:00 +0000"
    msg.set_content("old mail")
    return msg.as_bytes()


PASSWORD_VALUE = re.compile(r"""(?i)password['"]?\s*[:=]\s*['"]?(?!\[redacted\])[^'",}\s]""")


def test_a_run_writes_a_log_with_no_secret_in_it(sandbox: Sandbox, tmp_path: Path) -> None:
    """discover, provision and prestage (with -v: every request and cmdlet) each write one
    0600 log under the project's logs/; neither the logs nor stderr hold a client secret, a
    bearer token or JWT, a password, or an import URL's authtoken."""
    sandbox.reset(seed.generate(7, 10))
    project, env = secret_project(sandbox, tmp_path / "project")

    def run(*args: str) -> Result:
        r = CliRunner().invoke(main, [*args, "--project", str(project), "-v"], env=env)
        assert r.exit_code == 0, r.output
        return r

    run("discover")
    with Journal.open(load_project(project).journal_url) as journal:
        users = journal.items(kind="user")
    user = users[0]
    run("provision", "--users", ",".join(str(u["source_address"]) for u in users))
    inbox = sandbox.mail.folder("source", str(user["key"]), "inbox")
    assert inbox is not None
    old = dt.datetime(2024, 1, 15, tzinfo=dt.UTC)
    sandbox.mail.insert_message("source", str(user["key"]), inbox.id, old_mail("q1"), received=old)
    prestage = run("prestage", "--users", str(user["source_address"]), "--older-than", "90d")

    files = sorted((project / "logs").iterdir())
    assert [f.name.split("-coexist-")[1].split("-")[0] for f in files] == [
        "discover",
        "provision",
        "prestage",
    ]
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o600}
    text = "\n".join(f.read_text() for f in files) + prestage.stderr
    # what a reader needs is there ...
    assert str(user["source_address"]) in text and "provision.mailuser" in text
    assert "New-MailUser" in text and "HTTP Request: POST" in text
    assert "authtoken=[redacted]" in text  # the import URLs were logged, redacted
    # ... and no secret is
    for secret in env.values():
        assert secret not in text
    assert not re.search(r"(?i)bearer\s+(?!\[redacted)", text)
    assert not re.search(r"eyJ[A-Za-z0-9_-]{8,}\.", text)
    assert not re.search(r"authtoken=(?!\[redacted\])", text)
    assert not PASSWORD_VALUE.search(text), PASSWORD_VALUE.search(text)
    assert "PRIVATE KEY" not in text


def test_old_logs_are_pruned(tmp_path: Path) -> None:
    """Only the newest KEEP_RUNS logs of a directory are kept (names sort by time)."""
    directory = tmp_path / logs.LOG_DIR
    directory.mkdir()
    names = [f"2026010{d}T000000Z-coexist-status-1.log" for d in range(1, 8)]
    for name in names:
        (directory / name).write_text("x")
    (directory / "notes.txt").write_text("an operator's file")
    logs.prune(directory, keep=3)
    assert sorted(p.name for p in directory.iterdir()) == [*names[-3:], "notes.txt"]


# -- -v on every command -----------------------------------------------------------------------------
def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_verbose_works_on_every_command(project: Path, cli: Cli) -> None:
    """Every command takes -v/--verbose; with it, the run's log lines also go to stderr
    (ids, and every HTTP request for commands that talk to the tenants)."""
    everyone = list(leaf_commands(main))
    assert len(everyone) >= 17
    for path in everyone:
        command: click.Command = main
        for name in path:
            assert isinstance(command, click.Group)
            command = command.commands[name]
        flags = {o for p in command.params for o in getattr(p, "opts", [])}
        assert {"-v", "--verbose"} <= flags, path
        r = CliRunner().invoke(main, [*path, "-v", "--help"])
        assert r.exit_code == 0 and "--verbose" in r.output, path

    p = str(project)
    discover = CliRunner().invoke(main, ["discover", "--project", p, "-v"])
    assert discover.exit_code == 0, discover.output
    assert "coexist.logs: coexist discover" in discover.stderr
    assert "HTTP Request: GET https://" in discover.stderr and "Get-Mailbox" in discover.stderr
    quiet = CliRunner().invoke(main, ["discover", "--project", p])
    assert "HTTP Request" not in quiet.stderr  # without -v stderr stays for people
    with Journal.open(load_project(project).journal_url) as journal:
        first = str(journal.items(kind="user")[0]["source_address"])
    for args in (
        ["status", "--project", p, "--json"],
        ["permissions", "--json"],
        ["batch", "export", "--project", p],
        ["provision", "--project", p, "--plan", "--json", "--users", first],
    ):
        r = CliRunner().invoke(main, [*args, "--verbose"])
        assert r.exit_code == 0, (args, r.output)
        name = " ".join(itertools.takewhile(lambda a: not a.startswith("-"), args))
        assert f"coexist.logs: coexist {name}" in r.stderr, args
        if "--json" in args:
            json.loads(r.stdout)  # -v never mixes into stdout
