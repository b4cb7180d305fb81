"""Graph `/users`: list (paging, $select, $filter, $count, $orderby), get, POST, PATCH,
settings/exchange."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route

from ..model import Settings, Tenant, User
from ..web import ctx_of
from . import common, odata
from .common import GraphJSON, fail

# Properties v1.0 returns when there is no $select (learn.microsoft.com/graph/api/user-list).
DEFAULT_SELECT = [
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
]
ORDERABLE = ("displayName", "userPrincipalName")
_COUNTRY = re.compile(r"^[A-Za-z]{2}$")


def _mail(u: User) -> str | None:
    return u.primary_smtp if u.recipient_type_details is not None else None


# Graph property -> value, computed per property so $filter and $select touch only what they use.
PROPERTIES: dict[str, Callable[[User], Any]] = {
    "id": lambda u: u.id,
    "businessPhones": lambda u: [],
    "displayName": lambda u: u.display_name,
    "givenName": lambda u: u.given_name,
    "jobTitle": lambda u: u.job_title,
    "mail": _mail,
    "mobilePhone": lambda u: None,
    "officeLocation": lambda u: None,
    "preferredLanguage": lambda u: None,
    "surname": lambda u: u.surname,
    "userPrincipalName": lambda u: u.user_principal_name,
    "accountEnabled": lambda u: u.account_enabled,
    "assignedLicenses": lambda u: [{"disabledPlans": [], "skuId": s} for s in u.assigned_licenses],
    "city": lambda u: u.city,
    "companyName": lambda u: u.company_name,
    "country": lambda u: u.country,
    "createdDateTime": lambda u: u.created,
    "department": lambda u: u.department,
    "mailNickname": lambda u: u.alias or u.user_principal_name.split("@")[0],
    "otherMails": lambda u: [],
    "proxyAddresses": lambda u: list(u.email_addresses) if u.recipient_type_details else [],
    "usageLocation": lambda u: u.usage_location,
    # Guests carry #EXT# in their UPN (learn.microsoft.com/entra/external-id/user-properties).
    "userType": lambda u: "Guest" if "#EXT#" in u.user_principal_name.upper() else "Member",
    "onPremisesSyncEnabled": lambda u: None,
}
KNOWN = list(PROPERTIES)


class UserRecord(Mapping[str, Any]):
    """A user seen as its Graph JSON, computing each property only when read."""

    __slots__ = ("user",)

    def __init__(self, user: User) -> None:
        self.user = user

    def __getitem__(self, key: str) -> Any:
        return PROPERTIES[key](self.user)

    def __iter__(self) -> Iterator[str]:
        return iter(PROPERTIES)

    def __len__(self) -> int:
        return len(PROPERTIES)


def project(u: User, props: Sequence[str]) -> dict[str, Any]:
    return {k: PROPERTIES[k](u) for k in props}


def user_json(u: User) -> dict[str, Any]:
    """The full Graph representation of a user (what `$select` picks from)."""
    return project(u, KNOWN)


def default_view(u: User) -> dict[str, Any]:
    return project(u, DEFAULT_SELECT)


# -- lookups ----------------------------------------------------------------------------------------

_UPN_INDEX: dict[int, tuple[Tenant, int, dict[str, str]]] = {}


def find_user(tenant: Tenant, key: str) -> User | None:
    """By object id or userPrincipalName (case-insensitive), as `/users/{id | userPrincipalName}`."""
    user = tenant.users.get(key)
    if user is not None:
        return user
    cached = _UPN_INDEX.get(id(tenant))
    if cached is None or cached[0] is not tenant or cached[1] != tenant.version:
        index = {u.user_principal_name.lower(): u.id for u in tenant.users.values()}
        cached = (tenant, tenant.version, index)
        _UPN_INDEX[id(tenant)] = cached
    oid = cached[2].get(key.lower())
    return tenant.users.get(oid) if oid else None


def visible_user(request: Request, tenant: Tenant, key: str) -> User:
    user = find_user(tenant, key)
    if user is None or not common.visible(user, common.now()):
        raise common.not_found(request, key)
    return user


# -- handlers ---------------------------------------------------------------------------------------


async def list_users(request: Request) -> Response:
    world = ctx_of(request).world
    with world.lock:
        principal = common.read(request, common.USER_READ)
        tenant = principal.tenant
        tenant.settle()
        q = common.query(request)
        try:
            top = odata.parse_top(q.get("top"))
            select = odata.parse_select(q.get("select"), KNOWN, "user")
            flt, want_count = common.filter_and_count(request, q, KNOWN, "user")
            order = odata.parse_orderby(q.get("orderby"), ORDERABLE)
            after = odata.decode_skiptoken(q["skiptoken"]) if "skiptoken" in q else None
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        keys, ids = _ordered(tenant, order)
        t = common.now()

        def resolve(oid: str) -> User | None:
            u = tenant.users.get(oid)
            return u if u is not None and common.visible(u, t) else None

        page = common.keyset_page(
            keys,
            ids,
            resolve,
            after,
            top,
            descending=order.descending,
            want_count=want_count,
            accept=(lambda u: flt.matches(UserRecord(u))) if flt else (lambda u: True),
        )
        shown = select or DEFAULT_SELECT
        values = [project(u, shown) for u in page.items]
        fragment = f"users({','.join(select)})" if select else "users"
        return common.collection(request, fragment, values, page)


def _ordered(tenant: Tenant, order: odata.OrderBy) -> tuple[list[tuple[str, ...]], list[str]]:
    if order.prop == "displayName":
        return common.sorted_view(
            tenant,
            "users:displayName",
            tenant.users.values,
            lambda u: (u.display_name.lower(), u.id),
        )
    if order.prop == "userPrincipalName":
        return common.sorted_view(
            tenant,
            "users:upn",
            tenant.users.values,
            lambda u: (u.user_principal_name.lower(), u.id),
        )
    return common.sorted_view(tenant, "users:id", tenant.users.values, lambda u: (u.id,))


async def count_users(request: Request) -> Response:
    """`GET /users/$count` (text/plain); needs `ConsistencyLevel: eventual`."""
    world = ctx_of(request).world
    with world.lock:
        principal = common.read(request, common.USER_READ)
        tenant = principal.tenant
        q = common.query(request)
        try:
            if not common.eventual(request):
                raise odata.raw_count_requires_eventual()
            flt = odata.compile_filter(q.get("filter"), KNOWN, "user")
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        t = common.now()
        n = sum(
            1
            for u in tenant.users.values()
            if common.visible(u, t) and (flt is None or flt.matches(UserRecord(u)))
        )
        return PlainTextResponse(str(n))


async def get_user(request: Request) -> Response:
    world = ctx_of(request).world
    with world.lock:
        principal = common.read(request, common.USER_READ)
        principal.tenant.settle()
        user = visible_user(request, principal.tenant, request.path_params["user_id"])
        try:
            select = odata.parse_select(common.query(request).get("select"), KNOWN, "user")
        except odata.ODataQueryError as exc:
            raise common.query_failure(exc, request) from exc
        body: dict[str, Any] = {
            "@odata.context": common.context_url(
                request, f"users({','.join(select)})/$entity" if select else "users/$entity"
            )
        }
        body.update(project(user, select or DEFAULT_SELECT))
        return GraphJSON(body)


# PATCH: Graph property -> model attribute. Everything else in KNOWN is read-only here.
WRITABLE = {
    "displayName": "display_name",
    "givenName": "given_name",
    "surname": "surname",
    "usageLocation": "usage_location",
    "accountEnabled": "account_enabled",
    "department": "department",
    "jobTitle": "job_title",
    "city": "city",
    "country": "country",
    "companyName": "company_name",
    "mailNickname": "alias",
    "userPrincipalName": "user_principal_name",
}


def _check_patch(request: Request, tenant: Tenant, user: User, body: dict[str, Any]) -> None:
    for key, value in body.items():
        if key.startswith("@odata."):
            continue
        if key not in WRITABLE:
            if key in KNOWN:
                raise fail(
                    400,
                    "Request_BadRequest",
                    f"Property '{key}' is read-only and cannot be set.",
                    request,
                )
            raise fail(
                400,
                "BadRequest",
                f"The property '{key}' does not exist on type 'microsoft.graph.user'. Make sure "
                "to only use property names that are defined by the type or mark the type as "
                "open type.",
                request,
            )
        if key == "usageLocation" and value is not None and not _COUNTRY.match(str(value)):
            raise _invalid_value(request, key)
        if key == "accountEnabled" and not isinstance(value, bool):
            raise _invalid_value(request, key)
        if key == "userPrincipalName":
            _check_upn(request, tenant, user, value)


def _invalid_value(request: Request, key: str) -> Exception:
    return fail(
        400,
        "Request_BadRequest",
        f"Invalid value specified for property '{key}' of resource 'User'.",
        request,
    )


def _check_upn(request: Request, tenant: Tenant, user: User, value: Any) -> None:
    if not isinstance(value, str) or value.count("@") != 1:
        raise _invalid_value(request, "userPrincipalName")
    domain = tenant.accepted_domain(value.rsplit("@", 1)[1])
    if domain is None or not domain.is_verified:
        raise fail(
            400,
            "Request_BadRequest",
            "The domain portion of the userPrincipalName property is invalid. You must use one "
            "of the verified domain names in your organization.",
            request,
        )
    other = find_user(tenant, value)
    if other is not None and other.id != user.id:
        raise fail(
            400,
            "Request_BadRequest",
            "Another object with the same value for property userPrincipalName already exists.",
            request,
        )


# Graph's refusals of a PATCH to an object another service masters, verbatim. The first
# is the DualWrite answer for "on-premises mastered Directory Sync objects or objects
# currently undergoing migration" (Microsoft 365 Dev blog, "Breaking change to Microsoft
# Graph Users API: Updates to on-premises sync-enabled user contact numbers are no longer
# allowed", 2020); the second is answered for users created as Mail Users through Exchange
# Online (microsoft-graph-docs-contrib issues 3564 and 8048). Which one a new MailUser gets,
# and for how long, is *unverified*: `Settings.graph_patch_refusal` chooses.
UNDERGOING_MIGRATION = (
    "Unable to update the specified properties for on-premises mastered Directory Sync "
    "objects or objects currently undergoing migration."
)
EXTERNAL_SERVICE = (
    "Unable to update the specified properties for objects that have originated within an "
    "external service."
)


def patch_refusal(settings: Settings, user: User, now: float) -> str | None:
    """Graph's 400 message refusing a PATCH of `user` now, or None when it is accepted."""
    if not user.exchange_created:
        return None
    if settings.graph_patch_refusal == "external":
        return EXTERNAL_SERVICE
    if settings.graph_patch_refusal == "migrating" and now < user.graph_writable_at:
        return UNDERGOING_MIGRATION
    return None


