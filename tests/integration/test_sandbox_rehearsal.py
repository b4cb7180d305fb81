"""What an operator rehearsing on the sandbox needs (issue 10): `sandbox policy`,
`sandbox seed-mail`, `sandbox deliver` through the running server, and a restarted sandbox
that keeps its port. `serve` and every command run as real subprocesses; what they changed is
read back with the real clients (httpx over HTTPS, the EXO V3 wire format)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from coexist import commands
from coexist.errors import InputError
from coexist.sandbox import Sandbox, admin, seed, server
from coexist.sandbox.model import World
from tests.clients import exo_http, graph_http, invoke, tls

READY_S = 120.0  # generous: the machine is shared
COMMAND_S = 120.0
SERVE = (sys.executable, "-m", "coexist.cli", "sandbox", "serve")


class Serve:
    """`coexist sandbox serve` in a subprocess; stdout read by a thread, so waiting for
    "ready" never blocks past its deadline."""

    def __init__(self, state: Path, *args: str) -> None:
        self.state = state
        self.proc = subprocess.Popen(
            [*SERVE, "--state", str(state), "--users", "8", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())
            if line.strip() == "ready":
                self.ready.set()

    def wait_ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + READY_S
        while not self.ready.wait(0.05):
            assert self.proc.poll() is None, f"serve exited: {self.stderr()}"
            assert time.monotonic() < deadline, "serve did not print ready"
        conn: dict[str, Any] = json.loads((self.state / "connection.json").read_text())
        return conn

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def stderr(self) -> str:
        if self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()[-3000:]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Serve]:
    """A running `coexist sandbox serve` (8 users) in its own state directory."""
    s = Serve(tmp_path / "state")
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


def coexist(*args: str) -> subprocess.CompletedProcess[str]:
    """A coexist command in a subprocess, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "coexist.cli", *args],
        capture_output=True,
        text=True,
        timeout=COMMAND_S,
        env={**os.environ, "COLUMNS": "200"},
    )


def mailboxes(state: Path, key: str = "source") -> list[str]:
    """Primary SMTP addresses of a tenant's user mailboxes, as saved."""
    tenant = World.load(state).tenants[key]
    return sorted(
        u.primary_smtp or ""
        for u in tenant.users.values()
        if u.recipient_type_details == "UserMailbox"
    )


def forwarding_mode(conn: dict[str, Any], key: str) -> str:
    """The Default policy's AutoForwardingMode as Exchange Online's admin REST reports it."""
    with exo_http(conn, key) as client:
        r = invoke(client, conn, key, "Get-HostedOutboundSpamFilterPolicy")
    assert r.status_code == 200, r.text
    default = next(p for p in r.json()["value"] if p.get("IsDefault"))
    mode: str = default["AutoForwardingMode"]
    return mode


def messages(conn: dict[str, Any], key: str, user: str, **params: str) -> list[dict[str, Any]]:
    """Every message of a mailbox through Graph (all pages)."""
    found: list[dict[str, Any]] = []
    with graph_http(conn, key) as http:
        url: str | None = f"users/{user}/messages"
        query: dict[str, str] | None = {"$top": "100", "$select": "subject,internetMessageId"}
        query = {**query, **params}
        while url:
            r = http.get(url, params=query)
            assert r.status_code == 200, r.text
            body = r.json()
            found += body["value"]
            url, query = body.get("@odata.nextLink"), None
    return found


def copied_project(directory: Path, conn: dict[str, Any]) -> Path:
    """A project whose tenants were filled in by hand from connection.json's values."""
    values: dict[str, Any] = {
        "project.name": "copied",
        "domains.destination_domain": seed.TARGET_DOMAIN,
        "scope.group": seed.SCOPE_GROUP,
    }
    for key in ("source", "target"):
        t = conn["tenants"][key]
        for name in ("tenant_id", "client_id", "certificate_file", "authority"):
            values[f"{key}.{name}"] = t[name]
        values[f"{key}.graph_url"] = t["graph_url"]
        values[f"{key}.exo_url"] = t["exo_url"]
        values[f"{key}.ca_file"] = conn["ca_file"]
    commands.init(directory, overrides=values)
    return directory


