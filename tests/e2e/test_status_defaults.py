"""Defaults and status (issue 10, deliverable 7), through the CLI.

A Microsoft 365 project moves its data at full fidelity unless `none` is chosen; status is
read from the current settings and the journal every time (no stale mover text), its data
column counts every pass, its text lists the groups; rollback names the mail delivered to
the target since cutover, which stays there, and wants --yes for it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from coexist import settings
from coexist.journal import Journal
from coexist.sandbox import Sandbox, mailseed
from coexist.settings import load_project
from tests.e2e.test_idempotence import journal_snapshot, run_json, world_state
from tests.e2e.test_lifecycle import journal_items, probe_rows

USERS = 10
ITEMS = 12  # seeded messages per source mailbox, spread over the year before today


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich tables as wide as their content, so a row reads as one line."""
    monkeypatch.setenv("COLUMNS", "400")


def status_rows(cli: Callable[..., Result], project: Path) -> dict[str, dict[str, Any]]:
    rows = run_json(cli, "status", "--project", str(project))["users"]
    return {str(r["user"]): r for r in rows}


def status_line(text: str, first: str) -> str:
    """The table row whose first cell is `first` (a user, a group) in `coexist status` text."""
    cell = re.compile(rf"^│ {re.escape(first)}\s+│")
    [line] = [ln for ln in text.splitlines() if cell.match(ln)]
    return line


def seed_mail(sandbox: Sandbox, project: Path) -> dict[str, int]:
    """ITEMS messages in each discovered user's source mailbox; source address -> count."""
    items = journal_items(project).values()
    mailseed.seed_mailboxes(sandbox.mail, "source", [i["key"] for i in items], items=ITEMS)
    return {str(i["source_address"]): ITEMS for i in items}


def passes_of(project: Path) -> dict[str, list[dict[str, Any]]]:
    """Source address -> the journal's pass records, oldest first."""
    with Journal.open(load_project(project).journal_url) as journal:
        by_key = {i["key"]: str(i["source_address"]) for i in journal.items(kind="user")}
        out: dict[str, list[dict[str, Any]]] = {}
        for p in journal.passes():
            out.setdefault(by_key[p["item_key"]], []).append(p)
        return out


def test_default_mover_moves_data(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Callable[..., Result]
) -> None:
    """A project that says nothing about the mover copies the mail at prestage (full
    fidelity: the import/export API), and `coexist init` writes that default; `none` is
    there only when chosen, and then status says no mail is copied (and, a Microsoft 365
    source, no "mail only" scope)."""
    project = make_project(users=USERS)
    assert 'mover = "graph-import-export"' in (project / "project.toml").read_text()
    assert load_project(project).migration.mover == "graph-import-export"
    p = str(project)
    run_json(cli, "discover", "--project", p)
    seed_mail(sandbox, project)
    run_json(cli, "provision", "--project", p, "--all")
    result = run_json(cli, "prestage", "--project", p, "--all")
    assert not result["waiting"], result
    assert run_json(cli, "status", "--project", p)["data_scope"] is None  # m365 moves all
    for user, row in status_rows(cli, project).items():
        data = row["data_passes"]
        assert data["mover"] == "graph-import-export" and data["passes"] == 1, (user, data)
        assert data["items"] > 0 and data["last_kind"] == "prestage", (user, data)
    copied = sum(
        int((p["counts"] or {}).get("copied", 0)) for ps in passes_of(project).values() for p in ps
    )
    assert copied > 0

    mover = settings.BY_KEY["migration.mover"]
    assert mover.default == "graph-import-export" and "none" in (mover.choices or ())


def test_status_follows_the_current_mover(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Callable[..., Result]
) -> None:
    """With `none` chosen, prestage leaves users waiting on "no data mover configured"; once
    the mover is set, status (before anything runs) no longer says so but names the pass
    to run and how; `coexist retry` runs it and status shows what it copied."""
    project = make_project(users=USERS, **{"migration.mover": "none"})
    p = str(project)
    run_json(cli, "discover", "--project", p)
    seed_mail(sandbox, project)
    run_json(cli, "provision", "--project", p, "--all")
    run_json(cli, "prestage", "--project", p, "--all")
    for row in status_rows(cli, project).values():
        assert row["state"] == "waiting" and row["data"] == "no data mover configured", row
        assert row["waiting_for"] == "no data mover configured", row

    toml = project / "project.toml"
    toml.write_text(toml.read_text().replace('mover = "none"', 'mover = "graph-import-export"'))
    text = cli("status", "--project", p)
    assert text.exit_code == 0, text.output
    assert "no data mover configured" not in text.output, text.output
    for row in status_rows(cli, project).values():
        assert "no data mover" not in row["data"] + str(row["waiting_for"]), row
        assert row["waiting_for"].startswith("a data pass with graph-import-export"), row
        assert "coexist retry" in row["waiting_for"], row

    retried = run_json(cli, "retry", "--project", p)
    assert retried["retried"] == {"prestage": len(journal_items(project))}, retried
    for user, row in status_rows(cli, project).items():
        assert row["state"] == "ok" and row["phase"] == "prestaged", row
        assert re.fullmatch(r"1 pass, [\d,]+ items, [\d.]+ KB; last: prestage ok", row["data"])
        assert row["data"] in status_line(cli("status", "--project", p).output, user)


