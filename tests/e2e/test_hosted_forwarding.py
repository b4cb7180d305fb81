"""Hosted Exchange coexistence through coexist's commands (the seed's phased move): the
migration account is granted FullAccess over remote PowerShell, forwarding objects (hidden
"(External Forward)" contacts) are made at prestage, cutover forwards each mailbox to its
object without a local copy, mail to the old address then lands once in the new mailbox, and
rollback removes the forward. Re-runs change nothing; plans send nothing; a cutover SIGKILLed
at random points and run again ends in the same state.

The sandbox runs in this process (Exchange 2016 -> Exchange 2019 organisations); coexist
reaches it over HTTPS only: EWS for the data, WinRM/PSRP (pypsrp) for the cmdlets. What the
organisations hold is read back with the real pypsrp client.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from coexist import commands, credcheck, credentials
from coexist.ewsdemo import SCENARIOS, Run, _holdings, _pairs, _settings
from coexist.provisioning.grants import has_full_access
from coexist.sandbox import mailseed
from coexist.sandbox.ews import add_account
from coexist.sandbox.server import Sandbox
from coexist.tenants.psrp import PsrpEndpoint, PsrpLogin, PsrpRunner
from coexist.vault import ENV_KEY, new_key
from tests.cli_env import assert_no_unawaited_coroutine, cli_env

REPO = Path(__file__).resolve().parents[2]
KEY = new_key()
ENV = {ENV_KEY: KEY}
USERS, ITEMS = 2, 12
ACCOUNT = "svc-migrate"


@pytest.fixture(autouse=True)
def vault_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands run in this process read the vault key from the environment."""
    monkeypatch.setenv(ENV_KEY, KEY)


@contextmanager
def scene(
    tmp_path: Path, auth: str = "ntlm", access: str = "delegation"
) -> Iterator[tuple[Run, dict[str, str]]]:
    """Exchange 2016 -> 2019 with seeded source mailboxes; the source's migration account has
    no grant yet (coexist grant-access gives it), the source's remote PowerShell is set."""
    project = tmp_path / "project"
    project.mkdir()
    kinds = SCENARIOS["hosted-exchange"]
    with Sandbox(tmp_path / "sandbox", seed=5, users=10, kinds=kinds) as sb:
        run = Run(project, sb, "hosted-exchange", _pairs(sb, USERS), lambda _m: None, None)
        for p in run.pairs:
            mailseed.seed_mailbox(sb.mail, "source", p.source_id, seed=5, items=ITEMS)
        passwords: dict[str, tuple[str, str]] = {}
        for side in ("source", "target"):
            pw = secrets.token_urlsafe(18)
            grant = [] if side == "source" else [p.target for p in run.pairs]
            passwords[side] = (add_account(sb.world, side, ACCOUNT, pw, full_access=grant).upn, pw)
        settings = _settings(run, kinds, passwords) | {
            "source.ews.powershell_url": sb.base_url + "/PowerShell",
            "source.ews.powershell_auth": auth,
            "source.ews.auth": auth,
            "target.ews.auth": auth,
            "source.ews.access": access,
        }
        commands.init(project, overrides=settings)
        for side, (_admin, password) in passwords.items():
            credentials.credentials_set_master(project, password, side=side, env=ENV)
        csv = tmp_path / "users.csv"
        csv.write_text(
            "Source Email,Destination Email,Display Name,Batch\r\n"
            + "".join(f"{p.source},{p.target},User {n},wave\r\n" for n, p in enumerate(run.pairs))
        )
        commands.batch_import(project, csv, env=ENV)
        run.results["source_admin"] = passwords["source"][0]
        yield run, {"source": passwords["source"][1], "target": passwords["target"][1]}


def cmdlet(run: Run, password: str, name: str, **params: Any) -> list[dict[str, Any]]:
    """One cmdlet at the source organisation with the real pypsrp client (as its admin)."""
    sb = run.sandbox
    ep = PsrpEndpoint("127.0.0.1", sb.port, auth="basic", ca_file=str(sb.connection["ca_file"]))

    async def go() -> list[dict[str, Any]]:
        runner = PsrpRunner(ep, PsrpLogin(run.results["source_admin"], password))
        try:
            return await runner.run(name, **params)
        finally:
            await runner.close()

    return asyncio.run(go())


