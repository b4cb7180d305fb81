"""Errors, not tracebacks: the bad inputs of issue 10, each through the real `coexist`
process, each checked on stderr (no traceback; the error and its next step, nothing more).

Inputs: an unreachable endpoint, a TLS failure, a read-only project, a full disk, a Latin-1
or UTF-16 batch file, a semicolon-separated one, a broken quote, and an unexpected
exception. Every run goes through `coexist_process`, which fails the test on any
"Traceback" in stderr, so together these tests are the acceptance "no command prints a
Python traceback for any of the inputs above".

How the disk is made read-only and full without root tricks, as root (CI) and as a user:
* read-only: the project directory and files are chmod'ed read-only; as root, the
  `coexist` process first drops CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH / CAP_FOWNER from its
  capability bounding set (prctl PR_CAPBSET_DROP), so root obeys file modes as any user does.
* full: the `coexist` process runs with RLIMIT_FSIZE (ulimit -f): a write past the limit
  fails with EFBIG, which SQLite reports as it reports a full disk (SQLITE_FULL / IOERR).
  Python ignores SIGXFSZ itself, so the process sees the error instead of being killed.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from click.testing import Result

from coexist import commands as coexist_commands
from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.settings import load_project

Cli = Callable[..., Result]
MakeProject = Callable[..., Path]

# -- running coexist as a process --------------------------------------------------------------
PR_CAPBSET_DROP = 24  # <linux/prctl.h>
# CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER (<linux/capability.h>): what lets root
# ignore file modes and change them.
FILE_MODE_CAPABILITIES = (1, 2, 3)


def obey_file_modes() -> None:
    """In the child, before exec: as root, give up the capabilities that bypass file modes
    (for this process and everything it runs); as a user there is nothing to give up."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in FILE_MODE_CAPABILITIES:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) needs CAP_SETPCAP")


def file_size_limit(limit: int) -> Callable[[], None]:
    """In the child, before exec: no file may grow past `limit` bytes."""

    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def coexist_process(
    *args: str, before: Callable[[], None] | None = None, home: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `coexist ARGS` as its own process; fail on any traceback in its stderr. `home`:
    HOME for the run (where logs go when the project cannot take them)."""
    env = {**os.environ, "COLUMNS": "400"}  # rich wraps at 80 otherwise: one line per line
    if home is not None:
        env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"))
    proc = subprocess.run(
        [sys.executable, "-m", "coexist.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=before,  # a prctl or setrlimit only: safe before exec
        timeout=600,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stdout, proc.stdout
    return proc


def provision_process(project: Path, users: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    """`coexist provision --users USERS` as its own process (`coexist_process`, same options)."""
    return coexist_process("provision", "--project", str(project), "--users", users, **kw)


def error_block(stderr: str) -> list[str]:
    """The error a failed run ended with: 'error: …' and its '  next: …' line, and nothing
    after them."""
    lines = stderr.rstrip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("error:"))
    block = lines[start:]
    assert len(block) <= 2 and all(b.startswith("  next: ") for b in block[1:]), stderr
    return block


# -- projects pointing at endpoints that fail ----------------------------------------------------
def closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def point_at(project: Path, sandbox: Sandbox, edit: Callable[[dict[str, Any]], None]) -> Path:
    """Point the project at an edited copy of the sandbox's connection.json."""
    conn = json.loads((sandbox.state_dir / "connection.json").read_text())
    edit(conn)
    path = project.parent / "edited-connection.json"
    path.write_text(json.dumps(conn))
    toml = project / "project.toml"
    toml.write_text(toml.read_text().replace(str(sandbox.state_dir / "connection.json"), str(path)))
    return path


def move_port(conn: dict[str, Any], port: int, sides: tuple[str, ...]) -> None:
    old = conn["base_url"].rsplit(":", 1)[1]
    for side in sides:
        t = conn["tenants"][side]
        for key in ("authority", "graph_url", "exo_url"):
            t[key] = t[key].replace(f":{old}", f":{port}")


def statuses(project: Path) -> dict[str, str]:
    with Journal.open(load_project(project).journal_url) as journal:
        return {str(i["source_address"]): str(i["state"]) for i in journal.items(kind="user")}


def test_unreachable_endpoint_is_one_clear_line(project: Path, sandbox: Sandbox) -> None:
    """A sandbox no longer serving on the port its connection.json names: one error naming
    the endpoint, the cause and the fix (exit 1), not ~150 lines of traceback."""
    port = closed_port()
    point_at(project, sandbox, lambda c: move_port(c, port, ("source", "target")))
    proc = coexist_process("discover", "--project", str(project))
    assert proc.returncode == 1
    error, fix = error_block(proc.stderr)
    assert f"https://127.0.0.1:{port}" in error and "connection refused" in error
    assert "[source] authority" in fix and "coexist sandbox serve" in fix


def test_unreachable_target_stops_the_run_and_fails_no_user(
    project: Path, sandbox: Sandbox, cli: Cli
) -> None:
    """Provision with the target unreachable stops at the first request with one error;
    no user is marked failed for it (the endpoint's fault is not theirs)."""
    assert cli("discover", "--project", str(project)).exit_code == 0
    port = closed_port()
    point_at(project, sandbox, lambda c: move_port(c, port, ("target",)))
    everyone = ",".join(statuses(project))  # an explicit selection (main asks for one)
    proc = provision_process(project, everyone)
    assert proc.returncode == 1
    error, _fix = error_block(proc.stderr)
    assert "the target tenant's" in error and f"127.0.0.1:{port}" in error
    assert set(statuses(project).values()) == {"ok"}  # as discover left them


def test_tls_failure_names_the_fix(project: Path, sandbox: Sandbox, tmp_path: Path) -> None:
    """A CA that did not sign the endpoint's certificate (a TLS-inspecting proxy, a sandbox
    served again with a new CA): the endpoint, "not trusted", and `ca_file` as the fix."""
    other = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    point_at(project, sandbox, lambda c: c.update(ca_file=str(other)))
    proc = coexist_process("discover", "--project", str(project))
    assert proc.returncode == 1
    error, fix = error_block(proc.stderr)
    assert sandbox.connection["base_url"] in error and "not trusted" in error
    assert "ca_file in [source]" in fix


# -- the disk ---------------------------------------------------------------------------------------
def world_state(sb: Sandbox) -> dict[str, Any]:
    with sb.world.lock:
        state: dict[str, Any] = json.loads(json.dumps(sb.world.to_dict(), default=str))
    return state


@pytest.fixture
def read_only(project: Path) -> Iterator[Callable[[], None]]:
    """Make the project read-only on demand; made writable again at teardown."""
    paths: list[Path] = []

    def make() -> None:
        paths.extend([project, *project.rglob("*")])
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)

    yield make
    for p in paths:
        p.chmod(0o700 if p.is_dir() else 0o600)


