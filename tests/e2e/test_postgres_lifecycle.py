"""The real commands with the project journal on PostgreSQL (the other backend is SQLite,
which every other e2e test uses). Under CI=true a missing PostgreSQL fails, never skips
(`pg_url` fixture, tests/pg.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from coexist.errors import ConfigError
from coexist.journal import Journal
from coexist.settings import load_project
from tests import pg

COMMANDS = ("provision", "prestage", "cutover")


def run_json(cli: Callable[..., Result], *args: str) -> dict[str, Any]:
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.output)
    data: dict[str, Any] = json.loads(result.output)
    return data


@pytest.fixture
def pg_journal(pg_url: str) -> str:
    """The session PostgreSQL database, emptied for this test."""
    pg.reset_database(pg_url)
    return pg_url


def test_lifecycle_records_every_step_in_a_postgresql_journal(
    make_project: Callable[..., Path], cli: Callable[..., Result], pg_journal: str
) -> None:
    """discover → provision → prestage → cutover for 3 users journal to PostgreSQL; re-runs change nothing."""
    project = make_project(**{"project.journal": pg_journal})
    p = str(project)
    assert load_project(project).journal_url == pg_journal
    run_json(cli, "discover", "--project", p)
    users = sorted(u["user"] for u in run_json(cli, "status", "--project", p)["users"])[:3]
    chosen = ",".join(users)
    for command in COMMANDS:
        first = run_json(cli, command, "--project", p, "--users", chosen)
        assert not first["failed"] and first["changed"] > 0, (command, first)
    flow = run_json(cli, "verify-mailflow", "--project", p, "--users", chosen, "--wait", "5")
    assert flow["ok"], [x for x in flow["probes"] if not x["ok"]]
    for command in COMMANDS:
        again = run_json(cli, command, "--project", p, "--users", chosen)
        assert not again["failed"] and again["changed"] == 0, json.dumps(again)

    assert not (project / "journal.db").exists(), "the SQLite default must not be used"
    with Journal.open(pg_journal) as journal:
        items = {i["source_address"]: i for i in journal.items(kind="user")}
        assert {(items[u]["phase"], items[u]["state"]) for u in users} == {("cutover", "ok")}
        others = {(i["phase"], i["state"]) for a, i in items.items() if a not in users}
        assert others == {("discovered", "ok")}
        mine = {i["key"] for a, i in items.items() if a in users}
        steps = [s for s in journal.steps() if s["item_key"] in mine]
        assert steps and {s["status"] for s in steps} <= {"ok", "waiting"}
        names = {s["name"] for s in steps}
        assert {"provision.mailuser", "prestage.license", "cutover.target-live"} <= names
        waiting = {s["name"] for s in steps if s["status"] == "waiting"}
        assert waiting <= {"migrate.pass"}, waiting  # "no data mover configured", visible


def test_journal_password_only_from_the_environment(
    make_project: Callable[..., Path],
    cli: Callable[..., Result],
    pg_journal: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A journal URL with a password is refused in project.toml and works from COEXIST_JOURNAL_URL."""
    # The session server trusts local connections, so any password is accepted by it.
    with_password = pg_journal.replace("postgres@", "postgres:not-a-real-secret@", 1)
    project = make_project(**{"project.journal": with_password})
    with pytest.raises(ConfigError) as refused:
        load_project(project, env={})
    assert refused.value.to_dict()["key"] == "project.journal"

    (project / "project.toml").unlink()
    project = make_project()  # no journal in the file
    monkeypatch.setenv("COEXIST_JOURNAL_URL", with_password)
    assert load_project(project).journal_url == with_password
    discovered = run_json(cli, "discover", "--project", str(project))
    assert discovered["added"]
    assert not (project / "journal.db").exists()
    with Journal.open(pg_journal) as journal:
        assert len(journal.items(kind="user")) == len(discovered["added"])
