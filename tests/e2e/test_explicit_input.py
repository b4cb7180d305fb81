"""Selections are explicit and every argument is checked before the first write (issue 10).

Each test reproduces one defect an independent bad-input run found, through the CLI: the
command exits 2 with a message naming the argument (or the user) and the fix, prints no
traceback, and leaves the tenants and the journal exactly as they were (its logs included
when the command is refused before it starts).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from coexist import commands
from coexist.errors import InputError
from coexist.journal import Journal
from coexist.sandbox import Sandbox
from coexist.settings import load_project
from tests.e2e.test_idempotence import journal_snapshot, run_json, world_bytes

Cli = Callable[..., Result]

# 10 seeded source users: 4 user mailboxes in scope (as in test_idempotence).
USERS = 10
# The commands that act on users, and so take --batch, --users or --all.
SELECTING = (
    "provision",
    "prestage",
    "cutover",
    "rollback",
    "verify-mailflow",
    "verify-credentials",
)


def text(result: Result) -> str:
    """stderr with rich's line wrapping undone."""
    return " ".join(result.stderr.split())


def addresses(cli: Cli, project: Path) -> list[str]:
    """The discovered users' source addresses."""
    return sorted(u["user"] for u in run_json(cli, "status", "--project", str(project))["users"])


class Unchanged:
    """Tenants and journal (logs included) as they were; `check()` compares with now."""

    def __init__(self, sb: Sandbox, project: Path, *, logs: bool = True) -> None:
        self.sb, self.project, self.logs = sb, project, logs
        self.world = world_bytes(sb)
        self.journal = journal_snapshot(project, include_logs=logs)

    def check(self, what: object) -> None:
        assert world_bytes(self.sb) == self.world, f"{what} wrote to the tenants"
        assert journal_snapshot(self.project, include_logs=self.logs) == self.journal, (
            f"{what} wrote to the journal"
        )


def refused(result: Result, *words: str) -> None:
    """Exit 2, every word in stderr, no traceback anywhere."""
    out = text(result)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output and "Traceback" not in result.stderr
    for word in words:
        assert word in out, (word, out)


@pytest.fixture
def discovered(make_project: Callable[..., Path], cli: Cli) -> tuple[Path, list[str]]:
    """A create-mode project after discover, with its users' source addresses."""
    project = make_project(users=USERS)
    run_json(cli, "discover", "--project", str(project))
    return project, addresses(cli, project)


# -- selections ---------------------------------------------------------------------------------
BLANK_SELECTIONS = [
    (("--users", ""), "--users names no user"),
    (("--users", " "), "--users names no user"),
    (("--users", " , ,"), "--users names no user"),
    (("--batch", ""), "--batch is blank"),
    (("--batch", "  "), "--batch is blank"),
]


def test_blank_users_selects_nobody_and_fails(
    discovered: tuple[Path, list[str]], sandbox: Sandbox, cli: Cli
) -> None:
    """`--users ""`/`" "` and a blank `--batch` are input errors for every selecting command,
    in plan mode too; nothing is provisioned, planned or journaled."""
    project, _users = discovered
    p = str(project)
    before = Unchanged(sandbox, project)
    for command in SELECTING:
        for args, said in BLANK_SELECTIONS:
            r = cli(command, "--project", p, *args)
            refused(r, said, f"coexist {command}")
            assert not r.stdout, (command, args, r.stdout)  # no plan, no table
    # The reported case: a blank rollback plan listed writes for every cut-over user.
    r = cli("rollback", "--project", p, "--users", " ", "--plan", "--json")
    assert r.exit_code == 2 and json.loads(r.stdout)["error"] == "InputError", r.output
    before.check("a blank selection")
    with pytest.raises(InputError, match="names no user"):
        commands.provision(project, users=[" ", ""])


def test_acting_on_every_user_takes_all(
    discovered: tuple[Path, list[str]], sandbox: Sandbox, cli: Cli
) -> None:
    """With no selection a command that acts on users refuses and names --all; two
    selections at once are refused; `--all` acts on every user."""
    project, users = discovered
    p = str(project)
    before = Unchanged(sandbox, project)
    for command in SELECTING:
        refused(cli(command, "--project", p), "no users selected", "--all")
    refused(
        cli("provision", "--project", p, "--users", users[0], "--all"),
        "pass one of --batch, --users or --all, not --users and --all",
    )
    before.check("a command without a selection")
    plan = run_json(cli, "provision", "--project", p, "--all", "--plan")
    created = [w for w in plan["writes"] if w["operation"] == "New-MailUser"]
    assert len(created) == len(users), plan["writes"]
    # preflight only reads: it still checks every discovered user by default.
    assert json.loads(cli("preflight", "--project", p, "--json").stdout)["users"] == len(users)