# -- sandbox policy ----------------------------------------------------------------------------
def test_sandbox_policy_turns_auto_forwarding_on_for_a_running_sandbox(served: Serve) -> None:
    """A fresh sandbox's Default policy is Automatic (preflight fails); `sandbox policy
    --auto-forwarding on` changes it in the running server, as Exchange's admin REST then
    reports it, and the stopped server saved it."""
    conn = served.wait_ready()
    assert forwarding_mode(conn, "source") == forwarding_mode(conn, "target") == "Automatic"
    done = coexist("sandbox", "policy", "--state", str(served.state), "--auto-forwarding", "on")
    assert done.returncode == 0, done.stderr
    assert "running sandbox" in done.stdout and "Automatic → On" in done.stdout
    assert forwarding_mode(conn, "source") == forwarding_mode(conn, "target") == "On"
    again = coexist(
        "sandbox", "policy", "--state", str(served.state), "--auto-forwarding", "on", "--json"
    )
    assert again.returncode == 0, again.stderr
    result = json.loads(again.stdout)
    assert result["through"] == "server"
    assert [r["changed"] for r in result["tenants"]] == [False, False]
    served.stop()
    saved = World.load(served.state)
    assert saved.source.auto_forwarding_mode == saved.target.auto_forwarding_mode == "On"


def test_sandbox_policy_on_a_stopped_sandbox_is_served_when_it_starts(tmp_path: Path) -> None:
    """With no server running, `sandbox policy` changes the saved state (one tenant), and the
    next start serves it."""
    with Sandbox(tmp_path, seed=2, users=5):
        pass
    done = coexist(
        "sandbox",
        "policy",
        "--state",
        str(tmp_path),
        "--auto-forwarding",
        "off",
        "--tenant",
        "target",
    )
    assert done.returncode == 0, done.stderr
    assert "saved state" in done.stdout and "not running" in done.stdout
    with Sandbox(tmp_path, seed=2, users=5) as sb:
        assert forwarding_mode(sb.connection, "target") == "Off"
        assert forwarding_mode(sb.connection, "source") == "Automatic"


def test_sandbox_policy_reaches_a_sandbox_served_in_process(sandbox: Sandbox) -> None:
    """The admin channel is the `Sandbox` API's too (tests, the demo): the change is made in
    the live World, not in a state.json the server would overwrite."""
    result = commands.sandbox_policy(sandbox.state_dir, "on", "source")
    assert result["through"] == "server"
    assert sandbox.world.source.auto_forwarding_mode == "On"
    assert sandbox.world.target.auto_forwarding_mode == "Automatic"
    assert forwarding_mode(sandbox.connection, "source") == "On"


# -- sandbox seed-mail -------------------------------------------------------------------------
def test_seed_mail_fills_source_mailboxes(served: Serve) -> None:
    """`sandbox seed-mail` gives each named source mailbox its seeded messages in the running
    server (Graph lists them); a second run adds nothing, a larger --per-user tops up."""
    conn = served.wait_ready()
    alice, bob = mailboxes(served.state)[:2]
    args = ("sandbox", "seed-mail", "--state", str(served.state), "--json")
    first = coexist(*args, "--users", f"{alice}, {bob}", "--per-user", "12")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["through"] == "server"
    assert [(r["user"], r["added"]) for r in result["mailboxes"]] == [(alice, 12), (bob, 12)]
    for user in (alice, bob):
        listed = messages(conn, "source", user)
        assert len(listed) == 12
        assert all(m["internetMessageId"].endswith("@mailseed.example>") for m in listed)
    again = json.loads(coexist(*args, "--users", alice, "--per-user", "12").stdout)
    assert [(r["added"], r["seeded"]) for r in again["mailboxes"]] == [(0, 12)]
    more = json.loads(coexist(*args, "--users", alice, "--per-user", "15").stdout)
    assert [(r["added"], r["seeded"]) for r in more["mailboxes"]] == [(3, 15)]
    ids = [m["internetMessageId"] for m in messages(conn, "source", alice)]
    assert len(ids) == len(set(ids)) == 15


