"""The sandbox's remote PowerShell face (/PowerShell, Microsoft.Exchange) driven by the real
pypsrp client over HTTPS (sandbox CA, verification on), Basic and NTLM/Negotiate."""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import resources
from typing import Any

import pytest
from pypsrp.exceptions import AuthenticationError as PsrpAuthError
from pypsrp.exceptions import WinRMTransportError, WSManFaultError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from coexist.sandbox import Sandbox
from coexist.sandbox.ews import add_account, set_kind
from coexist.sandbox.ews.orgs import may_open
from coexist.sandbox.model import Contact, User
from coexist.sandbox.psrp.cmdlets import served
from coexist.sandbox.psrp.face import IDLE_S, shells
from tests import ewsclient as ec

ADMIN = "svc-admin"
PASSWORD = "Admin-Pass-1"
MIGRATOR = "svc-migrate"


@pytest.fixture
def org(sandbox: Sandbox) -> Iterator[Sandbox]:
    """Source = hosted Exchange 2016 with an admin account and a migration account."""
    set_kind(sandbox.world, "source", "exchange2016")
    add_account(sandbox.world, "source", ADMIN, PASSWORD)
    add_account(sandbox.world, "source", MIGRATOR, ec.PASSWORD)
    yield sandbox
    assert sandbox.ctx is not None
    assert shells(sandbox.ctx).by_id == {}, "every runspace pool was deleted"


def wsman(sb: Sandbox, auth: str = "basic", password: str = PASSWORD, user: str = ADMIN) -> WSMan:
    """pypsrp's WSMan as the runner builds it: /PowerShell over HTTPS, the sandbox CA."""
    host, port = sb.base_url.split("//", 1)[1].rsplit(":", 1)
    upn = f"{user}@" + ec_domain(sb)
    return WSMan(
        host,
        port=int(port),
        path="PowerShell",
        auth=auth,
        username=upn,
        password=password,
        cert_validation=sb.connection["ca_file"],
    )


def ec_domain(sb: Sandbox) -> str:
    from coexist.sandbox.ews.orgs import org_domain

    return org_domain(sb.world.tenants["source"])


def invoke(pool: RunspacePool, cmdlet: str, **params: Any) -> PowerShell:
    ps = PowerShell(pool)
    ps.add_cmdlet(cmdlet)
    for k, v in params.items():
        ps.add_parameter(k, v)
    ps.invoke()
    return ps


def mailbox(sb: Sandbox, n: int = 0) -> User:
    return ec.mailboxes(sb, "source", n + 1)[n]


def errors(ps: PowerShell) -> list[tuple[str, str, str]]:
    """(FullyQualifiedErrorId, exception type, message) of every error record."""
    return [
        (e.fq_error, e.exception.types[0], e.exception.adapted_properties["Message"])
        for e in ps.streams.error
    ]


# Each served cmdlet: a valid call, given the organisation.
def valid_calls(sb: Sandbox) -> dict[str, dict[str, Any]]:
    mbx = mailbox(sb).primary_smtp
    other = mailbox(sb, 1).primary_smtp
    contact = _contact(sb)
    return {
        "Get-Mailbox": {"Identity": mbx},
        "Get-Recipient": {"ResultSize": 5},
        "Get-MailContact": {"Identity": contact.external_email_address},
        "New-MailContact": {"Name": "Ext Fwd 1", "ExternalEmailAddress": "fwd1@new.example"},
        "Set-MailContact": {"Identity": contact.name, "HiddenFromAddressListsEnabled": True},
        "Set-Mailbox": {"Identity": other, "HiddenFromAddressListsEnabled": True},
        "Add-MailboxPermission": {"Identity": mbx, "User": MIGRATOR, "AccessRights": "FullAccess"},
        "Get-MailboxPermission": {"Identity": mbx},
        "New-ManagementRoleAssignment": {"Role": "ApplicationImpersonation", "User": MIGRATOR},
        "Get-ManagementRoleAssignment": {"Role": "ApplicationImpersonation"},
        "Get-AcceptedDomain": {},
        "Get-MailboxStatistics": {"Identity": mbx},
        # Last: they take away what Add-/New- above granted (-Confirm:$false: no host UI).
        "Remove-MailboxPermission": {
            "Identity": mbx,
            "User": MIGRATOR,
            "AccessRights": "FullAccess",
            "Confirm": False,
        },
        "Remove-ManagementRoleAssignment": {
            "Identity": f"ApplicationImpersonation-{MIGRATOR}",
            "Confirm": False,
        },
    }


