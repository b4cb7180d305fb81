"""The sandbox server: connection.json, persistence, the CLI, and chaos faults."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from coexist.sandbox import Sandbox
from coexist.sandbox.model import World
from coexist.sandbox.server import profile_settings
from tests.clients import tls

TENANT_KEYS = {
    "tenant_id",
    "authority",
    "graph_url",
    "exo_url",
    "client_id",
    "client_secret",
    "certificate_file",
    "domains",
}


def test_connection_json_describes_both_tenants(sandbox: Sandbox) -> None:
    """connection.json names the CA and, per tenant, every endpoint and credential."""
    conn = json.loads((sandbox.state_dir / "connection.json").read_text())
    assert Path(conn["ca_file"]).is_file()
    for key in ("source", "target"):
        t = conn["tenants"][key]
        assert set(t) >= TENANT_KEYS
        assert t["graph_url"].endswith("/v1.0")
        assert t["exo_url"].endswith(f"/adminapi/beta/{t['tenant_id']}/InvokeCommand")
        assert Path(t["certificate_file"]).is_file()
        assert t["domains"]


def test_state_survives_a_restart(tmp_path: Path) -> None:
    """A stopped sandbox is served again from its state directory with the same tenants."""
    with Sandbox(tmp_path, seed=3, users=5) as sb:
        user = next(iter(sb.world.source.users.values()))
        with sb.world.lock:
            user.display_name = "Renamed While Running"
            sb.world.source.touch(user)
        first = sb.connection
    again = World.load(tmp_path)
    assert again.source.users[user.id].display_name == "Renamed While Running"
    with Sandbox(tmp_path, seed=99, users=1) as sb2:  # seed ignored: state exists
        assert sb2.world.source.users[user.id].display_name == "Renamed While Running"
        assert (
            sb2.connection["tenants"]["source"]["client_id"]
            == first["tenants"]["source"]["client_id"]
        )


def test_cli_serve_prints_ready_and_stops_on_interrupt(tmp_path: Path) -> None:
    """`coexist sandbox serve` writes connection.json, prints ready, and exits on SIGINT."""
    state = tmp_path / "st"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "coexist.cli",
            "sandbox",
            "serve",
            "--state",
            str(state),
            "--users",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
            if line.strip() == "ready":
                break
        assert "ready" in lines, lines
        conn = json.loads((state / "connection.json").read_text())
        src = conn["tenants"]["source"]
        with httpx.Client(verify=tls(conn)) as http:
            r = http.get(
                f"{src['authority']}/{src['tenant_id']}/v2.0/.well-known/openid-configuration"
            )
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert (state / "state.json").is_file()


@pytest.fixture
def chaotic(sandbox: Sandbox) -> Any:
    """The session sandbox switched to the chaos profile with every request faulted."""
    settings = profile_settings("chaos", 5)
    settings.chaos_rate = 1.0
    from coexist.sandbox import seed

    sandbox.reset(seed.generate(5, 10, settings))
    yield sandbox
    sandbox.reset()


def test_chaos_profile_throttles_fails_and_resets(chaotic: Sandbox) -> None:
    """Under chaos every Graph call fails: 429 or 503 with Retry-After, or a dropped connection."""
    conn = chaotic.connection
    seen: set[str] = set()
    with httpx.Client(verify=tls(conn), timeout=10) as http:
        for _ in range(40):
            try:
                r = http.get(conn["tenants"]["source"]["graph_url"] + "/organization")
            except httpx.HTTPError:
                seen.add("reset")
                continue
            assert r.status_code in (429, 503)
            assert float(r.headers["Retry-After"]) > 0
            assert "code" in r.json()["error"]
            seen.add(str(r.status_code))
    assert seen == {"429", "503", "reset"}
