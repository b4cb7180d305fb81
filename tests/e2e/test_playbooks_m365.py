"""The Microsoft 365 playbooks (`playbooks/m365-*.yaml`) run end to end against the sandbox,
resume after a SIGKILL at the interrupted step, plan without writing, and a broken playbook
is refused before anything runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from coexist import commands, playbook
from coexist.journal import Journal
from coexist.sandbox import Sandbox, mailseed
from coexist.settings import load_project
from tests.cli_env import assert_no_unawaited_coroutine, cli_env
from tests.e2e.test_idempotence import journal_snapshot, world_bytes

REPO = Path(__file__).resolve().parents[2]
BATCH = "wave1"
MOVER = {"migration.mover": "graph-import-export"}


def wave(
    make_project: Callable[..., Path], sandbox: Sandbox, *, items: int = 3, **settings: Any
) -> Path:
    """A discovered project (`settings` over the mover's) with a batch of 2 users whose
    source mailboxes hold `items` messages each."""
    project = make_project(users=6, **{**MOVER, **settings})
    commands.discover(project)
    with Journal.open(load_project(project).journal_url) as j:
        chosen = sorted(j.items(kind="user"), key=lambda u: str(u["source_address"]))[:2]
    users = [str(u["source_address"]) for u in chosen]
    # The store is keyed by user object id (the journal's item key).
    mailseed.seed_mailboxes(
        sandbox.mail, "source", [str(u["key"]) for u in chosen], seed=3, items=items
    )
    csv = project / "wave1.csv"
    csv.write_text("Source Email\n" + "\n".join(users) + "\n")
    commands.batch_import(project, csv, name=BATCH)
    return project


def wave_users(project: Path) -> list[dict[str, Any]]:
    """The users of `wave`'s batch, by source address."""
    with Journal.open(load_project(project).journal_url) as j:
        return sorted(j.items(kind="user", batch=BATCH), key=lambda u: str(u["source_address"]))


def checklist_then_prestage(directory: Path, name: str) -> Path:
    """Playbook `name` written to `directory`: a checklist (where an in-process test holds
    the run, its batch held), then a prestage step."""
    book = directory / f"{name}.yaml"
    book.write_text(
        f"name: {name}\nsteps:\n"
        '  - id: go\n    kind: manual\n    checklist: ["ready"]\n'
        "  - id: prestage\n    kind: command\n    command: prestage\n"
    )
    return book


def held(sandbox: Sandbox, project: Path) -> dict[str, tuple[int, int]]:
    """Per batch user: (messages in its source mailbox, how many of them its target mailbox
    holds exactly once)."""
    out = {}
    with Journal.open(load_project(project).journal_url) as j:
        users = j.items(kind="user", batch=BATCH)
    for u in users:
        target = sandbox.world.target.address_owner(str(u["target_address"]))
        assert target is not None, u
        seeded = {
            m.internet_message_id for m in sandbox.mail.iter_messages("source", str(u["key"]))
        }
        copies = Counter(
            m.internet_message_id for m in sandbox.mail.iter_messages("target", target.id)
        )
        out[str(u["source_address"])] = (len(seeded), sum(1 for m in seeded if copies[m] == 1))
    return out


def steps_of(project: Path, name: str, batch: str = BATCH) -> dict[str, dict[str, Any]]:
    """The playbook's step records by step id."""
    prefix = f"playbook:{name}:{batch}:"
    with Journal.open(load_project(project).journal_url) as j:
        return {
            str(s["key"])[len(prefix) :]: s for s in j.steps() if str(s["key"]).startswith(prefix)
        }


def command_runs(project: Path) -> list[str]:
    with Journal.open(load_project(project).journal_url) as j:
        return [str(r["command"]) for r in j.runs()]


def test_prestage_wave_then_cutover_night_end_to_end(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Both Microsoft 365 playbooks run with --yes: every step ok and journaled, the batch
    cut over and reconciled, notices rendered per user; a second run repeats nothing."""
    project = wave(make_project, sandbox)
    first = playbook.run_playbook(project, "m365-prestage-wave", batch=BATCH, yes=True)
    assert first["ok"], first
    assert {s["status"] for s in first["steps"]} == {"ok"}, first["steps"]
    announce = next(s for s in first["steps"] if s["id"] == "announce")
    assert len(announce["notices"]) == 2 and "batch wave1" in announce["notices"][0]["body"]
    night = playbook.run_playbook(project, "m365-cutover-night", batch=BATCH, yes=True)
    assert night["ok"], night
    users = commands.status(project, batch=BATCH)["users"]
    assert {(u["phase"], u["state"]) for u in users} == {("cutover", "ok")}
    assert all(src == tgt == 3 for src, tgt in held(sandbox, project).values())
    assert all(s["status"] == "ok" for s in steps_of(project, "m365-cutover-night").values())
    runs = command_runs(project)
    again = playbook.run_playbook(project, "m365-cutover-night", batch=BATCH, yes=True)
    assert again["ok"] and {s["status"] for s in again["steps"]} == {"skipped"}
    assert command_runs(project) == [*runs, "playbook"], "a finished playbook ran a command again"


def test_manual_step_without_yes_waits_and_the_rerun_continues(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """Without --yes (and nobody to ask) the go/no-go checklist stops the run as waiting,
    before any write; the run with --yes starts at that checklist."""
    project = wave(make_project, sandbox, items=1)
    playbook.run_playbook(project, "m365-prestage-wave", batch=BATCH, yes=True)
    world = world_bytes(sandbox)
    stopped = playbook.run_playbook(project, "m365-cutover-night", batch=BATCH)
    assert not stopped["ok"] and stopped["stopped_at"] == "go-no-go"
    assert "resumes at go-no-go" in stopped["next"]
    assert world_bytes(sandbox) == world
    done = playbook.run_playbook(project, "m365-cutover-night", batch=BATCH, yes=True)
    assert done["ok"] and done["steps"][0]["id"] == "go-no-go"


def test_plan_sends_no_write(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Callable[..., Result]
) -> None:
    """`playbook run --plan` lists each step with the writes its commands would make (the
    CLI prints them), and leaves tenants and journal exactly as they were."""
    project = wave(make_project, sandbox)
    world, journal = world_bytes(sandbox), journal_snapshot(project, include_logs=True)
    mail = sandbox.mail.to_dict() if hasattr(sandbox.mail, "to_dict") else None
    args = ("playbook", "run", "m365-prestage-wave", "--batch", BATCH, "--plan")
    text = cli(*args, "--project", str(project))
    assert text.exit_code == 0, text.output
    assert "provision: [target] New-MailUser" in " ".join(text.stdout.split())
    result = playbook.run_playbook(project, "m365-prestage-wave", batch=BATCH, plan=True)
    assert world_bytes(sandbox) == world, "--plan wrote to the tenants"
    assert journal_snapshot(project, include_logs=True) == journal, "--plan journaled"
    if mail is not None:
        assert sandbox.mail.to_dict() == mail
    by_id = {s["id"]: s for s in result["steps"]}
    assert {s["status"] for s in result["steps"]} == {"planned"}
    assert by_id["provision"]["writes"], by_id["provision"]
    assert any("New-MailUser" in w for w in by_id["provision"]["writes"])
    assert set(by_id) == set(playbook.load(playbook.find("m365-prestage-wave")).step_ids())


def _step_status(j: Journal, key: str) -> str | None:
    row = j.get_step(key)
    return None if row is None else str(row["status"])


def kill_mid_step(project: Path, name: str, batch: str, step: str) -> None:
    """Run `playbook run NAME --yes` as a child process; SIGKILL it while `step` runs
    (its journal record `started`, and for a data pass, the pass begun)."""
    key = f"playbook:{name}:{batch}:{step}"
    log = project / "playbook.log"
    cmd = [sys.executable, "-m", "coexist.cli", "playbook", "run", name]
    cmd += ["--batch", batch, "--yes", "--json", "--project", str(project)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=out, env=cli_env())
    killed = False
    with Journal.open(load_project(project).journal_url) as j:
        passes = len(j.passes())
        while proc.poll() is None:
            if _step_status(j, key) == "started" and len(j.passes()) > passes:
                os.kill(proc.pid, signal.SIGKILL)
                killed = True
                break
            time.sleep(0.002)
    proc.wait(timeout=60)
    assert killed, "the run ended before the kill: " + log.read_text()[-2000:]
    assert_no_unawaited_coroutine(log.read_text())


def resume_after_kill(project: Path, name: str, batch: str, step: str) -> dict[str, object]:
    """Kill `name` mid-`step`, run it again in-process: the steps before `step` are not run
    again (none of their commands runs), `step` is continued (its second attempt) and the
    playbook ends ok. Returns the re-run's result."""
    kill_mid_step(project, name, batch, step)
    pb = playbook.load(playbook.find(name))
    ids = pb.step_ids()
    before = steps_of(project, name, batch)
    assert before[step]["status"] == "started"
    assert all(before[i]["status"] == "ok" for i in ids[: ids.index(step)])
    runs = command_runs(project)
    result = playbook.run_playbook(project, name, batch=batch, yes=True)
    assert result["ok"], result
    status = {str(s["id"]): s["status"] for s in result["steps"]}
    assert all(status[i] == "skipped" for i in ids[: ids.index(step)]), status
    assert status[step] == "ok"
    after = steps_of(project, name, batch)
    assert after[step]["attempts"] == 2
    assert all(after[i]["attempts"] == 1 for i in ids[: ids.index(step)])
    # The commands of the steps done before the kill are not run again.
    done = {str(s.spec["command"]) for s in pb.steps[: ids.index(step)] if s.kind == "command"}
    interrupted = str(pb.steps[ids.index(step)].spec.get("command"))
    new = command_runs(project)[len(runs) :]
    assert not (done - {interrupted}) & set(new), new
    assert interrupted in new
    return result


@pytest.mark.parametrize(
    ("name", "step"), [("m365-prestage-wave", "prestage"), ("m365-cutover-night", "cutover")]
)
def test_sigkill_mid_playbook_resumes_at_the_interrupted_step(
    make_project: Callable[..., Path], sandbox: Sandbox, name: str, step: str
) -> None:
    """The CLI killed (SIGKILL) while a data pass of the playbook runs; the re-run skips the
    steps done (their commands not run again), continues the interrupted one, and its
    reconciled check passes: every message in the target once."""
    project = wave(make_project, sandbox, items=40)
    if name == "m365-cutover-night":
        # The seeded mail spans months: the cutover's pass has the recent part to move.
        playbook.run_playbook(project, "m365-prestage-wave", batch=BATCH, yes=True)
    result = resume_after_kill(project, name, BATCH, step)
    assert {str(s["id"]): s["status"] for s in result["steps"]}["reconciled"] == "ok"
    if name == "m365-cutover-night":
        assert all(src == tgt == 40 for src, tgt in held(sandbox, project).values())


BAD = {
    "unknown kind": ("steps:\n  - id: a\n    kind: teleport\n", 3, "steps[a].kind"),
    "unknown command": (
        "steps:\n  - id: a\n    kind: command\n    command: explode\n",
        4,
        "steps[a].command",
    ),
    "unknown argument": (
        "steps:\n  - id: a\n    kind: command\n    command: prestage\n    args:\n"
        "      older_than: 90d\n      colour: red\n",
        7,
        "steps[a].args.colour",
    ),
    "bad template": (
        "steps:\n  - id: a\n    kind: notify\n    to: operator\n    template: '{{ batch.name'\n",
        5,
        "steps[a].template",
    ),
    "unknown variable": (
        "steps:\n  - id: a\n    kind: manual\n    checklist:\n      - '{{ customer }}'\n",
        4,
        "steps[a].checklist[0]",
    ),
    "missing key": ("steps:\n  - id: a\n    kind: check\n", 2, "steps[a].check"),
    "unknown check": (
        "steps:\n  - id: a\n    kind: check\n    check: vibes\n",
        4,
        "steps[a].check",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_playbook_is_refused_naming_file_line_and_key(tmp_path: Path, case: str) -> None:
    """A playbook with an error is refused by `load`, the message naming file, line, key."""
    text, line, key = BAD[case]
    file = tmp_path / "bad.yaml"
    file.write_text(text)
    with pytest.raises(playbook.PlaybookError) as caught:
        playbook.load(file)
    assert (caught.value.file, caught.value.line, caught.value.key) == (file, line, key)
    assert f"{file}:{line}: {key}:" in str(caught.value)


def test_missing_variable_key_is_refused_before_the_first_step(
    make_project: Callable[..., Path], sandbox: Sandbox
) -> None:
    """A template naming a key the run lacks (`vars.nope`) stops `playbook run` before any
    step: nothing journaled, nothing written; the message names file, line and key."""
    project = wave(make_project, sandbox, items=0)
    file = project / "mine.yaml"
    file.write_text(
        "steps:\n  - id: provision\n    kind: command\n    command: provision\n"
        "  - id: note\n    kind: notify\n    to: operator\n    template: '{{ vars.nope }}'\n"
    )
    world, journal = world_bytes(sandbox), journal_snapshot(project, include_logs=True)
    with pytest.raises(playbook.PlaybookError) as caught:
        playbook.run_playbook(project, str(file), batch=BATCH, yes=True)
    assert caught.value.line == 8 and caught.value.key == "steps[note].template"
    assert "nope" in str(caught.value)
    assert world_bytes(sandbox) == world
    assert journal_snapshot(project, include_logs=True) == journal


def test_every_shipped_playbook_loads() -> None:
    """Every file under playbooks/ loads and is listed."""
    names = set(playbook.available())
    assert {"m365-prestage-wave", "m365-cutover-night"} <= names
    for file in playbook.available().values():
        assert playbook.load(file).steps


WAITS = """\
steps:
  - id: past
    kind: wait
    until: "2000-01-01T00:00:00Z"
  - id: holds
    kind: wait
    check: no-failed-users
    interval_s: 0.01
  - id: never
    kind: wait
    check: reconciled
    interval_s: 0.01
    timeout_s: 0.05
  - id: after
    kind: notify
    to: operator
    template: "{{ batch.name }} reconciled"
"""


def test_waits_resume_and_the_cli_runs_shows_and_refuses(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Callable[..., Result]
) -> None:
    """A wait until a past time and a wait on a check that holds end ok; a wait on a check
    that never holds stops the run as waiting (rc 1, the resume command given) and the next
    run looks again at that step (its first start kept); `--from` starts at a step; `show`
    lists the steps; `list` the five shipped playbooks; a broken file is refused (rc 2)."""
    project = wave(make_project, sandbox, items=0)
    file = project / "waits.yaml"
    file.write_text(WAITS)
    args = ["playbook", "run", str(file), "--batch", BATCH, "--project", str(project)]
    first = cli(*args, "--json")
    assert first.exit_code == 1, first.output
    result = json.loads(first.stdout)
    assert [s["status"] for s in result["steps"]] == ["ok", "ok", "waiting"]
    assert result["stopped_at"] == "never" and "resumes at never" in result["next"]
    again = json.loads(cli(*args, "--json").stdout)
    assert [s["status"] for s in again["steps"]] == ["skipped", "skipped", "waiting"]
    records = steps_of(project, "waits")
    assert records["never"]["attempts"] == 2 and records["past"]["attempts"] == 1
    with Journal.open(load_project(project).journal_url) as j:
        started = [
            h["intent"]["first_started_at"]
            for h in j.history(
                next(str(s["key"]) for s in j.steps() if str(s["key"]).endswith(":never"))
            )
            if h["status"] == "started"
        ]
    assert len(set(started)) == 1, started  # the timeout counts from the first start
    skipped = json.loads(cli(*args, "--from", "after", "--json").stdout)
    assert [s["id"] for s in skipped["steps"]] == ["after"] and skipped["ok"]
    shown = cli("playbook", "show", "m365-cutover-night")
    assert shown.exit_code == 0 and "rollback-point" in shown.output
    listed = json.loads(cli("playbook", "list", "--json").stdout)
    assert {r["name"] for r in listed} == {
        "m365-prestage-wave",
        "m365-cutover-night",
        "imap-mx-cutover",
        "hosted-exchange-cutover",
        "workmail-domain-transfer",
    }
    file.write_text(WAITS.replace("kind: notify", "kind: telegram"))
    refused = cli(*args, "--yes")
    assert refused.exit_code == 2
    # rich wraps long lines, even inside a path: compare without whitespace.
    assert f"{file}:15:steps[after].kind:unknownstepkind" in "".join(refused.output.split())
