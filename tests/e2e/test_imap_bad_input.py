"""Bad input on an IMAP -> IMAP project, through the CLI against a real Dovecot: a wrong
password (that user fails, named with the commands to run next, the others move; fixed
with `credentials set` and `retry`), an unreachable server, a certificate that does not
name the host, a folder the target refuses: each a clear message, nothing lost, no
password in any output or file."""

from __future__ import annotations

import json
import re
import socket
import tomllib
from pathlib import Path

from click.testing import CliRunner

from coexist.cli import main
from coexist.journal import Journal
from coexist.settings import load_project
from coexist.vault import ENV_KEY
from tests.dovecot import DovecotServer
from tests.e2e.imap_scene import KEY, Scene, run, run_json
from tests.e2e.test_imap_to_imap import assert_no_password, older

WRONG = "wrong-password-4711"


def test_a_wrong_password_fails_that_user_only_until_it_is_set(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """One user's source password is wrong: prestage moves the other user, fails this one
    with its address and `coexist credentials set ... --side source` then `coexist retry`;
    after `credentials set`, `retry` moves it too, exactly once."""
    scene = Scene(dovecot, tmp_path)
    p = str(scene.project)
    bad, good = scene.users
    for u in scene.users:
        scene.seed(u)
    run_json("batch", "import", "--project", p, str(scene.csv({bad.address: WRONG})))

    first = run("prestage", "--project", p, "--all", "--older-than", "90d", "--json")
    result = json.loads(first.output)
    [failed] = result["failed"]
    assert failed["user"] == bad.address and bad.address in failed["error"], failed
    assert "refused the login" in failed["error"], failed
    assert (
        f"coexist credentials set --project {p} --user {bad.address} --side source"
        in (failed["next"])
    )
    assert "coexist retry" in failed["next"]
    assert scene.count(good.target) > 0 and scene.count(bad.target) == 0

    fixed = CliRunner().invoke(
        main,
        ["credentials", "set", "--project", p, "--user", bad.address, "--password-stdin"],
        input=bad.source.password + "\n",
        env={ENV_KEY: KEY},
        catch_exceptions=False,
    )
    assert fixed.exit_code == 0, fixed.output
    retried = run("retry", "--project", p, "--json")
    assert retried.exit_code == 0, retried.output
    assert scene.count(bad.target) == scene.count(good.target) > 0
    assert_no_password(scene, [first.output, fixed.output, retried.output, WRONG])


def test_a_user_without_a_password_waits_and_is_skipped_until_it_has_one(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """A row with a blank source password leaves its user waiting for credentials: prestage
    lists it as skipped with `coexist credentials set`, moves the other; once set, the
    next prestage moves it."""
    scene = Scene(dovecot, tmp_path)
    p = str(scene.project)
    waiting, other = scene.users
    for u in scene.users:
        scene.seed(u)
    imported = run_json("batch", "import", "--project", p, str(scene.csv({waiting.address: ""})))
    assert imported["waiting_for_credentials"] == [{"user": waiting.address, "side": "source"}]
    result = run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    [skipped] = result["skipped"]
    assert skipped["user"] == waiting.address and "credentials set" in skipped["next"], skipped
    assert not result["failed"] and scene.count(other.target) > 0
    assert scene.count(waiting.target) == 0
    fixed = CliRunner().invoke(
        main,
        ["credentials", "set", "--project", p, "--user", waiting.address, "--password-stdin"],
        input=waiting.source.password + "\n",
        env={ENV_KEY: KEY},
        catch_exceptions=False,
    )
    assert fixed.exit_code == 0, fixed.output
    again = run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    assert not again["skipped"] and not again["failed"], again
    assert scene.count(waiting.target) == scene.count(other.target)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_unreachable_server_and_wrong_certificate_name_stop_the_run_clearly(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """A source port nobody listens on, then a host name the certificate does not hold
    (`localhost`; the test CA signs 127.0.0.1 only): prestage stops with a message naming
    the endpoint and the [source.imap] setting to fix; no user is marked prestaged and no
    pass ends ok; the right settings then move everything."""
    scene = Scene(dovecot, tmp_path, users=1)
    p = str(scene.project)
    [user] = scene.users
    scene.seed(user)
    run_json("batch", "import", "--project", p, str(scene.csv()))
    outputs = []
    for host, port, said in (
        ("127.0.0.1", free_port(), "imaps://127.0.0.1:"),
        ("localhost", None, "certificate"),
    ):
        scene.write_project(host=host, port=port)
        r = run("prestage", "--project", p, "--all", "--older-than", "90d", "--json")
        outputs.append(r.output)
        assert r.exit_code != 0, r.output
        error = json.loads(r.output.strip().splitlines()[-1])
        assert said in error["message"] and "source" in json.dumps(error), error
        assert scene.count(user.target) == 0
        assert not [x for x in scene.passes() if x["status"] == "ok"]
        with Journal.open(load_project(scene.project).journal_url) as j:
            assert (j.get_item("user", user.address) or {})["phase"] == "discovered"
    scene.write_project()
    result = run_json("prestage", "--project", p, "--all", "--older-than", "90d")
    assert not result["failed"], result
    assert scene.count(user.target) > 0
    assert_no_password(scene, outputs)


def test_a_folder_the_target_refuses_is_named_and_the_rest_moves(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    """The target's hierarchy delimiter is "/", so the source folder "a/b" cannot be made
    there: the pass moves every other folder and names "a/b" as not moved, with the fix (a
    folder_rules entry, its example for "a/b") and the command to run next; its messages
    stay in the source (nothing lost) and the next pass with the suggested rule, pasted
    as given, moves them."""
    scene = Scene(dovecot, tmp_path, users=1, target_delimiter="/")
    p = str(scene.project)
    [user] = scene.users
    scene.seed(user)
    run_json("batch", "import", "--project", p, str(scene.csv()))
    r = run("prestage", "--project", p, "--all", "-v")
    assert r.exit_code == 0, r.output
    assert "folders not moved: a/b" in r.output and "'a/b' not created" in r.output, r.output
    said = " ".join(r.output.split())
    hint = re.search(r"folder_rules = \[(.+?)\] \(keep the rules already there\)", said)
    assert hint and tomllib.loads(f"r = {hint.group(1)}")["r"] == r"^a\\/b$->a-b", said
    assert f"then run coexist prestage --users {user.address}" in said, said
    moved = scene.fingerprints(user.target)
    source = older(scene.fingerprints(user.source, mapped=True))
    assert not [k for k in moved if k[2] == ("a/b",)]
    assert moved == {k: n for k, n in source.items() if k[2] != ("a/b",)}
    # Nothing lost: a rule naming it otherwise moves it on the next pass.
    toml = scene.project / "project.toml"
    toml.write_text(toml.read_text().replace('"^INBOX/->"', f'"^INBOX/->", {hint.group(1)}'))
    again = run_json("prestage", "--project", p, "--all")
    assert "folders not moved" not in json.dumps(again), again
    assert sum(scene.fingerprints(user.target).values()) == sum(source.values())
