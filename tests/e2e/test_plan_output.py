"""What `--plan` prints (issue 10): markup escaped, no Python `None`, "would change".

Rich took `[redacted]` and any `[..]` in a name for markup and dropped them, plans printed
`-ForwardingSmtpAddress None`, and plan mode reported "changed 4" though nothing changed.
Each test runs the plan through the CLI, as text and as JSON, and proves it sent nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import Result

from coexist.sandbox import Sandbox, seed
from tests.e2e.test_idempotence import journal_snapshot, run_json, world_bytes

Cli = Callable[..., Result]

USERS = 10
BRACKETED = "Ann [Sales] Lee"  # a display name rich markup would have eaten


def flat(text: str) -> str:
    """Output with rich's line wrapping undone."""
    return " ".join(text.split())


def plan(sb: Sandbox, project: Path, cli: Cli, command: str) -> tuple[Result, dict[str, Any]]:
    """`command --all --plan` as text and as JSON; neither writes to tenants or journal."""
    p = str(project)
    world, journal = world_bytes(sb), journal_snapshot(project, include_logs=True)
    text = cli(command, "--project", p, "--all", "--plan")
    assert text.exit_code == 0, (command, text.output)
    data = run_json(cli, command, "--project", p, "--all", "--plan")
    assert world_bytes(sb) == world, f"{command} --plan wrote to the tenants"
    assert journal_snapshot(project, include_logs=True) == journal, f"{command} --plan journaled"
    assert data["plan"] is True and data["writes"], data
    return text, data


def bracket_a_scoped_name(sb: Sandbox) -> str:
    """Give a scoped source user a display name with `[...]` in it; return its id."""
    with sb.world.lock:
        source = sb.world.source
        scope = next(g for g in source.groups.values() if g.display_name == seed.SCOPE_GROUP)
        user = next(
            source.users[m]
            for m in scope.members
            if m in source.users and source.users[m].recipient_type_details == "UserMailbox"
        )
        user.display_name = BRACKETED
        source.touch()
        return user.id


def test_plan_shows_redacted_password(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Cli
) -> None:
    """The provision plan shows `-Password [redacted]`, the `[target]` tenant and a display
    name with brackets, as sent; rich markup eats none of them."""
    project = make_project(users=USERS)
    bracket_a_scoped_name(sandbox)
    run_json(cli, "discover", "--project", str(project))
    text, data = plan(sandbox, project, cli, "provision")
    out = flat(text.stdout)
    created = [w for w in data["writes"] if w["operation"] == "New-MailUser"]
    assert created and out.count("-Password [redacted]") == len(created), out
    assert out.count("would [target] New-MailUser") == len(created), out
    assert f"-DisplayName '{BRACKETED}'" in out, out
    assert "-Password  " not in text.stdout and "-Password -" not in out


def test_plan_omits_unset_parameters_and_shows_cleared_ones_as_null(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Cli
) -> None:
    """No plan prints Python's `None` (or True/False): a parameter coexist does not set is
    not passed at all; one it clears is sent as null and shown as PowerShell's `$null`;
    Graph request bodies are shown as the JSON sent."""
    project = make_project(users=USERS)
    p = str(project)
    run_json(cli, "discover", "--project", p)
    run_json(cli, "provision", "--project", p, "--all")
    prestage_text, prestage = plan(sandbox, project, cli, "prestage")
    graph = [w for w in prestage["writes"] if w["system"] == "graph"]
    assert graph, prestage["writes"]  # licences are assigned through Graph
    for w in graph:
        body = w["text"].split(w["operation"], 1)[1]
        assert json.loads(body) == w["params"], w["text"]
    run_json(cli, "prestage", "--project", p, "--all")
    cutover_text, cutover = plan(sandbox, project, cli, "cutover")
    swaps = [w for w in cutover["writes"] if w["operation"] == "Set-Mailbox"]
    assert swaps, cutover["writes"]
    for w in swaps:  # forward-on-source: the target stops forwarding, the source forwards
        for name, value in w["params"].items():
            shown = f"-{name} $null" if value is None else f"-{name} "
            assert shown in w["text"], (name, w["text"])
    assert any(w["params"].get("ForwardingSmtpAddress", "") is None for w in swaps), (
        "the target's forward back to the source is cleared"
    )
    for text in (prestage_text.stdout, cutover_text.stdout):
        assert not re.search(r"\b(None|True|False)\b", text), text


def test_plan_mode_never_says_changed(
    make_project: Callable[..., Path], sandbox: Sandbox, cli: Cli
) -> None:
    """Plan mode says "would change N" (JSON: `would_change`), never "changed", on stdout or
    in the progress lines on stderr; the real run then says "changed" for the same count."""
    project = make_project(users=USERS)
    p = str(project)
    discover = cli("discover", "--project", p, "--plan")
    assert discover.exit_code == 0 and "would have added" in flat(discover.stdout)
    run_json(cli, "discover", "--project", p)
    text, data = plan(sandbox, project, cli, "provision")
    assert "changed" not in data and data["would_change"] > 0, data
    said = flat(text.stdout)
    assert f"would change {data['would_change']}" in said, said
    for stream in (text.stdout, text.stderr):
        assert not re.search(r"\bchanged\b", stream), stream
    real = run_json(cli, "provision", "--project", p, "--all")
    assert "would_change" not in real and real["changed"] == data["would_change"], real