# -- arguments checked before the first write ----------------------------------------------------
@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("--older-than", "ninety days"), "--older-than: not a duration: 'ninety days'"),
        (("--older-than", "-5d"), "--older-than: not a duration: '-5d'"),
        (("--older-than", ""), "--older-than: not a duration: ''"),
        (("--at", "tonight"), "--at 'tonight' is not an ISO time"),
    ],
)
def test_bad_older_than_fails_before_any_write(
    args: tuple[str, str],
    said: str,
    discovered: tuple[Path, list[str]],
    sandbox: Sandbox,
    cli: Cli,
) -> None:
    """A bad --older-than (or --at) is refused before licences or mailboxes are touched: no
    user licensed, no step journaled, not even a run started."""
    project, users = discovered
    p = str(project)
    run_json(cli, "provision", "--project", p, "--all")
    before = Unchanged(sandbox, project)
    refused(cli("prestage", "--project", p, "--all", *args), said)
    refused(cli("prestage", "--project", p, "--users", users[0], "--plan", *args), said)
    before.check(args)
    with Journal.open(load_project(project).journal_url) as journal:
        assert {i["phase"] for i in journal.items(kind="user")} == {"provisioned"}


def test_status_refuses_unknown_phase(discovered: tuple[Path, list[str]], cli: Cli) -> None:
    """A misspelt --phase, --state or batch is an error listing what is valid, not an empty
    table with rc 0; the command function refuses it too."""
    project, _users = discovered
    p = str(project)
    refused(cli("status", "--project", p, "--phase", "cutovr"), "'cutovr' is not one of", "cutover")
    refused(cli("status", "--project", p, "--state", "broken"), "'broken' is not one of", "waiting")
    refused(cli("status", "--project", p, "--batch", "wave 9"), "no users in batch 'wave 9'")
    refused(cli("status", "--project", p, "--user", " "), "--user is blank")
    refused(cli("permissions", "--command", "cutovr"), "'cutovr' is not one of")
    with pytest.raises(InputError, match="--phase 'cutovr' is not one of"):
        commands.status(project, phase="cutovr")
    with pytest.raises(InputError, match="--state 'broken' is not one of"):
        commands.status(project, state="broken")
    # The valid values still filter.
    assert run_json(cli, "status", "--project", p, "--phase", "discovered")["users"]
    assert not run_json(cli, "status", "--project", p, "--phase", "cutover")["users"]


def test_rollback_of_a_user_never_cut_over_fails(
    discovered: tuple[Path, list[str]], sandbox: Sandbox, cli: Cli
) -> None:
    """Rolling back a user that was never cut over names the user and its phase, exits 2 and
    writes nothing (it said 'steps: none' and exited 0); so does a batch with no one cut over."""
    project, users = discovered
    p = str(project)
    run_json(cli, "provision", "--project", p, "--users", users[0])
    before = Unchanged(sandbox, project, logs=False)  # a refused rollback logs its run
    for extra in ((), ("--plan",)):
        r = cli("rollback", "--project", p, "--users", users[0], *extra)
        refused(r, "never cut over", f"{users[0]} (phase provisioned)", "coexist status")
        assert "steps:" not in r.stdout
    refused(
        cli("rollback", "--project", p, "--users", f"{users[0]},{users[1]}"),
        f"{users[0]} (phase provisioned)",
        f"{users[1]} (phase discovered)",
    )
    refused(cli("rollback", "--project", p, "--all"), "never cut over", users[0])
    payload = json.loads(cli("rollback", "--project", p, "--users", users[1], "--json").stdout)
    assert payload["error"] == "InputError" and payload["users"] == [users[1]]
    before.check("rollback of users never cut over")


def test_confirm_refuses_a_target_that_is_not_a_candidate(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Cli
) -> None:
    """confirm takes only a candidate of a user waiting for a match: a cut-over user's
    `--target ../../etc` (once journaled) and a waiting user's non-candidate are refused."""
    project = make_project(
        users=USERS,
        **{"mail_users.mode": "match", "mail_users.forward_matched_to_source": True},
    )
    p = str(project)
    run_json(cli, "discover", "--project", p)
    waiting = run_json(cli, "provision", "--project", p, "--all")["awaiting_confirmation"]
    assert len(waiting) == 1, waiting  # the seed's ambiguous user
    ambiguous = str(waiting[0]["user"])
    other = next(u for u in addresses(cli, project) if u != ambiguous)
    for command in ("prestage", "cutover"):
        run_json(cli, command, "--project", p, "--users", other)
    before = Unchanged(sandbox, project)
    refused(
        cli("confirm", "--project", p, "--user", other, "--target", "../../etc"),
        f"{other} is not waiting for a match (phase cutover",
        "coexist status --state waiting",
    )
    refused(
        cli("confirm", "--project", p, "--user", ambiguous, "--target", "../../etc"),
        f"../../etc is not one of the candidates for {ambiguous}",
        f"coexist confirm --user {ambiguous} --target",
    )
    before.check("confirm with a bad target")


def test_demo_refuses_bad_arguments_before_starting(cli: Cli, tmp_path: Path) -> None:
    """demo checks its time scale and user count before a sandbox starts or a file is written."""
    for args, said in (
        (("--time-scale", "0"), "--time-scale 0 must be above 0"),
        (("--users", "0"), "--users 0 must be at least 1"),
    ):
        r = cli("demo", "--dir", str(tmp_path / "demo"), *args)
        refused(r, said)
        assert not (tmp_path / "demo").exists()
    with pytest.raises(InputError, match="--mode 'forward' is not one of"):
        commands.demo(tmp_path / "demo", mode="forward")
