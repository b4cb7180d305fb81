"""A whole batch through the CLI: the default flow ends with every user cut over."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import Result


def test_default_flow_cuts_every_scoped_user_over(
    project: Path, cli: Callable[..., Result]
) -> None:
    """preflight → discover → groups → provision → prestage → cutover, then mail flows to the target."""
    p = str(project)
    pre = cli("preflight", "--project", p, "--json")
    assert pre.exit_code == 0, pre.output
    for command in ("discover", "groups", "provision", "prestage", "cutover"):
        every = ["--all"] if command in ("provision", "prestage", "cutover") else []
        r = cli(command, "--project", p, *every, "--json")
        assert r.exit_code == 0, (command, r.output)
    status = json.loads(cli("status", "--project", p, "--json").output)
    assert status["users"] and {u["phase"] for u in status["users"]} == {"cutover"}
    flow = cli("verify-mailflow", "--project", p, "--all", "--json", "--wait", "5")
    assert flow.exit_code == 0, flow.output
    assert all(probe["ok"] for probe in json.loads(flow.output)["probes"])
