"""exchangelib pointed at the sandbox's EWS face, as a coexist adapter would build it.

TLS is verified against the sandbox CA through exchangelib's documented hook: a
`BaseProtocol.HTTP_ADAPTER_CLS` subclass of requests' HTTPAdapter that passes the CA bundle
(exchangelib docs, "Proxies and custom TLS validation"). Version and auth type are pinned so
exchangelib never probes. `CachingProtocol.clear_cache()` drops protocols (and their
sessions) cached by endpoint+credentials between tests.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import requests.adapters
from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    Account,
    Build,
    CalendarItem,
    Configuration,
    Credentials,
    EWSDate,
    EWSDateTime,
    Version,
)
from exchangelib import UTC as EWS_UTC
from exchangelib.protocol import BaseProtocol, CachingProtocol
from exchangelib.recurrence import Recurrence, WeeklyPattern

from coexist.sandbox import Sandbox
from coexist.sandbox.ews import EWS_PATH, add_account, set_kind
from coexist.sandbox.graph.calendar import occurrence_id
from coexist.sandbox.graph.outlook_items import pim_store
from coexist.sandbox.mailstore import iso
from coexist.sandbox.model import User

VERSIONS = {
    "exchange2016": Version(build=Build(15, 1, 2507, 6), api_version="Exchange2016"),
    "exchange2019": Version(build=Build(15, 2, 1258, 12), api_version="Exchange2016"),
    "workmail": Version(build=Build(14, 3, 123, 4), api_version="Exchange2010_SP2"),
}
PASSWORD = "Migrate-Pass-1"


def use_ca(ca_file: str) -> None:
    """Make exchangelib verify the sandbox's certificate with its CA (and nothing else)."""

    class SandboxCA(requests.adapters.HTTPAdapter):
        def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
            super().cert_verify(conn=conn, url=url, verify=ca_file, cert=cert)  # type: ignore[misc]

    BaseProtocol.HTTP_ADAPTER_CLS = SandboxCA
    CachingProtocol.clear_cache()


def mailboxes(sb: Sandbox, key: str, n: int) -> list[User]:
    users = [u for u in sb.world.tenants[key].users.values() if u.is_mailbox and u.primary_smtp]
    users.sort(key=lambda u: u.primary_smtp or "")
    return users[:n]


def org(sb: Sandbox, key: str, kind: str) -> None:
    set_kind(sb.world, key, kind)


def migration_account(
    sb: Sandbox,
    key: str,
    *,
    name: str = "svc-migrate",
    full_access: list[str] | None = None,
    impersonation: bool = False,
) -> str:
    """Create the organisation's migration account; returns its UPN (the sign-in name)."""
    return add_account(
        sb.world, key, name, PASSWORD, full_access=full_access, impersonation=impersonation
    ).upn


def account(
    sb: Sandbox,
    key: str,
    login: str,
    mailbox: str,
    *,
    kind: str = "exchange2016",
    auth: str = NTLM,
    impersonate: bool = False,
    password: str = PASSWORD,
) -> Account:
    """An exchangelib Account for `mailbox`, signed in as `login`."""
    use_ca(sb.connection["ca_file"])
    config = Configuration(
        service_endpoint=sb.base_url + EWS_PATH,
        credentials=Credentials(login, password),
        auth_type=auth,
        version=VERSIONS[kind],
        max_connections=4,
    )
    return Account(
        primary_smtp_address=mailbox,
        config=config,
        autodiscover=False,
        access_type=IMPERSONATION if impersonate else DELEGATE,
    )


def weekly_series(account: Any) -> CalendarItem:
    """A weekly series (Mondays 09:00 UTC, 6 occurrences from 2026-01-05) saved over EWS."""
    start = EWSDateTime(2026, 1, 5, 9, 0, tzinfo=EWS_UTC)
    item = CalendarItem(
        account=account,
        folder=account.calendar,
        subject="Weekly sync",
        start=start,
        end=start + dt.timedelta(hours=1),
        location="Room 1",
        recurrence=Recurrence(
            pattern=WeeklyPattern(interval=1, weekdays=[1]), start=EWSDate(2026, 1, 5), number=6
        ),
    )
    item.save()
    return item


def add_exception_and_cancel(sb: Sandbox, master_id: str) -> tuple[str, str]:
    """What a Graph client editing the series leaves in the shared PIM store: the second
    occurrence moved an hour later (an exception), the third cancelled."""
    assert sb.ctx is not None
    pim = pim_store(sb.ctx)
    master = pim.find(master_id)
    assert master is not None
    moved = iso(dt.datetime(2026, 1, 12, 9, 0, tzinfo=dt.UTC))
    cancelled = iso(dt.datetime(2026, 1, 19, 9, 0, tzinfo=dt.UTC))
    props = {
        **{k: v for k, v in master.props.items() if k not in ("recurrence", "cancelled")},
        "type": "exception",
        "seriesMasterId": master.id,
        "originalStart": moved,
        "subject": "Weekly sync (moved)",
        "start": {"dateTime": "2026-01-12T10:00:00.0000000", "timeZone": "UTC"},
        "end": {"dateTime": "2026-01-12T11:00:00.0000000", "timeZone": "UTC"},
    }
    pim.create_item(master.tenant, master.mailbox, master.folder_id, "event", props,
                    item_id=occurrence_id(master.id, moved))  # fmt: skip
    pim.update_item(master.id, {**master.props, "cancelled": [cancelled]})
    return moved, cancelled


__all__ = [
    "BASIC",
    "NTLM",
    "account",
    "add_exception_and_cancel",
    "mailboxes",
    "migration_account",
    "org",
    "use_ca",
    "weekly_series",
]
