"""azure-identity credentials for one tenant (client secret or certificate).

The only module that builds azure-identity credentials. Secrets are passed in
by the caller (from an environment variable or a certificate file); they are
never read from project files here. TLS verification is always on: a custom
CA bundle (the sandbox's, or a corporate proxy's) may be given, never `False`.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Callable
from contextlib import AsyncExitStack
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


def _certificate_error(ep: TenantEndpoint, exc: Exception) -> ConfigError:
    return ConfigError(
        f"the certificate file {ep.certificate_file} cannot be used ({type(exc).__name__}: {exc})",
        file="project.toml",
        key="tenant.certificate_file",
        next_step="set certificate_file to a PEM file holding the app's private key "
        "and certificate (or sandbox_connection to the sandbox's connection.json)",
    )


def read_certificate(ep: TenantEndpoint) -> bytes:
    """The bytes of the endpoint's certificate file (PEM or PKCS12, with its private key)."""
    assert ep.certificate_file
    try:
        with open(ep.certificate_file, "rb") as f:
            return f.read()
    except OSError as exc:
        raise _certificate_error(ep, exc) from exc


def credential(
    ep: TenantEndpoint,
    *,
    retry_total: int | None = None,
    timeout: float | None = None,
    certificate_data: bytes | None = None,
) -> Any:
    """An async azure-identity credential: certificate preferred over secret.

    `timeout`: seconds to connect to the token endpoint and to wait for its answer (azure-core
    transport options `connection_timeout` / `read_timeout`). `certificate_data`: the
    certificate file's bytes when the caller has read them already (`TenantCredentials`).
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
        data = certificate_data if certificate_data is not None else read_certificate(ep)
        try:
            return CertificateCredential(
                ep.tenant_id, ep.client_id, certificate_data=data, **kwargs
            )
        except ValueError as exc:
            # azure-identity parses the PEM (or PKCS12) here: malformed, or not an RSA key.
            raise _certificate_error(ep, exc) from exc
    if ep.client_secret:
        return ClientSecretCredential(ep.tenant_id, ep.client_id, ep.client_secret, **kwargs)
    raise ConfigError(
        "no credential: set a certificate file or the client-secret environment variable",
        file="project.toml",
        key="tenant.credential",
    )


# Builds one credential: `credential`'s signature (a test may count through its own).
CredentialFactory = Callable[..., Any]


class TenantCredentials:
    """The credentials of one command (one event loop): one per tenant endpoint, shared by
    that tenant's adapters, closed together by whoever made this (`aclose`).

    Building a CertificateCredential parses its PEM twice (azure-identity's
    `get_client_credential` and `AadClientCertificate` each call cryptography's
    `load_pem_private_key`, ~35 ms for a 2048-bit RSA key with its validation), so a
    command's Graph and Exchange adapters of a tenant share one; sharing it also shares
    its token cache. Not shared across event loops: an aio credential's transport belongs
    to the loop that opened it, so each `asyncio.run` gets its own `TenantCredentials`.

    Keyed by the endpoint, the token timeouts and a digest of the certificate file's
    bytes, read on each `get`: a certificate replaced on disk gets a new credential.
    """

    def __init__(self, factory: CredentialFactory = credential) -> None:
        self._factory = factory
        self._made: dict[tuple[Any, ...], Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.built = 0  # credentials built (one per tenant and certificate in a command)

    def get(
        self, ep: TenantEndpoint, *, retry_total: int | None = None, timeout: float | None = None
    ) -> Any:
        """The credential for `ep` (built on first use, or when its certificate changed)."""
        if self._closed:
            raise RuntimeError("these credentials are closed")
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None  # built outside a loop: bound to the first loop that uses it
        if loop is not None:
            if self._loop is not None and self._loop is not loop:
                raise RuntimeError("credentials are not shared across event loops")
            self._loop = loop
        data = read_certificate(ep) if ep.certificate_file else None
        digest = hashlib.sha256(data).digest() if data is not None else None
        key = (ep, retry_total, timeout, digest)
        made = self._made.get(key)
        if made is None:
            made = self._made[key] = self._factory(
                ep, retry_total=retry_total, timeout=timeout, certificate_data=data
            )
            self.built += 1
        return made

    async def aclose(self) -> None:
        """Close every credential built (their token endpoint transports)."""
        self._closed = True
        made, self._made = list(self._made.values()), {}
        async with AsyncExitStack() as stack:  # each closed even when another's close fails
            for cred in made:
                stack.push_async_callback(cred.close)

    async def __aenter__(self) -> TenantCredentials:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


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