def _contact(sb: Sandbox) -> Contact:
    contacts = sorted(sb.world.tenants["source"].contacts.values(), key=lambda c: c.name)
    if contacts:
        return contacts[0]
    raise AssertionError("the seed has no mail contact")


def spec_raw() -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name in ("exo-cmdlets.json", "exo-cmdlets-rbac.json"):
        text = resources.files("coexist.data").joinpath(name).read_text("utf-8")
        data.update(json.loads(text)["cmdlets"])
    return data


def online_only(cmdlet: str) -> str | None:
    params = spec_raw()[cmdlet]["parameters"]
    found = [p for p, v in params.items() if v["exchange_online"] and not v["on_premises"]]
    return found[0] if found else None


MISSING_MANDATORY = {
    # cmdlet -> (a call lacking a mandatory parameter, the one it lacks)
    "New-MailContact": ({"Name": "No Address"}, "ExternalEmailAddress"),
    "Set-MailContact": ({"DisplayName": "x"}, "Identity"),
    "Set-Mailbox": ({"DeliverToMailboxAndForward": False}, "Identity"),
    "Add-MailboxPermission": ({"User": MIGRATOR, "AccessRights": "FullAccess"}, "Identity"),
    "Get-MailboxPermission": ({"User": MIGRATOR}, "Identity"),
    "New-ManagementRoleAssignment": ({"User": MIGRATOR}, "Role"),
    "Remove-MailboxPermission": (
        {"Identity": "x", "User": MIGRATOR, "Confirm": False},
        "AccessRights",
    ),
    "Remove-ManagementRoleAssignment": ({"Confirm": False}, "Identity"),
    "Get-MailboxStatistics": ({"Archive": True}, "Identity"),
}


@pytest.mark.parametrize("auth", ["basic", "ntlm", "negotiate"])
def test_each_cmdlet_valid_call(org: Sandbox, auth: str) -> None:
    """Every served cmdlet answers a valid call with no error, over Basic, NTLM and Negotiate."""
    calls = valid_calls(org)
    assert sorted(calls) == served()
    with RunspacePool(wsman(org, auth), configuration_name="Microsoft.Exchange") as pool:
        for cmdlet, params in calls.items():
            ps = invoke(pool, cmdlet, **params)
            assert not ps.had_errors and errors(ps) == [], (cmdlet, errors(ps))
            if cmdlet.startswith(("Get-", "New-", "Add-")):
                assert ps.output, cmdlet
            if auth != "basic":
                break  # the handshake is what differs; one call per scheme proves it


def test_unknown_parameter_each_cmdlet(org: Sandbox) -> None:
    """An unknown parameter fails binding as PowerShell does: NamedParameterNotFound."""
    with RunspacePool(wsman(org), configuration_name="Microsoft.Exchange") as pool:
        for cmdlet, params in valid_calls(org).items():
            ps = invoke(pool, cmdlet, **params, Bogus=1)
            assert ps.had_errors, cmdlet
            assert errors(ps) == [
                (
                    f"NamedParameterNotFound,{cmdlet}",
                    "System.Management.Automation.ParameterBindingException",
                    "A parameter cannot be found that matches parameter name 'Bogus'.",
                )
            ]


