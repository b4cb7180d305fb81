"""Idempotence and plan mode of every writing command, through the CLI against the sandbox.

- Twice: each writing command run a second time changes nothing — neither the journal's
  state (`Journal.snapshot()`) nor the tenants (`World.to_dict()`).
- `--plan`: sends no write (the tenants are byte-identical, the journal including its logs
  is unchanged) and lists exactly the writes the real run then makes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result

from coexist.journal import Journal
from coexist.provisioning import mailusers
from coexist.sandbox import Sandbox
from coexist.settings import load_project

# 10 seeded source users → 4 user mailboxes in scope: every step kind, quickly.
USERS = 10

# In lifecycle order. `groups` runs after `provision` so its members map to target objects.
WRITING = ("discover", "provision", "groups", "prestage", "cutover", "rollback")


def every(command: str) -> tuple[str, ...]:
    """The arguments that select every user, for the commands that take a user selection."""
    return () if command in ("discover", "groups") else ("--all",)


# The only sandbox fields that differ between two identical runs: `changed` is stamped by
# `Tenant.touch()` with the wall clock. Nothing else is stripped: a second run that touches
# an object without changing it shows up as a changed `changed` field in `touched()`.
VOLATILE_WORLD_FIELDS = frozenset({"changed"})


# -- observing the two sides ------------------------------------------------------------------
def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE_WORLD_FIELDS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def world_state(sb: Sandbox) -> dict[str, Any]:
    """The tenants as data, without the clock-stamped `changed` fields."""
    with sb.world.lock:
        state: dict[str, Any] = _strip(sb.world.to_dict())
    return state


def world_bytes(sb: Sandbox) -> str:
    """The tenants exactly as they are, every field included."""
    with sb.world.lock:
        return json.dumps(sb.world.to_dict(), sort_keys=True)


def touched(sb: Sandbox) -> dict[str, str]:
    """Object id → `changed` stamp for every object (a write shows as a new stamp)."""
    with sb.world.lock:
        return {
            f"{key}/{obj.id}": obj.changed
            for key, tenant in sb.world.tenants.items()
            for obj in tenant.objects()
        }


def journal_snapshot(project: Path, *, include_logs: bool = False) -> dict[str, Any]:
    journal = Journal.open(load_project(project).journal_url)
    try:
        return journal.snapshot(include_logs=include_logs)
    finally:
        journal.close()


def settled_journal(project: Path) -> dict[str, Any]:
    """The journal's state without the data passes' delta cursors.

    Each data pass ends by saving the deltaLink Graph hands out for the next round, a new
    one every round even when nothing changed (delta query: the link is the round's
    state); the pass step itself writes nothing then. So a second run may move cursors,
    and nothing else.
    """
    snapshot = journal_snapshot(project)
    snapshot["folder_state"] = [
        {**row, "token": "<cursor>" if row.get("token") else None}
        for row in snapshot.get("folder_state", [])
    ]
    return snapshot


def run_json(cli: Callable[..., Result], *args: str) -> dict[str, Any]:
    """Run a command with --json; it must succeed (nothing failed) and print one object."""
    result = cli(*args, "--json")
    assert result.exit_code == 0, (args, result.output)
    data: dict[str, Any] = json.loads(result.stdout)
    assert not data.get("failed"), (args, data["failed"])
    return data


def diff(a: Any, b: Any, path: str = "") -> Iterator[str]:
    """Where two JSON-like values differ (for readable assertion messages)."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            yield from diff(a.get(k), b.get(k), f"{path}/{k}")
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            yield from diff(x, y, f"{path}[{i}]")
    elif a != b:
        yield f"{path}: {a!r} -> {b!r}"


