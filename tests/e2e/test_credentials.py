"""Users and credentials through the CLI: CodeTwo's and MigrationWiz's user CSVs into the
batch and the encrypted vault, `coexist credentials set/list/purge`, bad files and keys as
clear messages, and no password anywhere but (encrypted) in the vault."""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from coexist.cli import main
from coexist.journal import Journal
from coexist.settings import load_project
from coexist.vault import ENV_KEY, VAULT_FILE, Vault, new_key

KEY = new_key()
# Passwords that a careless path would show: CSV delimiters, quotes, markup, spaces.
PASSWORDS = ['Ann;"pw",1', "[bold]Bob's pw[/bold]", "cy-pass-7781 "]
MakeProject = Callable[..., Path]


def run(*args: str, key: str | None = KEY, stdin: str | None = None) -> Result:
    """The CLI in-process, with COEXIST_VAULT_KEY set to `key` (None: unset)."""
    return CliRunner().invoke(
        main, list(args), input=stdin, env={ENV_KEY: key}, catch_exceptions=False
    )


def text(result: Result) -> str:
    return " ".join(result.output.split())


def discovered(project: Path) -> list[str]:
    """Discover; the users' source addresses."""
    assert run("discover", "--project", str(project)).exit_code == 0
    status = json.loads(run("status", "--project", str(project), "--json").output)
    return sorted(u["user"] for u in status["users"])


def cell(value: str, delimiter: str) -> str:
    if any(c in value for c in (delimiter, '"')):
        return '"' + value.replace('"', '""') + '"'
    return value


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",", bom: bool = False) -> Path:
    body = "\r\n".join(delimiter.join(cell(c, delimiter) for c in r) for r in rows) + "\r\n"
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + body.encode("utf-8"))
    return path


def codetwo(path: Path, users: list[str], passwords: list[str]) -> Path:
    rows = [["Login", "Password", "First Name", "Last Name", "Display Name"]]
    rows += [[u, p, "First", "Last", ""] for u, p in zip(users, passwords, strict=True)]
    return write_csv(path, rows, ";", bom=True)


def status_of(project: Path) -> dict[str, dict[str, Any]]:
    rows = json.loads(run("status", "--project", str(project), "--json").output)["users"]
    return {r["user"]: r for r in rows}


def imported(project: Path, csv_file: Path, *extra: str) -> dict[str, Any]:
    r = run("batch", "import", "--project", str(project), str(csv_file), *extra, "--json")
    assert r.exit_code == 0, r.output
    result: dict[str, Any] = json.loads(r.output)
    return result


@pytest.fixture
def users3(project: Path) -> list[str]:
    return discovered(project)[:3]


def test_codetwo_csv_stores_passwords_and_waits_for_missing_ones(
    project: Path, users3: list[str], tmp_path: Path
) -> None:
    """A semicolon-separated CodeTwo CSV with a BOM: passwords go to the vault, the user
    without one is `waiting for credentials` until `credentials set` gives it; a re-import
    changes nothing."""
    p = str(project)
    csv_file = codetwo(tmp_path / "codetwo.csv", users3, [PASSWORDS[0], PASSWORDS[1], ""])
    r = run("batch", "import", "--project", p, str(csv_file), "--name", "wave1")
    assert r.exit_code == 0, r.output
    assert "credentials stored in the vault: 2" in text(r)
    assert f"waiting for credentials: {users3[2]} (source)" in text(r)
    status = status_of(project)
    assert [status[u]["batch"] for u in users3] == ["wave1"] * 3
    assert status[users3[2]]["state"] == "waiting"
    assert status[users3[2]]["waiting_for"].startswith("credentials: no source password")
    assert status[users3[0]]["state"] == "ok"
    assert "waiting" in text(run("status", "--project", p))

    listed = json.loads(run("credentials", "list", "--project", p, "--json").output)
    assert [(u["user"], u["source"]["login"]) for u in listed["users"]] == [
        (u, u) for u in sorted(users3[:2])
    ]
    assert [w["user"] for w in listed["waiting"]] == [users3[2]]
    assert users3[0] in text(run("credentials", "list", "--project", p))

    r = run(
        "credentials", "set", "--project", p, "--user", users3[2], "--password-stdin",
        stdin=PASSWORDS[2] + "\n",
    )  # fmt: skip
    assert r.exit_code == 0 and "stored" in r.output, r.output
    assert status_of(project)[users3[2]]["state"] == "ok"
    vault = Vault.open(project, env={ENV_KEY: KEY})
    keys = {i["source_address"]: i["key"] for i in journal_items(project)}
    assert [vault.get(keys[u]).password for u in users3] == PASSWORDS  # type: ignore[union-attr]

    again = imported(project, csv_file, "--name", "wave1")
    assert again["credentials_stored"] == 0 and again["credentials_unchanged"] == 2
    assert again["waiting_for_credentials"] == []  # the vault has the third one now


