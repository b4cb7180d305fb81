"""One credential per tenant per command, against the sandbox's token endpoint."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from coexist import commands
from coexist.engine.context import SideOptions, open_sides
from coexist.errors import AuthenticationError
from coexist.runtime import session
from coexist.sandbox import Sandbox, seed
from coexist.sandbox.server import make_app_certificate
from coexist.settings import load_project
from coexist.tenants.auth import TenantCredentials, TenantEndpoint, credential
from coexist.tenants.exo import ExoRunner
from coexist.tenants.graph import GraphAdapter


def sandbox_project(directory: Path, sandbox: Sandbox) -> Path:
    """A project whose two sides are the sandbox's tenants (certificate credentials)."""
    conn = str(sandbox.state_dir / "connection.json")
    commands.init(
        directory,
        overrides={
            "project.name": "credentials",
            "source.sandbox_connection": conn,
            "target.sandbox_connection": conn,
            "domains.destination_domain": seed.TARGET_DOMAIN,
            "scope.group": seed.SCOPE_GROUP,
        },
    )
    return directory


def test_a_command_session_builds_one_credential_per_tenant(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """In a command's session each tenant's Graph and Exchange adapters share one
    certificate credential, which gets both a Graph and an Exchange token."""
    directory = sandbox_project(tmp_path / "project", sandbox)

    async def run() -> None:
        async with session(directory, "discover", {}, plan=True) as sess:
            source, target = sess.ctx.source, sess.ctx.target
            assert source.graph.credential is source.exo.credential
            assert target.graph.credential is target.exo.credential
            assert source.graph.credential is not target.graph.credential
            for side in (source, target):
                assert (await side.graph.granted())["roles"]
                assert (await side.exo.granted())["roles"] == ["Exchange.ManageAsApp"]

    asyncio.run(run())


def test_open_sides_builds_two_credentials_through_the_factory(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Counted through TenantCredentials' factory: opening both sides of a project builds
    two credentials (one per tenant), however many adapters use them."""
    project = load_project(sandbox_project(tmp_path / "project", sandbox))
    built: list[TenantEndpoint] = []

    def counting(ep: TenantEndpoint, **kwargs: Any) -> Any:
        built.append(ep)
        return credential(ep, **kwargs)

    async def run() -> None:
        async with (
            TenantCredentials(counting) as creds,
            open_sides(project, SideOptions(credentials=creds)) as (source, target),
        ):
            await source.graph.token()
            await source.exo.token()
            await target.exo.token()
            assert creds.built == 2

    asyncio.run(run())
    assert [ep.tenant_id for ep in built] == [
        project.endpoint("source").tenant_id,
        project.endpoint("target").tenant_id,
    ]


def test_a_replaced_certificate_is_the_one_the_next_credential_signs_with(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The token endpoint sees the certificate file as it is now: replaced by an unregistered
    certificate, the next credential is refused (AADSTS700027); put back, it is accepted."""
    ep = TenantEndpoint.from_sandbox(sandbox.connection, "source")
    assert ep.certificate_file
    path = tmp_path / "app.pem"
    shutil.copyfile(ep.certificate_file, path)
    ep = replace(ep, certificate_file=str(path))

    async def token(creds: TenantCredentials) -> str:
        graph = GraphAdapter(ep, credentials=creds)
        try:
            return await graph.token()
        finally:
            await graph.close()

    async def run() -> None:
        async with TenantCredentials() as creds:
            assert await token(creds)
            registered = path.read_bytes()
            path.write_text(make_app_certificate("intruder")[0])
            with pytest.raises(AuthenticationError, match="AADSTS700027"):
                await token(creds)
            path.write_bytes(registered)
            assert await token(creds)
            assert creds.built == 2  # the registered certificate's credential, used again

    asyncio.run(run())


def test_a_pkcs12_certificate_gets_tokens(sandbox: Sandbox, tmp_path: Path) -> None:
    """The registered certificate as a PKCS12 file (no password) gets a Graph and an
    Exchange token from the token endpoint, as a PEM does."""
    ep = TenantEndpoint.from_sandbox(sandbox.connection, "target")
    assert ep.certificate_file
    pem = Path(ep.certificate_file).read_bytes()
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
    ep = replace(ep, certificate_file=str(tmp_path / "app.pfx"))

    async def run() -> None:
        async with TenantCredentials() as creds:
            graph = GraphAdapter(ep, credentials=creds)
            exo = ExoRunner(ep, credentials=creds)
            try:
                assert (await graph.granted())["roles"]
                assert (await exo.granted())["roles"] == ["Exchange.ManageAsApp"]
            finally:
                await graph.close()
                await exo.close()

    asyncio.run(run())