def forwarding(run: Run, password: str) -> dict[str, tuple[Any, bool]]:
    """Each source mailbox's (ForwardingAddress, DeliverToMailboxAndForward)."""
    out = {}
    for p in run.pairs:
        box = cmdlet(run, password, "Get-Mailbox", Identity=p.source)[0]
        out[p.source] = (box.get("ForwardingAddress"), bool(box.get("DeliverToMailboxAndForward")))
    return out


def contacts(run: Run, password: str) -> Counter[str]:
    """Forwarding objects at the source: external address -> how many."""
    found = cmdlet(run, password, "Get-MailContact", ResultSize="Unlimited")
    return Counter(
        str(c.get("ExternalEmailAddress")).split(":")[-1].lower()
        for c in found
        if "(External Forward)" in str(c.get("Name"))
    )


def probe_lands(run: Run) -> dict[str, list[str]]:
    """A message to each old address: the mailboxes whose Inbox it reached."""
    return {
        p.source: [
            c.address
            for c in run.sandbox.deliver(
                p.source, sender="someone@elsewhere.example"
            ).inbox_copies()
        ]
        for p in run.pairs
    }


def in_target(run: Run) -> Counter[tuple[str, tuple[str, ...]]]:
    out: Counter[tuple[str, tuple[str, ...]]] = Counter()
    for p in run.pairs:
        out.update(_holdings(run.sandbox.mail, "target", p.target_id))
    return out


def written(result: dict[str, Any]) -> list[str]:
    return [str(w["text"]) for w in result["writes"]]


def test_hosted_batch_is_granted_forwarded_and_rolled_back(tmp_path: Path) -> None:
    """grant-access, prestage (forwarding objects) and cutover (forward, no local copy) each
    change once, plan first without a write, then nothing on a re-run; mail to an old address
    lands once in the new mailbox only; rollback delivers it locally again."""
    with scene(tmp_path) as (run, passwords):
        project, pw = run.project, passwords["source"]
        plan = commands.grant_access(project, batch="wave", plan=True)
        assert sorted(w.split(" -User")[0] for w in written(plan)) == sorted(
            f"[source] Add-MailboxPermission -Identity '{p.source}'" for p in run.pairs
        )
        granted = commands.grant_access(project, batch="wave")
        assert granted["changed"] == USERS and not granted["failed"]
        assert commands.grant_access(project, batch="wave")["changed"] == 0
        for p in run.pairs:
            rows = cmdlet(
                run,
                pw,
                "Get-MailboxPermission",
                Identity=p.source,
                User=run.results["source_admin"],
            )
            assert has_full_access(rows)

        plan = commands.prestage(project, batch="wave", older_than="90d", plan=True)
        cmdlets = [w for w in written(plan) if w.startswith("[source] ")]
        assert sum("New-MailContact" in w for w in cmdlets) == USERS
        assert not contacts(run, pw)  # a plan makes none
        first = commands.prestage(project, batch="wave", older_than="90d")
        assert not first["failed"], first["failed"]
        made = contacts(run, pw)
        assert made == Counter({p.target.lower(): 1 for p in run.pairs})
        hidden = cmdlet(run, pw, "Get-MailContact", ResultSize="Unlimited")
        assert all(c.get("HiddenFromAddressListsEnabled") for c in hidden if "Forward" in c["Name"])
        assert commands.prestage(project, batch="wave", older_than="90d")["changed"] == 0
        before = commands.verify_mailflow(project, batch="wave")
        assert before["ok"] and all(r["found"]["source"] == 1 for r in before["probes"])
        assert all(fwd is None for fwd, _copy in forwarding(run, pw).values())

        plan = commands.cutover(project, batch="wave", plan=True)
        assert sum("Set-Mailbox" in w for w in written(plan)) == USERS
        assert all(fwd is None for fwd, _copy in forwarding(run, pw).values())
        cut = commands.cutover(project, batch="wave")
        assert not cut["failed"] and cut["mode"] == "forward-on-source (forwarding objects)"
        assert all(fwd and not copy for fwd, copy in forwarding(run, pw).values())
        again = commands.cutover(project, batch="wave")
        assert again["changed"] == 0 and not again["failed"]
        assert probe_lands(run) == {p.source: [p.target] for p in run.pairs}
        assert max(in_target(run).values()) == 1
        routes = commands.verify_mailflow(project, batch="wave")
        assert routes["ok"] and routes["method"] == "configuration"
        assert {r["user"]: r["found"] for r in routes["probes"]} == {
            p.source: {"source": 0, "target": 1} for p in run.pairs
        }
        first = run.pairs[0].source  # a local copy turned on by hand is seen and named
        cmdlet(run, pw, "Set-Mailbox", Identity=first, DeliverToMailboxAndForward=True)
        routes = commands.verify_mailflow(project, batch="wave")
        bad = [r for r in routes["probes"] if not r["ok"]]
        assert not routes["ok"] and [r["user"] for r in bad] == [first]
        assert bad[0]["found"] == {"source": 1, "target": 1} and "keeps a copy" in bad[0]["detail"]
        cmdlet(run, pw, "Set-Mailbox", Identity=first, DeliverToMailboxAndForward=False)

        back = commands.rollback(project, batch="wave", yes=True)
        assert not back["failed"] and back["changed"] >= USERS
        assert all(fwd is None and not copy for fwd, copy in forwarding(run, pw).values())
        assert probe_lands(run) == {p.source: [p.source] for p in run.pairs}
        routes = commands.verify_mailflow(project, batch="wave")
        assert routes["ok"] and all(r["expected"] == "source" for r in routes["probes"])
        revoked = commands.grant_access(project, batch="wave", revoke=True)
        assert revoked["changed"] == USERS and not revoked["failed"]
        assert commands.grant_access(project, batch="wave", revoke=True)["changed"] == 0
        admin = run.results["source_admin"]
        for p in run.pairs:
            rows = cmdlet(run, pw, "Get-MailboxPermission", Identity=p.source, User=admin)
            assert not has_full_access(rows)
        for path in project.rglob("*"):
            if path.is_file() and path.name != "credentials.vault":
                for secret in passwords.values():
                    assert secret.encode() not in path.read_bytes(), path