def test_migrationwiz_bulk_add_csv(project: Path, users3: list[str], tmp_path: Path) -> None:
    """MigrationWiz's Bulk Add columns: source and destination logins and passwords go to
    the vault, each side on its own; the Batch column names the batch."""
    rows = [
        ["Source Email", "Source Login Name", "Source Password", "Destination Email",
         "Destination Login Name", "Destination Password", "Batch"],
        [users3[0], "ann-login", PASSWORDS[0], "a@contoso.example", "", "", "w2"],
        [users3[1], "", PASSWORDS[1], "b@contoso.example", "b-target", PASSWORDS[2], "w2"],
    ]  # fmt: skip
    result = imported(project, write_csv(tmp_path / "bulk.csv", rows))
    assert result["shape"] == "MigrationWiz" and result["assigned"] == {"w2": 2}
    assert result["credentials_stored"] == 3
    # A row without a destination password waits for it (the file has that column).
    assert result["waiting_for_credentials"] == [{"user": users3[0], "side": "target"}]
    holdings = json.loads(run("credentials", "list", "--project", str(project), "--json").output)
    by_user = {u["user"]: u for u in holdings["users"]}
    assert by_user[users3[0]]["source"]["login"] == "ann-login"
    assert by_user[users3[0]]["target"] is None
    assert by_user[users3[1]]["source"]["login"] == users3[1]
    assert by_user[users3[1]]["target"]["login"] == "b-target"


def journal_items(project: Path) -> list[dict[str, Any]]:
    with Journal.open(load_project(project).journal_url) as journal:
        return journal.items(kind="user")


def assert_nothing_recorded(project: Path) -> None:
    assert all(i["batch"] is None for i in journal_items(project))
    assert not (project / VAULT_FILE).exists()


@pytest.mark.parametrize(
    ("rows", "said"),
    [
        (
            [["Login", "First Name", "Display Name"], ["{0}", "A", "A"]],
            "needs the column(s) Password",
        ),
        (
            [["Source Email", "Source Password"], ["{0}", "pw"]],
            "needs the column(s) Destination Email",
        ),
        (
            [["Login", "Password"], ["{0}", "pw1"], ["{1}", "pw2"], ["{0}", "pw3"]],
            "listed twice",
        ),
        ([["Login", "Password"], ["nobody@fabrikam.example", "pw"]], "1 unknown user(s)"),
    ],
    ids=["codetwo-missing-password", "mw-missing-destination", "duplicate-rows", "unknown-user"],
)
def test_bad_user_files_are_clear_errors(
    project: Path, users3: list[str], tmp_path: Path, rows: list[list[str]], said: str
) -> None:
    """Missing columns, duplicate rows and unknown users: rc 2, a message naming the file
    (its whole path, never folded at the console's width) and the problem, a next step, no
    traceback; nothing recorded and no vault written."""
    filled = [[c.format(*users3) for c in r] for r in rows]
    deep = tmp_path / "a-directory-whose-name-is-long-enough" / "to-push-the-path-past-a-line"
    deep.mkdir(parents=True)
    csv_file = write_csv(deep / "bad.csv", filled, ";", bom=True)
    r = run("batch", "import", "--project", str(project), str(csv_file), "--name", "w")
    assert r.exit_code == 2, r.output
    assert said in text(r) and str(csv_file) in r.output and "Traceback" not in r.output
    payload = json.loads(
        run(
            "batch", "import", "--project", str(project), str(csv_file), "--name", "w", "--json"
        ).output
    )
    assert payload["error"] == "InputError" and payload["next_step"]
    assert not any(pw in r.output for pw in ("pw1", "pw2", "pw3"))
    assert_nothing_recorded(project)


def test_missing_or_wrong_key_is_a_clear_error(
    project: Path, users3: list[str], tmp_path: Path
) -> None:
    """Without COEXIST_VAULT_KEY the import stops before any write, naming the variable; with
    another key than the vault's, list and set say so; never a traceback or a key."""
    p = str(project)
    csv_file = codetwo(tmp_path / "c2.csv", users3[:1], [PASSWORDS[0]])
    r = run("batch", "import", "--project", p, str(csv_file), "--name", "w", key=None)
    assert r.exit_code == 2 and ENV_KEY in text(r) and "new-key" in text(r), r.output
    assert_nothing_recorded(project)

    imported(project, csv_file, "--name", "w")
    other = new_key()
    for args in (("credentials", "list"), ("batch", "import", str(csv_file), "--name", "w")):
        r = run(*args, "--project", p, key=other)
        assert r.exit_code == 2, r.output
        assert "written with another key" in text(r) and ENV_KEY in text(r)
        assert other not in r.output and KEY not in r.output and "Traceback" not in r.output
    r = run("credentials", "list", "--project", p, key="not a key")
    assert r.exit_code == 2 and "is not a vault key" in text(r) and "not a key" not in r.output