# -- twice -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"cutover.mode": "rename-source"}, id="create-rename-source"),
        # match mode: the seed's ambiguous user stays waiting for `confirm` through both runs.
        pytest.param(
            {"mail_users.mode": "match", "mail_users.forward_matched_to_source": True},
            id="match-forward-on-source",
        ),
    ],
)
def test_every_writing_command_run_twice_changes_nothing_the_second_time(
    overrides: dict[str, Any],
    make_project: Callable[..., Path],
    sandbox: Sandbox,
    cli: Callable[..., Result],
) -> None:
    """discover, provision, groups, prestage, cutover, rollback: run 2 leaves journal and tenants."""
    project = make_project(users=USERS, **overrides)
    p = str(project)
    for command in WRITING:
        first = run_json(cli, command, "--project", p, *every(command))
        journal_1, world_1, stamps_1 = (
            settled_journal(project),
            world_state(sandbox),
            touched(sandbox),
        )
        second = run_json(cli, command, "--project", p, *every(command))
        journal_2, world_2, stamps_2 = (
            settled_journal(project),
            world_state(sandbox),
            touched(sandbox),
        )
        assert journal_2 == journal_1, (command, list(diff(journal_1, journal_2))[:20])
        assert world_2 == world_1, (command, list(diff(world_1, world_2))[:20])
        assert stamps_2 == stamps_1, (command, list(diff(stamps_1, stamps_2))[:20])
        if command != "discover":
            assert second["changed"] == 0, (command, second)
            assert first["changed"] > 0, (command, first)  # the first run did do something
        else:
            assert first["added"] and not second["added"] and not second["aligned"], second


# -- plan mode -------------------------------------------------------------------------------
# New-MailUser's generated password, made known (through our own generator, not an SDK)
# so the test can prove no plan ever shows it.
SENTINEL_PASSWORD = "Pl4n-Sentinel!qZ7x#w2Kd9"

# Steps that only wait for the tenant to catch up: they journal `changed` when the world
# moved (a licensed MailUser became a mailbox) but send nothing, so no plan lists them.
WAIT_STEPS = frozenset({"prestage.mailbox"})


def open_journal(project: Path) -> Journal:
    return Journal.open(load_project(project).journal_url)


def changed_by_last_run(project: Path) -> set[str]:
    """Keys of the steps the most recent real run changed something for."""
    with open_journal(project) as journal:
        last = max(r["id"] for r in journal.runs())
        return {s["key"] for s in journal.steps() if s["run_id"] == last and s["changed"]}


def target_of(project: Path, kind: str, key: str) -> str:
    with open_journal(project) as journal:
        item = journal.get_item(kind, key)
    assert item is not None and item.get("target_id"), (kind, key)
    return str(item["target_id"])


def plan_without_writing(
    sb: Sandbox, project: Path, cli: Callable[..., Result], command: str
) -> dict[str, Any]:
    """`command --plan`, as JSON and as text: no write reaches the tenants or the journal."""
    p = str(project)
    world, journal = world_bytes(sb), journal_snapshot(project, include_logs=True)
    text = cli(command, "--project", p, *every(command), "--plan")
    assert text.exit_code == 0, (command, text.output)
    data = run_json(cli, command, "--project", p, *every(command), "--plan")
    assert world_bytes(sb) == world, f"{command} --plan changed the tenants"
    assert journal_snapshot(project, include_logs=True) == journal, f"{command} --plan journaled"
    assert data["plan"] is True
    for output in (text.output, json.dumps(data)):
        assert SENTINEL_PASSWORD not in output, f"{command} --plan shows the generated password"
    return data


