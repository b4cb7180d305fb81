"""The sandbox server: connection.json, persistence, the CLI, and chaos faults."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from coexist.sandbox import Sandbox
from coexist.sandbox.model import World
from coexist.sandbox.server import profile_settings
from tests.clients import graph_http, tls

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


# `coexist sandbox serve` promises to stop within 5 s of SIGINT or SIGTERM, saving its state
# (issue 9). The bound is the product's promise, so here a timing bound is the acceptance;
# the server cuts its own stop short well before it (server.STOP_DEADLINE_S).
STOP_PROMISE_S = 5.0
SIGNAL_RUNS = 20
SIGNAL_SEED = 9
PHASES = ("startup", "idle", "mid-request")


class Served:
    """`coexist sandbox serve` in a subprocess, its stdout read by a thread (so waiting for
    "ready" never blocks past a deadline)."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coexist.cli", "sandbox", "serve", "--state", str(state)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.started = time.monotonic()
        self.ready_after: float | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip() == "ready" and self.ready_after is None:
                self.ready_after = time.monotonic() - self.started

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.ready_after is None:
            assert self.proc.poll() is None, f"serve exited: {self.stderr()}"
            assert time.monotonic() < deadline, "serve did not print ready"
            time.sleep(0.01)

    def connection(self) -> dict[str, Any]:
        conn: dict[str, Any] = json.loads((self.state / "connection.json").read_text())
        return conn

    def signal_and_wait(self, sig: int) -> tuple[int, float]:
        """Send `sig`; the exit status and the seconds from the signal to the exit."""
        sent = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=60)  # generous: the assertion is on the measure
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -999, time.monotonic() - sent
        return code, time.monotonic() - sent

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-2000:]


def hold_request_open(conn: dict[str, Any]) -> ssl.SSLSocket:
    """A POST whose body never finishes arriving: in flight until the server gives up."""
    port = int(conn["base_url"].rsplit(":", 1)[1])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock = tls(conn).wrap_socket(raw, server_hostname="127.0.0.1")
    sock.sendall(
        b"POST /v1.0/users HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b'Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"displayName": '
    )
    return sock


def rename(conn: dict[str, Any], user_id: str, name: str) -> httpx.Client:
    """PATCH a user's displayName through Graph; the client stays open (a keep-alive
    connection the server has to close when it stops)."""
    http = graph_http(conn, "source")
    r = http.patch(f"users/{user_id}", json={"displayName": name})
    assert r.status_code == 204, r.text
    return http


@dataclass
class SignalRun:
    """One run of the signal test: what was done, and how the process ended."""

    n: int
    phase: str
    sig: int
    state: Path
    name: str = ""  # the display name written before the signal
    code: int = 0
    took: float = 0.0
    stderr: str = ""

    def __str__(self) -> str:
        return (
            f"run {self.n} ({self.phase}, {signal.Signals(self.sig).name}): "
            f"exit {self.code} {self.took:.2f} s after the signal\n{self.stderr}"
        )


def signal_run(
    template: Path, user_id: str, run: SignalRun, rng: random.Random, ready_times: list[float]
) -> SignalRun:
    """Serve a copy of `template`, signal it at the run's moment, wait for the exit."""
    shutil.copytree(template, run.state)
    served = Served(run.state)
    held: list[Any] = []
    try:
        if run.phase == "startup":
            time.sleep(rng.uniform(0, 1) * statistics.median(ready_times))
        else:
            served.wait_ready()
            conn = served.connection()
            run.name = f"Renamed before signal {run.n}"
            http = rename(conn, user_id, run.name)
            if run.phase == "mid-request":
                held += [http, hold_request_open(conn)]  # a keep-alive connection, a request
            else:
                http.close()
            time.sleep(rng.uniform(0, 0.3))
        run.code, run.took = served.signal_and_wait(run.sig)
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
        for h in held:
            h.close()
    if served.ready_after is not None:
        ready_times.append(served.ready_after)
    run.stderr = served.stderr()
    return run


@pytest.mark.timeout(900)
def test_serve_stops_within_5_s_of_a_signal_at_any_moment(tmp_path: Path) -> None:
    """20 runs of `coexist sandbox serve`, each sent SIGINT or SIGTERM (seeded) at a seeded
    moment during start-up, idle after ready, or with a request held open and a keep-alive
    connection: each exits within 5 s of the signal, and its state directory loads with the
    write made before the signal."""
    template = tmp_path / "template"
    with Sandbox(template, seed=5, users=8) as sb:  # certificates and state made once
        user_id = next(u.id for u in sb.world.source.users.values())
    phases = [PHASES[n % len(PHASES)] for n in range(SIGNAL_RUNS)]
    random.Random(SIGNAL_SEED).shuffle(phases)
    ready_times = [1.5]  # start-up moments are a seeded share of the start-ups seen so far
    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: well under a minute
        futures = []
        for n, phase in enumerate(phases):
            rng = random.Random(SIGNAL_SEED * 1000 + n)
            sig = rng.choice((signal.SIGINT, signal.SIGTERM))
            run = SignalRun(n, phase, sig, tmp_path / f"run{n}")
            futures.append(pool.submit(signal_run, template, user_id, run, rng, ready_times))
        runs = [f.result() for f in futures]
    for run in runs:
        assert run.took < STOP_PROMISE_S, run
        world = World.load(run.state)  # whole, whatever the moment: state.json is replaced
        if run.phase == "startup":
            # Before its handlers are installed the interpreter's defaults end the process
            # (KeyboardInterrupt: status 1 inside click, killed by SIGINT outside it; or
            # killed by SIGTERM); after, it stops and exits 0.
            assert run.code in (0, 1, -signal.SIGINT, -signal.SIGTERM), run
            if run.code == 1:
                assert any(w in run.stderr for w in ("KeyboardInterrupt", "Aborted", "starting")), (
                    run
                )
        else:
            assert run.code == 0, run
            assert world.source.users[user_id].display_name == run.name, run


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
