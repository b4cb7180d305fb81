"""IMAP -> IMAP through the CLI against a real Dovecot: batch import of a MigrationWiz CSV
with passwords, `prestage --older-than 90d`, `cutover` (the full pass after the operator's
MX change), `status` (saying "mail only"); every message exactly once in its mapped folder with flags and
INTERNALDATE; re-runs copy nothing; a UIDVALIDITY reset copies nothing twice; plan mode
writes nothing; no password in any output, journal or log."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from coexist.engine.context import MAIL_ONLY
from coexist.settings import load_project
from tests.dovecot import MASTER_USER, DovecotServer
from tests.e2e.imap_scene import (
    FOLDERS,
    NEW,
    OLD,
    Fingerprint,
    Scene,
    run,
    run_json,
)


def older(prints: Counter[Fingerprint]) -> Counter[Fingerprint]:
    """The messages prestage --older-than 90d moves (INTERNALDATE before the cut)."""
    cut = (OLD + (NEW - OLD) / 2).isoformat()
    return Counter({k: n for k, n in prints.items() if k[4] < cut})


def test_imap_project_prestage_then_cutover_moves_every_message_once(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """Batch import -> prestage (plan, then real, then again) -> UIDVALIDITY resets (source
    and target), new mail and flag changes -> cutover (twice) -> status: every source message once in the target folder the
    rule maps it to, flags, keywords and INTERNALDATE kept; a missing \\Archive folder is
    made in the target; no pass copies a message twice; no password leaks."""
    scene = Scene(dovecot, tmp_path)
    p = str(scene.project)
    assert load_project(scene.project).migration.mover == "imap-sync"  # the kinds' default
    for u in scene.users:
        scene.seed(u)
    outputs = [run("batch", "import", "--project", p, str(scene.csv()), "--json")]
    assert outputs[0].exit_code == 0, outputs[0].output

    plan = run("prestage", "--project", p, "--all", "--older-than", "90d", "--plan", "-v")
    outputs.append(plan)
    assert plan.exit_code == 0, plan.output
    assert all(scene.count(u.target) == 0 for u in scene.users)  # the plan wrote nothing

    result = run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    assert not result["failed"] and not result["waiting"], result
    assert result["calls"]["source"] > 0 and result["writes"]["target"] > 0, result
    for u in scene.users:
        source = scene.fingerprints(u.source, mapped=True)
        assert scene.fingerprints(u.target) == older(source), u.address
    again = run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    assert not again["failed"] and scene.copied_by_last("prestage") == 0

    # Between the passes: a source folder and a target folder get a new UIDVALIDITY (a
    # restored server), new mail arrives, flags change.
    first = scene.users[0]
    scene.dovecot.set_uidvalidity(first.source, "INBOX", 4242)
    scene.dovecot.set_uidvalidity(first.target, "Archive", 4343)
    scene.add(first, "INBOX.Projects", 900)
    scene.reflag(first, "INBOX.L1.L2.L3.L4")

    cut = run("cutover", "--project", p, "--all", "--json", "-v")
    outputs.append(cut)
    assert cut.exit_code == 0, cut.output
    for u in scene.users:
        source = scene.fingerprints(u.source, mapped=True)
        assert scene.fingerprints(u.target) == source, u.address
        assert max(source.values()) == 1
    expected = sum(n for u in scene.users for n in scene.fingerprints(u.source).values())
    prestaged = sum(old for old, _ in FOLDERS.values()) * len(scene.users)
    assert scene.copied_by_last("cutover") == expected - prestaged

    outputs.append(run("cutover", "--project", p, "--all", "--json"))
    assert outputs[-1].exit_code == 0, outputs[-1].output
    assert scene.copied_by_last("cutover") == 0
    status = run_json("status", "--project", p)
    assert {(r["phase"], r["state"]) for r in status["users"]} == {("cutover", "ok")}, status
    assert status["data_scope"] == MAIL_ONLY, status  # what an IMAP source's passes leave
    outputs.append(run("status", "--project", p))
    assert f"data: {MAIL_ONLY}" in " ".join(outputs[-1].output.split()), outputs[-1].output

    assert_no_password(scene, [o.output for o in outputs])


def test_a_master_user_opens_every_mailbox(dovecot: DovecotServer, tmp_path: Path) -> None:
    """With [source.imap]/[target.imap] master_user and the master's password given with
    `credentials set --master` (again: unchanged), users listed without passwords
    (MigrationWiz: admin credentials) are moved: each mailbox is opened as `user*master`
    (Dovecot master users). `credentials list` says a master password is there, never
    what; `purge --master --side target` removes that side's only."""
    scene = Scene(dovecot, tmp_path, users=1)
    scene.write_project(master=MASTER_USER)
    p = str(scene.project)
    [user] = scene.users
    scene.seed(user)
    imported = run_json("batch", "import", "--project", p, str(scene.csv(blank=True)))
    assert not imported["waiting_for_credentials"], imported
    secret = dovecot.master_password + "\n"
    said = []
    for side in ("source", "target", "target"):
        args = ("credentials", "set", "--project", p, "--master", "--side", side)
        said.append(run(*args, "--password-stdin", "--json", stdin=secret))
    assert [json.loads(r.output)["changed"] for r in said] == [True, True, False]
    listed = run_json("credentials", "list", "--project", p)
    assert listed["master"]["source"]["login"] == MASTER_USER and not listed["users"], listed
    result = run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    assert not result["failed"], result
    assert scene.fingerprints(user.target) == older(scene.fingerprints(user.source, mapped=True))

    purge = ("credentials", "purge", "--project", p, "--master", "--side", "target")
    assert run_json(*purge)["master"] == ["target"]
    assert run_json(*purge)["master"] == []  # again: nothing left to remove
    after = run_json("credentials", "list", "--project", p)["master"]
    assert after["source"] and after["target"] is None
    human = run("credentials", "list", "--project", p).output
    assert f"source master user password: {MASTER_USER}" in " ".join(human.split())
    outputs = [r.output for r in said] + [json.dumps(listed), human]
    assert all(dovecot.master_password not in o for o in outputs)


def test_xoauth2_signs_a_source_in_with_its_token(dovecot: DovecotServer, tmp_path: Path) -> None:
    """[source.imap] auth = "xoauth2": the vault's secret for the user is its OAuth 2.0
    access token, sent with AUTHENTICATE XOAUTH2 (Dovecot validates it as Gmail or
    Microsoft 365 would); the token shows in no output or file but the vault."""
    scene = Scene(dovecot, tmp_path, users=1)
    scene.write_project(source_auth="xoauth2")
    p = str(scene.project)
    [user] = scene.users
    scene.seed(user)
    token = dovecot.oauth_token(user.source)
    run_json("batch", "import", "--project", p, str(scene.csv({user.address: token})))
    out = run("prestage", "--project", p, "--all", "--older-than", "90d", "--json", "-v")
    result = json.loads(out.output.strip().splitlines()[-1])
    assert out.exit_code == 0 and not result["failed"], out.output
    assert scene.fingerprints(user.target) == older(scene.fingerprints(user.source, mapped=True))
    assert token not in out.output
    assert all(token.encode() not in f.read_bytes() for f in scene.project.rglob("*.log"))


def assert_no_password(scene: Scene, outputs: list[str]) -> None:
    """No password in the outputs, nor in any project file but (encrypted) the vault."""
    seen = "\n".join(outputs)
    files = [f for f in scene.project.rglob("*") if f.is_file()]
    assert any(f.parent.name == "logs" for f in files)
    for password in scene.passwords():
        assert password not in seen
        for f in files:
            assert password.encode() not in f.read_bytes(), f