def test_read_only_project_is_one_clear_line(
    project: Path, sandbox: Sandbox, cli: Cli, read_only: Callable[[], None], tmp_path: Path
) -> None:
    """A read-only project directory: one error naming the journal, "read-only" and the fix;
    nothing is written to either tenant; the run's log goes to the user's log directory."""
    assert cli("discover", "--project", str(project)).exit_code == 0
    read_only()
    before = world_state(sandbox)
    home = tmp_path / "home"
    everyone = ",".join(statuses(project))
    proc = provision_process(project, everyone, before=obey_file_modes, home=home)
    assert proc.returncode == 1
    error, fix = error_block(proc.stderr)
    assert str(project / "journal.db") in error and "read-only" in error
    assert "writable" in fix
    assert world_state(sandbox) == before
    logs = list((home / "state" / "coexist" / "logs").glob("*-coexist-provision-*.log"))
    assert len(logs) == 1 and "read-only" in logs[0].read_text()


def mail_users(sb: Sandbox) -> dict[str, int]:
    """Target MailUsers by the source address they route to (ExternalEmailAddress)."""
    out: dict[str, int] = {}
    with sb.world.lock:
        for u in sb.world.target.users.values():
            if u.recipient_type_details == "MailUser" and u.external_email_address:
                address = u.external_email_address.split(":", 1)[1].lower()
                out[address] = out.get(address, 0) + 1
    return out


def journaled_mail_users(project: Path) -> set[str]:
    """Users whose provision.mailuser step the journal holds (started or ok)."""
    with Journal.open(load_project(project).journal_url) as journal:
        users = {i["key"]: str(i["source_address"]).lower() for i in journal.items(kind="user")}
        return {
            users[s["item_key"]]
            for s in journal.steps()
            if s["name"] == "provision.mailuser" and s["status"] in ("started", "ok")
        }