def test_preflight_warns_of_a_mailbox_that_forwards_and_keeps_a_copy(tmp_path: Path) -> None:
    """Preflight signs in to the source's remote PowerShell and names the migrating mailbox
    that forwards while keeping a local copy (a delta pass would copy forwarded mail twice);
    with the copy turned off the line is ok."""
    with scene(tmp_path) as (run, passwords):
        pw, keeps = passwords["source"], run.pairs[1].source
        commands.grant_access(run.project, batch="wave")
        cmdlet(run, pw, "Set-Mailbox", Identity=keeps, ForwardingSmtpAddress="a@elsewhere.example",
               DeliverToMailboxAndForward=True)  # fmt: skip
        checks = {
            c["check"]: c for c in commands.preflight_checks(run.project, batch="wave")["checks"]
        }
        assert checks["source remote PowerShell"]["status"] == "ok"
        warned = checks["source forwarding"]
        assert warned["status"] == "warn" and keeps in warned["detail"]
        assert run.pairs[0].source not in warned["detail"]
        assert "DeliverToMailboxAndForward $false" in warned["fix"]
        cmdlet(run, pw, "Set-Mailbox", Identity=keeps, DeliverToMailboxAndForward=False)
        checks = {
            c["check"]: c for c in commands.preflight_checks(run.project, batch="wave")["checks"]
        }
        assert checks["source forwarding"]["status"] == "ok"


def test_impersonation_is_granted_once_and_revoked(tmp_path: Path) -> None:
    """Under impersonation grant-access makes one ApplicationImpersonation assignment (planned
    first without a write; none again on a re-run), the mailboxes then open over EWS, and
    --revoke removes coexist's assignment once."""
    with scene(tmp_path, access="impersonation") as (run, passwords):
        project, pw = run.project, passwords["source"]
        admin = run.results["source_admin"]
        plan = commands.grant_access(project, batch="wave", plan=True)
        assert [w.split(" -User")[0] for w in written(plan)] == [
            "[source] New-ManagementRoleAssignment -Name coexist-impersonation-svc-migrate "
            "-Role ApplicationImpersonation"
        ]
        assert not cmdlet(run, pw, "Get-ManagementRoleAssignment", RoleAssignee=admin)
        assert commands.grant_access(project, batch="wave")["changed"] == 1
        assert commands.grant_access(project, batch="wave")["changed"] == 0
        found = cmdlet(run, pw, "Get-ManagementRoleAssignment", RoleAssignee=admin)
        assert [r["Name"] for r in found] == ["coexist-impersonation-svc-migrate"]
        checked = credcheck.verify_credentials(project, batch="wave")
        assert checked["ok"], checked
        assert commands.grant_access(project, batch="wave", revoke=True)["changed"] == 1
        assert commands.grant_access(project, batch="wave", revoke=True)["changed"] == 0
        assert not cmdlet(run, pw, "Get-ManagementRoleAssignment", RoleAssignee=admin)