def test_online_only_parameter_is_refused_on_premises(org: Sandbox) -> None:
    """A parameter only Exchange Online has does not exist on-premises (from the spec)."""
    without: list[str] = []
    with RunspacePool(wsman(org), configuration_name="Microsoft.Exchange") as pool:
        for cmdlet, params in valid_calls(org).items():
            extra = online_only(cmdlet)
            if extra is None:
                without.append(cmdlet)
                continue
            ps = invoke(pool, cmdlet, **params, **{extra: True})
            assert ps.had_errors, cmdlet
            assert errors(ps)[0][0] == f"NamedParameterNotFound,{cmdlet}", cmdlet
            assert f"'{extra}'" in errors(ps)[0][2]
    # The reference lists no Exchange-Online-only parameter for these (nothing to refuse).
    assert without == ["Get-MailContact", "New-MailContact"]


def test_missing_mandatory_parameter(org: Sandbox) -> None:
    """A call without a mandatory parameter fails: MissingMandatoryParameter, the name given."""
    with RunspacePool(wsman(org), configuration_name="Microsoft.Exchange") as pool:
        for cmdlet, (params, missing) in MISSING_MANDATORY.items():
            ps = invoke(pool, cmdlet, **params)
            assert ps.had_errors
            fqid, etype, message = errors(ps)[0]
            assert fqid == f"MissingMandatoryParameter,{cmdlet}"
            assert etype == "System.Management.Automation.ParameterBindingException"
            assert message.endswith(f"missing mandatory parameters: {missing}."), message
    # Every served cmdlet with a mandatory on-premises parameter is covered above.
    raw = spec_raw()
    with_mandatory = {
        c
        for c in served()
        if any(s["on_premises_usable"] and s["required"] for s in raw[c]["parameter_sets"].values())
    }
    assert with_mandatory == set(MISSING_MANDATORY)


def test_remove_without_confirm_false_fails_as_a_remote_shell_does(org: Sandbox) -> None:
    """Remove-* asks for confirmation; over remote PowerShell nobody can answer, so a call
    without -Confirm:$false fails and changes nothing."""
    mbx = mailbox(org).primary_smtp
    with RunspacePool(wsman(org), configuration_name="Microsoft.Exchange") as pool:
        invoke(
            pool, "Add-MailboxPermission", Identity=mbx, User=MIGRATOR, AccessRights="FullAccess"
        )
        ps = invoke(pool, "Remove-MailboxPermission", Identity=mbx, User=MIGRATOR,
                    AccessRights="FullAccess")  # fmt: skip
        assert "does not support user interaction" in errors(ps)[0][2]
        rows = invoke(pool, "Get-MailboxPermission", Identity=mbx, User=MIGRATOR).output
        assert [r.adapted_properties["AccessRights"] for r in rows] == [["FullAccess"]]


def test_script_is_refused(org: Sandbox) -> None:
    """NoLanguage: a script (even one cmdlet) fails with ScriptsNotAllowed, nothing runs."""
    with RunspacePool(wsman(org), configuration_name="Microsoft.Exchange") as pool:
        ps = PowerShell(pool)
        ps.add_script("Set-Mailbox -Identity x -HiddenFromAddressListsEnabled $true")
        ps.invoke()
        assert ps.had_errors
        fqid, etype, _ = errors(ps)[0]
        assert (fqid, etype) == (
            "ScriptsNotAllowed",
            "System.Management.Automation.ParseException",
        )
        ps = invoke(pool, "Get-Process")
        assert errors(ps)[0][:2] == (
            "CommandNotFoundException",
            "System.Management.Automation.CommandNotFoundException",
        )


def test_not_found_is_exchange_record(org: Sandbox) -> None:
    """A missing object is a non-terminating ManagementObjectNotFoundException record."""
    with RunspacePool(wsman(org), configuration_name="Microsoft.Exchange") as pool:
        ps = invoke(pool, "Get-Mailbox", Identity="nobody@nowhere.example")
        (fqid, etype, message) = errors(ps)[0]
        assert etype == "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
        assert "[FailureCategory=Cmdlet-ManagementObjectNotFoundException]" in fqid
        assert fqid.endswith(",Microsoft.Exchange.Management.RecipientTasks.GetMailbox")
        assert ps.streams.error[0].category == 0  # NotSpecified, as Exchange shows it
        assert "couldn't be found" in message