async def patch_user(request: Request) -> Response:
    world = ctx_of(request).world
    body = await common.json_body(request)
    with world.lock:
        principal = common.write(request, common.USER_WRITE)
        tenant = principal.tenant
        user = visible_user(request, tenant, request.path_params["user_id"])
        refusal = patch_refusal(world.settings, user, common.now())
        if refusal is not None:
            raise fail(400, "Request_BadRequest", refusal, request)
        _check_patch(request, tenant, user, body)
        for key, value in body.items():
            attr = WRITABLE.get(key)
            if attr is not None:
                setattr(user, attr, value.upper() if key == "usageLocation" and value else value)
        tenant.touch(user)
        return Response(status_code=204)


# -- POST /users ------------------------------------------------------------------------------

# user-post-users: "the required properties" of a new (non-B2C) user; onPremisesImmutableId
# only for a federated UPN domain, which the sandbox has none of.
REQUIRED_ON_CREATE = ("accountEnabled", "displayName", "mailNickname", "userPrincipalName")
PASSWORD_PROFILE = frozenset(
    {"password", "forceChangePasswordNextSignIn", "forceChangePasswordNextSignInWithMfa"}
)


async def create_user(request: Request) -> Response:
    """`POST /users` (user-post-users): a cloud user with no Exchange recipient yet; an
    Exchange license gives it a mailbox later (licensing.apply_exchange_licensing). The
    password is checked for presence and never kept: nothing in the sandbox signs users in."""
    world = ctx_of(request).world
    body = await common.json_body(request)
    with world.lock:
        principal = common.write(request, common.USER_WRITE)
        tenant = principal.tenant
        missing = [k for k in REQUIRED_ON_CREATE if body.get(k) in (None, "")]
        profile = body.get("passwordProfile")
        if not isinstance(profile, dict) or not str(profile.get("password") or ""):
            missing.append("passwordProfile")
            profile = {}
        if missing:
            raise fail(
                400,
                "Request_BadRequest",
                f"Property '{missing[0]}' is required when creating the resource.",  # *unverified*
                request,
            )
        if set(profile) - PASSWORD_PROFILE:
            raise _invalid_value(request, "passwordProfile")
        fields = {k: v for k, v in body.items() if k != "passwordProfile"}
        draft = User(id=new_id(), display_name="")
        _check_patch(request, tenant, draft, fields)
        for key, value in fields.items():
            attr = WRITABLE.get(key)
            if attr is not None:
                setattr(draft, attr, value.upper() if key == "usageLocation" and value else value)
        draft.name = draft.display_name
        # The address Exchange gives the mailbox once a license provisions one: the UPN
        # (*unverified*: Exchange derives it from the email address policy, whose default
        # template is alias@default domain; the sandbox's tenants use UPN = alias@domain).
        draft.email_addresses = ["SMTP:" + draft.user_principal_name]
        tenant.users[draft.id] = draft
        tenant.touch(draft)
        out: dict[str, Any] = {"@odata.context": common.context_url(request, "users/$entity")}
        out.update(default_view(draft))
        return GraphJSON(out, status_code=201)


