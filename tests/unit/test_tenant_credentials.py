"""TenantCredentials: one azure-identity credential per tenant and certificate in a command."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import jwt
import pytest
from azure.identity.aio import ClientAssertionCredential
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from coexist.errors import ConfigError
from coexist.sandbox.server import make_app_certificate
from coexist.tenants.auth import (
    TenantCredentials,
    TenantEndpoint,
    certificate_signer,
    credential,
)
from coexist.tenants.exo import ExoRunner
from coexist.tenants.graph import GraphAdapter

TENANT = "11111111-1111-1111-1111-111111111111"
OTHER_TENANT = "22222222-2222-2222-2222-222222222222"
CLIENT = "33333333-3333-3333-3333-333333333333"


class Counting:
    """A credential factory that counts what it builds and what certificate bytes it got."""

    def __init__(self) -> None:
        self.built: list[Any] = []
        self.data: list[bytes | None] = []

    def __call__(self, ep: TenantEndpoint, **kwargs: Any) -> Any:
        self.data.append(kwargs.get("certificate_data"))
        made = credential(ep, **kwargs)
        self.built.append(made)
        return made


@pytest.fixture(scope="module")
def pems() -> tuple[str, str]:
    """Two different app certificates (key + cert PEM)."""
    return make_app_certificate("app-one")[0], make_app_certificate("app-two")[0]


def endpoint(path: Path, tenant: str = TENANT) -> TenantEndpoint:
    return TenantEndpoint(
        tenant, CLIENT, authority="https://login.example", certificate_file=str(path)
    )


def test_one_credential_per_tenant_shared_by_its_adapters(
    tmp_path: Path, pems: tuple[str, str]
) -> None:
    """A tenant's Graph and Exchange adapters built from one TenantCredentials share one
    credential (built once); another tenant gets its own."""
    (tmp_path / "app.pem").write_text(pems[0])
    ep, other = endpoint(tmp_path / "app.pem"), endpoint(tmp_path / "app.pem", OTHER_TENANT)
    factory = Counting()

    async def run() -> None:
        async with TenantCredentials(factory) as creds:
            graph = GraphAdapter(ep, credentials=creds)
            exo = ExoRunner(ep, credentials=creds)
            other_graph = GraphAdapter(other, credentials=creds)
            assert graph.credential is exo.credential
            assert isinstance(graph.credential, ClientAssertionCredential)
            assert other_graph.credential is not graph.credential
            for adapter in (graph, exo, other_graph):
                await adapter.close()  # not the shared credential: TenantCredentials closes it
            assert creds.built == 2

    asyncio.run(run())
    assert len(factory.built) == 2


def test_a_changed_certificate_file_gets_a_new_credential(
    tmp_path: Path, pems: tuple[str, str]
) -> None:
    """The certificate file is read on each get: replaced, it gets a new credential built
    from the new bytes; made unreadable garbage, the ConfigError says so (nothing stale)."""
    path = tmp_path / "app.pem"
    path.write_text(pems[0])
    ep = endpoint(path)
    factory = Counting()

    async def run() -> None:
        async with TenantCredentials(factory) as creds:
            first = creds.get(ep, timeout=30.0)
            assert creds.get(ep, timeout=30.0) is first
            path.write_text(pems[1])
            second = creds.get(ep, timeout=30.0)
            assert second is not first
            path.write_text("not a certificate")
            with pytest.raises(ConfigError) as info:
                creds.get(ep, timeout=30.0)
            assert info.value.fields["key"] == "tenant.certificate_file"
            path.write_text(pems[0])
            assert creds.get(ep, timeout=30.0) is first  # the same bytes: the same credential

    asyncio.run(run())
    assert factory.data == [pems[0].encode(), pems[1].encode(), b"not a certificate"]


def test_a_missing_certificate_file_is_a_config_error(tmp_path: Path) -> None:
    """A certificate file that does not exist is the ConfigError naming the setting."""
    with pytest.raises(ConfigError) as info:
        TenantCredentials().get(endpoint(tmp_path / "absent.pem"))
    assert "absent.pem cannot be used" in str(info.value)
    assert info.value.fields["key"] == "tenant.certificate_file"


def test_credentials_are_not_shared_across_event_loops(
    tmp_path: Path, pems: tuple[str, str]
) -> None:
    """An aio credential's transport belongs to its loop: a second `asyncio.run` using the
    same TenantCredentials is refused, and closed ones are not handed out again."""
    (tmp_path / "app.pem").write_text(pems[0])
    ep = endpoint(tmp_path / "app.pem")
    creds = TenantCredentials()

    async def get() -> Any:
        return creds.get(ep)

    asyncio.run(get())
    with pytest.raises(RuntimeError, match="across event loops"):
        asyncio.run(get())
    asyncio.run(creds.aclose())
    with pytest.raises(RuntimeError, match="closed"):
        creds.get(ep)


def test_aclose_closes_each_credential_once_even_when_one_fails() -> None:
    """Every credential built is closed once, even when closing another raises."""
    closed: list[str] = []

    class Fake:
        def __init__(self, name: str) -> None:
            self.name = name

        async def close(self) -> None:
            closed.append(self.name)
            if self.name == TENANT:
                raise OSError("transport already gone")

    creds = TenantCredentials(lambda ep, **kw: Fake(ep.tenant_id))
    for tenant in (TENANT, OTHER_TENANT):
        secret = TenantEndpoint(tenant, CLIENT, client_secret="s")
        assert creds.get(secret) is creds.get(secret)

    with pytest.raises(OSError, match="already gone"):
        asyncio.run(creds.aclose())
    assert sorted(closed) == sorted([TENANT, OTHER_TENANT])
    asyncio.run(TenantCredentials().aclose())  # nothing built: nothing to close


def test_an_adapter_without_credentials_builds_its_own(
    tmp_path: Path, pems: tuple[str, str]
) -> None:
    """Built alone (no TenantCredentials given), each adapter builds its own credential
    (closed with it), shared with no other adapter."""
    (tmp_path / "app.pem").write_text(pems[0])
    ep = endpoint(tmp_path / "app.pem")

    async def run() -> None:
        async with GraphAdapter(ep) as one, GraphAdapter(ep) as two:
            assert one.credential is not two.credential

    asyncio.run(run())


def test_a_certificate_is_parsed_once_per_process_for_its_bytes(tmp_path: Path) -> None:
    """Credentials built in several commands (event loops) parse the same certificate bytes
    once (counted by `certificate_signer`'s cache); other bytes are parsed anew."""
    path = tmp_path / "app.pem"
    path.write_text(make_app_certificate("parsed-once")[0])  # bytes no other test has
    ep = endpoint(path)

    async def command() -> None:
        async with TenantCredentials() as creds:
            creds.get(ep, timeout=30.0)
            creds.get(endpoint(path, OTHER_TENANT), timeout=30.0)

    before = certificate_signer.cache_info().misses
    asyncio.run(command())
    asyncio.run(command())
    assert certificate_signer.cache_info().misses == before + 1
    path.write_text(make_app_certificate("parsed-again")[0])
    asyncio.run(command())
    assert certificate_signer.cache_info().misses == before + 2


def test_the_client_assertion_is_the_documented_certificate_jwt(
    tmp_path: Path, pems: tuple[str, str]
) -> None:
    """The assertion is a PS256 JWT signed by the certificate's key, with `x5t#S256` its
    SHA-256 thumbprint, `aud` the tenant's token endpoint, `iss` = `sub` = the client id."""
    pem = pems[0].encode()
    signer = certificate_signer(pem)
    token_url = f"https://login.example/{TENANT}/oauth2/v2.0/token"
    assertion = signer.assertion_for(token_url, CLIENT)()
    cert = x509.load_pem_x509_certificate(pem)
    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == "PS256"
    thumbprint = jwt.utils.base64url_decode(header["x5t#S256"])
    assert thumbprint == cert.fingerprint(hashes.SHA256())
    claims = jwt.decode(assertion, cert.public_key(), algorithms=["PS256"], audience=token_url)
    assert claims["iss"] == claims["sub"] == CLIENT
    assert claims["exp"] - claims["nbf"] == 30 * 60 and claims["jti"]
    assert assertion.split(".")[1] != signer.assertion_for(token_url, CLIENT)().split(".")[1]


def test_a_pkcs12_file_without_password_is_read_like_a_pem(
    tmp_path: Path, pems: tuple[str, str]
) -> None:
    """A PKCS12 file (no password), which azure-identity accepted too, signs with the same
    key and thumbprint as its PEM."""
    pem = pems[0].encode()
    key = serialization.load_pem_private_key(pem, None)
    cert = x509.load_pem_x509_certificate(pem)
    p12 = pkcs12.serialize_key_and_certificates(
        b"app",
        key,
        cert,
        None,
        serialization.NoEncryption(),  # type: ignore[arg-type]
    )
    (tmp_path / "app.pfx").write_bytes(p12)
    assert certificate_signer(p12).x5t_s256 == certificate_signer(pem).x5t_s256
    assert isinstance(credential(endpoint(tmp_path / "app.pfx")), ClientAssertionCredential)


def test_a_certificate_without_an_rsa_key_is_a_config_error(tmp_path: Path) -> None:
    """An EC key (tokens are signed PS256), an encrypted key or a lone certificate is the
    ConfigError naming the certificate file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "ec")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    ec_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    for name_, data in (
        ("ec", ec_pem + cert_pem),
        ("enc", encrypted + cert_pem),
        ("crt", cert_pem),
    ):
        path = tmp_path / f"{name_}.pem"
        path.write_bytes(data)
        with pytest.raises(ConfigError) as info:
            credential(endpoint(path))
        assert info.value.fields["key"] == "tenant.certificate_file", name_
