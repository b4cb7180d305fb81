"""TenantCredentials: one azure-identity credential per tenant and certificate in a command."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from azure.identity.aio import CertificateCredential

from coexist.errors import ConfigError
from coexist.sandbox.server import make_app_certificate
from coexist.tenants.auth import TenantCredentials, TenantEndpoint, credential
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
    CertificateCredential (built once); another tenant gets its own."""
    (tmp_path / "app.pem").write_text(pems[0])
    ep, other = endpoint(tmp_path / "app.pem"), endpoint(tmp_path / "app.pem", OTHER_TENANT)
    factory = Counting()

    async def run() -> None:
        async with TenantCredentials(factory) as creds:
            graph = GraphAdapter(ep, credentials=creds)
            exo = ExoRunner(ep, credentials=creds)
            other_graph = GraphAdapter(other, credentials=creds)
            assert graph.credential is exo.credential
            assert isinstance(graph.credential, CertificateCredential)
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
