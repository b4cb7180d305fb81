"""Bad input through the CLI: a clear message naming the thing and the fix, and nothing changed.

Issue 3 acceptance: malformed project.toml, unknown scope group, duplicate or
unknown users in a batch file, no free licenses, auto-forwarding blocked at the
source. Each test snapshots the sandbox tenants and the journal before the bad
command and compares after it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from coexist.journal import Journal
from coexist.sandbox import Sandbox, seed
from coexist.settings import JOURNAL_FILE, load_project

Cli = Callable[..., Result]
MakeProject = Callable[..., Path]


# -- helpers -----------------------------------------------------------------------------
def text(result: Result) -> str:
    """The command's output (stdout and stderr) with rich's line wrapping undone."""
    return " ".join(result.output.split())


def world_state(sb: Sandbox) -> dict[str, Any]:
    """A deep, comparable copy of both tenants."""
    with sb.world.lock:
        state: dict[str, Any] = json.loads(json.dumps(sb.world.to_dict(), default=str))
    return state


def journal_state(project: Path) -> dict[str, list[dict[str, Any]]]:
    """Items, steps, checkpoints and settings of the project's journal (logs left out)."""
    with Journal.open(load_project(project).journal_url) as journal:
        return journal.snapshot()


def json_error(result: Result) -> dict[str, Any]:
    """The `--json` error object a failing command printed."""
    payload: dict[str, Any] = json.loads(result.output)
    assert isinstance(payload, dict)
    assert {"error", "message", "next_step"} <= set(payload)
    return payload


def scoped_addresses(cli: Cli, project: Path) -> list[str]:
    """Discover, then return the discovered users' source addresses."""
    r = cli("discover", "--project", str(project), "--json")
    assert r.exit_code == 0, r.output
    status = json.loads(cli("status", "--project", str(project), "--json").output)
    return sorted(u["user"] for u in status["users"])


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


# -- malformed project.toml ----------------------------------------------------------------
def edit_toml(project: Path, old: str, new: str) -> None:
    path = project / "project.toml"
    body = path.read_text()
    assert body.count(old) == 1, old
    path.write_text(body.replace(old, new))


def line_of(project: Path, startswith: str) -> int:
    lines = (project / "project.toml").read_text().splitlines()
    return next(n for n, line in enumerate(lines, start=1) if line.startswith(startswith))


def test_toml_syntax_error_names_file_line_and_key(
    project: Path, sandbox: Sandbox, cli: Cli
) -> None:
    """A TOML syntax error names the file, the line and the key on it; no journal is created."""
    before = world_state(sandbox)
    edit_toml(project, '\nmode = "create"', "\nmode = create")
    line = line_of(project, "mode = create")
    r = cli("discover", "--project", str(project))
    assert r.exit_code == 2
    out = text(r)
    assert "project.toml" in out and f"line {line}" in out
    assert "[mail_users.mode]" in out  # the key, as `[section.key]` after the file
    assert 'key = "text"' in out  # how to write it instead
    payload = json_error(cli("discover", "--project", str(project), "--json"))
    assert payload["error"] == "ConfigError"
    assert payload["key"] == "mail_users.mode" and payload["line"] == line
    assert payload["file"].endswith("project.toml") and payload["next_step"]
    assert not (project / JOURNAL_FILE).exists()
    assert world_state(sandbox) == before


def test_unknown_key_is_named_with_a_suggestion(project: Path, sandbox: Sandbox, cli: Cli) -> None:
    """A misspelt key is named with its section and the nearest known key."""
    before = world_state(sandbox)
    edit_toml(project, "\ngroup = ", "\ngrup = ")
    r = cli("preflight", "--project", str(project))
    assert r.exit_code == 2
    out = text(r)
    assert "unknown key 'grup' in [scope]" in out and "did you mean 'group'?" in out
    payload = json_error(cli("preflight", "--project", str(project), "--json"))
    assert payload["key"] == "scope.grup"
    assert not (project / JOURNAL_FILE).exists()
    assert world_state(sandbox) == before


def test_literal_client_secret_is_refused_naming_the_env_var(
    project: Path, sandbox: Sandbox, cli: Cli
) -> None:
    """A client_secret written in the file is refused, names the env var, and is never echoed."""
    secret = "Lit3ral~Secret.In-The-File_0123456789"
    edit_toml(project, "\n[target]\n", f'\nclient_secret = "{secret}"\n\n[target]\n')
    before = world_state(sandbox)
    r = cli("discover", "--project", str(project))
    assert r.exit_code == 2
    out = text(r)
    assert "[source.client_secret]" in out
    assert "COEXIST_SOURCE_CLIENT_SECRET" in out and "certificate_file" in out
    payload = json_error(cli("discover", "--project", str(project), "--json"))
    assert payload["key"] == "source.client_secret"
    assert secret not in r.output and secret not in json.dumps(payload)
    assert not (project / JOURNAL_FILE).exists()
    assert world_state(sandbox) == before


