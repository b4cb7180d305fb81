"""azure-identity credentials for one tenant (client secret or certificate).

The only module that builds azure-identity credentials. Secrets are passed in
by the caller (from an environment variable or a certificate file); they are
never read from project files here. TLS verification is always on: a custom
CA bundle (the sandbox's, or a corporate proxy's) may be given, never `False`.

What is built how often: a certificate is parsed once per process for its bytes
(`certificate_signer`); a credential once per tenant per command (`TenantCredentials`, one
event loop), shared by the tenant's adapters and closed with the command.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import ssl
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from azure.identity.aio import ClientAssertionCredential, ClientSecretCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

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
    try:
        with open(str(ep.certificate_file), "rb") as f:
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

    A certificate is a ClientAssertionCredential whose assertions the process's parsed
    certificate signs (`certificate_signer`), a secret a ClientSecretCredential.

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
            signer = certificate_signer(data)
        except (ValueError, TypeError) as exc:  # malformed, not RSA, encrypted (TypeError)
            raise _certificate_error(ep, exc) from exc
        assertion = signer.assertion_for(_token_url(ep), ep.client_id)
        return ClientAssertionCredential(ep.tenant_id, ep.client_id, assertion, **kwargs)
    if ep.client_secret:
        return ClientSecretCredential(ep.tenant_id, ep.client_id, ep.client_secret, **kwargs)
    raise ConfigError(
        "no credential: set a certificate file or the client-secret environment variable",
        file="project.toml",
        key="tenant.credential",
    )


@dataclass(frozen=True)
class CertificateSigner:
    """An app certificate, parsed: signs the client assertions of its token requests.

    Why not azure-identity's CertificateCredential: it parses the PEM twice each time one is
    built (`get_client_credential` and `AadClientCertificate` each call cryptography's
    `load_pem_private_key`, ~35 ms for a 2048-bit RSA key with its validation) and takes
    only bytes, so every command paid that for each tenant (40 % of a lifecycle test's CPU
    was spent there). Parsed once per process here (`certificate_signer`), the key signs the
    assertion that azure-identity's public ClientAssertionCredential sends.
    """

    key: rsa.RSAPrivateKey
    x5t_s256: str  # base64url SHA-256 thumbprint of the certificate

    def assertion_for(self, token_url: str, client_id: str) -> Callable[[], str]:
        """A client assertion factory for ClientAssertionCredential (called per token request).

        The JWT azure-identity 1.27 builds for a certificate (AadClientBase.
        _get_client_certificate_assertion, non-ADFS authorities), as Microsoft documents it
        (learn.microsoft.com/entra/identity-platform/certificate-credentials): PS256 with the
        `x5t#S256` header, `aud` = the token endpoint, `iss` = `sub` = the client id, a fresh
        `jti`, valid 30 minutes from now.
        """

        def assertion() -> str:
            now = int(time.time())
            header = {"typ": "JWT", "alg": "PS256", "x5t#S256": self.x5t_s256}
            claims = {
                "jti": str(uuid.uuid4()),
                "aud": token_url,
                "iss": client_id,
                "sub": client_id,
                "nbf": now,
                "exp": now + 30 * 60,
            }
            signing_input = (
                _b64(json.dumps(header).encode()) + b"." + _b64(json.dumps(claims).encode())
            )
            pss = padding.PSS(padding.MGF1(hashes.SHA256()), hashes.SHA256.digest_size)
            signature = self.key.sign(signing_input, pss, hashes.SHA256())
            return (signing_input + b"." + _b64(signature)).decode()

        return assertion


def _b64(data: bytes) -> bytes:
    """base64url without padding (RFC 7515, JWS compact serialization)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=")


@functools.lru_cache(maxsize=16)
def certificate_signer(data: bytes) -> CertificateSigner:
    """The certificate file's bytes parsed (PEM, or PKCS12 without password, as
    azure-identity reads them), once per process for the same bytes: a parsed key belongs to
    no event loop. ValueError when it holds no RSA private key and certificate."""
    if b"-----BEGIN" in data:
        key = serialization.load_pem_private_key(data, password=None)
        cert = x509.load_pem_x509_certificate(data)
    else:
        p12_key, p12_cert, _ = pkcs12.load_key_and_certificates(data, None)
        if p12_key is None or p12_cert is None:
            raise ValueError("the PKCS12 file must hold the private key and its certificate")
        key, cert = p12_key, p12_cert
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the certificate must have an RSA private key (tokens are signed PS256)")
    thumbprint = cert.fingerprint(hashes.SHA256())
    return CertificateSigner(key, base64.urlsafe_b64encode(thumbprint).decode())


def _token_url(ep: TenantEndpoint) -> str:
    """The token endpoint azure-identity posts to (its `normalize_authority`, then
    `_get_token_url`): the assertion's audience must be exactly this."""
    authority = ep.authority.rstrip(" /")
    if not urlparse(authority).scheme:
        authority = "https://" + authority
    return f"{authority}/{ep.tenant_id}/oauth2/v2.0/token"


# Builds one credential: `credential`'s signature (a test may count through its own).
CredentialFactory = Callable[..., Any]


class TenantCredentials:
    """The credentials of one command (one event loop): one per tenant endpoint, shared by
    that tenant's adapters, closed together by whoever made this (`aclose`).

    One per tenant rather than one per adapter: the tenant's Graph and Exchange adapters
    share its token cache and token-endpoint transport. Not shared across event loops: an
    aio credential's transport belongs to the loop that opened it, so each `asyncio.run`
    gets its own `TenantCredentials` (the parsed certificate, `certificate_signer`, is
    what outlives them).

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
