"""Least privilege: the permissions table, its checks, and `coexist permissions --json`."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from coexist.cli import main
from coexist.permissions import (
    EXCHANGE_ROLE,
    EXCHANGE_ROLE_PROBE,
    EXCHANGE_ROLES,
    MANAGE_AS_APP,
    MOVER_NEEDS,
    NEEDS,
    POLICY_READER,
    Need,
    exchange_role_in_token,
    is_exchange_role,
    needs,
    satisfied,
)
from coexist.sandbox.graph import exchange_io

EXCHANGE_ADMIN = "29232cdf-9323-42fd-ade2-1d097af3e4de"
RECIPIENT_ADMIN = "31392ffb-586c-42d1-9346-e59415a2cc4e"
WRITING_COMMANDS = ("provision", "groups", "prestage", "cutover", "rollback")


def permissions_json(*args: str) -> list[dict[str, str]]:
    result = CliRunner().invoke(main, ["permissions", "--json", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    rows: list[dict[str, str]] = json.loads(result.output)
    return rows


def test_every_need_is_well_formed() -> None:
    """Each need names a tenant, an API, at least one permission, and why it is needed."""
    for command, items in NEEDS.items():
        assert items, command
        for n in items:
            assert n.tenant in ("source", "target") and n.api in ("graph", "exchange")
            assert n.any_of and n.why and n.label == n.any_of[0]


def test_writes_are_asked_only_where_coexist_writes() -> None:
    """No command needs a Graph *write* permission in the source tenant; discover reads only."""
    for n in needs():
        if n.tenant == "source" and n.api == "graph":
            assert not any("ReadWrite" in p for p in n.any_of[:1]), n
    for n in needs("discover"):
        assert "ReadWrite" not in n.label, n


@pytest.mark.parametrize("command", ["discover", *WRITING_COMMANDS, "preflight"])
def test_cli_lists_each_commands_needs(command: str) -> None:
    """`coexist permissions --command C --json` lists exactly C's needs, per tenant and API."""
    rows = permissions_json("--command", command)
    expected = [
        {
            "tenant": n.tenant,
            "api": n.api,
            "permission": n.label,
            "alternatives": ", ".join(n.any_of[1:]),
            "why": n.why,
        }
        for n in needs(command)
    ]
    assert rows == expected and rows


def test_rediscover_and_rollback_share_their_counterparts_needs() -> None:
    """rediscover needs what discover needs; rollback what cutover needs, plus reading the
    target mailboxes (it counts the mail delivered there since cutover)."""
    assert permissions_json("--command", "rediscover") == permissions_json("--command", "discover")
    rollback = permissions_json("--command", "rollback")
    cutover = permissions_json("--command", "cutover")
    assert rollback[: len(cutover)] == cutover
    [extra] = rollback[len(cutover) :]
    assert (extra["tenant"], extra["permission"]) == ("target", "Mail.ReadBasic.All")


def test_cli_lists_everything_deduplicated_without_a_command() -> None:
    """Without --command: every need of every command, each (tenant, api, set) once."""
    rows = permissions_json()
    keys = [(r["tenant"], r["api"], r["permission"], r["alternatives"]) for r in rows]
    assert len(keys) == len(set(keys)) == len(needs())
    commands_needs = {(n.tenant, n.api, n.any_of) for c in NEEDS for n in needs(c)}
    assert {(n.tenant, n.api, n.any_of) for n in needs()} == commands_needs
    assert ("target", "graph", "Mail.Send") in {
        (r["tenant"], r["api"], r["permission"]) for r in rows
    }


def test_unknown_command_needs_nothing_and_is_refused() -> None:
    """A command coexist does not know needs nothing (rather than everything); asked for on
    the command line it is an error listing the commands, not an empty table with rc 0."""
    assert needs("no-such-command") == []
    result = CliRunner().invoke(main, ["permissions", "--command", "no-such-command"])
    assert result.exit_code == 2 and "'no-such-command' is not one of" in result.stderr
    assert "'prestage'" in result.stderr


def test_human_listing_is_a_table_for_the_command() -> None:
    """Without --json a table titled for the command is printed (cells wrap to the width)."""
    result = CliRunner().invoke(main, ["permissions", "--command", "prestage"])
    assert result.exit_code == 0
    assert "permissions for prestage" in result.output
    rows = result.output.count("target") + result.output.count("source")
    assert rows >= len(needs("prestage"))


def test_prestage_names_the_role_its_size_read_needs() -> None:
    """Pre-stage reads the source's Get-MailboxStatistics for its first-pass estimate: the
    listing names that read's Exchange role and ManageAsApp at the source."""
    source = [n for n in needs("prestage") if n.tenant == "source" and n.api == "exchange"]
    assert {n.any_of for n in source} == {MANAGE_AS_APP, EXCHANGE_ROLE}
    assert any("Get-MailboxStatistics" in n.why for n in source)


def labels(tenant: str, command: str, mover: str) -> set[str]:
    return {n.label for n in needs(command, mover) if n.tenant == tenant and n.api == "graph"}


