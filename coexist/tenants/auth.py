"""azure-identity credentials for one tenant (client secret or certificate).

The only module that builds azure-identity credentials. Secrets are passed in
by the caller (from an environment variable or a certificate file); they are
never read from project files here. TLS verification is always on: a custom
CA bundle (the sandbox's, or a corporate proxy's) may be given, never `False`.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from azure.identity.aio import CertificateCredential, ClientSecretCredential

from coexist.errors import ConfigError

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
EXO_SCOPE = "https://outlook.office365.com/.default"
PUBLIC_AUTHORITY = "https://login.microsoftonline.com"


@dataclass(frozen=True)
class TenantEndpoint:
    """How to reach and authenticate to one tenant."""

    tenant_id: str
    client_id: str
    graph_url: str = "https://graph.microsoft.com/v1.0"
    exo_url: str | None = None  # InvokeCommand URL; default built from tenant_id
    authority: str = PUBLIC_AUTHORITY
    ca_file: str | None = None
    certificate_file: str | None = None
    client_secret: str | None = None  # taken from the environment by the caller

    @property
    def invoke_url(self) -> str:
        return self.exo_url or (
            f"https://outlook.office365.com/adminapi/beta/{self.tenant_id}/InvokeCommand"
        )

    @property
    def graph_host(self) -> str:
        return urlparse(self.graph_url).hostname or "graph.microsoft.com"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """httpx `verify`: the CA bundle if given, else the system store (never off)."""
        return ssl.create_default_context(cafile=self.ca_file) if self.ca_file else True

    def __repr__(self) -> str:  # keep secrets out of logs and tracebacks
        return (
            f"TenantEndpoint(tenant_id={self.tenant_id!r}, client_id={self.client_id!r}, "
            f"graph_url={self.graph_url!r}, authority={self.authority!r})"
        )

    @classmethod
    def from_sandbox(cls, connection: dict[str, Any], key: str) -> TenantEndpoint:
        """From a sandbox `connection.json` (certificate credential, sandbox CA)."""
        t = connection["tenants"][key]
        return cls(
            tenant_id=t["tenant_id"],
            client_id=t["client_id"],
            graph_url=t["graph_url"],
            exo_url=t["exo_url"],
            authority=t["authority"],
            ca_file=connection["ca_file"],
            certificate_file=t["certificate_file"],
        )


def credential(
    ep: TenantEndpoint, *, retry_total: int | None = None, timeout: float | None = None
) -> Any:
    """An async azure-identity credential: certificate preferred over secret.

    `timeout`: seconds to connect to the token endpoint and to wait for its answer (azure-core
    transport options `connection_timeout` / `read_timeout`).
    """
    kwargs: dict[str, Any] = {"authority": ep.authority}
    if timeout is not None:
        kwargs["connection_timeout"] = timeout
        kwargs["read_timeout"] = timeout
    if ep.authority != PUBLIC_AUTHORITY:
        # Sandbox and sovereign endpoints: no instance discovery against Microsoft.
        kwargs["disable_instance_discovery"] = True
    if ep.ca_file:
        kwargs["connection_verify"] = ep.ca_file
    if retry_total is not None:
        kwargs["retry_total"] = retry_total
    if ep.certificate_file:
        try:
            return CertificateCredential(
                ep.tenant_id, ep.client_id, certificate_path=ep.certificate_file, **kwargs
            )
        except (OSError, ValueError) as exc:
            # azure-identity reads the PEM here: a missing, unreadable or malformed file.
            raise ConfigError(
                f"the certificate file {ep.certificate_file} cannot be used "
                f"({type(exc).__name__}: {exc})",
                file="project.toml",
                key="tenant.certificate_file",
                next_step="set certificate_file to a PEM file holding the app's private key "
                "and certificate (or sandbox_connection to the sandbox's connection.json)",
            ) from exc
    if ep.client_secret:
        return ClientSecretCredential(ep.tenant_id, ep.client_id, ep.client_secret, **kwargs)
    raise ConfigError(
        "no credential: set a certificate file or the client-secret environment variable",
        file="project.toml",
        key="tenant.credential",
    )


def token_claims(token: str) -> dict[str, Any]:
    """The claims of an access token, read without verifying it (for preflight only).

    Entra app-only access tokens are JWTs carrying `roles` (application permissions)
    and `wids` (directory role template ids). Only the service validates them; we
    just read what was granted.
    """
    import base64
    import json

    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload))
    except (IndexError, ValueError):
        return {}
    return claims