def test_data_column_shows_all_passes(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Callable[..., Result]
) -> None:
    """After prestage and cutover the data column sums both passes (items and bytes) and
    names how the last ended - not the last pass alone."""
    project = make_project(users=USERS)
    p = str(project)
    run_json(cli, "discover", "--project", p)
    seed_mail(sandbox, project)
    for command in ("provision", "prestage", "cutover"):
        run_json(cli, command, "--project", p, "--all")
    text = cli("status", "--project", p).output
    passes = passes_of(project)
    per_kind = {"prestage": 0, "cutover": 0}
    for user, row in status_rows(cli, project).items():
        counts = [p["counts"] or {} for p in passes[user]]
        items = sum(int(c.get("copied", 0)) for c in counts)
        size = sum(int(c.get("bytes", 0)) for c in counts)
        for record in passes[user]:
            per_kind[record["kind"]] += int((record["counts"] or {}).get("copied", 0))
        data = row["data_passes"]
        assert (data["passes"], data["items"], data["bytes"]) == (2, items, size), (user, data)
        assert row["data"] == f"2 passes, {items:,} items, {size / 1000:.1f} KB; last: cutover ok"
        assert row["data"] in status_line(text, user)
    assert per_kind["prestage"] and per_kind["cutover"], per_kind  # both passes counted


def test_text_status_lists_groups(
    make_project: Callable[..., Path], cli: Callable[..., Result]
) -> None:
    """`coexist status` text shows the copied groups (kind, target, state), waiting ones
    with what they wait for, as --json does; --state waiting narrows them too."""
    project = make_project(users=USERS)
    p = str(project)
    run_json(cli, "discover", "--project", p)
    run_json(cli, "groups", "--project", p)  # members not provisioned yet: some wait
    groups = run_json(cli, "status", "--project", p)["groups"]
    waiting = [g for g in groups if g["state"] == "waiting"]
    assert groups and waiting, groups
    text = cli("status", "--project", p)
    assert text.exit_code == 0 and "groups" in text.output, text.output
    for g in groups:
        line = status_line(text.output, g["group"])
        assert g["state"] in line and str(g["kind"]) in line, line
    for g in waiting:
        assert str(g["waiting_for"]) in status_line(text.output, g["group"])
    only = cli("status", "--project", p, "--state", "waiting").output
    for g in groups:
        assert (g["group"] in only) is (g["state"] == "waiting"), g


def test_rollback_reports_mail_delivered_since_cutover(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Callable[..., Result]
) -> None:
    """Mail delivered to a target mailbox since cutover stays there: rollback names the
    count per user and stops with rc 2 before any write unless --yes (a user with none rolls
    back without asking); --plan reports it and writes nothing; --yes rolls back and says
    what stays in the target."""
    project = make_project(users=USERS)
    p = str(project)
    run_json(cli, "discover", "--project", p)
    for command in ("provision", "prestage", "cutover"):
        run_json(cli, command, "--project", p, "--all")
    users = sorted(status_rows(cli, project))
    probed, quiet = users[:2], users[2]
    seen = {row[2] for row in probe_rows(sandbox)}
    flow = cli("verify-mailflow", "--project", p, "--users", ",".join(probed), "--wait", "10")
    assert flow.exit_code == 0, flow.output
    items = {str(i["source_address"]): i for i in journal_items(project).values()}
    landed = {u: 0 for u in probed}
    for tenant, _mailbox, subject in probe_rows(sandbox):
        if subject not in seen and tenant == "target":
            key = subject.split(" ")[-1]
            landed[next(u for u in probed if items[u]["key"] == key)] += 1
    assert all(landed.values()), landed

    journal, world = journal_snapshot(project), world_state(sandbox)
    refused = cli("rollback", "--project", p, "--users", ",".join(probed))
    assert refused.exit_code == 2, refused.output
    for user in probed:
        assert f"{user}: {landed[user]} message" in refused.output, refused.output
    assert "--yes" in refused.output
    as_json = json.loads(cli("rollback", "--project", p, "--users", probed[0], "--json").stdout)
    assert as_json["error"] == "InputError", as_json
    assert as_json["delivered_since_cutover"][0]["messages"] == landed[probed[0]], as_json
    assert journal_snapshot(project) == journal and world_state(sandbox) == world

    plan = run_json(cli, "rollback", "--project", p, "--users", ",".join(probed), "--plan")
    counts = {a["user"]: a["messages"] for a in plan["delivered_since_cutover"]}
    assert counts == landed and plan["writes"], plan
    assert journal_snapshot(project) == journal and world_state(sandbox) == world

    quiet_run = run_json(cli, "rollback", "--project", p, "--users", quiet)
    assert [a["messages"] for a in quiet_run["delivered_since_cutover"]] == [0], quiet_run
    done = cli("rollback", "--project", p, "--users", ",".join(probed), "--yes")
    assert done.exit_code == 0, done.output
    for user in probed:
        said = f"kept in the target: {user}: {landed[user]} messages delivered to the target"
        assert said in done.output, done.output
    phases = {u: r["phase"] for u, r in status_rows(cli, project).items()}
    assert all(phases[u] == "rolled-back" for u in [*probed, quiet]), phases
