"""Identity face: OpenID configuration, the v2.0 token endpoint, and token checks.

Speaks what azure-identity / MSAL send for the client-credentials grant:
a client secret, or a certificate `client_assertion` (RS256 JWT with an `x5t`
header, `aud` = the token endpoint, `iss` = `sub` = client id) whose signature
is verified against the app's registered certificate.

Errors use Entra ID's shape: `{"error", "error_description": "AADSTSnnnn: ...",
"error_codes": [n], "timestamp", "trace_id", "correlation_id"}`.
Codes from learn.microsoft.com/entra/identity-platform/reference-error-codes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .model import App, Tenant, World

# The real resource URIs are accepted as scopes, so a project's settings do not
# change between the sandbox and a real tenant; only the endpoints do.
GRAPH_RESOURCE = "https://graph.microsoft.com"
EXO_RESOURCE = "https://outlook.office365.com"
RESOURCES = (GRAPH_RESOURCE, EXO_RESOURCE)
EXO_MANAGE_AS_APP = "Exchange.ManageAsApp"
# Entra built-in role template ids (learn.microsoft.com/entra/identity/role-based-access-control/permissions-reference)
ROLE_TEMPLATE_IDS = {
    "Exchange Administrator": "29232cdf-9323-42fd-ade2-1d097af3e4de",
    "Exchange Recipient Administrator": "31392ffb-586c-42d1-9346-e59415a2cc4e",
    "Global Reader": "f2ef992c-3afb-46b9-b7cf-a126ee74c451",
    "Global Administrator": "62e90394-69f5-4237-9190-012177145e10",
}
ROLE_NAMES = {v: k for k, v in ROLE_TEMPLATE_IDS.items()}
# Exchange Online built-in role groups an app's service principal can be made a member of
# (permissions-exo/role-groups): Exchange authorises it by membership, not by the token.
EXCHANGE_ROLE_GROUPS = (
    "Organization Management",
    "Recipient Management",
    "View-Only Organization Management",
)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW_S = 300


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant and app a valid token was issued for."""

    tenant: Tenant
    app: App
    audience: str
    roles: frozenset[str]
    wids: frozenset[str]


def grant_through_exchange_rbac(app: App, role_group: str = "Organization Management") -> None:
    """Sandbox setting: grant `app` inside Exchange instead of by an Entra role.

    As app-only-auth-powershell-v2 ("Option 2: Assign custom role groups to the
    application using service principals") describes: New-ServicePrincipal, then
    Add-RoleGroupMember (or New-ManagementRoleAssignment -App). Exchange then authorises
    the app's cmdlets by its service principal, and the token carries no `wids` at all.
    """
    if role_group not in EXCHANGE_ROLE_GROUPS:
        raise ValueError(f"unknown role group {role_group!r}; one of {EXCHANGE_ROLE_GROUPS}")
    app.exchange_roles = []
    app.exchange_role_groups = [role_group]