def test_full_disk_stops_before_the_next_tenant_write(
    make_project: MakeProject, sandbox: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    """The journal's disk fills up in the middle of provision: one error naming the journal
    and the full disk; every MailUser written to the target has its journal record (nothing
    done but not journaled) and no user after the failed write got one; a second run, with
    space again, provisions everyone exactly once.

    Users are provisioned one at a time (concurrency 1) so the cut is exact. The file-size
    limit that falls mid-run depends on how much the journal writes per user; it is found
    by doubling, halving or bisecting from 600 kB (a fresh sandbox and journal each try)."""
    limit, tried = 600_000, list[int]()
    fits: int | None = None  # a limit under which the whole run completed
    too_small: int | None = None  # a limit that stopped the run before any tenant write
    while True:
        sandbox.reset()
        project = make_project(**{"engine.concurrency_per_tenant": 1})
        assert cli("discover", "--project", str(project)).exit_code == 0
        users = set(statuses(project))
        everyone = ",".join(sorted(users))
        proc = provision_process(project, everyone, before=file_size_limit(limit))
        created, tried = mail_users(sandbox), [*tried, limit]
        if proc.returncode != 0 and created:
            break
        if proc.returncode == 0:
            fits = limit
        else:
            too_small = limit
        if fits and too_small:
            limit = (fits + too_small) // 2
        else:
            limit = limit * 2 if too_small else limit // 2
        assert len(tried) < 8, f"no file-size limit stopped provision mid-run: {tried}"
        shutil.rmtree(project)
    assert proc.returncode == 1 and 0 < len(created) < len(users)
    error, fix = error_block(proc.stderr)
    assert str(project / "journal.db") in error and "could not be written" in error
    assert "run the command again" in fix
    assert set(created) == journaled_mail_users(project)  # no tenant write without its record
    assert all(n == 1 for n in created.values())

    again = provision_process(project, everyone)
    assert again.returncode == 0, again.stderr
    assert mail_users(sandbox) == {u.lower(): 1 for u in users}  # everyone, exactly once
    assert set(statuses(project).values()) == {"ok"}


# -- batch files ---------------------------------------------------------------------------------
def batch_file(tmp_path: Path, users: list[str], encoding: str, delimiter: str = ",") -> Path:
    path = tmp_path / "wave.csv"
    rows = ["Source Email" + delimiter + "Batch", *(f"{u}{delimiter}Wave 1" for u in users)]
    path.write_bytes(("\r\n".join(rows) + "\r\n").encode(encoding))
    return path


def discovered(cli: Cli, project: Path) -> list[str]:
    assert cli("discover", "--project", str(project)).exit_code == 0
    return sorted(statuses(project))


def test_latin1_csv_names_the_encoding(project: Path, cli: Cli, tmp_path: Path) -> None:
    """A Latin-1 batch file: one error naming the file, the line, the byte and how to save
    it as UTF-8 (exit 2, nothing recorded)."""
    users = discovered(cli, project)
    path = batch_file(tmp_path, [*users[:2], "renée@fabrikam.example"], "latin-1")
    proc = coexist_process("batch", "import", "--project", str(project), str(path))
    assert proc.returncode == 2
    error, fix = error_block(proc.stderr)
    assert str(path) in error and "line 4 is not UTF-8" in error and "Latin-1" in error
    assert "CSV UTF-8" in fix


@pytest.mark.parametrize(
    ("encoding", "delimiter"),
    [("utf-16", "\t"), ("utf-8-sig", ";"), ("utf-8", ",")],
    ids=["utf16-tab", "utf8-bom-semicolon", "utf8-comma"],
)
def test_semicolon_csv_is_read(
    project: Path, cli: Cli, tmp_path: Path, encoding: str, delimiter: str
) -> None:
    """UTF-16 (Excel "Unicode Text", tab-separated) and ';'-separated UTF-8 files import."""
    users = discovered(cli, project)[:3]
    path = batch_file(tmp_path, users, encoding, delimiter)
    proc = coexist_process("batch", "import", "--project", str(project), str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["assigned"] == {"Wave 1": 3}


def test_broken_quote_names_its_line(project: Path, cli: Cli, tmp_path: Path) -> None:
    """An unterminated quote: one error naming the line it opened on, not an "unknown user"
    made of the rest of the file."""
    users = discovered(cli, project)
    path = tmp_path / "wave.csv"
    path.write_text(f'Source Email,Batch\n{users[0]},W1\n"{users[1]},W1\n{users[2]},W1\n')
    proc = coexist_process("provision", "--project", str(project), "--batch", str(path))
    assert proc.returncode == 2
    error, _fix = error_block(proc.stderr)
    assert 'quote (") opened on line 3 is never closed' in error
    assert "unknown user" not in proc.stderr


# -- anything else ---------------------------------------------------------------------------------
def test_unexpected_error_prints_one_line_and_a_log_path(
    project: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception coexist did not foresee (a bug) is one line naming it and the run's log
    file, which holds the traceback; exit 1."""

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("status table lost its columns")

    monkeypatch.setattr(coexist_commands, "status", broken)
    r = cli("status", "--project", str(project))
    assert r.exit_code == 1
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: unexpected RuntimeError: status table lost its columns")
    log = Path(line.rsplit("the traceback is in ", 1)[1].rstrip(")"))
    assert log.parent == project.resolve() / "logs"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "status table lost" in text
    # and as JSON, for scripts
    r = cli("status", "--project", str(project), "--json")
    payload = json.loads(r.stdout)
    assert r.exit_code == 1 and payload["error"] == "internal" and payload["log"]


def test_unwritable_report_path_is_one_clear_line(project: Path, cli: Cli, tmp_path: Path) -> None:
    """`batch export --output` into a missing directory: one error naming the path (exit 1)."""
    discovered(cli, project)
    out = tmp_path / "no-such-dir" / "export.csv"
    r = cli("batch", "export", "--project", str(project), "--output", str(out))
    assert r.exit_code == 1
    unwrapped = r.stderr.replace("\n", "")  # rich wraps at 80 columns, even inside a path
    assert f"cannot write {out}" in unwrapped and "No such file" in unwrapped