def test_seed_mail_into_a_stopped_sandbox_is_served_when_it_starts(tmp_path: Path) -> None:
    """With no server running, `sandbox seed-mail` writes the saved mailstore; the next start
    serves the messages through Graph."""
    with Sandbox(tmp_path, seed=2, users=5):
        pass
    user = mailboxes(tmp_path)[0]
    done = coexist(
        "sandbox", "seed-mail", "--state", str(tmp_path), "--users", user, "--per-user", "6"
    )
    assert done.returncode == 0, done.stderr
    assert "saved state" in done.stdout and "6 added" in done.stdout
    with Sandbox(tmp_path, seed=2, users=5) as sb:
        assert len(messages(sb.connection, "source", user)) == 6


def test_seed_mail_names_an_unknown_mailbox_before_seeding_any(served: Serve) -> None:
    """A name that is no mailbox is refused (rc 2, no traceback), and the good names listed
    with it got nothing."""
    conn = served.wait_ready()
    alice = mailboxes(served.state)[0]
    done = coexist(
        "sandbox", "seed-mail", "--state", str(served.state), "--users", f"{alice},nobody@x.example"
    )
    assert done.returncode == 2
    assert "nobody@x.example" in done.stderr and "Traceback" not in done.stderr
    assert messages(conn, "source", alice) == []
    blank = coexist("sandbox", "seed-mail", "--state", str(served.state), "--users", " , ")
    assert blank.returncode == 2 and "names no mailbox" in blank.stderr


# -- sandbox serve keeps its port --------------------------------------------------------------
def test_restarted_sandbox_keeps_its_port(tmp_path: Path) -> None:
    """A restarted `sandbox serve` listens where it did, so connection.json and a project
    filled in from it stay valid; if another process took the port, serve says so (rc 2, no
    traceback) and `--port 0` serves on a free one."""
    state = tmp_path / "state"
    first = Serve(state)
    try:
        conn = first.wait_ready()
    finally:
        first.stop()
    project = copied_project(tmp_path / "project", conn)
    second = Serve(state)
    try:
        assert second.wait_ready()["base_url"] == conn["base_url"]
        # A project filled in from the first connection.json (no sandbox_connection) runs.
        found = coexist("discover", "--project", str(project), "--json")
        assert found.returncode == 0, found.stderr
        assert json.loads(found.stdout)["added"]  # read from the served tenants
    finally:
        second.stop()
    port = int(conn["base_url"].rsplit(":", 1)[1])
    with socket.socket() as squatter:
        # Past the stopped server's TIME_WAIT connections; a listener still excludes others.
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        taken = Serve(state)
        assert taken.proc.wait(timeout=READY_S) == 2
        stderr = taken.stderr()
        assert f"port {port}" in stderr and "--port 0" in stderr
        assert "Traceback" not in stderr
        elsewhere = Serve(state, "--port", "0")
        try:
            moved = elsewhere.wait_ready()["base_url"]
        finally:
            elsewhere.stop()
    assert moved != conn["base_url"]
    assert admin.remembered_port(state) == int(moved.rsplit(":", 1)[1])