@pytest.mark.parametrize("auth", ["basic", "ntlm"])
def test_bad_password_is_401(org: Sandbox, auth: str) -> None:
    """A wrong password is refused by HTTP authentication (pypsrp: AuthenticationError)."""
    pool = RunspacePool(wsman(org, auth, password="wrong"), configuration_name="Microsoft.Exchange")
    with pytest.raises(PsrpAuthError):
        pool.open()


def test_user_account_sees_no_admin_cmdlets(org: Sandbox) -> None:
    """A user signing in as themselves holds no recipient-management role: not recognized."""
    user = mailbox(org)
    assert user.primary_smtp
    add_account(org.world, "source", "jdoe", "User-Pass-1", mailbox=user.primary_smtp)
    ws = wsman(org, password="User-Pass-1", user="jdoe")
    with RunspacePool(ws, configuration_name="Microsoft.Exchange") as pool:
        ps = invoke(pool, "Get-Mailbox")
        assert errors(ps)[0][0] == "CommandNotFoundException"


def test_grants_are_the_ones_ews_checks(org: Sandbox) -> None:
    """Add-MailboxPermission FullAccess / ApplicationImpersonation open mailboxes over EWS."""
    mbx, other = mailbox(org), mailbox(org, 1)
    assert mbx.primary_smtp and other.primary_smtp
    login = f"{MIGRATOR}@{ec_domain(org)}"
    with RunspacePool(wsman(org), configuration_name="Microsoft.Exchange") as pool:
        ps = invoke(pool, "Add-MailboxPermission", Identity=mbx.primary_smtp, User=MIGRATOR,
                    AccessRights=["FullAccess"], InheritanceType="All")  # fmt: skip
        assert not ps.had_errors
        ace = ps.output[0].adapted_properties
        assert ace["AccessRights"] == ["FullAccess"] and ace["User"].endswith("\\" + MIGRATOR)
        perms = invoke(pool, "Get-MailboxPermission", Identity=mbx.primary_smtp).output
        users = {p.adapted_properties["User"] for p in perms}
        assert "NT AUTHORITY\\SELF" in users and any(u.endswith(MIGRATOR) for u in users)
        account = ec.account(org, "source", login, mbx.primary_smtp)
        assert account.inbox.name == "Inbox"  # FullAccess delegation works over EWS
        acct = next(a for a in org.world.tenants["source"].ews_accounts if a.name == MIGRATOR)
        assert may_open(acct, mbx) and not may_open(acct, other)
        ps = invoke(pool, "New-ManagementRoleAssignment", Role="ApplicationImpersonation",
                    User=MIGRATOR)  # fmt: skip
        assert ps.output[0].adapted_properties["Role"] == "ApplicationImpersonation"
        imp = ec.account(org, "source", login, other.primary_smtp, impersonate=True)
        assert imp.inbox.name == "Inbox"  # impersonation works over EWS
        again = invoke(pool, "New-ManagementRoleAssignment", Role="ApplicationImpersonation",
                       User=MIGRATOR)  # fmt: skip
        assert again.had_errors or errors(again)


