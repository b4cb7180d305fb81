"""`coexist verify-credentials` against a real Dovecot: each user's source and target login,
one result per side, nothing moved, waiting for credentials set and cleared, and no
password in the output, the --json or the journal."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from coexist.cli import main
from coexist.journal import Journal
from coexist.settings import load_project
from coexist.tenants.imap import ImapEndpoint, ImapSession, NewMessage, Password
from coexist.vault import ENV_KEY, new_key
from tests.dovecot import MASTER_USER, DovecotServer, ImapUser

KEY = new_key()
ENV = {ENV_KEY: KEY}


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin, env=ENV, catch_exceptions=False)


def imap_project(
    directory: Path,
    dovecot: DovecotServer,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    master: str = "",
) -> Path:
    """An IMAP -> IMAP project on the test Dovecot (implicit TLS, the test CA)."""
    directory.mkdir()
    sides = []
    for side in ("source", "target"):
        table = (
            f'[{side}]\nkind = "imap"\n\n[{side}.imap]\nhost = "{host}"\n'
            f'port = {port or dovecot.tls_port}\nsecurity = "implicit-tls"\n'
            f'ca_file = "{dovecot.ca_file}"\n'
        )
        if side == "source" and master:
            table += f'master_user = "{master}"\n'
        sides.append(table)
    (directory / "project.toml").write_text(
        '[project]\nname = "imap"\n\n'
        + "\n".join(sides)
        + '\n[domains]\ndestination_domain = "example.org"\n\n[migration]\nmover = "imap-sync"\n'
    )
    return directory


def bulk_file(path: Path, rows: list[tuple[ImapUser, str, ImapUser, str]]) -> Path:
    """A MigrationWiz Bulk Add CSV: source login/password, target login/password."""
    lines = [
        "Source Email,Source Login Name,Source Password,Destination Email,"
        "Destination Login Name,Destination Password"
    ]
    for src, src_pw, tgt, tgt_pw in rows:
        lines.append(f"{src.login},{src.login},{src_pw},{tgt.login},{tgt.login},{tgt_pw}")
    path.write_text("\n".join(lines) + "\n")
    return path


def verify(project: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    r = run("verify-credentials", "--project", str(project), *extra, "--json")
    return r.exit_code, json.loads(r.output)


def by_user(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["user"]: u for u in result["users"]}


def inbox_count(dovecot: DovecotServer, user: ImapUser) -> int:
    said = dovecot.doveadm("mailbox", "status", "-u", user.login, "messages", "INBOX")
    return int(said.split("messages=")[1])


def status(project: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads(run("status", "--project", str(project), "--json").output)["users"]
    return {r["user"]: r for r in rows}


def journal_text(project: Path) -> str:
    with Journal.open(load_project(project).journal_url) as journal:
        return json.dumps(journal.events(), default=str)


def test_each_user_gets_a_result_per_side_and_a_fix_clears_the_wait(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    """ok / wrong password / no credentials per user and side, others go on; the failing
    ones name `coexist credentials set`; `credentials set` + a second run verifies the user
    and clears its wait; no password anywhere; no message was moved."""
    ann, bob, cy = (dovecot.new_user("ann") for _ in range(3))
    ann_t, bob_t, cy_t = (dovecot.new_user("tgt") for _ in range(3))
    endpoint = ImapEndpoint(dovecot.host, dovecot.tls_port, "tls", dovecot.ca_file)
    with ImapSession.open(endpoint, Password(ann.login, ann.password)) as s:
        s.append("INBOX", [NewMessage(b"Subject: kept\r\nMessage-ID: <k@x>\r\n\r\nbody\r\n")])
    project = imap_project(tmp_path / "p", dovecot)
    csv_file = bulk_file(
        tmp_path / "users.csv",
        [
            (ann, ann.password, ann_t, ann_t.password),
            (bob, "not-" + bob.password, bob_t, bob_t.password),
            (cy, "", cy_t, cy_t.password),
        ],
    )
    r = run("batch", "import", "--project", str(project), str(csv_file), "--name", "w1")
    assert r.exit_code == 0, r.output
    assert status(project)[cy.login]["state"] == "waiting"

    code, result = verify(project, "--batch", "w1")
    users = by_user(result)
    assert code == 1 and result["verified"] == 1 and result["failed"] == 2
    assert users[ann.login]["ok"] and users[ann.login]["target"]["result"] == "ok"
    assert users[bob.login]["source"]["result"] == "wrong password"
    assert users[bob.login]["target"]["result"] == "ok"
    assert "coexist credentials set" in users[bob.login]["source"]["next"]
    assert f"--user {bob.login} --side source" in users[bob.login]["source"]["next"]
    assert users[cy.login]["source"]["result"] == "no credentials"
    assert users[cy.login]["target"]["result"] == "ok"
    assert status(project)[bob.login]["state"] == "waiting"  # refused: waits for a fix
    assert "wrong password" in status(project)[bob.login]["waiting_for"]

    text = run("verify-credentials", "--project", str(project), "--users", bob.login)
    assert text.exit_code == 1
    assert "wrong password" in text.output and "next: coexist credentials set" in text.output

    for user in (bob, cy):
        r = run(
            "credentials", "set", "--project", str(project), "--user", user.login,
            "--password-stdin", stdin=user.password + "\n",
        )  # fmt: skip
        assert r.exit_code == 0, r.output
    code, again = verify(project, "--all")
    assert code == 0 and again["verified"] == 3, again
    assert all(s["state"] == "ok" for s in status(project).values())

    assert any((project / "logs").glob("*"))
    logs = "".join(f.read_text(errors="replace") for f in (project / "logs").glob("*"))
    shown = json.dumps([result, again]) + text.output + journal_text(project) + logs
    for user in (ann, bob, cy, ann_t, bob_t, cy_t):
        assert user.password not in shown
    assert "verify-credentials" in journal_text(project)
    assert inbox_count(dovecot, ann) == 1 and inbox_count(dovecot, ann_t) == 0  # nothing moved


def test_master_user_logs_in_for_every_user(tmp_path: Path, dovecot: DovecotServer) -> None:
    """With [source.imap] master_user, `credentials set --master` opens each user's mailbox
    that has no password of its own (a user with one signs in with it, as a pass does):
    without it such a user has no credentials and waits, a wrong one is refused, the right
    one ends the wait; the next step named is `credentials set --master`."""
    src, own = dovecot.new_user("m"), dovecot.new_user("o")
    tgt, own_t = dovecot.new_user("mt"), dovecot.new_user("ot")
    project = imap_project(tmp_path / "p", dovecot, master=MASTER_USER)
    csv_file = bulk_file(
        tmp_path / "users.csv",
        [(src, "", tgt, tgt.password), (own, own.password, own_t, own_t.password)],
    )
    assert (
        run("batch", "import", "--project", str(project), str(csv_file), "--name", "m").exit_code
        == 0
    )
    assert status(project)[src.login]["state"] == "waiting"

    _, none = verify(project, "--all")
    source = by_user(none)[src.login]["source"]
    assert source["result"] == "no credentials" and "--master --side source" in source["next"]
    assert by_user(none)[own.login]["source"]["result"] == "ok"

    def set_master(password: str) -> Result:
        args = ("credentials", "set", "--project", str(project), "--master", "--password-stdin")
        return run(*args, stdin=password + "\n")

    assert set_master("wrong-" + dovecot.master_password).exit_code == 0
    _, wrong = verify(project, "--all")
    refused = by_user(wrong)[src.login]["source"]
    assert refused["result"] == "wrong password" and "--master --side source" in refused["next"]

    stored = set_master(dovecot.master_password)
    assert stored.exit_code == 0 and "stored" in stored.output, stored.output
    code, ok = verify(project, "--all")
    assert code == 0 and by_user(ok)[src.login]["source"]["mailbox"] == src.login
    assert status(project)[src.login]["state"] == "ok"
    shown = json.dumps([none, wrong, ok]) + journal_text(project) + stored.output
    assert dovecot.master_password not in shown


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_unreachable_server_and_tls_name_mismatch(tmp_path: Path, dovecot: DovecotServer) -> None:
    """A closed port is `unreachable` and a certificate for another name a `TLS error`, for
    every user, with the setting to check; neither is a wrong password."""
    users = [dovecot.new_user("u") for _ in range(2)]
    rows = [(u, u.password, u, u.password) for u in users]
    cases = (("unreachable", "127.0.0.1", closed_port()), ("TLS error", "localhost", None))
    for n, (expected, host, port) in enumerate(cases):
        project = imap_project(tmp_path / f"p{n}", dovecot, host=host, port=port)
        csv_file = bulk_file(tmp_path / f"users{n}.csv", rows)
        assert (
            run(
                "batch", "import", "--project", str(project), str(csv_file), "--name", "x"
            ).exit_code
            == 0
        )
        code, result = verify(project, "--all")
        assert code == 1
        for u in result["users"]:
            assert u["source"]["result"] == expected, u
            assert "[source]" in u["source"]["next"]


def test_microsoft_365_sides_are_checked_with_the_apps_graph_access(project: Path) -> None:
    """On Microsoft 365 sides each source mailbox answers for its Inbox (ok); a user with no
    target mailbox yet is `mailbox not found` with provision as the next step."""
    assert run("discover", "--project", str(project)).exit_code == 0
    users = sorted(status(project))[:2]
    code, result = verify(project, "--users", ",".join(users))
    assert code == 1 and sorted(by_user(result)) == users
    for u in result["users"]:
        assert u["source"] == {**u["source"], "kind": "m365", "result": "ok"}
        assert u["target"]["result"] == "mailbox not found"
        assert "provision" in u["target"]["next"]