def check_provision(
    project: Path, writes: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any]
) -> None:
    """One New-MailUser per planned user (password redacted) and exactly those were created."""
    new_users = {u["id"]: u for u in _objects(after, "target", "users")} | {}
    for u in _objects(before, "target", "users"):
        new_users.pop(u["id"], None)
    created = [w for w in writes if w["operation"] == "New-MailUser"]
    assert created and len(created) == len(new_users), (created, list(new_users))
    by_upn = {u["user_principal_name"].lower(): u for u in new_users.values()}
    for w in created:
        params = w["params"]
        assert params["Password"] == "[redacted]" and "-Password [redacted]" in w["text"]
        user = by_upn[params["MicrosoftOnlineServicesID"].lower()]
        assert (user["name"], user["alias"], user["display_name"]) == (
            params["Name"],
            params["Alias"],
            params["DisplayName"],
        )
        assert user["recipient_type_details"] == "MailUser"
        assert (
            user["external_email_address"].lower()
            == "smtp:" + params["ExternalEmailAddress"].lower()
        )
    for w in writes:
        if w["operation"] == "Set-MailUser":  # the address list, set right after creation
            user = by_upn[w["params"]["Identity"].lower()]
            planned = w["params"]["EmailAddresses"]
            # New-MailUser made the source address primary; the list makes the planned one.
            assert planned[0] == f"SMTP:{w['params']['Identity']}", planned
            assert user["email_addresses"][: len(planned)] == planned, user["email_addresses"]
        elif w["operation"] == "Remove-MailContact":  # a GAL contact replaced by the MailUser
            assert w["params"]["Identity"] not in {
                c["id"] for c in _objects(after, "target", "contacts")
            }


def check_groups(
    project: Path, writes: list[dict[str, Any]], before: dict[str, Any], after: dict[str, Any]
) -> None:
    """The planned group copies are the ones created, with every planned member added."""
    old = {g["id"] for g in _objects(before, "target", "groups")}
    new = {g["id"]: g for g in _objects(after, "target", "groups") if g["id"] not in old}
    planned = {
        w["params"].get("Name") or w["params"].get("displayName")
        for w in writes
        if w["operation"]
        in ("New-DistributionGroup", "New-DynamicDistributionGroup", "POST /groups")
    }
    assert planned and planned == {g["name"] or g["display_name"] for g in new.values()}
    groups = {g["id"]: g for g in _objects(after, "target", "groups")}
    for w in writes:
        if w["operation"] == "Add-DistributionGroupMember":
            member = w["params"]["Member"]
        elif w["operation"].endswith("/members/$ref"):
            member = w["params"]["@odata.id"].rsplit("/", 1)[1]
        else:
            continue
        if member.startswith("<the new copy of group "):
            member = target_of(project, "group", member.rsplit(" ", 1)[1].rstrip(">"))
        group = groups[target_of(project, "group", w["step"].split(":", 1)[1])]
        assert member.lower() in {m.lower() for m in group["members"]}, (w["text"], group["name"])


def _objects(world: dict[str, Any], tenant: str, kind: str) -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = world["tenants"][tenant][kind]
    return objects


CHECKS: dict[str, Callable[[Path, list[dict[str, Any]], dict[str, Any], dict[str, Any]], None]] = {
    "provision": check_provision,
    "groups": check_groups,
}


def test_plan_sends_no_write_and_lists_the_writes_the_real_run_makes(
    make_project: Callable[..., Path],
    sandbox: Sandbox,
    cli: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """--plan on every writing command changes nothing and names each write the real run makes."""
    monkeypatch.setattr(mailusers, "new_password", lambda length=24: SENTINEL_PASSWORD)
    project = make_project(
        users=USERS, **{"cutover.mode": "rename-source", "mail_users.replace_contacts": True}
    )
    p = str(project)
    for command in WRITING:
        plan = plan_without_writing(sandbox, project, cli, command)
        before = world_state(sandbox)
        real = run_json(cli, command, "--project", p, *every(command))
        if command == "discover":  # discover writes only the journal: its plan is what it adds
            assert plan["added"] and sorted(plan["added"]) == sorted(real["added"])
            continue
        writes: list[dict[str, Any]] = plan["writes"]
        planned = {w["step"] for w in writes}
        changed = {k for k in changed_by_last_run(project) if k.split(":")[0] not in WAIT_STEPS}
        assert planned == changed, command
        assert all(w["tenant"] in ("source", "target") and w["operation"] for w in writes)
        check = CHECKS.get(command)
        if check is not None:
            check(project, writes, before, world_state(sandbox))
