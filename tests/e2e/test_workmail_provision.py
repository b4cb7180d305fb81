"""Microsoft 365 -> Amazon WorkMail with `[target.workmail]`: prestage creates each batch user
in WorkMail (boto3 against the sandbox's WorkMail API face), registers it, adds its alias and
grants the migration account FULL_ACCESS, then the data pass moves the mail over EWS on the
same organisation; re-runs create nothing twice; `--plan` lists every write and sends none."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from click.testing import CliRunner

from coexist import commands, credentials
from coexist.cli import main
from coexist.sandbox import Sandbox, mailseed
from coexist.sandbox.ews import EWS_PATH, add_account, set_kind
from coexist.sandbox.ews.orgs import org_domain
from coexist.sandbox.workmail import CALLS_KEY, ERRORS_KEY, THROTTLE_KEY, credentials_of
from coexist.vault import ENV_KEY, WORKMAIL_ENTRY, Vault, new_key
from tests.e2e.conftest import TEST_RETRY

BATCH = "wm-1"
WRITES = {"CreateUser", "RegisterToWorkMail", "CreateAlias", "PutMailboxPermissions"}


@pytest.fixture
def wm(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """Source Microsoft 365, target a WorkMail organisation; a vault key; no sandbox bug."""
    set_kind(sandbox.world, "target", "workmail")
    sandbox.write_connection()
    assert sandbox.ctx is not None
    sandbox.ctx.extra[ERRORS_KEY] = []
    sandbox.ctx.extra[CALLS_KEY] = []
    sandbox.ctx.extra[THROTTLE_KEY] = 0
    monkeypatch.setenv(ENV_KEY, new_key())
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    yield sandbox
    assert sandbox.ctx.extra[ERRORS_KEY] == []


def _calls(sb: Sandbox) -> list[tuple[str, dict[str, Any]]]:
    assert sb.ctx is not None
    calls: list[tuple[str, dict[str, Any]]] = sb.ctx.extra[CALLS_KEY]
    return calls


def _project(sb: Sandbox, base: Path, users: int = 2) -> dict[str, Any]:
    """A project M365 -> WorkMail with [target.workmail]; the batch's target addresses are
    new in WorkMail (no such user yet); the migration account has no access yet."""
    conn = sb.connection
    info = conn["tenants"]["target"]["workmail"]
    target = sb.world.tenants["target"]
    domain = org_domain(target)
    password = "Svc-" + secrets.token_urlsafe(12)
    account = add_account(sb.world, "target", "svc-migrate", password)
    sources = sorted(
        (u for u in sb.world.tenants["source"].users.values() if u.is_mailbox and u.primary_smtp),
        key=lambda u: str(u.primary_smtp),
    )[:users]
    pairs = []
    for u in sources:
        mailseed.seed_mailbox(sb.mail, "source", u.id, seed=3, items=6)
        local = str(u.primary_smtp).split("@")[0]
        pairs.append((str(u.primary_smtp), f"{local}.wm@{domain}", u.id))
    commands.init(
        base,
        overrides={
            "project.name": "workmail e2e",
            "engine.wait_in_command_s": 0,
            "source.sandbox_connection": str(sb.state_dir / "connection.json"),
            "target.kind": "workmail",
            "target.ews.url": sb.base_url + EWS_PATH,
            "target.ews.auth": "basic",
            "target.ews.version": "Exchange2010_SP2",
            "target.ews.admin": account.upn,
            "target.ews.ca_file": conn["ca_file"],
            "target.workmail.organization_id": info["organization_id"],
            "target.workmail.region": info["region"],
            "target.workmail.endpoint": info["endpoint"],
            "target.workmail.ca_file": conn["ca_file"],
        },
    )
    credentials.credentials_set_master(base, password, side="target")
    # The operator's way to give the AWS key: the secret on stdin, never on the command line.
    stored = CliRunner().invoke(
        main,
        [
            *("credentials", "set", "--project", str(base)),
            *("--aws-key", info["access_key_id"], "--side", "target", "--password-stdin"),
        ],
        input=info["secret_access_key"] + "\n",
        catch_exceptions=False,
    )
    assert stored.exit_code == 0, stored.output
    assert info["secret_access_key"] not in stored.output
    held = Vault.open(base).get(WORKMAIL_ENTRY, "target")
    assert held is not None and held.password == info["secret_access_key"]
    csv = base / "users.csv"
    lines = ["Source Email,Destination Email,Batch"]
    lines += [f"{s},{t},{BATCH}" for s, t, _ in pairs]
    csv.write_text("\r\n".join(lines) + "\r\n")
    commands.batch_import(base, csv)
    csv.unlink()
    return {"pairs": pairs, "account": account, "domain": domain}


def _held(sb: Sandbox, address: str) -> Counter[str]:
    """Message-IDs in the WorkMail mailbox of `address` (read from the sandbox's store)."""
    user = sb.world.tenants["target"].address_owner(address)
    assert user is not None
    return Counter(str(m.internet_message_id) for m in sb.mail.iter_messages("target", user.id))


def test_prestage_creates_users_grants_access_then_moves_mail_once(
    wm: Sandbox, tmp_path: Path
) -> None:
    """prestage: each user created (CreateUser, RegisterToWorkMail with the batch's address),
    the migration account granted FULL_ACCESS, then the data pass; cutover moves the rest: every source message once in
    the WorkMail mailbox. A second prestage and a second cutover send no WorkMail write."""
    base = tmp_path / "p"
    scene = _project(wm, base)
    first = commands.prestage(base, batch=BATCH, older_than="90d", retry=TEST_RETRY)
    assert first["failed"] == [], first["failed"]
    ops = Counter(op for op, _ in _calls(wm))
    assert ops["CreateUser"] == ops["RegisterToWorkMail"] == ops["PutMailboxPermissions"] == 2
    for op, params in _calls(wm):
        if op == "CreateUser":
            assert params["Password"] == "[redacted]"  # the face records no secret
    target = wm.world.tenants["target"]
    account = next(a for a in target.ews_accounts if a.name == "svc-migrate")
    for _source, address, _sid in scene["pairs"]:
        user = target.address_owner(address)
        assert user is not None and user.is_mailbox
        assert address in account.full_access  # what the EWS face checks
    assert first["changed"] >= 4
    commands.cutover(base, batch=BATCH, retry=TEST_RETRY)
    for source, address, sid in scene["pairs"]:
        seeded = {str(m.internet_message_id) for m in wm.mail.iter_messages("source", sid)}
        held = _held(wm, address)
        assert seeded and set(held) == seeded, source
        assert max(held.values()) == 1, source
    writes_before = [c for c in _calls(wm) if c[0] in WRITES]
    again = commands.prestage(base, batch=BATCH, older_than="90d", retry=TEST_RETRY)
    assert again["failed"] == [] and again["changed"] == 0
    assert [c for c in _calls(wm) if c[0] in WRITES] == writes_before  # nothing twice
    assert len([u for u in target.users.values() if u.name.endswith(".wm")]) == 2
    # The generated initial passwords and the AWS secret are in the vault only.
    vault = Vault.open(base).read()
    secrets_held = [c.password for entry in vault.values() for c in entry.values()]
    assert len(secrets_held) == 4  # EWS admin, AWS key, two initial passwords
    files = [p for p in base.rglob("*") if p.is_file() and p.name != "credentials.vault"]
    for secret in secrets_held:
        for path in files:
            assert secret.encode() not in path.read_bytes(), path


def test_plan_lists_every_workmail_write_and_sends_none(wm: Sandbox, tmp_path: Path) -> None:
    """prestage --plan: CreateUser (password redacted), RegisterToWorkMail and
    PutMailboxPermissions per user are listed; the face received reads only; the real run
    after it sends exactly those writes."""
    base = tmp_path / "p"
    scene = _project(wm, base)
    plan = commands.prestage(base, batch=BATCH, older_than="90d", plan=True, retry=TEST_RETRY)
    listed = [w for w in plan["writes"] if w["system"] == "workmail"]
    ops = Counter(w["operation"] for w in listed)
    assert ops == Counter({"CreateUser": 2, "RegisterToWorkMail": 2, "PutMailboxPermissions": 2})
    for w in listed:
        assert "[redacted]" in w["text"] or w["operation"] != "CreateUser"
        assert "[target]" in w["text"]
    assert not [op for op, _ in _calls(wm) if op in WRITES]  # nothing sent
    assert [u for u in wm.world.tenants["target"].users.values() if u.name.endswith(".wm")] == []
    emails = {t for _s, t, _i in scene["pairs"]}
    registered = {w["params"]["Email"] for w in listed if w["operation"] == "RegisterToWorkMail"}
    assert registered == emails
    real = commands.prestage(base, batch=BATCH, older_than="90d", retry=TEST_RETRY)
    assert real["failed"] == []
    sent = Counter(op for op, _ in _calls(wm) if op in WRITES)
    assert sent == ops


def test_throttled_workmail_calls_are_retried_and_a_rerun_after_a_partial_run_finishes(
    wm: Sandbox, tmp_path: Path
) -> None:
    """ThrottlingException answers are retried with backoff (coexist's policy) and the run
    completes; a user made but not registered (a run stopped between the two writes) is
    registered by the next run, not created again."""
    base = tmp_path / "p"
    scene = _project(wm, base, users=1)
    _source, address, _sid = scene["pairs"][0]
    info = wm.connection["tenants"]["target"]["workmail"]
    key_id, secret = credentials_of(wm.world.tenants["target"])
    c = boto3.client(
        "workmail",
        endpoint_url=info["endpoint"],
        region_name=info["region"],
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        verify=wm.connection["ca_file"],
    )
    c.create_user(
        OrganizationId=info["organization_id"],
        Name=address.split("@")[0],
        DisplayName="Half Made",
    )
    assert wm.ctx is not None
    wm.ctx.extra[THROTTLE_KEY] = 4
    _calls(wm).clear()
    out = commands.prestage(base, batch=BATCH, older_than="90d", retry=TEST_RETRY)
    assert out["failed"] == [], out["failed"]
    assert wm.ctx.extra[THROTTLE_KEY] == 0
    ops = Counter(op for op, _ in _calls(wm))
    assert ops["CreateUser"] == 0 and ops["RegisterToWorkMail"] == 1
    assert ops["PutMailboxPermissions"] == 1
    user = wm.world.tenants["target"].address_owner(address)
    assert user is not None and user.display_name == "Half Made"


def test_missing_aws_key_fails_the_workmail_step_with_what_to_do(
    wm: Sandbox, tmp_path: Path
) -> None:
    """[target.workmail] set but no access key secret anywhere: prestage fails each user's
    workmail.user step with the command to run next and sends no WorkMail call; no data pass
    runs for them."""
    base = tmp_path / "p"
    _project(wm, base, users=1)
    Vault.open(base).remove([WORKMAIL_ENTRY])
    _calls(wm).clear()
    out = commands.prestage(base, batch=BATCH, older_than="90d", retry=TEST_RETRY)
    assert [f["step"] for f in out["failed"]] == ["workmail.user"]
    assert "AWS_SECRET_ACCESS_KEY" in out["failed"][0]["next"]
    assert _calls(wm) == []


def test_preflight_checks_the_workmail_api_and_counts_users_to_create(
    wm: Sandbox, tmp_path: Path
) -> None:
    """preflight before prestage: the WorkMail API check is ok (key, organisation Active,
    migration account a WorkMail user) and says how many users prestage will create; the
    mailboxes that do not exist yet are not an access failure. Pointing migration_account at
    a user WorkMail lacks fails the check with what to do."""
    base = tmp_path / "p"
    _project(wm, base)
    out = commands.preflight_checks(base, batch=BATCH)
    checks = {c["check"]: c for c in out["checks"]}
    api = checks["target workmail api"]
    assert api["status"] == "ok" and "2 of the batch's users to create" in api["detail"]
    assert checks["target access"]["status"] == "ok"
    assert "prestage creates them" in checks["target access"]["detail"]
    text = (base / "project.toml").read_text()
    head, _, tail = text.rpartition('migration_account = ""')  # [target.workmail]'s: the last
    (base / "project.toml").write_text(head + 'migration_account = "nobody@contoso.example"' + tail)
    again = {c["check"]: c for c in commands.preflight_checks(base, batch=BATCH)["checks"]}
    assert again["target workmail api"]["status"] == "fail"
    assert "migration_account" in again["target workmail api"]["fix"]
