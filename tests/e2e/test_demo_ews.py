"""`coexist demo --scenario hosted-exchange` / `workmail`: the operator's EWS runbook against
the sandbox's EWS face, every seeded message once in the target (or skipped and reported)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from coexist.vault import ENV_KEY, Vault, new_key


def test_hosted_exchange_demo_moves_every_message_once_and_keeps_the_password_in_the_vault(
    tmp_path: Path, cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Exchange 2016 -> Exchange 2019 through the CLI: per-user lines with addresses say every
    seeded message is once in the target in a folder of the same path (old ones at prestage,
    the rest at cutover, 0 at the re-run), reconciliation per folder shows no difference, and
    the migration accounts' passwords are only in the vault."""
    key = new_key()  # the operator's key: the demo uses it, so the test can open the vault
    monkeypatch.setenv(ENV_KEY, key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    project = tmp_path / "demo"
    run = cli("demo", "--scenario", "hosted-exchange", "--dir", str(project), "--users", "2")
    assert run.exit_code == 0, run.output[-3000:]
    out = " ".join(run.output.split())
    assert "demo ok" in out
    assert "[source] kind = exchange, [target] kind = exchange" in out
    assert "jsmith@fabrikam.example -> jsmith@contoso.example: 24 seeded" in out
    assert out.count("24 of 24 once in the target; cutover/ok") == 2
    assert "difference 0" in out and "difference 1" not in out
    summary = json.loads((project / "demo-summary.json").read_text())
    for u in summary["users"]:
        assert u["prestage_copied"] == u["older_than_90d"] > 0 and u["rerun_copied"] == 0
        assert u["prestage_copied"] + u["cutover_copied"] == u["seeded"]
        assert not (u["missing"] or u["doubled"] or u["misplaced"] or u["skipped"])
    assert summary["verify_credentials"]["ok"] is True
    vault = Vault.open(project, env={ENV_KEY: key})
    passwords = [c.password for u in vault.read().values() for c in u.values()]
    assert len(passwords) == 2  # the source's and the target's migration account
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "credentials.vault"]
    files = [p for p in files if "sandbox" not in p.parts]  # the sandbox holds its accounts
    for secret in passwords:
        assert secret not in run.output
        for path in files:
            assert secret.encode() not in path.read_bytes(), path


def test_workmail_demo_skips_and_reports_the_oversize_message(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """Microsoft 365 -> WorkMail (--json): the WorkMail users are created and the migration
    account granted by prestage through the AWS API (planned first, sent once, not again);
    every message once in the target except the one over WorkMail's ~23 MB limit, which is
    skipped with ErrorMessageSizeExceeded, counted in its folder's reconciliation and named
    in the per-user lines; the re-run copies 0."""
    run = cli(
        "demo", "--scenario", "workmail", "--dir", str(tmp_path / "demo"), "--users", "2", "--json"
    )
    assert run.exit_code == 0, run.output[-3000:]
    result = json.loads(run.stdout)
    assert result["ok"] is True and result["scenario"] == "workmail"
    first, second = result["users"]
    assert [s["subject"] for s in first["skipped"]] == ["Scanned archive (oversize)"]
    assert "ErrorMessageSizeExceeded" in first["skipped"][0]["reason"]
    assert first["in_target_once"] == first["seeded"] - 1 and not second["skipped"]
    assert any(f["skipped"] == 1 for f in first["folders"])
    for u in result["users"]:
        assert u["rerun_copied"] == 0 and (u["phase"], u["state"]) == ("cutover", "ok")
        assert not (u["missing"] or u["doubled"] or u["misplaced"])
    assert any("skipped: Scanned archive (oversize)" in line for line in result["report"])
    # The WorkMail users were made by coexist through the AWS API (boto3 -> the sandbox's
    # WorkMail face): listed by the plan and not sent, sent once, nothing sent by a re-run.
    made = {"CreateUser": 2, "RegisterToWorkMail": 2, "PutMailboxPermissions": 2}
    wm = result["workmail"]
    assert wm["listed_by_plan"] == made and wm["sent_by_plan"] == {}
    assert wm["sent"] == made and wm["sent_after_rerun"] == made