def new_id() -> str:
    return str(uuid.uuid4())


# -- settings/exchange --------------------------------------------------------------------------


def primary_mailbox_id(tenant: Tenant, user: User) -> str:
    """The id the mailbox import/export API takes (`/admin/exchange/mailboxes/{id}`).

    Microsoft's sample shows `MBX:e0643f21@a7809c93` (usersettings-list-exchange,
    "might be shortened"); the full form used here, MBX:<ExchangeGuid>@<tenantId>,
    is *unverified*. Kept in this one function so the mail face can parse it back.
    """
    return f"MBX:{user.exchange_guid}@{tenant.tenant_id}"


# *unverified* for this endpoint: the code Outlook endpoints return for a user without a mailbox.
NO_MAILBOX = (
    "MailboxNotEnabledForRESTAPI",
    "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
)


def mailbox_served(user: User, now: float) -> bool:
    """Whether Graph's Outlook faces serve this user's mailbox now (else 404 NO_MAILBOX).

    A mailbox Exchange has just provisioned is not served before `rest_ready_at`: Graph
    answers 404 for a while after licensing (Graph known issues, "No instant access after
    creation").
    """
    return user.is_mailbox and bool(user.exchange_guid) and user.rest_ready_at <= now


async def exchange_settings(request: Request) -> Response:
    world = ctx_of(request).world
    with world.lock:
        principal = common.read(request, common.EXCHANGE_SETTINGS_READ)
        tenant = principal.tenant
        tenant.settle()
        key = request.path_params["user_id"]
        user = visible_user(request, tenant, key)
        if not mailbox_served(user, common.now()):
            raise fail(404, *NO_MAILBOX, request)
        return GraphJSON(
            {
                "@odata.context": common.context_url(
                    request, f"users('{key}')/settings/exchange/$entity"
                ),
                "primaryMailboxId": primary_mailbox_id(tenant, user),
            }
        )


def routes() -> list[BaseRoute]:
    return [
        Route("/v1.0/users", list_users, methods=["GET"]),
        Route("/v1.0/users", create_user, methods=["POST"]),
        Route("/v1.0/users/$count", count_users, methods=["GET"]),
        Route("/v1.0/users/{user_id}", get_user, methods=["GET"]),
        Route("/v1.0/users/{user_id}", patch_user, methods=["PATCH"]),
        Route("/v1.0/users/{user_id}/settings/exchange", exchange_settings, methods=["GET"]),
    ]