def test_purge(project: Path, users3: list[str], tmp_path: Path) -> None:
    """purge --users removes those users' credentials; --all deletes the vault without the
    key; no selection is refused."""
    p = str(project)
    imported(project, codetwo(tmp_path / "c2.csv", users3, PASSWORDS), "--name", "w")
    assert run("credentials", "purge", "--project", p).exit_code == 2
    r = run("credentials", "purge", "--project", p, "--users", users3[0], "--json")
    assert json.loads(r.output)["purged"] == [users3[0]], r.output
    listed = json.loads(run("credentials", "list", "--project", p, "--json").output)
    assert sorted(u["user"] for u in listed["users"]) == sorted(users3[1:])
    r = run("credentials", "purge", "--project", p, "--all", key=None)
    assert r.exit_code == 0 and "deleted" in r.output, r.output
    assert not (project / VAULT_FILE).exists()
    assert "no credential vault yet" in run("credentials", "list", "--project", p).output
    assert len(journal_items(project)) > 3  # the users stay; only their passwords went


def test_master_password_needs_an_imap_side_with_a_master_user(project: Path) -> None:
    """`credentials set --master` on a side without `[S.imap] master_user` (here Microsoft
    365) stores nothing and names the setting; --master with --user, or neither, is
    refused before any password is asked for."""
    p = str(project)
    r = run("credentials", "set", "--project", p, "--master", "--password-stdin", stdin="pw\n")
    assert r.exit_code == 2 and "[source.imap] master_user" in text(r), r.output
    assert not (project / VAULT_FILE).exists()
    both = run("credentials", "set", "--project", p, "--master", "--user", "a@b.c")
    assert both.exit_code == 2 and "leave out --user" in text(both), both.output
    neither = run("credentials", "set", "--project", p)
    assert neither.exit_code == 2 and "--user" in text(neither), neither.output


def test_passwords_appear_nowhere_but_encrypted_in_the_vault(
    project: Path, users3: list[str], tmp_path: Path
) -> None:
    """After imports of both shapes, `credentials set`, list, status, batch export and a
    provision plan of the CodeTwo file (text and --json, with -v): no password in any output,
    the journal's files, the run logs or any other project file; the vault holds none in the
    clear."""
    p = str(project)
    c2 = codetwo(tmp_path / "codetwo.csv", users3, [PASSWORDS[0], PASSWORDS[1], ""])
    bulk = write_csv(
        tmp_path / "bulk.csv",
        [
            ["Source Email", "Source Login Name", "Source Password", "Destination Email", "Batch"],
            [users3[1], "", PASSWORDS[1], "b@contoso.example", "w"],
        ],
    )
    outputs = [
        run("batch", "import", "--project", p, str(c2), "--name", "w", "-v"),
        run("batch", "import", "--project", p, str(c2), "--name", "w", "--json"),
        run("batch", "import", "--project", p, str(bulk), "--json", "-v"),
        run("credentials", "set", "--project", p, "--user", users3[2], "--password-stdin",
            "-v", stdin=PASSWORDS[2] + "\n"),
        run("credentials", "set", "--project", p, "--user", users3[2], "--json",
            stdin=PASSWORDS[2] + "\n" + PASSWORDS[2] + "\n"),
        run("credentials", "list", "--project", p),
        run("credentials", "list", "--project", p, "--json", "-v"),
        run("status", "--project", p),
        run("status", "--project", p, "--json"),
        run("batch", "export", "--project", p),
        run("provision", "--project", p, "--batch", str(c2), "--plan", "-v"),
        run("provision", "--project", p, "--batch", str(c2), "--plan", "--json"),
    ]  # fmt: skip
    for r in outputs:
        assert r.exit_code == 0, r.output
    assert "would" in outputs[-2].output  # the plan did plan writes
    # The vault has them (so the test would see them if they leaked) ...
    vault = Vault.open(project, env={ENV_KEY: KEY})
    assert {c.password for sides in vault.read().values() for c in sides.values()} == set(PASSWORDS)
    # ... and nothing else does.
    seen = "\n".join(r.output for r in outputs)
    files = [f for f in project.rglob("*") if f.is_file()]
    assert any(f.parent.name == "logs" for f in files)
    assert any(f.name.startswith("journal.db") for f in files)
    for password in PASSWORDS:
        needle = password.strip()
        assert needle not in seen
        for f in files:
            assert needle.encode() not in f.read_bytes(), f
            assert needle.encode("utf-16-le") not in f.read_bytes(), f
