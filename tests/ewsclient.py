"""exchangelib pointed at the sandbox's EWS face, as a coexist adapter would build it.

TLS is verified against the sandbox CA through exchangelib's documented hook: a
`BaseProtocol.HTTP_ADAPTER_CLS` subclass of requests' HTTPAdapter that passes the CA bundle
(exchangelib docs, "Proxies and custom TLS validation"). Version and auth type are pinned so
exchangelib never probes. `CachingProtocol.clear_cache()` drops protocols (and their
sessions) cached by endpoint+credentials between tests.
"""

from __future__ import annotations

from typing import Any

import requests.adapters
from exchangelib import (
    BASIC,
    DELEGATE,
    IMPERSONATION,
    NTLM,
    Account,
    Build,
    Configuration,
    Credentials,
    Version,
)
from exchangelib.protocol import BaseProtocol, CachingProtocol

from coexist.sandbox import Sandbox
from coexist.sandbox.ews import EWS_PATH, add_account, set_kind
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


__all__ = ["BASIC", "NTLM", "account", "mailboxes", "migration_account", "org", "use_ca"]
