"""`coexist demo --scenario imap` / `imap-to-imap`: the operator's IMAP runbook from a
seeded Dovecot into the sandbox's Microsoft 365 or another Dovecot, every message once."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result

from coexist import commands
from coexist.errors import ConfigError, InputError
from coexist.sandbox import dovecot
from coexist.vault import ENV_KEY, Vault, new_key
from tests.dovecot import missing


def _needs_dovecot() -> None:
    """The demo starts its own Dovecot: skip without it (fail when CI=true)."""
    try:
        dovecot.binaries()
    except ConfigError as exc:
        missing(exc.message)


def test_imap_to_imap_demo_runs_the_runbook_and_keeps_passwords_in_the_vault(
    tmp_path: Path, cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dovecot -> Dovecot through the CLI: per-user lines say every seeded message is once in
    the target (old ones at prestage, the rest at cutover, 0 at the re-run), the MX change
    is a checkpoint, and no source password is in the output, the logs or any project file
    but the vault."""
    _needs_dovecot()
    key = new_key()  # the operator's key: the demo uses it, so the test can open the vault
    monkeypatch.setenv(ENV_KEY, key)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    project = tmp_path / "demo"
    run = cli("demo", "--scenario", "imap-to-imap", "--dir", str(project), "--users", "2", "-v")
    assert run.exit_code == 0, run.output[-3000:]
    out = " ".join(run.output.split())
    assert "demo ok" in out and "CHECKPOINT" in out
    assert "[source] kind = imap, [target] kind = imap" in out  # progress lines are not markup
    for user in ("alice@oldmail.example", "bruno@oldmail.example"):
        assert f"{user} -> {user.split('@')[0]}@newmail.example: 16 seeded (8 older than" in out
    assert out.count("copied 8 / 8 / 0; 16 of 16 once in the target; cutover/ok") == 2
    assert 'Clients "Acme" & Co: source 2, target 2' in out
    assert "Reports 1/2: source 1, target 1" in out  # bruno's delimiter is "."
    vault = Vault.open(project, env={ENV_KEY: key})
    secrets = [c.password for u in vault.read().values() for c in u.values()]
    assert len(secrets) == 3  # two source passwords and the target's master user
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "credentials.vault"]
    assert any(p.suffix == ".log" for p in files) and (project / "journal.db").exists()
    for secret in secrets:
        assert secret not in run.output
        for path in files:
            assert secret.encode() not in path.read_bytes(), path


def test_unknown_scenario_is_refused_before_anything_starts(tmp_path: Path) -> None:
    """A scenario not in the registry is an InputError naming the ones there are."""
    with pytest.raises(InputError, match="imap-to-imap"):
        commands.demo(tmp_path, scenario="exchange-2010")
    assert not list(tmp_path.iterdir())


def test_imap_demo_refuses_bad_arguments_before_starting(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """Too many users, a forwarding mode (an IMAP source has none) or a sandbox profile
    without a sandbox is refused before a server starts or a file is written."""
    for args, said in (
        (("--users", "9"), "--users 9: the IMAP demos seed 1 to 5 users"),
        (("--mode", "rename-source"), "an IMAP source has no forwarding"),
        (("--scenario", "imap-to-imap", "--profile", "realistic"), "demo has no sandbox"),
    ):
        r = cli("demo", "--scenario", "imap", "--dir", str(tmp_path / "demo"), *args)
        assert r.exit_code == 2 and said in " ".join(r.output.split()), r.output
        assert not (tmp_path / "demo").exists()


def test_missing_dovecot_names_the_packages_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the dovecot binaries the launcher says which packages to install."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(dovecot, "SYSTEM_DIRS", str(tmp_path))
    with pytest.raises(ConfigError) as err:
        dovecot.binaries()
    assert "apt install dovecot-core dovecot-imapd" in str(err.value)
    assert "make test" in str(err.value)


def test_imap_to_m365_demo_moves_every_message_once_into_existing_mailboxes(
    tmp_path: Path, cli: Callable[..., Result]
) -> None:
    """Dovecot -> the sandbox's Microsoft 365 (--json): each IMAP user lands in an existing
    target mailbox, every seeded message once in the folder it maps to (INBOX -> Inbox, Sent
    -> Sent Items, the large attachment too), old mail at prestage, the rest at cutover, 0
    at the re-run, and every user cut over."""
    _needs_dovecot()
    run = cli(
        "demo", "--scenario", "imap", "--dir", str(tmp_path / "demo"), "--users", "2", "--json"
    )
    assert run.exit_code == 0, run.output[-3000:]
    result = json.loads(run.stdout)
    assert result["ok"] is True and result["mx_change"]["checkpoint"]
    assert [u["target"].split("@")[1] for u in result["users"]] == ["contoso.example"] * 2
    for u in result["users"]:
        assert (u["seeded"], u["in_target_once"], u["rerun_copied"]) == (16, 16, 0), u
        assert u["prestage_copied"] == u["older_than_90d"] == 8 and u["cutover_copied"] == 8
        assert not (u["missing"] or u["doubled"] or u["misplaced"])
        assert (u["phase"], u["state"]) == ("cutover", "ok")