# -- unknown scope group ---------------------------------------------------------------------
@pytest.fixture
def unknown_group_project(make_project: MakeProject) -> Path:
    """A project whose scope group does not exist in the source tenant."""
    return make_project(**{"scope.group": "Migration Scope - Wave 9"})


def test_discover_unknown_scope_group(
    unknown_group_project: Path, sandbox: Sandbox, cli: Cli
) -> None:
    """discover names the missing group and `[scope] group`, and records no journal item."""
    p = str(unknown_group_project)
    before_world, before_journal = world_state(sandbox), journal_state(unknown_group_project)
    r = cli("discover", "--project", p)
    assert r.exit_code == 2
    out = text(r)
    assert "'Migration Scope - Wave 9'" in out and "not found" in out
    assert "[scope] group" in out
    payload = json_error(cli("discover", "--project", p, "--json"))
    assert payload["error"] == "InputError" and payload["group"] == "Migration Scope - Wave 9"
    assert "[scope] group" in payload["next_step"]
    with Journal.open(load_project(unknown_group_project).journal_url) as journal:
        assert journal.items() == []
    assert journal_state(unknown_group_project) == before_journal
    assert world_state(sandbox) == before_world


def test_preflight_unknown_scope_group(
    unknown_group_project: Path, sandbox: Sandbox, cli: Cli
) -> None:
    """preflight fails the scope-group check naming the group and `[scope] group`; writes nothing."""
    p = str(unknown_group_project)
    before_world, before_journal = world_state(sandbox), journal_state(unknown_group_project)
    r = cli("preflight", "--project", p)
    assert r.exit_code == 1
    # The table wraps cells to the console width; the words must all be there (the `[scope]`
    # is escaped, not eaten as rich markup).
    assert all(word in text(r) for word in ("'Migration", "Wave", "9'", "[scope]", "fail"))
    r = cli("preflight", "--project", p, "--json")
    assert r.exit_code == 1
    checks = {c["check"]: c for c in json.loads(r.output)["checks"]}
    scope = checks["scope group"]
    assert scope["status"] == "fail"
    assert "'Migration Scope - Wave 9'" in scope["detail"] and "[scope] group" in scope["fix"]
    assert journal_state(unknown_group_project) == before_journal
    assert world_state(sandbox) == before_world


# -- duplicate or unknown users in a batch file ------------------------------------------------
@pytest.fixture
def discovered(project: Path, cli: Cli) -> Iterator[tuple[Path, list[str]]]:
    """The default project after discover, with its users' source addresses."""
    yield project, scoped_addresses(cli, project)


def assert_batch_refused(
    cli: Cli, project: Path, sandbox: Sandbox, csv_file: Path, names: list[str]
) -> None:
    """provision --batch and batch import both refuse `csv_file`, name `names`, change nothing."""
    before_world, before_journal = world_state(sandbox), journal_state(project)
    p = str(project)
    for args in (
        ("provision", "--project", p, "--batch", str(csv_file)),
        ("batch", "import", "--project", p, str(csv_file)),
    ):
        r = cli(*args)
        assert r.exit_code == 2, (args, r.output)
        # Without any whitespace: rich wraps a long path mid-word at the console's width, and
        # the temporary directory's length (longer under pytest-xdist) decides where.
        out = "".join(r.output.split())
        assert csv_file.name in out
        for name in names:
            assert "".join(name.split()) in out, (args, name, out)
        payload = json_error(cli(*args, "--json"))
        assert payload["error"] == "InputError" and payload["next_step"]
    assert journal_state(project) == before_journal  # no batch names, no steps
    with Journal.open(load_project(project).journal_url) as journal:
        assert all(i["batch"] is None for i in journal.items(kind="user"))
        assert journal.steps() == []
    assert world_state(sandbox) == before_world  # nothing provisioned


