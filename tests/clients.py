"""Real clients pointed at the sandbox, built as a coexist adapter would build them.

Tests use these instead of hand-rolled HTTP so that what passes here is what
azure-identity, msgraph-sdk (kiota) and httpx really send.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlparse

import httpx
from azure.identity import CertificateCredential, ClientSecretCredential
from azure.identity.aio import CertificateCredential as AsyncCertificateCredential
from azure.identity.aio import ClientSecretCredential as AsyncClientSecretCredential
from kiota_authentication_azure.azure_identity_authentication_provider import (
    AzureIdentityAuthenticationProvider,
)
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph_core import GraphClientFactory

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
EXO_SCOPE = "https://outlook.office365.com/.default"


def tls(conn: dict[str, Any]) -> ssl.SSLContext:
    """Verification against the sandbox CA (verification is never switched off)."""
    return ssl.create_default_context(cafile=conn["ca_file"])


def tenant(conn: dict[str, Any], key: str) -> dict[str, Any]:
    t: dict[str, Any] = conn["tenants"][key]
    return t


def credential(conn: dict[str, Any], key: str, kind: str = "secret") -> Any:
    """A sync azure-identity credential (secret or certificate) for a sandbox tenant."""
    t = tenant(conn, key)
    common = dict(
        authority=t["authority"],
        disable_instance_discovery=True,
        connection_verify=conn["ca_file"],
        retry_total=0,
    )
    if kind == "cert":
        return CertificateCredential(
            t["tenant_id"], t["client_id"], certificate_path=t["certificate_file"], **common
        )
    return ClientSecretCredential(t["tenant_id"], t["client_id"], t["client_secret"], **common)


def async_credential(conn: dict[str, Any], key: str, kind: str = "secret") -> Any:
    t = tenant(conn, key)
    common = dict(
        authority=t["authority"],
        disable_instance_discovery=True,
        connection_verify=conn["ca_file"],
        retry_total=0,
    )
    if kind == "cert":
        return AsyncCertificateCredential(
            t["tenant_id"], t["client_id"], certificate_path=t["certificate_file"], **common
        )
    return AsyncClientSecretCredential(t["tenant_id"], t["client_id"], t["client_secret"], **common)


def graph_client(conn: dict[str, Any], key: str, kind: str = "secret") -> GraphServiceClient:
    """msgraph-sdk GraphServiceClient against the sandbox (FACTS.md recipe).

    Must be created and used inside a running event loop (asyncio.run).
    """
    t = tenant(conn, key)
    host = urlparse(t["graph_url"]).hostname or "127.0.0.1"
    auth = AzureIdentityAuthenticationProvider(
        async_credential(conn, key, kind), scopes=[GRAPH_SCOPE], allowed_hosts=[host]
    )
    http = GraphClientFactory.create_with_default_middleware(
        client=httpx.AsyncClient(verify=tls(conn), timeout=30)
    )
    adapter = GraphRequestAdapter(auth, http)
    adapter.base_url = t["graph_url"]
    return GraphServiceClient(request_adapter=adapter)


def bearer(conn: dict[str, Any], key: str, scope: str = GRAPH_SCOPE, kind: str = "secret") -> str:
    return str(credential(conn, key, kind).get_token(scope).token)


def graph_http(conn: dict[str, Any], key: str, token: str | None = None) -> httpx.Client:
    """A plain httpx client for raw Graph JSON (bulk reads, error bodies)."""
    t = tenant(conn, key)
    tok = token or bearer(conn, key)
    return httpx.Client(
        base_url=t["graph_url"].rstrip("/") + "/",
        verify=tls(conn),
        headers={"Authorization": f"Bearer {tok}"},
        timeout=30,
    )


def exo_http(conn: dict[str, Any], key: str, token: str | None = None) -> httpx.Client:
    """httpx client for InvokeCommand with the headers the EXO V3 module sends."""
    t = tenant(conn, key)
    tok = token or bearer(conn, key, EXO_SCOPE)
    return httpx.Client(
        verify=tls(conn),
        headers={
            "Authorization": f"Bearer {tok}",
            "X-ResponseFormat": "json",
            "X-AnchorMailbox": (
                "APP:SystemMailbox{bb558c35-97f1-4cb9-8ff7-d53741dc928c}@" + t["tenant_id"]
            ),
            "Accept": "application/json",
        },
        timeout=30,
    )


def invoke(
    client: httpx.Client, conn: dict[str, Any], key: str, cmdlet: str, **params: Any
) -> httpx.Response:
    """POST one cmdlet to InvokeCommand (single page)."""
    t = tenant(conn, key)
    return client.post(
        t["exo_url"],
        json={"CmdletInput": {"CmdletName": cmdlet, "Parameters": params}},
        headers={"X-CmdletName": cmdlet},
    )
