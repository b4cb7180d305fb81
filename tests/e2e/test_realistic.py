"""Microsoft 365's minutes (`realistic` profile, time-scaled) through the CLI.

Users wait for Exchange-created objects to reach Graph, for Graph to accept changes to
them, for their mailboxes to be provisioned and then served by Graph. No command sleeps
through that: each leaves the users `waiting` with the reason and the time it looks
again, and `coexist retry` continues them. Nothing here asserts a duration: the tests
read states and the look-again times the journal recorded.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import Result
from rich.console import Console

from coexist.cli import status_table
from coexist.engine.runner import epoch, iso
from coexist.journal import Journal
from coexist.sandbox import Sandbox, mailseed, seed
from coexist.sandbox.server import profile_settings
from coexist.settings import load_project
from tests.e2e.conftest import prepare_for_coexistence, write_project

Cli = Callable[..., Result]
SCALE = 100.0  # minutes become tenths of minutes: provisioning 3-18 s, replication 0.6-6 s
USERS = 10  # 4 user mailboxes in scope
RETRY_BOUND_S = 240.0  # generous: the waits themselves are under a minute at this scale


def run_json(cli: Cli, *args: str) -> dict[str, Any]:
    """A command with --json: nothing failed, one JSON object printed."""
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.output[-3000:])
    data: dict[str, Any] = json.loads(result.stdout)
    assert not data.get("failed"), (args, data["failed"])
    return data


def waiting_users(cli: Cli, project: Path) -> list[dict[str, Any]]:
    rows = run_json(cli, "status", "--project", str(project))["users"]
    return [r for r in rows if r["state"] == "waiting"]


def realistic_project(sandbox: Sandbox, tmp_path: Path) -> Path:
    """A project on the sandbox re-seeded under `realistic` at SCALE; commands never wait."""
    settings = profile_settings("realistic", 7, time_scale=SCALE)
    # Every new mailbox also waits for Graph to serve it (MailboxNotEnabledForRESTAPI) for
    # 3-6 s, so each data pass meets it (the profile's range starts at 0).
    settings.rest_delay_s = 300.0
    sandbox.reset(seed.generate(7, USERS, settings))
    service = prepare_for_coexistence(sandbox)
    sandbox.write_connection()
    return write_project(
        tmp_path / "project",
        sandbox,
        service,
        **{
            "migration.mover": "graph-import-export",
            "engine.look_again_s": round(300 / SCALE),
            "engine.wait_in_command_s": 0,
        },
    )


def journal_of(project: Path) -> Journal:
    return Journal.open(load_project(project).journal_url)


def pass_waited(project: Path, key: str) -> bool:
    """Whether a data pass of this user has waited for Graph to serve its mailbox."""
    with journal_of(project) as j:
        return "waiting" in [pa["status"] for pa in j.passes(key)]


def retry_until(cli: Cli, project: Path, done: Callable[[], bool]) -> None:
    """`coexist retry` at each earliest look-again time until `done()` holds."""
    deadline = time.monotonic() + RETRY_BOUND_S
    while not done():
        waiting = waiting_users(cli, project)
        assert waiting and time.monotonic() < deadline, waiting
        soonest = min(epoch(w["look_again_at"]) or 0.0 for w in waiting)
        time.sleep(min(10.0, max(0.0, soonest - time.time())))
        run_json(cli, "retry", "--project", str(project))


def retry_until_nothing_waits(cli: Cli, project: Path) -> list[dict[str, Any]]:
    """What an operator does: `coexist retry` once the earliest look-again time has come."""
    deadline = time.monotonic() + RETRY_BOUND_S
    results = []
    while waiting := waiting_users(cli, project):
        assert all(w["look_again_at"] for w in waiting), waiting  # all wait on Microsoft 365
        assert time.monotonic() < deadline, waiting
        soonest = min(epoch(w["look_again_at"]) or 0.0 for w in waiting)
        time.sleep(min(10.0, max(0.0, soonest - time.time())))
        results.append(run_json(cli, "retry", "--project", str(project)))
    return results


def test_prestage_leaves_users_waiting_and_retry_continues_them(
    sandbox: Sandbox, tmp_path: Path, cli: Cli
) -> None:
    """prestage ends with users waiting (reason, look-again time, named by address); retry
    before their time does not touch them; retries continue every user to prestaged."""
    project = realistic_project(sandbox, tmp_path)
    p = str(project)
    run_json(cli, "discover", "--project", p)
    with journal_of(project) as j:
        keys = [str(u["key"]) for u in j.items(kind="user")]
    mailseed.seed_mailboxes(sandbox.mail, "source", keys, seed=7, items=5)
    run_json(cli, "provision", "--project", p, "--all")

    prestaged = run_json(cli, "prestage", "--project", p, "--all")
    assert prestaged["waiting"], prestaged
    for w in prestaged["waiting"]:
        assert "@" in w["user"] and w["detail"] and w["look_again_at"], w
        assert w["item"] not in w["detail"]  # the reason names no object id
    rows = waiting_users(cli, project)
    assert {r["user"] for r in rows} == {w["user"] for w in prestaged["waiting"]}
    for r in rows:
        assert r["waiting_for"] and epoch(r["waiting_since"]) and epoch(r["look_again_at"]), r
    assert cli("status", "--project", p).exit_code == 0
    table = Console(width=300, record=True, file=io.StringIO())
    table.print(status_table(run_json(cli, "status", "--project", p)))
    shown = table.export_text()
    for r in rows:  # the text table names the user and says when coexist looks again
        line = next(ln for ln in shown.splitlines() if r["user"] in ln)
        assert r["waiting_for"] in line and "looking again at" in line, line

    # Not hammered: a user whose look-again time is an hour away is reported, not looked at.
    held = rows[0]
    later = iso(time.time() + 3600)
    with journal_of(project) as j:
        item = next(i for i in j.items(kind="user") if i["source_address"] == held["user"])
        step = str(item["detail"]["last_step"])
        attempts = (j.get_step(f"{step}:{item['key']}") or {}).get("attempts")
        j.merge_item("user", item["key"], {"look_again_at": later})
    early = run_json(cli, "retry", "--project", p)["results"]["prestage"]
    [report] = [w for w in early["waiting"] if w["user"] == held["user"]]
    assert report["look_again_at"] == later
    with journal_of(project) as j:
        assert (j.get_step(f"{step}:{item['key']}") or {}).get("attempts") == attempts
        j.merge_item("user", item["key"], {"look_again_at": iso(time.time())})

    # Graph does not serve the new mailboxes until the test says so, so every data pass meets
    # 404 MailboxNotEnabledForRESTAPI however slowly this machine runs the commands.
    with sandbox.world.lock:
        for u in sandbox.world.target.users.values():
            u.rest_ready_at = float("inf")
    sandbox.world.settings.rest_delay_s = 10.0**9
    retry_until(cli, project, lambda: all(pass_waited(project, k) for k in keys))
    with sandbox.world.lock:
        for u in sandbox.world.target.users.values():
            u.rest_ready_at = 0.0

    retries = retry_until_nothing_waits(cli, project)
    assert retries
    rows = run_json(cli, "status", "--project", p)["users"]
    assert {(r["phase"], r["state"]) for r in rows} == {("prestaged", "ok")}, rows
    assert all(r["look_again_at"] is None and r["waiting_for"] is None for r in rows)
    with journal_of(project) as j:
        for key in keys:
            # Every mailbox was looked at while Exchange provisioned it, and every data
            # pass first met 404 MailboxNotEnabledForRESTAPI and waited.
            statuses = [h["status"] for h in j.history(f"prestage.mailbox:{key}")]
            assert "waiting" in statuses, (key, statuses)
            passes = [pa["status"] for pa in j.passes(key)]
            assert "waiting" in passes and passes[-1] == "ok", (key, passes)

    cut = run_json(cli, "cutover", "--project", p, "--all")
    assert not cut["waiting"], cut["waiting"]
    rows = run_json(cli, "status", "--project", p)["users"]
    assert {(r["phase"], r["state"]) for r in rows} == {("cutover", "ok")}, rows


def test_graph_refusing_usage_location_fails_clearly(
    sandbox: Sandbox, tmp_path: Path, cli: Cli
) -> None:
    """If Graph never lets coexist set usageLocation on an Exchange-created user ("originated
    within an external service"), prestage fails that user with what to do, not a loop."""
    project = realistic_project(sandbox, tmp_path)
    sandbox.world.settings.graph_patch_refusal = "external"
    p = str(project)
    run_json(cli, "discover", "--project", p)
    run_json(cli, "provision", "--project", p, "--all")
    with sandbox.world.lock:
        for u in sandbox.world.target.users.values():
            u.visible_at = 0.0  # replication done: Graph answers the PATCH itself
    result = cli("prestage", "--project", p, "--all", "--json")
    assert result.exit_code == 0, result.output[-3000:]
    failed = json.loads(result.stdout)["failed"]
    assert failed and all(f["step"] == "prestage.license" for f in failed), failed
    for f in failed:
        assert "@" in f["user"] and f["error"].startswith(f["user"]), f
        assert "originated within an external service" in f["error"]
        assert "usage location" in f["next"] and "coexist retry" in f["next"]
    rows = run_json(cli, "status", "--project", p)["users"]
    assert {r["state"] for r in rows} == {"failed"}
