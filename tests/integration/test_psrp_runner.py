"""coexist's pypsrp CmdletRunner (tenants/psrp.py) against the sandbox's /PowerShell face."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from coexist import estimate
from coexist.errors import AuthenticationError, Conflict, InvalidRequest, NotFound, TLSError
from coexist.provisioning.exchange import find_one
from coexist.sandbox import Sandbox
from coexist.sandbox.ews import add_account, set_kind
from coexist.sandbox.ews.orgs import org_domain
from coexist.sandbox.psrp.face import shells
from coexist.tenants.plan import WriteRecorder
from coexist.tenants.psrp import PsrpEndpoint, PsrpLogin, PsrpRunner

PASSWORD = "Admin-Pass-1"


@pytest.fixture
def org(sandbox: Sandbox) -> Iterator[Sandbox]:
    """Source = hosted Exchange 2019 with an admin account."""
    set_kind(sandbox.world, "source", "exchange2019")
    add_account(sandbox.world, "source", "svc-admin", PASSWORD)
    add_account(sandbox.world, "source", "svc-migrate", "Migrate-1")
    yield sandbox


def runner(sb: Sandbox, auth: str = "ntlm", password: str = PASSWORD, **kw: object) -> PsrpRunner:
    host, port = sb.base_url.split("//", 1)[1].rsplit(":", 1)
    ep = PsrpEndpoint(host, int(port), auth=auth, ca_file=sb.connection["ca_file"])
    login = PsrpLogin(f"svc-admin@{org_domain(sb.world.tenants['source'])}", password)
    return PsrpRunner(ep, login, **kw)  # type: ignore[arg-type]


def test_runs_cmdlets_on_one_pool_and_maps_objects(org: Sandbox) -> None:
    """Reads and writes return the EXO runner's dicts; one runspace pool serves every call."""

    async def go() -> None:
        async with runner(org) as exo:
            boxes = await exo.run("Get-Mailbox", ResultSize=3)
            assert len(boxes) == 3 and all("@" in b["PrimarySmtpAddress"] for b in boxes)
            assert isinstance(boxes[0]["EmailAddresses"], list)
            assert isinstance(boxes[0]["HiddenFromAddressListsEnabled"], bool)
            made = await exo.run(
                "New-MailContact", Name="Fwd A", ExternalEmailAddress="a@n.example"
            )
            assert made[0]["ExternalEmailAddress"].lower().endswith("a@n.example")
            assert await find_one(exo, "Get-MailContact", "nobody-here") is None
            await exo.run("Set-MailContact", Identity="Fwd A", HiddenFromAddressListsEnabled=True)
            got = await exo.run("Get-MailContact", Identity="Fwd A")
            assert got[0]["HiddenFromAddressListsEnabled"] is True
            assert org.ctx is not None and len(shells(org.ctx).by_id) == 1
            assert exo.calls == 5 and exo.writes == 2
        assert org.ctx is not None and shells(org.ctx).by_id == {}

    asyncio.run(go())


def test_errors_map_to_the_error_tree(org: Sandbox) -> None:
    """Not found, duplicate name, bad parameter, bad password: each its coexist error."""

    async def go() -> None:
        async with runner(org, auth="basic") as exo:
            with pytest.raises(NotFound):
                await exo.run("Set-Mailbox", Identity="nobody@nowhere.example",
                              HiddenFromAddressListsEnabled=True)  # fmt: skip
            await exo.run("New-MailContact", Name="Dup", ExternalEmailAddress="d1@n.example")
            with pytest.raises(Conflict):
                await exo.run("New-MailContact", Name="Dup", ExternalEmailAddress="d2@n.example")
            with pytest.raises(InvalidRequest) as bad:
                await exo.run("Get-Mailbox", InactiveMailboxOnly=True)  # Exchange Online only
            assert bad.value.next_step and "InactiveMailboxOnly" in bad.value.message
        for auth in ("basic", "ntlm"):
            async with runner(org, auth=auth, password="wrong") as exo:
                with pytest.raises(AuthenticationError) as denied:
                    await exo.run("Get-Mailbox")
                assert denied.value.status == 401 and denied.value.next_step
                assert "wrong" not in str(denied.value)

    asyncio.run(go())


def test_untrusted_certificate_is_tls_error(org: Sandbox) -> None:
    """Without the sandbox CA the certificate is refused (verification is never off)."""

    async def go() -> None:
        host, port = org.base_url.split("//", 1)[1].rsplit(":", 1)
        ep = PsrpEndpoint(host, int(port), auth="basic")
        async with PsrpRunner(ep, PsrpLogin("svc-admin", PASSWORD)) as exo:
            with pytest.raises(TLSError):
                await exo.run("Get-Mailbox")

    asyncio.run(go())


def test_plan_mode_records_writes_and_checks_them(org: Sandbox) -> None:
    """--plan: writes are recorded (not sent), reads are sent, a bad write is refused early."""

    async def go() -> None:
        plan = WriteRecorder()
        async with runner(org, plan=plan) as exo:
            await exo.run("Add-MailboxPermission", Identity="x", User="svc-migrate",
                          AccessRights="FullAccess")  # fmt: skip
            assert exo.calls == 0
            assert [w.operation for w in plan.writes] == ["Add-MailboxPermission"]
            with pytest.raises(InvalidRequest):
                await exo.run("Set-Mailbox", Identity="x", AutoArchivingEnabled=True)
            assert await exo.run("Get-AcceptedDomain")
        acct = next(a for a in org.world.tenants["source"].ews_accounts if a.name == "svc-migrate")
        assert acct.full_access == []

    asyncio.run(go())


def test_multivalued_add_hashtable_as_the_exo_runner_builds_it(org: Sandbox) -> None:
    """`@{Add=...}` from exo.hashtable() travels as a PowerShell hashtable and adds a proxy."""
    from coexist.tenants.exo import hashtable

    domain = org_domain(org.world.tenants["source"])

    async def go() -> None:
        async with runner(org) as exo:
            box = (await exo.run("Get-Mailbox", ResultSize=1))[0]
            extra = f"smtp:extra.alias@{domain}"
            await exo.run(
                "Set-Mailbox", Identity=box["PrimarySmtpAddress"], EmailAddresses=hashtable([extra])
            )
            again = await exo.run("Get-Mailbox", Identity=box["PrimarySmtpAddress"])
            assert extra in again[0]["EmailAddresses"]

    asyncio.run(go())


def test_mailbox_statistics_over_remote_powershell(org: Sandbox) -> None:
    """Get-MailboxStatistics over remote PowerShell gives the mailbox's stored messages, and the
    first-pass estimate reads its TotalItemSize text back to bytes."""
    source = org.world.tenants["source"]
    box = next(u for u in source.users.values() if u.is_mailbox and u.primary_smtp)
    mimes = [f"Subject: s{i}\r\n\r\n{'y' * 700 * i}\r\n".encode() for i in range(1, 3)]
    for mime in mimes:
        org.mail.deliver("source", box.id, mime)

    async def go() -> None:
        async with runner(org) as exo:
            row = (await exo.run("Get-MailboxStatistics", Identity=box.primary_smtp))[0]
            assert row["ItemCount"] == 2
            assert estimate.byte_count(row["TotalItemSize"]) == sum(len(m) for m in mimes)
            assert estimate.statistics_volume(row) == estimate.Volume(
                2, sum(len(m) for m in mimes), estimate.STATISTICS
            )

    asyncio.run(go())
