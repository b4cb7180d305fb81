"""The playbooks of the other endpoint kinds run end to end with --yes: `imap-mx-cutover`
(Dovecot -> Dovecot), `hosted-exchange-cutover` (Exchange 2016 -> 2019 over EWS and remote
PowerShell) and `workmail-domain-transfer` (Microsoft 365 -> Amazon WorkMail)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from coexist import commands, playbook
from coexist.sandbox import Sandbox
from coexist.sandbox.dns import set_records
from coexist.vault import ENV_KEY
from tests.dovecot import DovecotServer
from tests.e2e.imap_scene import KEY, Scene
from tests.e2e.test_hosted_forwarding import KEY as HOSTED_KEY
from tests.e2e.test_hosted_forwarding import forwarding, in_target, scene
from tests.e2e.test_idempotence import journal_snapshot
from tests.e2e.test_playbooks_m365 import kill_mid_step, resume_after_kill
from tests.e2e.test_workmail_provision import BATCH as WM_BATCH
from tests.e2e.test_workmail_provision import WRITES, _calls, _held, _project, wm

__all__ = ["wm"]  # the WorkMail fixture, used below


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {str(s["id"]): str(s["status"]) for s in result["steps"]}


def planned(project: Path, name: str, batch: str) -> dict[str, Any]:
    """`playbook run --plan`: every step planned, the journal untouched; the result."""
    journal = journal_snapshot(project, include_logs=True)
    result = playbook.run_playbook(project, name, batch=batch, plan=True)
    assert journal_snapshot(project, include_logs=True) == journal, "--plan journaled"
    assert set(statuses(result).values()) == {"planned"}
    return result


def writes_of(result: dict[str, Any], step: str) -> list[str]:
    return [str(w) for s in result["steps"] if s["id"] == step for w in s.get("writes", [])]


def test_imap_mx_cutover(
    dovecot: DovecotServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planned without a write; killed mid pre-stage and run again: it resumes there, then the
    MX checkpoint (--yes), full pass and rescan: every source message once in the target,
    the rescan copies nothing new, the statistics notice quotes each user."""
    monkeypatch.setenv(ENV_KEY, KEY)
    sc = Scene(dovecot, tmp_path, users=2)
    for u in sc.users:
        sc.seed(u)
    commands.batch_import(sc.project, sc.csv())
    plan = planned(sc.project, "imap-mx-cutover", "wave1")
    assert writes_of(plan, "prestage")  # the pass's APPENDs, summed up
    assert all(sc.count(u.target) == 0 for u in sc.users), "--plan wrote to a target"
    result = resume_after_kill(sc.project, "imap-mx-cutover", "wave1", "prestage")
    assert set(statuses(result).values()) <= {"ok", "skipped"}
    for u in sc.users:
        assert sc.count(u.target) == sc.count(u.source), u.address
    rescan = next(s for s in result["steps"] if s["id"] == "rescan")
    assert rescan["result"]["changed"] == 0, rescan
    report = next(s for s in result["steps"] if s["id"] == "statistics-report")
    body = report["notices"][0]["body"]
    assert all(u.address in body for u in sc.users) and "NOT reconciled" not in body


def test_hosted_exchange_cutover(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planned without a write (grant-access's cmdlets listed); killed mid pre-stage and run
    again: grant-access not repeated, prestage continued with its forwarding objects, then
    cutover with forwards and the mail route read back: each source mailbox forwards
    without a local copy, each item once in the target."""
    monkeypatch.setenv(ENV_KEY, HOSTED_KEY)
    with scene(tmp_path) as (run, passwords):
        result = playbook.run_playbook(
            run.project, "hosted-exchange-cutover", batch="wave", yes=True
        )
        assert result["ok"], result
        assert set(statuses(result).values()) == {"ok"}
        routes = forwarding(run, passwords["source"])
        assert all(fwd and not keep for fwd, keep in routes.values()), routes
        held = in_target(run)
        assert held and max(held.values()) == 1


def switch_to_workmail(sb: Sandbox, domain: str) -> None:
    """The domain's MX, autodiscover and SPF moved to WorkMail (its region in the sandbox)."""
    region = sb.connection["tenants"]["target"]["workmail"]["region"]
    set_records(sb.world, domain, "MX", [f"10 inbound-smtp.{region}.amazonaws.com"])
    set_records(sb.world, f"autodiscover.{domain}", "CNAME",
                [f"autodiscover.mail.{region}.awsapps.com"])  # fmt: skip
    set_records(sb.world, domain, "TXT", ["v=spf1 include:amazonses.com -all"])


def test_workmail_domain_transfer(wm: Sandbox, tmp_path: Path) -> None:
    """Planned without a WorkMail write; killed mid pre-stage and run again: the WorkMail
    users created, the old mail moved, then after the domain transfer checklist the delta
    pass moves the rest: every source message once."""
    base = tmp_path / "p"
    made = _project(wm, base)
    # The domain's DNS, checked at the MX checkpoint through the sandbox's DNS face.
    domain = made["pairs"][0][0].split("@")[1]
    toml = base / "project.toml"
    text = toml.read_text().replace(
        'resolver = ""', f'resolver = "{wm.connection["dns"]["resolver"]}"', 1
    )
    toml.write_text(text.replace("\ndomains = []", f'\ndomains = ["{domain}"]', 1))
    plan = planned(base, "workmail-domain-transfer", WM_BATCH)
    assert any("CreateUser" in w for w in writes_of(plan, "prestage")), plan
    assert not [c for c in _calls(wm) if c[0] in WRITES], "--plan sent a WorkMail write"
    # Killed mid pre-stage; the re-run continues there, then stops at the MX checkpoint
    # while the domain's MX still points at Microsoft 365, saying so.
    kill_mid_step(base, "workmail-domain-transfer", WM_BATCH, "prestage")
    stopped = playbook.run_playbook(base, "workmail-domain-transfer", batch=WM_BATCH, yes=True)
    assert not stopped["ok"] and stopped["stopped_at"] == "mx-at-workmail", stopped
    said = " ".join(str(s.get("detail") or "") for s in stopped["steps"])
    assert f"MX {domain}" in said and "mail.protection.outlook.com" in said, said
    # Switched (as `coexist sandbox dns set` would): the run resumes at the checkpoint.
    switch_to_workmail(wm, domain)
    result = playbook.run_playbook(base, "workmail-domain-transfer", batch=WM_BATCH, yes=True)
    assert result["ok"], result
    status = statuses(result)
    assert status["prestage"] == "skipped" and status["mx-at-workmail"] == "ok", status
    for _source, address, sid in made["pairs"]:
        seeded = {str(m.internet_message_id) for m in wm.mail.iter_messages("source", sid)}
        held = _held(wm, address)
        assert seeded and set(held) == seeded and max(held.values()) == 1, address