class TokenError(Exception):
    """A token failed validation; `code` is Graph's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Issuer:
    """Signs and validates sandbox access tokens (RS256, one key per server run)."""

    def __init__(self, world: World, base_url: str, lifetime_s: int = 3599) -> None:
        self.world = world
        self.base_url = base_url.rstrip("/")
        self.lifetime_s = lifetime_s
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public = self._key.public_key()
        self.kid = uuid.uuid4().hex

    # -- issuing ---------------------------------------------------------------
    def issue(self, tenant: Tenant, app: App, resource: str, lifetime_s: int | None = None) -> str:
        now = int(time.time())
        if resource == GRAPH_RESOURCE:
            roles = sorted(app.graph_roles)
        else:
            roles = [EXO_MANAGE_AS_APP] if app.exchange_manage_as_app else []
        claims: dict[str, Any] = {
            "aud": resource,
            "iss": f"https://sts.windows.net/{tenant.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + (self.lifetime_s if lifetime_s is None else lifetime_s),
            "appid": app.client_id,
            "azp": app.client_id,
            "app_displayname": app.display_name,
            "idtyp": "app",
            "oid": app.client_id,
            "sub": app.client_id,
            "tid": tenant.tenant_id,
            "roles": roles,
            "wids": sorted(
                ROLE_TEMPLATE_IDS[r] for r in app.exchange_roles if r in ROLE_TEMPLATE_IDS
            ),
            "ver": "1.0",
            "uti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    # -- validating ------------------------------------------------------------
    def validate(self, authorization: str | None, audience: str) -> Principal:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise TokenError("InvalidAuthenticationToken", "Access token is empty.")
        token = authorization[7:].strip()
        try:
            claims = jwt.decode(
                token, self._public, algorithms=["RS256"], audience=audience, leeway=0
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenError(
                "InvalidAuthenticationToken", "Lifetime validation failed, the token is expired."
            ) from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("InvalidAuthenticationToken", "Invalid audience.") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(
                "InvalidAuthenticationToken", "Access token validation failure."
            ) from exc
        with self.world.lock:
            tenant = self.world.tenant_by_id(claims["tid"])
            app = tenant.app(claims["appid"]) if tenant else None
        if tenant is None or app is None or tenant.kind != "m365":
            raise TokenError("InvalidAuthenticationToken", "Access token validation failure.")
        return Principal(
            tenant=tenant,
            app=app,
            audience=audience,
            roles=frozenset(claims.get("roles", [])),
            wids=frozenset(claims.get("wids", [])),
        )

    # -- HTTP ------------------------------------------------------------------
    def routes(self) -> list[Route]:
        return [
            Route("/{tenant}/v2.0/.well-known/openid-configuration", self.openid_configuration),
            Route("/{tenant}/.well-known/openid-configuration", self.openid_configuration),
            Route("/{tenant}/discovery/v2.0/keys", self.keys),
            Route("/{tenant}/oauth2/v2.0/token", self.token, methods=["POST"]),
        ]

    def _tenant_or_error(self, request: Request) -> Tenant | Response:
        name = request.path_params["tenant"]
        with self.world.lock:
            tenant = self.world.tenant_by_id(name)
        if tenant is not None and tenant.kind != "m365":
            # A hosted Exchange or WorkMail organisation has no Entra tenant behind it: no
            # token, so no Graph or Exchange Online face serves it (a store must not lean on
            # what the real organisation lacks).
            tenant = None
        if tenant is None:
            return aad_error(
                400,
                "invalid_request",
                90002,
                f"Tenant '{name}' not found. Check to make sure you have the correct tenant ID "
                "and are signing into the correct cloud.",
            )
        return tenant

    async def openid_configuration(self, request: Request) -> Response:
        tenant = self._tenant_or_error(request)
        if isinstance(tenant, Response):
            return tenant
        base = f"{self.base_url}/{tenant.tenant_id}"
        return JSONResponse(
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{base}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{base}/openid/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "roles"],
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
            }
        )

    async def keys(self, request: Request) -> Response:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self._public, as_dict=True)
        jwk.update({"kid": self.kid, "use": "sig"})
        return JSONResponse({"keys": [jwk]})

    async def token(self, request: Request) -> Response:
        tenant = self._tenant_or_error(request)
        if isinstance(tenant, Response):
            return tenant
        form = await request.form()
        grant = str(form.get("grant_type", ""))
        client_id = str(form.get("client_id", ""))
        scope = str(form.get("scope", ""))
        if grant != "client_credentials":
            return aad_error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant}'.",
            )
        with self.world.lock:
            app = tenant.app(client_id)
        if app is None:
            return aad_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant.display_name}'.",
            )
        failure = self._check_client(request, tenant, app, form)
        if failure is not None:
            return failure
        resource = _resource_of(scope)
        if resource is None:
            return aad_error(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows "
                "must have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )
        token = self.issue(tenant, app, resource)
        return JSONResponse(
            {
                "token_type": "Bearer",
                "expires_in": self.lifetime_s,
                "ext_expires_in": self.lifetime_s,
                "access_token": token,
            }
        )

    def _check_client(
        self, request: Request, tenant: Tenant, app: App, form: Any
    ) -> Response | None:
        secret = form.get("client_secret")
        assertion = form.get("client_assertion")
        if secret is not None:
            if app.client_secret is None or secret != app.client_secret:
                return aad_error(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request "
                    f"is the client secret value, not the client secret ID, for a secret added "
                    f"to app '{app.client_id}'.",
                )
            return None
        if assertion is not None:
            if form.get("client_assertion_type") != ASSERTION_TYPE:
                return aad_error(
                    400, "invalid_request", 90023, "Unsupported client_assertion_type."
                )
            token_url = f"{self.base_url}/{request.path_params['tenant']}/oauth2/v2.0/token"
            return self._check_assertion(str(assertion), app, token_url, tenant)
        return aad_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'.",
        )

    def _check_assertion(
        self, assertion: str, app: App, token_url: str, tenant: Tenant
    ) -> Response | None:
        if not app.certificate_pem:
            return aad_error(
                401, "invalid_client", 700027, "Client assertion failed signature validation."
            )
        cert = x509.load_pem_x509_certificate(app.certificate_pem.encode())
        audiences = [token_url, f"{self.base_url}/{tenant.tenant_id}/oauth2/v2.0/token"]
        try:
            claims = jwt.decode(
                assertion,
                cert.public_key(),  # type: ignore[arg-type]
                algorithms=["RS256", "PS256"],
                audience=audiences,
                leeway=CLOCK_SKEW_S,
                options={"require": ["exp", "aud", "iss", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            return aad_error(
                401,
                "invalid_client",
                700024,
                "Client assertion is not within its valid time range.",
            )
        except jwt.InvalidAudienceError:
            return aad_error(
                401,
                "invalid_client",
                700021,
                f"Client assertion application identifier doesn't match 'client_id' parameter "
                f"or audience is not {token_url}.",
            )
        except jwt.PyJWTError:
            return aad_error(
                401,
                "invalid_client",
                700027,
                "Client assertion failed signature validation.",
            )
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            return aad_error(
                401,
                "invalid_client",
                700023,
                "Client assertion audience claim does not match Realm issuer.",
            )
        return None


def _resource_of(scope: str) -> str | None:
    parts = scope.split()
    if len(parts) != 1 or not parts[0].endswith("/.default"):
        return None
    resource = parts[0][: -len("/.default")].rstrip("/")
    return resource if resource in RESOURCES else None


def aad_error(status: int, error: str, code: int, description: str) -> JSONResponse:
    trace = str(uuid.uuid4())
    corr = str(uuid.uuid4())
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return JSONResponse(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
            f"Correlation ID: {corr} Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": corr,
        },
        status_code=status,
    )
