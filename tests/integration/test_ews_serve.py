"""`coexist sandbox serve --source-kind/--target-kind` and `coexist sandbox ews-account`:
an operator (or a test, or `ewsstore`) makes the migration account of a served Exchange or
WorkMail organisation and signs in with it over EWS (exchangelib, sandbox CA)."""

from __future__ import annotations

from pathlib import Path

import pytest
from exchangelib import BASIC, DELEGATE, NTLM, Account, Configuration, Credentials
from exchangelib.errors import ErrorAccessDenied

from coexist import commands
from coexist.cli import ORG_KINDS
from coexist.sandbox import Sandbox
from coexist.sandbox.ews import KINDS
from coexist.sandbox.model import World
from tests import ewsclient as ec
from tests.integration.test_sandbox_rehearsal import Serve


def test_cli_kinds_are_the_sandbox_kinds() -> None:
    """The CLI's --source-kind/--target-kind choices are the sandbox's organisation kinds."""
    assert tuple(ORG_KINDS) == KINDS


def _account(conn: dict[str, object], key: str, login: str, mailbox: str, kind: str,
             auth: str) -> Account:  # fmt: skip
    tenant = conn["tenants"][key]  # type: ignore[index]
    ec.use_ca(str(conn["ca_file"]))
    config = Configuration(
        service_endpoint=tenant["ews_url"], credentials=Credentials(login, ec.PASSWORD),
        auth_type=auth, version=ec.VERSIONS[kind],
    )  # fmt: skip
    return Account(mailbox, config=config, autodiscover=False, access_type=DELEGATE)


def test_serve_with_kinds_and_account_command(tmp_path: Path) -> None:
    """serve --source-kind exchange2016 --target-kind workmail; ews-account through the running
    server creates the account and its grants; exchangelib then opens the granted mailbox and
    is refused the others."""
    state = tmp_path / "sb"
    serve = Serve(state, "--source-kind", "exchange2016", "--target-kind", "workmail")
    try:
        conn = serve.wait_ready()
        assert conn["tenants"]["source"]["kind"] == "exchange2016"
        assert conn["tenants"]["target"]["kind"] == "workmail"
        world = World.load(state)
        users = sorted(u.primary_smtp for u in world.source.users.values()
                       if u.is_mailbox and u.primary_smtp)  # fmt: skip
        made = commands.sandbox_ews_account(state, "source", "svc-migrate",
                                            password=ec.PASSWORD, full_access=[users[0]])  # fmt: skip
        assert made["through"] == "server" and made["full_access"] == [users[0]]
        ok = _account(conn, "source", made["account"], users[0], "exchange2016", NTLM)
        assert ok.inbox.name == "Inbox"
        with pytest.raises(ErrorAccessDenied):
            _account(
                conn, "source", made["account"], users[1], "exchange2016", NTLM
            ).inbox.refresh()
        targets = sorted(u.primary_smtp for u in World.load(state).target.users.values()
                         if u.is_mailbox and u.primary_smtp)  # fmt: skip
        wm = commands.sandbox_ews_account(state, "target", "migration", password=ec.PASSWORD,
                                          full_access=["*"])  # fmt: skip
        assert _account(conn, "target", wm["account"], targets[0], "workmail", BASIC).inbox.name
    finally:
        serve.stop()


def test_account_command_on_saved_state(tmp_path: Path) -> None:
    """ews-account on a stopped sandbox writes the saved state; the next start serves it."""
    state = tmp_path / "sb"
    with Sandbox(state, seed=3, users=6):
        pass
    made = commands.sandbox_ews_account(state, "source", "svc", password=ec.PASSWORD,
                                        kind="exchange2019", impersonation=True)  # fmt: skip
    assert made["through"] == "state" and made["impersonation"] is True
    with Sandbox(state, seed=3, users=6) as sb:
        user = ec.mailboxes(sb, "source", 1)[0]
        assert user.primary_smtp
        account = ec.account(sb, "source", made["account"], user.primary_smtp,
                             kind="exchange2019", impersonate=True)  # fmt: skip
        assert account.inbox.name == "Inbox"
