"""`coexist preflight` for exchange and workmail sides, against the sandbox's EWS face over
HTTPS (exchangelib, NTLM/Basic): each check's line and the exit status; a missing grant is
named with the exact command that gives it, and no password shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from coexist.cli import main
from coexist.credentials import credentials_set_master
from coexist.runtime import open_journal
from coexist.sandbox import Sandbox
from coexist.sandbox.ews import EWS_PATH
from coexist.settings import load_project
from coexist.vault import ENV_KEY, new_key
from tests.ewsclient import PASSWORD, mailboxes, migration_account, org

ENV = {ENV_KEY: new_key()}


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=ENV, catch_exceptions=False)


def side_table(side: str, kind: str, url: str, admin: str, **more: str) -> str:
    lines = [
        f"[{side}]",
        f'kind = "{kind}"',
        f"[{side}.ews]",
        f'url = "{url}"',
        f'admin = "{admin}"',
    ]
    lines += [f'{k} = "{v}"' for k, v in more.items()]
    return "\n".join(lines) + "\n"


def project(
    sb: Sandbox,
    directory: Path,
    source: dict[str, str],
    target: dict[str, str],
    users: list[tuple[str, str]],
    *,
    passwords: tuple[str, str] = (PASSWORD, PASSWORD),
) -> Path:
    """A project.toml with two EWS sides on the sandbox, the admins' passwords in the vault,
    and the users (source address, target address) in the journal."""
    url = sb.base_url + EWS_PATH
    text = ""
    for side, spec in (("source", source), ("target", target)):
        spec = dict(spec)
        kind, admin = spec.pop("kind"), spec.pop("admin")
        spec.setdefault("ca_file", sb.connection["ca_file"])
        if spec["ca_file"] == "":
            del spec["ca_file"]
        text += side_table(side, kind, url, admin, **spec)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "project.toml").write_text(text)
    for side, password in zip(("source", "target"), passwords, strict=True):
        credentials_set_master(directory, password, side=side, env=ENV)
    journal = open_journal(load_project(directory, env=ENV))
    try:
        for src, tgt in users:
            journal.upsert_item("user", src, source_address=src, target_address=tgt)
    finally:
        journal.close()
    return directory


def checks(result: Result) -> dict[str, dict[str, Any]]:
    payload = json.loads(result.stdout)
    return {c["check"]: c for c in payload["checks"]}


def test_delegation_names_the_mailbox_without_full_access_and_the_grant(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Exchange 2016 -> 2019, delegation: FullAccess on one source mailbox and not the
    other: endpoint, credentials ok; access fails naming that mailbox (not the granted one)
    and `Add-MailboxPermission -Identity <user> -User <admin> -AccessRights FullAccess`;
    the version pin that differs warns, the unpinned one is recorded; delegation's plan is
    20 mailboxes at once; exit 1; no password in the output."""
    sb = sandbox
    org(sb, "source", "exchange2016")
    org(sb, "target", "exchange2019")
    granted, missing = mailboxes(sb, "source", 2)
    tgt = mailboxes(sb, "target", 2)
    assert granted.primary_smtp and missing.primary_smtp
    targets = [t.primary_smtp or "" for t in tgt]
    src_admin = migration_account(sb, "source", full_access=[granted.primary_smtp])
    tgt_admin = migration_account(sb, "target", full_access=targets)
    p = project(
        sb,
        tmp_path / "p",
        {"kind": "exchange", "admin": src_admin, "version": "Exchange2013"},
        {"kind": "exchange", "admin": tgt_admin},
        [(granted.primary_smtp, targets[0]), (missing.primary_smtp, targets[1])],
    )
    result = run("preflight", "--project", str(p), "--json")
    assert result.exit_code == 1, result.output
    assert PASSWORD not in result.output
    got = checks(result)
    host = sb.base_url.split("://")[1].split(":")[0]
    assert got["source endpoint"]["status"] == "ok" and host in got["source endpoint"]["detail"]
    assert got["source credentials"]["status"] == "ok"
    assert src_admin in got["source credentials"]["detail"]
    access = got["source access"]
    assert access["status"] == "fail"
    assert missing.primary_smtp in access["detail"] and "FullAccess" in access["detail"]
    assert granted.primary_smtp not in access["detail"].split("mailboxes checked:")[-1]
    assert (
        f"Add-MailboxPermission -Identity {missing.primary_smtp} -User {src_admin} "
        "-AccessRights FullAccess" in access["fix"]
    )
    assert granted.primary_smtp not in access["fix"]
    # Source pinned to Exchange2013 on a 2016 server: a warning naming both.
    version = got["source server version"]
    assert version["status"] == "warn" and "15.1.2507.6" in version["detail"]
    assert "Exchange2013" in version["detail"] and 'version = "Exchange2016"' in version["fix"]
    assert version["server_version"] == {
        "build": "15.1.2507.6", "speaks": "Exchange2016", "pinned": "Exchange2013"
    }  # fmt: skip
    # Target not pinned (the default Exchange2016) on a 2019 server: recorded, pin advised.
    tversion = got["target server version"]
    assert tversion["status"] == "ok" and "not pinned" in tversion["detail"]
    assert tversion["server_version"]["build"] == "15.2.1258.12"
    assert tversion["server_version"]["pinned"] is None
    assert got["target access"]["status"] == "ok"
    assert all(t in got["target access"]["detail"] for t in targets)
    plan = got["source concurrency"]
    assert plan["status"] == "ok" and "20 mailboxes at once" in plan["detail"]
    assert "source region" not in got  # an Exchange side has no region
    # The table says the same, and the exit status too (wide, so rich wraps no cell).
    table = CliRunner().invoke(main, ["preflight", "--project", str(p)],
                               env={**ENV, "COLUMNS": "1000"}, catch_exceptions=False)  # fmt: skip
    assert table.exit_code == 1
    [row] = [line for line in table.output.splitlines() if "source access" in line]
    assert "fail" in row and f"Add-MailboxPermission -Identity {missing.primary_smtp}" in row


