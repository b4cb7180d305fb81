"""Identity face: the real azure-identity credentials against the sandbox token endpoint."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import jwt
import pytest
from azure.core.exceptions import ClientAuthenticationError
from azure.identity import CertificateCredential, ClientSecretCredential

from coexist.sandbox import Sandbox
from coexist.sandbox.server import make_app_certificate
from tests.clients import EXO_SCOPE, GRAPH_SCOPE, credential, tls


def _claims(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


@pytest.mark.parametrize("kind", ["secret", "cert"])
def test_client_credentials_issue_graph_token_with_roles(conn: dict[str, Any], kind: str) -> None:
    """Secret and certificate credentials both get a Graph token carrying the app's roles."""
    tok = credential(conn, "source", kind).get_token(GRAPH_SCOPE)
    claims = _claims(tok.token)
    assert claims["aud"] == "https://graph.microsoft.com"
    assert claims["tid"] == conn["tenants"]["source"]["tenant_id"]
    assert "User.ReadWrite.All" in claims["roles"]
    assert tok.expires_on > time.time() + 600


def test_exchange_token_carries_manage_as_app_and_role(conn: dict[str, Any]) -> None:
    """An Exchange token has Exchange.ManageAsApp and the Exchange Administrator role id."""
    claims = _claims(credential(conn, "target", "cert").get_token(EXO_SCOPE).token)
    assert claims["aud"] == "https://outlook.office365.com"
    assert claims["roles"] == ["Exchange.ManageAsApp"]
    assert "29232cdf-9323-42fd-ade2-1d097af3e4de" in claims["wids"]


def test_wrong_secret_is_refused_with_aadsts7000215(conn: dict[str, Any]) -> None:
    """A wrong client secret fails as Entra ID fails (AADSTS7000215)."""
    t = conn["tenants"]["source"]
    cred = ClientSecretCredential(
        t["tenant_id"],
        t["client_id"],
        "not-the-secret",
        authority=t["authority"],
        disable_instance_discovery=True,
        connection_verify=conn["ca_file"],
        retry_total=0,
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        cred.get_token(GRAPH_SCOPE)


def test_unknown_client_and_tenant_are_refused(conn: dict[str, Any]) -> None:
    """Unknown app ids (700016) and unknown tenants (90002) are refused."""
    t = conn["tenants"]["source"]
    common: dict[str, Any] = dict(
        authority=t["authority"],
        disable_instance_discovery=True,
        connection_verify=conn["ca_file"],
        retry_total=0,
    )
    app = ClientSecretCredential(
        t["tenant_id"], "00000000-0000-0000-0000-000000000001", "x", **common
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS700016"):
        app.get_token(GRAPH_SCOPE)
    with httpx.Client(verify=tls(conn)) as http:
        r = http.get(f"{t['authority']}/nosuch.example/v2.0/.well-known/openid-configuration")
    assert r.status_code == 400
    assert r.json()["error_codes"] == [90002]


def test_certificate_of_another_key_fails_signature_check(sandbox: Sandbox, tmp_path: Any) -> None:
    """A client assertion signed by an unregistered certificate is refused (AADSTS700027)."""
    conn = sandbox.connection
    t = conn["tenants"]["source"]
    other, _ = make_app_certificate("intruder")
    path = tmp_path / "other.pem"
    path.write_text(other)
    cred = CertificateCredential(
        t["tenant_id"],
        t["client_id"],
        certificate_path=str(path),
        authority=t["authority"],
        disable_instance_discovery=True,
        connection_verify=conn["ca_file"],
        retry_total=0,
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        cred.get_token(GRAPH_SCOPE)


def test_scope_must_be_a_known_resource_default(conn: dict[str, Any]) -> None:
    """Client-credential scopes must be `<resource>/.default` (AADSTS1002012)."""
    t = conn["tenants"]["source"]
    with httpx.Client(verify=tls(conn)) as http:
        r = http.post(
            f"{t['authority']}/{t['tenant_id']}/oauth2/v2.0/token",
            data={
                "grant_type": "client_credentials",
                "client_id": t["client_id"],
                "client_secret": t["client_secret"],
                "scope": "User.Read",
            },
        )
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_scope"


def test_expired_token_is_rejected_by_validation(sandbox: Sandbox) -> None:
    """The issuer rejects its own token once expired, as Graph does (401 material)."""
    from coexist.sandbox.identity import GRAPH_RESOURCE, TokenError

    assert sandbox.ctx is not None
    tenant = sandbox.world.source
    token = sandbox.ctx.issuer.issue(tenant, tenant.apps[0], GRAPH_RESOURCE, lifetime_s=-10)
    with pytest.raises(TokenError, match="expired"):
        sandbox.ctx.issuer.validate(f"Bearer {token}", GRAPH_RESOURCE)
    assert dt.datetime.now(dt.UTC)  # the check above used the real clock