def test_forwarding_object_routes_mail(org: Sandbox) -> None:
    """A hidden 'External Forward' contact + Set-Mailbox -ForwardingAddress, no local copy:
    mail to the old address lands once at the new address and not in the old mailbox."""
    mbx = mailbox(org, 2)
    assert mbx.primary_smtp
    target = ec.mailboxes(org, "target", 1)[0]
    assert target.primary_smtp
    with RunspacePool(wsman(org), configuration_name="Microsoft.Exchange") as pool:
        name = f"{mbx.display_name} (External Forward)"
        ps = invoke(pool, "New-MailContact", Name=name, ExternalEmailAddress=target.primary_smtp)
        assert not ps.had_errors, errors(ps)
        ps = invoke(pool, "Set-MailContact", Identity=name, HiddenFromAddressListsEnabled=True)
        assert not ps.had_errors, errors(ps)
        ps = invoke(pool, "Set-Mailbox", Identity=mbx.primary_smtp, ForwardingAddress=name,
                    DeliverToMailboxAndForward=False)  # fmt: skip
        assert not ps.had_errors, errors(ps)
        got = invoke(pool, "Get-Mailbox", Identity=mbx.primary_smtp).output[0]
        assert got.adapted_properties["DeliverToMailboxAndForward"] is False
        assert got.adapted_properties["ForwardingAddress"]
    report = org.deliver(mbx.primary_smtp, sender="someone@elsewhere.example", subject="probe")
    inboxes = [c.address for c in report.inbox_copies()]
    assert inboxes == [target.primary_smtp], report.to_dict()


def test_large_output_spans_receives(org: Sandbox) -> None:
    """Output larger than the client's MaxEnvelopeSize arrives whole over several Receives."""
    ws = wsman(org)
    ws.max_envelope_size = 24 * 1024  # pypsrp sends it in every request header
    everyone = [o for o in org.world.tenants["source"].objects()]
    with RunspacePool(ws, configuration_name="Microsoft.Exchange") as pool:
        ps = invoke(pool, "Get-Recipient", ResultSize="Unlimited")
        assert not ps.had_errors, errors(ps)
        names = {o.adapted_properties["Name"] for o in ps.output}
    assert len(ps.output) == len(names) > 40
    assert names <= {o.name for o in everyone}


def test_forward_removed_delivers_locally_again(org: Sandbox) -> None:
    """Rollback: Set-Mailbox -ForwardingAddress $null clears the forward; mail stays local."""
    mbx = mailbox(org, 3)
    assert mbx.primary_smtp
    with RunspacePool(wsman(org), configuration_name="Microsoft.Exchange") as pool:
        invoke(pool, "New-MailContact", Name="Fwd R", ExternalEmailAddress="r@new.example")
        ps = invoke(pool, "Set-Mailbox", Identity=mbx.primary_smtp, ForwardingAddress="Fwd R",
                    DeliverToMailboxAndForward=False)  # fmt: skip
        assert not ps.had_errors, errors(ps)
        ps = invoke(pool, "Set-Mailbox", Identity=mbx.primary_smtp, ForwardingAddress=None)
        assert not ps.had_errors, errors(ps)
        got = invoke(pool, "Get-Mailbox", Identity=mbx.primary_smtp).output[0]
        assert got.adapted_properties["ForwardingAddress"] is None
    report = org.deliver(mbx.primary_smtp, sender="someone@elsewhere.example", subject="back")
    assert [c.address for c in report.inbox_copies()] == [mbx.primary_smtp]


def test_workmail_has_no_remote_powershell(org: Sandbox) -> None:
    """An Amazon WorkMail organisation's account finds no /PowerShell endpoint (404)."""
    set_kind(org.world, "source", "workmail")
    pool = RunspacePool(wsman(org), configuration_name="Microsoft.Exchange")
    with pytest.raises(WinRMTransportError) as err:
        pool.open()
    assert err.value.code == 404


def test_idle_shell_is_deleted(org: Sandbox) -> None:
    """A shell idle past its IdleTimeOut is gone: the next request is WinRM's shell-not-found."""
    assert org.ctx is not None
    table = shells(org.ctx)
    pool = RunspacePool(wsman(org), configuration_name="Microsoft.Exchange")
    pool.open()
    for shell in table.by_id.values():
        shell.used -= IDLE_S + 1  # as if the client had gone quiet that long
    with pytest.raises(WSManFaultError) as fault:
        invoke(pool, "Get-AcceptedDomain")
    assert fault.value.code == 2150858843
    assert table.by_id == {}