def test_impersonation_without_the_role_names_new_management_role_assignment(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Impersonation by an admin without ApplicationImpersonation: the access line fails
    naming ErrorImpersonateUserDenied and `New-ManagementRoleAssignment -Role
    ApplicationImpersonation -User <admin>`; credentials are still ok (the login is
    accepted); the plan says a budget per mailbox; exit 1."""
    sb = sandbox
    org(sb, "source", "exchange2016")
    org(sb, "target", "exchange2019")
    [user] = mailboxes(sb, "source", 1)
    [tgt] = mailboxes(sb, "target", 1)
    assert user.primary_smtp and tgt.primary_smtp
    src_admin = migration_account(sb, "source", name="svc-noimp", impersonation=False)
    tgt_admin = migration_account(sb, "target", full_access=[tgt.primary_smtp])
    p = project(
        sb,
        tmp_path / "p",
        {"kind": "exchange", "admin": src_admin, "access": "impersonation"},
        {"kind": "exchange", "admin": tgt_admin, "version": "Exchange2019"},
        [(user.primary_smtp, tgt.primary_smtp)],
    )
    result = run("preflight", "--project", str(p), "--json")
    assert result.exit_code == 1, result.output
    got = checks(result)
    assert got["source credentials"]["status"] == "ok"
    access = got["source access"]
    assert access["status"] == "fail" and "ErrorImpersonateUserDenied" in access["detail"]
    assert user.primary_smtp in access["detail"]
    assert (
        f"New-ManagementRoleAssignment -Role ApplicationImpersonation -User {src_admin}"
        in access["fix"]
    )
    assert "own throttling budget" in got["source concurrency"]["detail"]
    # Exchange2019 pinned on a 2019 server: ok.
    assert got["target server version"]["status"] == "ok"
    assert "Exchange2019" in got["target server version"]["detail"]


def test_a_workmail_target_passes_and_says_the_sandbox_url_has_no_region(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Exchange 2016 -> Amazon WorkMail (Basic, Exchange2010_SP2 pinned), every grant given:
    every check ok but the region, which warns that the sandbox's URL is no
    ews.mail.<region>.awsapps.com host; exit 0."""
    sb = sandbox
    org(sb, "source", "exchange2016")
    org(sb, "target", "workmail")
    [user] = mailboxes(sb, "source", 1)
    [tgt] = mailboxes(sb, "target", 1)
    assert user.primary_smtp and tgt.primary_smtp
    src_admin = migration_account(sb, "source", full_access=[user.primary_smtp])
    tgt_admin = migration_account(sb, "target", full_access=[tgt.primary_smtp])
    p = project(
        sb,
        tmp_path / "p",
        {"kind": "exchange", "admin": src_admin, "version": "Exchange2016"},
        {"kind": "workmail", "admin": tgt_admin, "auth": "basic", "version": "Exchange2010_SP2"},
        [(user.primary_smtp, tgt.primary_smtp)],
    )
    result = run("preflight", "--project", str(p), "--json")
    assert result.exit_code == 0, result.output
    got = checks(result)
    bad = {n: c for n, c in got.items() if c["status"] != "ok"}
    assert list(bad) == ["target region"], bad
    assert "ews.mail.<region>.awsapps.com" in bad["target region"]["detail"]
    assert "no region" in bad["target region"]["detail"]
    assert "14.3.123.4" in got["target server version"]["detail"]
    assert tgt.primary_smtp in got["target access"]["detail"]
    assert "basic" in got["target credentials"]["detail"]


def test_an_untrusted_certificate_names_the_host_and_the_ca_setting(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """No ca_file for the sandbox's private CA: the endpoint line fails naming the host and
    `ca_file in [source.ews]`; the checks that need the server are not run; exit 1."""
    sb = sandbox
    org(sb, "source", "exchange2016")
    org(sb, "target", "exchange2019")
    [user] = mailboxes(sb, "source", 1)
    assert user.primary_smtp
    admin = migration_account(sb, "source", full_access=[user.primary_smtp])
    tadmin = migration_account(sb, "target", full_access=[user.primary_smtp])
    p = project(
        sb,
        tmp_path / "p",
        {"kind": "exchange", "admin": admin, "ca_file": ""},
        {"kind": "exchange", "admin": tadmin},
        [(user.primary_smtp, user.primary_smtp)],
    )
    result = run("preflight", "--project", str(p), "--json")
    assert result.exit_code == 1, result.output
    got = checks(result)
    endpoint = got["source endpoint"]
    host = sb.base_url.split("://")[1].split(":")[0]
    assert endpoint["status"] == "fail" and host in endpoint["detail"]
    assert "not trusted" in endpoint["detail"]
    assert "ca_file in [source.ews]" in endpoint["fix"]
    assert "source credentials" not in got and "source access" not in got
    assert got["source concurrency"]["status"] == "ok"


def test_a_wrong_admin_password_fails_the_credentials_line(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A wrong password in the vault: the credentials line fails (401) naming the admin and
    `coexist credentials set --master --side target`; the wrong password never shows."""
    sb = sandbox
    org(sb, "source", "exchange2016")
    org(sb, "target", "exchange2019")
    [user] = mailboxes(sb, "source", 1)
    [tgt] = mailboxes(sb, "target", 1)
    assert user.primary_smtp and tgt.primary_smtp
    admin = migration_account(sb, "source", full_access=[user.primary_smtp])
    tadmin = migration_account(sb, "target", full_access=[tgt.primary_smtp])
    p = project(
        sb,
        tmp_path / "p",
        {"kind": "exchange", "admin": admin},
        {"kind": "exchange", "admin": tadmin},
        [(user.primary_smtp, tgt.primary_smtp)],
        passwords=(PASSWORD, "Not-The-Password-9"),
    )
    result = run("preflight", "--project", str(p), "--json")
    assert result.exit_code == 1, result.output
    assert "Not-The-Password-9" not in result.output
    got = checks(result)
    assert got["source credentials"]["status"] == "ok"
    cred = got["target credentials"]
    assert cred["status"] == "fail" and tadmin in cred["detail"]
    assert "--master --side target" in cred["fix"]
    assert "target access" not in got


def test_microsoft_365_to_workmail_checks_the_graph_side_too(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Microsoft 365 -> Amazon WorkMail (the audriga seed): the Microsoft 365 side's app signs
    in and reads the user's mailbox through Graph; the WorkMail side runs its EWS checks, its
    admin lacking mailbox permissions on the target mailbox: that line fails naming it and
    the Add-MailboxPermission line; exit 1."""
    sb = sandbox
    org(sb, "target", "workmail")
    sb.write_connection()
    [user] = mailboxes(sb, "source", 1)
    [tgt, other] = mailboxes(sb, "target", 2)
    assert user.primary_smtp and tgt.primary_smtp and other.primary_smtp
    admin = migration_account(sb, "target", full_access=[other.primary_smtp])
    directory = tmp_path / "p"
    directory.mkdir()
    (directory / "project.toml").write_text(
        f'[source]\nsandbox_connection = "{sb.state_dir / "connection.json"}"\n'
        + side_table(
            "target",
            "workmail",
            sb.base_url + EWS_PATH,
            admin,
            auth="basic",
            version="Exchange2010_SP2",
            ca_file=sb.connection["ca_file"],
        )
    )
    credentials_set_master(directory, PASSWORD, side="target", env=ENV)
    journal = open_journal(load_project(directory, env=ENV))
    try:
        journal.upsert_item("user", user.primary_smtp, source_address=user.primary_smtp,
                            target_address=tgt.primary_smtp)  # fmt: skip
    finally:
        journal.close()
    result = run("preflight", "--project", str(directory), "--json")
    assert result.exit_code == 1, result.output
    got = checks(result)
    assert got["source graph sign-in"]["status"] == "ok"
    assert got["source mailboxes"]["status"] == "ok"
    assert user.primary_smtp in got["source mailboxes"]["detail"]
    access = got["target access"]
    assert access["status"] == "fail" and tgt.primary_smtp in access["detail"]
    assert "WorkMail" in access["detail"]
    assert f"Add-MailboxPermission -Identity {tgt.primary_smtp} -User {admin}" in access["fix"]


def test_no_users_yet_checks_the_login_and_says_no_mailbox_was_tried(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """An empty journal: the admin's login is checked on its own address, the access line
    warns that no mailbox was tried and names `coexist batch import`; exit 0."""
    sb = sandbox
    org(sb, "source", "exchange2016")
    org(sb, "target", "exchange2019")
    admin = migration_account(sb, "source")
    tadmin = migration_account(sb, "target")
    p = project(
        sb,
        tmp_path / "p",
        {"kind": "exchange", "admin": admin, "version": "Exchange2016"},
        {"kind": "exchange", "admin": tadmin, "version": "Exchange2019"},
        [],
    )
    result = run("preflight", "--project", str(p), "--json")
    assert result.exit_code == 0, result.output
    got = checks(result)
    assert json.loads(result.stdout)["users"] == 0
    for side in ("source", "target"):
        assert got[f"{side} credentials"]["status"] == "ok"
        assert got[f"{side} access"]["status"] == "warn"
        assert "coexist batch import" in got[f"{side} access"]["fix"]
        assert got[f"{side} server version"]["status"] == "ok"
