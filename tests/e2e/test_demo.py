"""`coexist demo --dir DIR` leaves a project and a sandbox state operators can keep using."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from click.testing import Result


def test_demo_dir_keeps_project_and_sandbox_state(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """After the demo, status reads DIR as a project and deliver routes against DIR/sandbox."""
    demo = cli("demo", "--dir", str(tmp_path), "--users", "20", "--json")
    assert demo.exit_code == 0, demo.output[-2000:]
    assert json.loads(demo.stdout)["ok"] is True
    status = json.loads(cli("status", "--project", str(tmp_path), "--json").stdout)
    users = status["users"]
    assert users and all(u["phase"] == "cutover" and u["state"] == "ok" for u in users)
    # Forward-on-source: the old source address now reaches the target mailbox.
    routed = cli(
        "sandbox",
        "deliver",
        "--state",
        str(tmp_path / "sandbox"),
        "--to",
        users[0]["user"],
        "--json",
    )
    assert routed.exit_code == 0, routed.output
    result = json.loads(routed.stdout)
    assert result["outcome"] == "delivered" and result["tenant"] == "target"
    assert result["mailbox"].lower() == users[0]["target"].lower()