def test_second_server_on_one_state_directory_is_refused(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state directory is served by one process at a time: a second start says which
    process holds it, instead of two servers overwriting each other's state."""
    monkeypatch.setattr(server, "STATE_LOCK_WAIT_S", 0.2)
    other = Sandbox(sandbox.state_dir, seed=7, users=40)
    with pytest.raises(admin.SandboxError, match="another process holds"):
        other.start()
    assert sandbox.serving()


# -- sandbox deliver ---------------------------------------------------------------------------
def test_deliver_stores_the_message_in_the_running_sandbox(served: Serve) -> None:
    """`sandbox deliver` sends through the running server: the recipient's Inbox and the
    sender's Sent Items hold the message, readable through Graph by its Message-ID."""
    conn = served.wait_ready()
    alice, bob = mailboxes(served.state)[:2]
    done = coexist(
        "sandbox",
        "deliver",
        "--state",
        str(served.state),
        "--to",
        alice,
        "--from",
        bob,
        "--subject",
        "Rehearsal 1",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["through"], result["outcome"], result["mailbox"]) == (
        "server",
        "delivered",
        alice,
    )
    assert {(c["kind"], c["address"]) for c in result["stored"]} == {
        ("inbox", alice),
        ("sent", bob),
    }
    mid = result["internet_message_id"]
    query = {"$filter": f"internetMessageId eq '{mid}'"}
    with graph_http(conn, "source") as http:
        inbox = http.get(f"users/{alice}/mailFolders/inbox/messages", params=query)
        sent = http.get(f"users/{bob}/mailFolders/sentitems/messages", params=query)
    assert [m["subject"] for m in inbox.json()["value"]] == ["Rehearsal 1"]
    assert [m["subject"] for m in sent.json()["value"]] == ["Rehearsal 1"]
    text = coexist("sandbox", "deliver", "--state", str(served.state), "--to", alice)
    assert text.returncode == 0, text.stderr
    assert f"stored: inbox copy in source {alice}" in text.stdout


def test_deliver_to_a_stopped_sandbox_only_routes_and_says_so(tmp_path: Path) -> None:
    """With no server running, `sandbox deliver` computes the route from the saved state,
    stores nothing, and says so."""
    with Sandbox(tmp_path, seed=2, users=5) as sb:
        user = mailboxes(tmp_path)[0]
        owner = sb.world.source.address_owner(user)
        assert owner is not None
        before = sb.mail.count("source", owner.id)
    done = coexist("sandbox", "deliver", "--state", str(tmp_path), "--to", user, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["through"], result["outcome"], result["stored"]) == ("route", "delivered", [])
    assert "not running" in result["note"]
    text = coexist("sandbox", "deliver", "--state", str(tmp_path), "--to", user)
    assert "not running" in " ".join(text.stderr.split())
    with Sandbox(tmp_path, seed=2, users=5) as sb:
        assert sb.mail.count("source", owner.id) == before


def test_deliver_without_sandbox_state_is_an_input_error(tmp_path: Path) -> None:
    """A state directory that holds no sandbox is named, with the command that makes one."""
    with pytest.raises(InputError, match="no sandbox state") as err:
        commands.sandbox_deliver(tmp_path, "a@b.example")
    assert err.value.next_step and "sandbox serve" in err.value.next_step


# -- the admin channel -------------------------------------------------------------------------
def test_admin_channel_answers_only_its_token(sandbox: Sandbox) -> None:
    """The admin endpoints refuse a request without the token of admin.json (owner-only),
    with another token, or with a valid Graph token, and a malformed body with 400; nothing
    is changed until the token and a good body come."""
    path = sandbox.state_dir / admin.ADMIN_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    where = admin.announced(sandbox.state_dir)
    assert where is not None and where.url == sandbox.base_url
    conn = sandbox.connection
    url = f"{sandbox.base_url}{admin.PREFIX}/policy"
    body = {"tenants": ["source"], "mode": "On"}
    with graph_http(conn, "source") as graph:
        graph_token = graph.headers["Authorization"]
    with httpx.Client(verify=tls(conn)) as http:
        for headers in (
            {},
            {"Authorization": "Bearer not-the-token"},
            {"Authorization": graph_token},
        ):
            r = http.post(url, json=body, headers=headers)
            assert r.status_code == 401, r.text
        assert sandbox.world.source.auto_forwarding_mode == "Automatic"
        auth = {"Authorization": f"Bearer {where.token}"}
        for bad in ({"tenants": "source", "mode": "On"}, {"tenants": ["source"], "mode": 1}):
            r = http.post(url, json=bad, headers=auth)
            assert r.status_code == 400 and "must be" in r.json()["error"]["message"]
        ok = http.post(url, json=body, headers=auth)
    assert ok.status_code == 200 and ok.json()[0]["after"] == "On"