def test_batch_file_with_unknown_users_is_refused(
    discovered: tuple[Path, list[str]], sandbox: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    """Unknown addresses in a batch CSV are named; nothing is provisioned or recorded."""
    project, users = discovered
    unknown = ["nobody@fabrikam.example", "ghost.user@fabrikam.example"]
    csv_file = write_csv(
        tmp_path / "wave1.csv",
        "Source Email,Destination Email,Batch",
        [f"{users[0]},,wave1", f"{unknown[0]},,wave1", f"{users[1]},,wave1", f"{unknown[1]},,"],
    )
    assert_batch_refused(cli, project, sandbox, csv_file, [*unknown, "2 unknown user(s)"])
    r = cli("provision", "--project", str(project), "--batch", str(csv_file), "--json")
    assert json_error(r)["unknown"] == unknown


def test_batch_file_with_duplicate_users_is_refused(
    discovered: tuple[Path, list[str]], sandbox: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    """A user listed twice (even by another of its addresses) is named; nothing changes."""
    project, users = discovered
    with Journal.open(load_project(project).journal_url) as journal:
        item = next(i for i in journal.items(kind="user") if i["source_address"] == users[2])
    upn = item["detail"]["source"]["upn"]
    csv_file = write_csv(
        tmp_path / "wave2.csv",
        "EmailAddress,Batch",
        [
            f"{users[0]},wave2",
            f"{users[1]},wave2",
            f"{users[0]},wave2",  # the same address twice
            f"{upn.upper()},wave2",
            f"{users[2]},wave2",  # the same user by its UPN above (upper-cased) and its address
        ],
    )
    assert_batch_refused(cli, project, sandbox, csv_file, ["listed twice", users[0]])
    r = cli("batch", "import", "--project", str(project), str(csv_file), "--json")
    assert json.loads(r.output)["duplicate"] == [users[0], users[2]]


def test_batch_import_names_rows_without_a_batch_name(
    discovered: tuple[Path, list[str]], sandbox: Sandbox, cli: Cli, tmp_path: Path
) -> None:
    """Rows with no batch name are named by their line in the file; no name is recorded."""
    project, users = discovered
    csv_file = write_csv(
        tmp_path / "partial.csv",
        "Source Email,Batch",
        [f"{users[0]},w1", "", f"{users[1]},", f"{users[2]},w1"],
    )
    before_world, before_journal = world_state(sandbox), journal_state(project)
    r = cli("batch", "import", "--project", str(project), str(csv_file))
    assert r.exit_code == 2
    assert "rows 4 have no batch name" in text(r) and "--name" in text(r)
    assert journal_state(project) == before_journal
    assert world_state(sandbox) == before_world


# -- no free licenses ---------------------------------------------------------------------------
def test_prestage_without_free_licenses_licenses_nobody(
    project: Path, sandbox: Sandbox, cli: Cli
) -> None:
    """prestage says how many seats are needed vs free and what to do; no user is licensed."""
    p = str(project)
    for command in ("discover", "provision"):
        r = cli(command, "--project", p, *(["--all"] if command == "provision" else []), "--json")
        assert r.exit_code == 0, (command, r.output)
    need = len(json.loads(cli("status", "--project", p, "--json").output)["users"])
    with sandbox.world.lock:
        target = sandbox.world.target
        sku = next(s for s in target.skus if s.sku_part_number == "ENTERPRISEPACK")
        consumed = sum(1 for u in target.users.values() if sku.sku_id in u.assigned_licenses)
        sku.enabled = consumed + need - 1  # one seat short
        target.touch()
    before_world, before_journal = world_state(sandbox), journal_state(project)
    r = cli("prestage", "--project", p, "--all")
    assert r.exit_code == 2
    out = text(r)
    assert f"{need} users to convert, {need - 1} free seats" in out and "ENTERPRISEPACK" in out
    assert "free or buy seats" in out and "smaller batch" in out
    payload = json_error(cli("prestage", "--project", p, "--all", "--json"))
    assert payload["needed"] == need and payload["free"] == need - 1
    with sandbox.world.lock:
        licensed = [
            u for u in sandbox.world.target.users.values() if sku.sku_id in u.assigned_licenses
        ]
        assert len(licensed) == consumed
    assert world_state(sandbox) == before_world
    assert journal_state(project) == before_journal  # not even the SKU lock
    status = json.loads(cli("status", "--project", p, "--json").output)
    assert {u["phase"] for u in status["users"]} == {"provisioned"}


# -- auto-forwarding blocked at the source ------------------------------------------------------
def test_preflight_fails_when_source_blocks_auto_forwarding(
    project: Path, sandbox: Sandbox, cli: Cli
) -> None:
    """With the seeded `Automatic` policy left in the source, preflight fails naming the fix."""
    with sandbox.world.lock:
        sandbox.world.source.auto_forwarding_mode = "Automatic"  # the seeded default
        sandbox.world.source.touch()
    before_world, before_journal = world_state(sandbox), journal_state(project)
    r = cli("preflight", "--project", str(project))
    assert r.exit_code == 1
    assert "AutoForwardingMode" in text(r)
    r = cli("preflight", "--project", str(project), "--json")
    assert r.exit_code == 1
    result = json.loads(r.output)
    assert result["ok"] is False
    row = next(c for c in result["checks"] if c["check"] == "source auto-forwarding")
    assert row["status"] == "fail"
    assert "AutoForwardingMode is Automatic" in row["detail"]
    assert "AutoForwardingMode to On" in row["fix"]
    assert (
        "Set-HostedOutboundSpamFilterPolicy -Identity Default -AutoForwardingMode On" in row["fix"]
    )
    assert {b["policy"] for b in row["blocked"]} == {"Default"} and row["blocked"]
    target_row = next(c for c in result["checks"] if c["check"] == "target auto-forwarding")
    assert target_row["status"] == "ok"
    assert world_state(sandbox) == before_world
    assert journal_state(project) == before_journal


# -- secrets never in error output ----------------------------------------------------------------
WRONG_SECRET = "Wr0ng~Cl1ent.Secret-Value_9f8e7d6c5b4a"


def secret_project(sb: Sandbox, directory: Path) -> Path:
    """A project that signs in with a client secret (no sandbox_connection) to the sandbox."""
    from coexist import commands

    conn = sb.connection
    values: dict[str, Any] = {
        "project.name": "wrong-secret",
        "domains.destination_domain": seed.TARGET_DOMAIN,
        "scope.group": seed.SCOPE_GROUP,
        "prestage.license_sku": "ENTERPRISEPACK",
    }
    for side in ("source", "target"):
        t = conn["tenants"][side]
        values.update(
            {
                f"{side}.tenant_id": t["tenant_id"],
                f"{side}.client_id": t["client_id"],
                f"{side}.authority": t["authority"],
                f"{side}.graph_url": t["graph_url"],
                f"{side}.exo_url": t["exo_url"],
                f"{side}.ca_file": str(sb.state_dir / conn["ca_file"]),
                f"{side}.client_secret_env": "COEXIST_TEST_WRONG_SECRET",
            }
        )
    commands.init(directory, overrides=values)
    return directory


def test_wrong_secret_never_appears_in_output_or_journal(
    sandbox: Sandbox, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An authentication failure with a wrong secret says so without printing or journaling it."""
    monkeypatch.setenv("COEXIST_TEST_WRONG_SECRET", WRONG_SECRET)
    project = secret_project(sandbox, tmp_path / "secret-project")
    before = world_state(sandbox)
    p = str(project)
    discover, discover_json = (
        cli("discover", "--project", p),
        cli("discover", "--project", p, "--json"),
    )
    assert discover.exit_code == 2 and "AADSTS7000215" in text(discover)
    payload = json_error(discover_json)
    assert payload["error"] == "AuthenticationError" and "secret" in payload["next_step"]
    preflight = cli("preflight", "--project", p)
    preflight_json = cli("preflight", "--project", p, "--json")
    assert preflight.exit_code == 1 and preflight_json.exit_code == 1
    rows = json.loads(preflight_json.output)["checks"]
    assert {r["check"] for r in rows} == {
        f"{side} {api} sign-in" for side in ("source", "target") for api in ("graph", "exchange")
    }
    assert all(r["status"] == "fail" and "Invalid client secret" in r["detail"] for r in rows)
    for r in (discover, discover_json, preflight, preflight_json):
        assert WRONG_SECRET not in r.output
    with Journal.open(load_project(project).journal_url) as journal:
        dump = json.dumps(journal.snapshot(include_logs=True), default=str)
    assert WRONG_SECRET not in dump
    for f in project.iterdir():
        if f.is_file():
            assert WRONG_SECRET.encode() not in f.read_bytes(), f
    assert world_state(sandbox) == before


def test_prestage_with_a_bad_date_range_changes_nothing(
    project: Path, sandbox: Sandbox, cli: Cli
) -> None:
    """--since/--until that do not parse, or make an empty range, exit 2 naming the option;
    nothing is licensed or journaled."""
    p = str(project)
    assert cli("discover", "--project", p, "--json").exit_code == 0
    assert cli("provision", "--project", p, "--all", "--json").exit_code == 0
    before_world, before_journal = world_state(sandbox), journal_state(project)
    r = cli("prestage", "--project", p, "--all", "--since", "last tuesday")
    assert r.exit_code == 2 and "--since 'last tuesday' is not an ISO 8601 date" in text(r)
    r = cli("prestage", "--project", p, "--all", "--since", "2024-03-01", "--until", "2024-01-01")
    assert r.exit_code == 2 and "the window is empty" in text(r)
    assert world_state(sandbox) == before_world
    assert journal_state(project) == before_journal