@pytest.mark.parametrize("command", ["prestage", "cutover"])
def test_each_data_path_lists_exactly_what_it_needs(command: str) -> None:
    """The import/export mover: export, folder and item reads at the source; import, folder
    writes and item deletes at the target; plus the reads that name default folders. The
    graph-items mover: the item APIs, read at the source and written at the target."""
    base = {n.label for n in NEEDS[command] if n.api == "graph"}
    names = {"User.Read.All", "Mail.ReadBasic.All", "Calendars.ReadBasic", "Contacts.Read",
             "Tasks.Read.All"}  # fmt: skip
    io_source = labels("source", command, "graph-import-export") - base
    io_target = labels("target", command, "graph-import-export") - base
    assert io_source == {"MailboxItem.Export.All", "MailboxFolder.Read.All",
                         "MailboxItem.Read.All", *names}  # fmt: skip
    assert io_target == {"MailboxItem.ImportExport.All", "MailboxFolder.ReadWrite.All",
                         "MailboxItem.ReadWrite.All", *names}  # fmt: skip
    assert labels("source", command, "graph-items") - base == {
        "Mail.Read", "Contacts.Read", "Calendars.Read", "Tasks.Read.All"}  # fmt: skip
    assert labels("target", command, "graph-items") - base == {
        "Mail.ReadWrite",
        "Contacts.ReadWrite",
        "Calendars.ReadWrite",
        "Tasks.ReadWrite.All",
    }
    assert needs(command, "none") == needs(command) == NEEDS[command]
    assert needs("discover", "graph-import-export") == NEEDS["discover"]


def test_the_mover_needs_match_what_the_sandbox_demands() -> None:
    """Each import/export permission the mover asks for is one the sandbox's face accepts for
    that operation (the API pages' tables)."""
    io = {n.any_of for n in MOVER_NEEDS["graph-import-export"]}
    for demanded in (exchange_io.EXPORT, exchange_io.FOLDER_READ, exchange_io.ITEM_READ,
                     exchange_io.IMPORT, exchange_io.FOLDER_WRITE, exchange_io.ITEM_DELETE):  # fmt: skip
        assert any(set(a) & set(demanded) for a in io), demanded


def test_cli_adds_the_mover_needs() -> None:
    """`coexist permissions --command cutover --mover graph-import-export` lists the mover's too."""
    rows = permissions_json("--command", "cutover", "--mover", "graph-import-export")
    assert len(rows) == len(needs("cutover", "graph-import-export")) > len(needs("cutover"))
    assert {"tenant": "target", "api": "graph", "permission": "MailboxItem.ImportExport.All",
            "alternatives": "", "why": "import items"} in rows  # fmt: skip


# -- satisfied ------------------------------------------------------------------------------
GRAPH_READ = Need("source", "graph", ("User.Read.All", "Directory.Read.All"), "read users")
EXO_ROLE = Need("target", "exchange", tuple(EXCHANGE_ROLES.values()), "run cmdlets")
EXO_APP = Need("target", "exchange", MANAGE_AS_APP, "use the admin API")


@pytest.mark.parametrize(
    ("need", "roles", "wids", "ok"),
    [
        (GRAPH_READ, {"User.Read.All"}, set(), True),
        (GRAPH_READ, {"Directory.Read.All"}, set(), True),  # any alternative will do
        (GRAPH_READ, {"Mail.Send"}, {EXCHANGE_ADMIN}, False),  # a role id is not a Graph grant
        (EXO_ROLE, set(), {RECIPIENT_ADMIN}, True),
        (EXO_ROLE, {"Exchange Administrator"}, set(), False),  # roles come from wids only
        (EXO_ROLE, set(), {"00000000-0000-0000-0000-000000000000"}, False),
        (EXO_APP, {"Exchange.ManageAsApp"}, set(), True),
        (EXO_APP, set(), {EXCHANGE_ADMIN}, False),  # the role alone is not the app permission
    ],
)
def test_satisfied_reads_roles_for_permissions_and_wids_for_directory_roles(
    need: Need, roles: set[str], wids: set[str], ok: bool
) -> None:
    """Graph and Exchange.ManageAsApp come from the token's `roles`; Entra roles from `wids`."""
    assert satisfied(need, roles, wids) is ok


def test_exchange_role_needs_are_told_apart_from_manage_as_app() -> None:
    """An Exchange role need is answered by Exchange (the probe); ManageAsApp by the token."""
    assert is_exchange_role(EXO_ROLE) and not is_exchange_role(EXO_APP)
    assert not is_exchange_role(GRAPH_READ)
    assert EXCHANGE_ROLE_PROBE[0].startswith("Get-")  # read-only by construction


def test_exchange_role_in_token_names_the_entra_role() -> None:
    """wids → the Exchange admin role they name; none for an app granted inside Exchange."""
    assert exchange_role_in_token({RECIPIENT_ADMIN}) == "Exchange Recipient Administrator"
    assert exchange_role_in_token(set()) is None
    assert exchange_role_in_token({"f2ef992c-3afb-46b9-b7cf-a126ee74c451"}) is None  # Global Reader


def test_preflight_lists_what_reads_the_forwarding_policies() -> None:
    """`coexist permissions --command preflight` names the policy readers in both tenants."""
    rows = [n for n in needs("preflight") if n.any_of == POLICY_READER]
    assert {n.tenant for n in rows} == {"source", "target"}