def _cli(project: Path, *args: str) -> subprocess.Popen[bytes]:
    log = (project / "commands.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "coexist.cli", *args, "--project", str(project), "--json"],
        cwd=REPO, stdout=log, stderr=log, env={**cli_env(), **ENV},
    )  # fmt: skip


def forwarded_in_world(run: Run) -> int:
    """Source mailboxes that forward (read from the sandbox's state in this process)."""
    with run.sandbox.world.lock:
        users = run.sandbox.world.tenants["source"].users.values()
        return sum(1 for u in users if u.forwarding_address)


def objects_in_world(run: Run) -> int:
    """Forwarding objects at the source (the sandbox's state)."""
    with run.sandbox.world.lock:
        found = run.sandbox.world.tenants["source"].contacts.values()
        return sum(1 for c in found if "(External Forward)" in c.name)


def steps_ok(run: Run, name: str) -> int:
    """Users whose step `name` the journal records as done."""
    from coexist.journal import Journal
    from coexist.settings import load_project

    with Journal.open(load_project(run.project).journal_url) as j:
        keys = [str(u["key"]) for u in j.items(kind="user")]
        return sum(1 for k in keys if (j.get_step(f"{name}:{k}") or {}).get("status") == "ok")


def kill_when(run: Run, args: tuple[str, ...], seen: Any, at: int) -> bool:
    """Run a command; SIGKILL it the moment `seen()` reaches `at` (or let it end)."""
    proc = _cli(run.project, *args)
    while proc.poll() is None:
        if seen() >= at:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return True
        time.sleep(0.002)
    return False


def complete(run: Run, *args: str) -> dict[str, Any]:
    log = run.project / "commands.log"
    start = log.stat().st_size if log.exists() else 0
    assert _cli(run.project, *args).wait(timeout=300) == 0, log.read_text()[start:][-3000:]
    tail = log.read_text()[start:]
    assert_no_unawaited_coroutine(tail, " ".join(args))
    result: dict[str, Any] = json.loads(tail.strip().splitlines()[-1])
    assert not result["failed"] and not result["waiting"], result
    return result


def test_prestage_and_cutover_killed_between_a_write_and_its_record_end_in_the_same_state(
    tmp_path: Path,
) -> None:
    """SIGKILL the moment a forwarding object (prestage) or a forward (cutover) appears at the
    source, so the write is made and its journal record is not, and at random points; then a
    run to its end: one forwarding object per user, hidden, each mailbox forwarding to it
    without a local copy, every message once in the target, mail to an old address once in
    the new mailbox."""
    rng = random.Random(13)
    with scene(tmp_path) as (run, passwords):
        pw = passwords["source"]
        commands.grant_access(run.project, batch="wave")
        prestage = ("prestage", "--batch", "wave", "--older-than", "90d")
        ahead = 0
        for at in range(1, USERS + 1):
            if kill_when(run, prestage, lambda: objects_in_world(run), at):
                ahead += objects_in_world(run) > steps_ok(run, "hosted.forward-contact")
        complete(run, *prestage)
        assert contacts(run, pw) == Counter({p.target.lower(): 1 for p in run.pairs})
        hidden = cmdlet(run, pw, "Get-MailContact", ResultSize="Unlimited")
        assert all(c.get("HiddenFromAddressListsEnabled") for c in hidden if "Forward" in c["Name"])
        cutover = ("cutover", "--batch", "wave")
        for at in range(1, USERS + 1):
            if kill_when(run, cutover, lambda: forwarded_in_world(run), at):
                ahead += forwarded_in_world(run) > steps_ok(run, "hosted.forward")
        for _ in range(2):  # and anywhere else: scans, passes, between users
            proc = _cli(run.project, *cutover)
            time.sleep(rng.uniform(0.2, 2.0))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        complete(run, *cutover)
        assert ahead >= 1, "no kill fell between a write at the source and its journal record"
        assert contacts(run, pw) == Counter({p.target.lower(): 1 for p in run.pairs})
        assert all(fwd and not copy for fwd, copy in forwarding(run, pw).values())
        held = in_target(run)
        seeded = sum(
            1 for p in run.pairs for _ in run.sandbox.mail.iter_messages("source", p.source_id)
        )
        assert held and max(held.values()) == 1 and sum(held.values()) == seeded
        assert probe_lands(run) == {p.source: [p.target] for p in run.pairs}
        assert complete(run, *cutover)["changed"] == 0
