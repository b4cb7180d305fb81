"""The sandbox's Amazon WorkMail admin API face (`/workmail/`), for boto3's `workmail` client.

AWS JSON 1.1 protocol (botocore's service model `workmail/2017-10-01/service-2.json`:
`"protocol": "json"`, `"jsonVersion": "1.1"`, `"targetPrefix": "WorkMailService"`): every call
is a POST whose `X-Amz-Target: WorkMailService.<Operation>` names the operation, body and
answer are JSON (`application/x-amz-json-1.1`), errors are `{"__type": Code, "Message": ...}`
with HTTP 400 (botocore's `parsers.JSONParser` reads `__type` and strips any `ns#` prefix).

Every request is signed with Signature Version 4; the face recomputes the signature over the
request it received with botocore's own signer (`botocore.auth.SigV4Auth`) and the secret it
holds for the access key, so a request boto3 signed right passes and any other is refused as
AWS refuses it (`UnrecognizedClientException`, `InvalidSignatureException`,
`MissingAuthenticationTokenException`).

Requests are validated against the same service model (required members, types, lengths,
enums, patterns: Coral's `ValidationException`), and every answer against the operation's
output shape: a member the model lacks is a sandbox bug, recorded in `ctx.extra[ERRORS_KEY]`
and answered as AWS's `InternalFailure` (tests assert none).

State: the organisations are the sandbox's tenants of kind `workmail` (ews/orgs.py), served
over EWS by the same world. A user made by CreateUser is a `User` of that tenant without a
mailbox (WorkMail state DISABLED); RegisterToWorkMail gives it its primary address and a
mailbox (ENABLED), which the EWS face then serves; CreateAlias adds a proxy address. The
migration account the EWS face signs in is an `EwsAccount` (ews/orgs.py); it is listed here
as a user too (its own entity id) unless a user of the same name holds it, and
PutMailboxPermissions with FULL_ACCESS for it is `orgs.grant`: exactly what the EWS face
checks before it opens a mailbox. A user created with a password gets an `EwsAccount` of its
own, so it can sign in to its own mailbox over EWS once registered.

Credentials: one AWS access key per WorkMail organisation, derived from the tenant's app
registration (`credentials_of`), written to connection.json (`connection_info`).

Everything AWS does not publish is in UNVERIFIED.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.loaders import create_loader
from botocore.model import ServiceModel, Shape
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .ews import orgs
from .model import EwsAccount, Tenant, User, new_guid
from .web import SandboxContext, ctx_of

WORKMAIL_PATH = "/workmail"
SERVICE = "workmail"
TARGET_PREFIX = "WorkMailService."
CONTENT_TYPE = "application/x-amz-json-1.1"
REGION = "us-east-1"
ERRORS_KEY = "workmail_errors"  # sandbox bugs met while serving (tests assert none)
CALLS_KEY = "workmail_calls"  # (operation, parameters without secrets) of each accepted call
THROTTLE_KEY = "workmail_throttle"  # answer this many next calls with ThrottlingException
EXTRA_PERMISSIONS_KEY = "workmail_permissions"  # SEND_AS / SEND_ON_BEHALF grants
FULL_ACCESS = "FULL_ACCESS"
MAX_SKEW_S = 15 * 60  # SigV4: "Signature expired" past 15 minutes (AWS SigV4 docs)
ALGORITHM = "AWS4-HMAC-SHA256"


@dataclass(frozen=True)
class Unverified:
    """*unverified* (one place): what the face assumes where AWS publishes nothing."""

    # HTTP status of signature errors on JSON 1.1 services (DynamoDB and others answer 400
    # for UnrecognizedClientException and InvalidSignatureException, 403 for
    # MissingAuthenticationTokenException); WorkMail's own is not captured.
    signature_status: int = 400
    missing_token_status: int = 403
    # Coral's validation answer for a request that breaks the model's constraints.
    validation_code: str = "ValidationException"
    # A user made by CreateUser and not registered yet is DISABLED (WorkMail console).
    created_state: str = "DISABLED"
    # WorkMail's password policy is not published in full; 8 characters at least here.
    min_password: int = 8
    # ListAliases lists the aliases without the primary address.
    aliases_include_primary: bool = False
    # CreateAlias of an address the entity itself already holds: EmailAddressInUseException.
    own_alias_again: str = "EmailAddressInUseException"
    # Throttling answers 400 ThrottlingException "Rate exceeded" (the common AWS code that
    # botocore's retry handlers know); WorkMail's API rate quotas are not modelled.
    throttling_code: str = "ThrottlingException"
    # The AWS account id behind a sandbox organisation is derived from its tenant id.
    account_digits: int = 12


UNVERIFIED = Unverified()


class AwsError(Exception):
    """One error answer: AWS's code, its message, the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.status = status


# -- the service model ---------------------------------------------------------------------
@lru_cache(maxsize=1)
def service_model() -> ServiceModel:
    """botocore's WorkMail model: the contract requests and answers are checked against."""
    loader = create_loader()
    return ServiceModel(loader.load_service_model(SERVICE, "service-2"), service_name=SERVICE)


def _coral_name(path: str) -> str:
    # Coral names members lower-camel in validation messages ("at 'organizationId'").
    return ".".join(p[:1].lower() + p[1:] for p in path.split("."))


def check_input(shape: Shape, value: Any, path: str = "") -> list[str]:
    """Validation errors of a request against `shape` (Coral's wording). Unknown members
    are ignored, as AWS's JSON protocols ignore them."""
    errors: list[str] = []
    where = _coral_name(path)
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"Value at '{where}' failed to satisfy constraint: Member must be a structure"]
        for name in shape.required_members:
            if value.get(name) is None:
                errors.append(
                    f"Value null at '{_coral_name(f'{path}.{name}' if path else name)}' failed "
                    "to satisfy constraint: Member must not be null"
                )
        for name, member in shape.members.items():
            if value.get(name) is not None:
                errors += check_input(member, value[name], f"{path}.{name}" if path else name)
        return errors
    if kind == "list":
        if not isinstance(value, list):
            return [f"Value at '{where}' failed to satisfy constraint: Member must be a list"]
        errors += _length(shape, len(value), value, where)
        for i, v in enumerate(value):
            errors += check_input(shape.member, v, f"{path}.{i + 1}")
        return errors
    if kind == "string":
        if not isinstance(value, str):
            return [f"Value at '{where}' failed to satisfy constraint: Member must be a string"]
        errors += _length(shape, len(value), value, where)
        enum = shape.metadata.get("enum")
        if enum and value not in enum:
            errors.append(
                f"Value '{value}' at '{where}' failed to satisfy constraint: Member must satisfy "
                f"enum value set: [{', '.join(enum)}]"
            )
        pattern = shape.metadata.get("pattern")
        if pattern and not _matches(pattern, value):
            errors.append(
                f"Value '{value}' at '{where}' failed to satisfy constraint: Member must satisfy "
                f"regular expression pattern: {pattern}"
            )
        return errors
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"Value at '{where}' failed to satisfy constraint: Member must be a number"]
        low, high = shape.metadata.get("min"), shape.metadata.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            errors.append(
                f"Value '{value}' at '{where}' failed to satisfy constraint: Member must have "
                f"value between {low} and {high}"
            )
        return errors
    if kind == "boolean" and not isinstance(value, bool):
        return [f"Value at '{where}' failed to satisfy constraint: Member must be a boolean"]
    return errors


def _length(shape: Shape, n: int, value: Any, where: str) -> list[str]:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if (low is not None and n < low) or (high is not None and n > high):
        shown = "null" if shape.metadata.get("sensitive") else f"'{value}'"
        return [
            f"Value {shown} at '{where}' failed to satisfy constraint: Member must have length "
            f"{'less than or equal to ' + str(high) if low is None else f'between {low} and {high}'}"
        ]
    return []


@lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error:  # a Java-only construct: not checked (none in this model today)
        return None


def _matches(pattern: str, value: str) -> bool:
    # Smithy patterns are not implicitly anchored: those meant whole carry ^...$.
    compiled = _compiled(pattern)
    return compiled is None or compiled.search(value) is not None


def check_output(shape: Shape, value: Any, path: str = "") -> list[str]:
    """Where an answer leaves the model: an unknown member, a wrong type, an enum outside its
    set, a required member missing. Empty for a conforming answer."""
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path or '<root>'}: not an object"]
        members = shape.members
        errors = [f"{path}.{k}: not in the model" for k in value if k not in members]
        errors += [f"{path}.{k}: required" for k in shape.required_members if k not in value]
        for k, v in value.items():
            if k in members and v is not None:
                errors += check_output(members[k], v, f"{path}.{k}")
        return errors
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        return [
            e for i, v in enumerate(value) for e in check_output(shape.member, v, f"{path}[{i}]")
        ]
    if kind == "string":
        enum = shape.metadata.get("enum")
        if not isinstance(value, str) or (enum and value not in enum):
            return [f"{path}: {value!r} is no {shape.name}"]
        return []
    if kind == "timestamp":
        return (
            []
            if isinstance(value, int | float) and not isinstance(value, bool)
            else [f"{path}: not epoch seconds"]
        )
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: not a boolean"]
    if kind in ("integer", "long"):
        return (
            []
            if isinstance(value, int) and not isinstance(value, bool)
            else [f"{path}: not an integer"]
        )
    return []


# -- organisations, keys, entities ------------------------------------------------------------
def organization_id(tenant: Tenant) -> str:
    """`m-` and 32 hex digits (the model's OrganizationId pattern), from the tenant id."""
    return "m-" + uuid.UUID(tenant.tenant_id).hex


def account_id(tenant: Tenant) -> str:
    digest = hashlib.sha256(f"aws-account:{tenant.tenant_id}".encode()).hexdigest()
    return str(int(digest, 16))[: UNVERIFIED.account_digits]


def credentials_of(tenant: Tenant) -> tuple[str, str]:
    """(access key id, secret access key) of the organisation's AWS account: AKIA + 16
    upper-case characters (AWS's access key form), the secret from the tenant's app."""
    app = tenant.apps[0]
    raw = hashlib.sha256(f"aws-key:{app.client_id}".encode()).digest()
    key_id = "AKIA" + base64.b32encode(raw).decode()[:16]
    secret = base64.b64encode(hashlib.sha256(f"aws-secret:{app.client_secret}".encode()).digest())
    return key_id, secret.decode()[:40]


def connection_info(tenant: Tenant, base_url: str) -> dict[str, Any]:
    """What a coexist project needs to reach this organisation's admin API (connection.json)."""
    key_id, secret = credentials_of(tenant)
    return {
        "endpoint": f"{base_url}{WORKMAIL_PATH}",
        "region": REGION,
        "organization_id": organization_id(tenant),
        "access_key_id": key_id,
        "secret_access_key": secret,
    }


def _orgs(ctx: SandboxContext) -> dict[str, Tenant]:
    return {k: t for k, t in ctx.world.tenants.items() if t.kind == "workmail"}


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _account_id_of(tenant: Tenant, account: EwsAccount) -> str:
    return str(uuid.uuid5(uuid.UUID(tenant.tenant_id), f"workmail-account:{account.name.lower()}"))


@dataclass
class Entity:
    """A user as WorkMail's API sees it: a `User` of the tenant, or an EWS account that no
    user holds (the migration account)."""

    id: str
    name: str
    display_name: str
    email: str | None
    state: str
    user: User | None
    account: EwsAccount | None
    created: str


def _entities(tenant: Tenant) -> list[Entity]:
    out: list[Entity] = []
    held: set[str] = set()
    for u in tenant.users.values():
        account = _own_account(tenant, u)
        if account is not None:
            held.add(account.name.lower())
        registered = u.is_mailbox and bool(u.primary_smtp)
        out.append(
            Entity(
                u.id,
                u.name or u.alias or (u.user_principal_name.split("@")[0]),
                u.display_name,
                u.primary_smtp.lower() if registered and u.primary_smtp else None,
                "ENABLED" if registered else UNVERIFIED.created_state,
                u,
                account,
                u.created,
            )
        )
    for a in tenant.ews_accounts:
        if a.name.lower() in held or a.mailbox:
            continue
        out.append(Entity(_account_id_of(tenant, a), a.name, a.name, a.upn, "ENABLED", None, a, ""))
    return out


def _own_account(tenant: Tenant, user: User) -> EwsAccount | None:
    addresses = {x.split(":", 1)[-1].lower() for x in user.email_addresses}
    for a in tenant.ews_accounts:
        if (a.mailbox and a.mailbox in addresses) or (
            user.name and a.name.lower() == user.name.lower()
        ):
            return a
    return None


# Which identifiers each member takes (botocore's model documentation): DescribeUser's UserId
# and the mailbox permission operations take "UserId, Username, or email"; RegisterToWorkMail
# "UserId ... or Username"; CreateAlias/ListAliases document none (WorkMailIdentifier): the
# entity id only here (*unverified*).
ANY_ID = ("id", "name", "email")
ID_OR_NAME = ("id", "name")
ID_ONLY = ("id",)


def _find(tenant: Tenant, ident: str, kinds: tuple[str, ...] = ANY_ID) -> Entity | None:
    """An entity by id, user name or email (any of its addresses), as `kinds` allow."""
    want = ident.strip().lower()
    for e in _entities(tenant):
        names = {e.id.lower()}
        if "name" in kinds:
            names.add(e.name.lower())
        if "email" not in kinds:
            if want in names:
                return e
            continue
        if e.email:
            names.add(e.email)
        if e.user is not None:
            names |= {x.split(":", 1)[-1].lower() for x in e.user.email_addresses if ":" in x}
        if e.account is not None:
            names.add(e.account.upn.lower())
        if want in names:
            return e
    return None


def _entity(tenant: Tenant, ident: str, kinds: tuple[str, ...] = ANY_ID) -> Entity:
    found = _find(tenant, ident, kinds)
    if found is None:
        raise AwsError(
            "EntityNotFoundException",
            "The identifier supplied for the user, group, or resource does not exist in your organization.",
        )
    return found


def _registered(e: Entity) -> User:
    if e.user is None or e.state != "ENABLED" or not e.user.is_mailbox:
        raise AwsError(
            "EntityStateException",
            "You are performing an operation on a user, group, or resource that isn't in the expected state, such as trying to delete an active user.",
        )
    return e.user


def _mail_domain(tenant: Tenant, address: str) -> None:
    domain = address.rsplit("@", 1)[-1].lower()
    if tenant.accepted_domain(domain) is None:
        raise AwsError(
            "MailDomainNotFoundException", "The domain specified is not found in your organization."
        )


def _address_free(tenant: Tenant, address: str, own: User | None) -> None:
    owner = tenant.address_owner(address)
    taken = owner is not None or any(
        a.upn.lower() == address.lower() and (own is None or _own_account(tenant, own) is not a)
        for a in tenant.ews_accounts
    )
    if taken:
        raise AwsError(
            "EmailAddressInUseException",
            "The email address that you're trying to assign is already created for a different user, group, or resource.",
        )


# -- operations ----------------------------------------------------------------------------
@dataclass
class Call:
    ctx: SandboxContext
    key: str  # the tenant the access key belongs to
    tenant: Tenant
    params: dict[str, Any]

    def org(self) -> Tenant:
        wanted = str(self.params.get("OrganizationId") or "")
        if organization_id(self.tenant) != wanted:
            raise AwsError(
                "OrganizationNotFoundException",
                "An operation received a valid organization identifier that either doesn't belong or exist in the system.",
            )
        return self.tenant


def _page(
    items: list[Any], params: dict[str, Any], default: int = 100
) -> tuple[list[Any], str | None]:
    start = 0
    token = params.get("NextToken")
    if token:
        try:
            start = int(base64.b64decode(token).decode())
        except ValueError:
            raise AwsError("InvalidNextTokenException", "The next token is invalid.") from None
    size = int(params.get("MaxResults") or default)
    chunk = items[start : start + size]
    more = start + size < len(items)
    return chunk, base64.b64encode(str(start + size).encode()).decode() if more else None


def _summary(tenant: Tenant) -> dict[str, Any]:
    return {
        "OrganizationId": organization_id(tenant),
        "Alias": orgs.netbios(tenant).lower(),
        "DefaultMailDomain": orgs.org_domain(tenant),
        "State": "Active",
    }


def list_organizations(call: Call) -> dict[str, Any]:
    page, token = _page([_summary(call.tenant)], call.params)
    return {"OrganizationSummaries": page, **({"NextToken": token} if token else {})}


def describe_organization(call: Call) -> dict[str, Any]:
    t = call.org()
    oid = organization_id(t)
    return {
        "OrganizationId": oid,
        "Alias": orgs.netbios(t).lower(),
        "State": "Active",
        "DirectoryId": "d-" + uuid.UUID(t.tenant_id).hex[:10],
        "DirectoryType": "WorkMailDirectory",
        "DefaultMailDomain": orgs.org_domain(t),
        "ARN": f"arn:aws:workmail:{REGION}:{account_id(t)}:organization/{oid}",
        "InteroperabilityEnabled": False,
    }


def _user_summary(e: Entity) -> dict[str, Any]:
    out: dict[str, Any] = {
        "Id": e.id,
        "Name": e.name,
        "DisplayName": e.display_name,
        "State": e.state,
        "UserRole": "USER",
    }
    if e.email:
        out["Email"] = e.email
    if e.state == "ENABLED" and e.created:
        out["EnabledDate"] = _epoch(e.created)
    return out


def list_users(call: Call) -> dict[str, Any]:
    t = call.org()
    f = call.params.get("Filters") or {}

    def keep(e: Entity) -> bool:
        return (
            e.name.lower().startswith(str(f.get("UsernamePrefix") or "").lower())
            and e.display_name.lower().startswith(str(f.get("DisplayNamePrefix") or "").lower())
            and (e.email or "").startswith(str(f.get("PrimaryEmailPrefix") or "").lower())
            and (not f.get("State") or f["State"] == e.state)
        )

    found = sorted((e for e in _entities(t) if keep(e)), key=lambda e: e.name.lower())
    page, token = _page([_user_summary(e) for e in found], call.params)
    return {"Users": page, **({"NextToken": token} if token else {})}


def describe_user(call: Call) -> dict[str, Any]:
    t = call.org()
    e = _entity(t, str(call.params["UserId"]))
    out: dict[str, Any] = {
        "UserId": e.id,
        "Name": e.name,
        "DisplayName": e.display_name,
        "State": e.state,
        "UserRole": "USER",
        "HiddenFromGlobalAddressList": bool(e.user and e.user.hidden_from_address_lists),
    }
    if e.email:
        out["Email"] = e.email
    if e.user is not None:
        if e.user.given_name:
            out["FirstName"] = e.user.given_name
        if e.user.surname:
            out["LastName"] = e.user.surname
        if e.state == "ENABLED":
            out["EnabledDate"] = out["MailboxProvisionedDate"] = _epoch(e.user.created)
    return out


def create_user(call: Call) -> dict[str, Any]:
    t = call.org()
    p = call.params
    name = str(p["Name"])
    if name.lower() in ("administrator", "root", "postmaster", "abuse"):
        raise AwsError(
            "ReservedNameException",
            "This user, group, or resource name is not allowed in WorkMail.",
        )
    if _find(t, name, ID_OR_NAME) is not None:
        raise AwsError(
            "NameAvailabilityException",
            "The user, group, or resource name isn't unique in WorkMail.",
        )
    password = p.get("Password")
    if password is not None and (
        len(password) < UNVERIFIED.min_password
        or sum(bool(re.search(c, password)) for c in ("[a-z]", "[A-Z]", "[0-9]", "[^A-Za-z0-9]"))
        < 3
    ):
        raise AwsError(
            "InvalidPasswordException",
            "The supplied password doesn't match the minimum security constraints, such as length or use of special characters.",
        )
    domain = orgs.org_domain(t)
    user = User(
        id=str(uuid.uuid4()),
        display_name=str(p["DisplayName"]),
        name=name,
        alias=name,
        user_principal_name=f"{name}@{domain}".lower(),
        given_name=p.get("FirstName"),
        surname=p.get("LastName"),
        hidden_from_address_lists=bool(p.get("HiddenFromGlobalAddressList")),
        account_enabled=False,
    )
    t.users[user.id] = user
    if password is not None:
        # The user's own sign-in (EWS, once registered): held as the EWS face's account.
        t.ews_accounts.append(
            EwsAccount(name=name, password=password, upn=user.user_principal_name)
        )
    t.touch(user)
    return {"UserId": user.id}


def register_to_workmail(call: Call) -> dict[str, Any]:
    t = call.org()
    e = _entity(t, str(call.params["EntityId"]), ID_OR_NAME)
    email = str(call.params["Email"]).lower()
    if e.user is None:
        raise AwsError(
            "EntityAlreadyRegisteredException",
            "The user, group, or resource that you're trying to register is already registered.",
        )
    if e.state == "ENABLED":
        raise AwsError(
            "EntityAlreadyRegisteredException",
            "The user, group, or resource that you're trying to register is already registered.",
        )
    _mail_domain(t, email)
    _address_free(t, email, e.user)
    u = e.user
    u.email_addresses = [f"SMTP:{email}"]
    u.recipient_type_details = "UserMailbox"
    u.exchange_guid = new_guid()
    u.legacy_exchange_dn = t.new_legacy_dn(u.alias)
    u.account_enabled = True
    if e.account is not None:
        e.account.mailbox = email
        e.account.upn = email
    t.touch(u)
    return {}


def create_alias(call: Call) -> dict[str, Any]:
    t = call.org()
    user = _registered(_entity(t, str(call.params["EntityId"]), ID_ONLY))
    alias = str(call.params["Alias"]).lower()
    _mail_domain(t, alias)
    owner = t.address_owner(alias)
    if owner is user and UNVERIFIED.own_alias_again != "EmailAddressInUseException":
        return {}
    _address_free(t, alias, user)
    user.email_addresses.append(f"smtp:{alias}")
    t.touch(user)
    return {}


def list_aliases(call: Call) -> dict[str, Any]:
    t = call.org()
    e = _entity(t, str(call.params["EntityId"]), ID_ONLY)
    user = _registered(e)
    aliases = [
        a[5:].lower()
        for a in user.email_addresses
        if a.lower().startswith("smtp:")
        and (UNVERIFIED.aliases_include_primary or not a.startswith("SMTP:"))
    ]
    page, token = _page(aliases, call.params)
    return {"Aliases": page, **({"NextToken": token} if token else {})}


def _extra_permissions(call: Call) -> dict[tuple[str, str, str], list[str]]:
    found: dict[tuple[str, str, str], list[str]] = call.ctx.extra.setdefault(
        EXTRA_PERMISSIONS_KEY, {}
    )
    return found


def put_mailbox_permissions(call: Call) -> dict[str, Any]:
    t = call.org()
    mailbox = _registered(_entity(t, str(call.params["EntityId"])))
    grantee = _entity(t, str(call.params["GranteeId"]))
    values = sorted(set(call.params["PermissionValues"]))
    address = str(mailbox.primary_smtp).lower()
    # The EWS face's migration account (or a user's own sign-in) holds FULL_ACCESS as an
    # EWS grant, which is what the face checks; other values, and grants to users the face
    # has no sign-in for, are kept beside it (not saved with the state).
    account = grantee.account
    if account is not None:
        orgs.grant(
            call.ctx.world,
            call.key,
            account.name,
            full_access=[address],
            revoke=FULL_ACCESS not in values,
        )
    rest = [v for v in values if account is None or v != FULL_ACCESS]
    key = (organization_id(t), mailbox.id, grantee.id)
    if rest:
        _extra_permissions(call)[key] = rest
    else:
        _extra_permissions(call).pop(key, None)
    t.touch(mailbox)
    return {}


def list_mailbox_permissions(call: Call) -> dict[str, Any]:
    t = call.org()
    mailbox = _registered(_entity(t, str(call.params["EntityId"])))
    address = str(mailbox.primary_smtp).lower()
    grants: dict[str, set[str]] = {}
    for e in _entities(t):
        if e.account is not None and address in e.account.full_access and e.user is not mailbox:
            grants.setdefault(e.id, set()).add(FULL_ACCESS)
    oid = organization_id(t)
    for (org, box, grantee), values in _extra_permissions(call).items():
        if org == oid and box == mailbox.id:
            grants.setdefault(grantee, set()).update(values)
    rows = [
        {"GranteeId": g, "GranteeType": "USER", "PermissionValues": sorted(v)}
        for g, v in sorted(grants.items())
    ]
    page, token = _page(rows, call.params)
    return {"Permissions": page, **({"NextToken": token} if token else {})}


OPERATIONS: dict[str, Callable[[Call], dict[str, Any]]] = {
    "ListOrganizations": list_organizations,
    "DescribeOrganization": describe_organization,
    "ListUsers": list_users,
    "DescribeUser": describe_user,
    "CreateUser": create_user,
    "RegisterToWorkMail": register_to_workmail,
    "CreateAlias": create_alias,
    "ListAliases": list_aliases,
    "PutMailboxPermissions": put_mailbox_permissions,
    "ListMailboxPermissions": list_mailbox_permissions,
}
# Codes any operation may answer besides its modelled errors (AWS's common errors).
COMMON_ERRORS = frozenset(
    {
        "ThrottlingException",
        "ValidationException",
        "InvalidSignatureException",
        "UnrecognizedClientException",
        "MissingAuthenticationTokenException",
        "UnknownOperationException",
        "SerializationException",
        "InternalFailure",
        "ServiceUnavailable",
        "InvalidNextTokenException",
    }
)


# -- SigV4 ---------------------------------------------------------------------------------
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256\s+Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<signed>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-f]+)\s*$"
)


def authenticate(ctx: SandboxContext, request: Request, body: bytes) -> str:
    """The key of the tenant whose access key signed this request; AwsError otherwise.

    The signature is recomputed with botocore's SigV4Auth over what was received: the
    signed headers as they arrived, the raw path and query, the body, the X-Amz-Date."""
    header = request.headers.get("authorization")
    if not header:
        raise AwsError(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
            UNVERIFIED.missing_token_status,
        )
    m = _AUTH_RE.match(header)
    if m is None:
        raise AwsError(
            "IncompleteSignatureException",
            f"Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters. Authorization={header.split(' ')[0]}",
            UNVERIFIED.signature_status,
        )
    key_id, date, region, service, terminal = (m["cred"].split("/") + [""] * 5)[:5]
    found = next(((k, t) for k, t in _orgs(ctx).items() if credentials_of(t)[0] == key_id), None)
    if found is None:
        raise AwsError(
            "UnrecognizedClientException",
            "The security token included in the request is invalid.",
            UNVERIFIED.signature_status,
        )
    key, tenant = found
    stamp = request.headers.get("x-amz-date", "")
    if service != SERVICE or terminal != "aws4_request" or date != stamp[:8]:
        raise AwsError(
            "InvalidSignatureException",
            f"Credential should be scoped to correct service: '{SERVICE}'. ",
            UNVERIFIED.signature_status,
        )
    if region != REGION:
        raise AwsError(
            "InvalidSignatureException",
            f"Credential should be scoped to a valid region, not '{region}'. ",
            UNVERIFIED.signature_status,
        )
    try:
        when = dt.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        raise AwsError(
            "IncompleteSignatureException",
            "Date must be in ISO-8601 'basic format'.",
            UNVERIFIED.signature_status,
        ) from None
    now = dt.datetime.now(dt.UTC)
    if abs((now - when).total_seconds()) > MAX_SKEW_S:
        raise AwsError(
            "InvalidSignatureException",
            f"Signature expired: {stamp} is now earlier than {(now - dt.timedelta(seconds=MAX_SKEW_S)).strftime('%Y%m%dT%H%M%SZ')}",
            UNVERIFIED.signature_status,
        )
    signed = m["signed"].split(";")
    if "host" not in signed:
        raise AwsError(
            "InvalidSignatureException",
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            UNVERIFIED.signature_status,
        )
    headers = {h: request.headers.get(h, "") for h in signed}
    raw_path = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    url = f"https://{request.headers.get('host', '')}{raw_path.decode()}" + (
        f"?{query.decode()}" if query else ""
    )
    aws_request = AWSRequest(method=request.method, url=url, headers=headers, data=body)
    aws_request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(key_id, credentials_of(tenant)[1]), SERVICE, REGION)
    canonical = signer.canonical_request(aws_request)
    expected = signer.signature(signer.string_to_sign(aws_request, canonical), aws_request)
    if expected != m["sig"]:
        raise AwsError(
            "InvalidSignatureException",
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
            UNVERIFIED.signature_status,
        )
    return key


# -- the endpoint --------------------------------------------------------------------------
def _answer(payload: dict[str, Any], status: int = 200) -> Response:
    return Response(
        json.dumps(payload),
        status_code=status,
        media_type=CONTENT_TYPE,
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def _error(exc: AwsError) -> Response:
    response = _answer({"__type": exc.code, "Message": exc.message}, exc.status)
    response.headers["x-amzn-ErrorType"] = exc.code
    return response


def _redacted(params: dict[str, Any]) -> dict[str, Any]:
    return {k: ("[redacted]" if k == "Password" else v) for k, v in params.items()}


async def workmail_api(request: Request) -> Response:
    ctx = ctx_of(request)
    body = await request.body()
    try:
        return _error_or(ctx, request, body)
    except AwsError as exc:
        return _error(exc)


def _error_or(ctx: SandboxContext, request: Request, body: bytes) -> Response:
    key = authenticate(ctx, request, body)
    target = request.headers.get("x-amz-target", "")
    op = target[len(TARGET_PREFIX) :] if target.startswith(TARGET_PREFIX) else ""
    if op not in OPERATIONS:
        raise AwsError("UnknownOperationException", "", 400)
    try:
        params = json.loads(body or b"{}")
    except ValueError:
        raise AwsError(
            "SerializationException", "Start of structure or map found where not expected."
        ) from None
    model = service_model().operation_model(op)
    problems = check_input(model.input_shape, params) if model.input_shape is not None else []
    if problems:
        n = len(problems)
        raise AwsError(
            UNVERIFIED.validation_code,
            f"{n} validation error{'s' if n > 1 else ''} detected: " + "; ".join(problems),
        )
    # Profile chaos: a seeded share of calls fail as AWS fails them transiently (a dropped
    # connection is answered as ServiceUnavailable here: the face answers whole responses).
    fault = ctx.limiter.chaos()
    if fault == "throttle":
        raise AwsError(UNVERIFIED.throttling_code, "Rate exceeded")
    if fault is not None:
        raise AwsError("ServiceUnavailable", "Service Unavailable", 503)
    with ctx.world.lock:
        pending = int(ctx.extra.get(THROTTLE_KEY, 0))
        if pending > 0:
            ctx.extra[THROTTLE_KEY] = pending - 1
            raise AwsError(UNVERIFIED.throttling_code, "Rate exceeded")
        tenant = ctx.world.tenants[key]
        ctx.extra.setdefault(CALLS_KEY, []).append((op, _redacted(params)))
        try:
            result = OPERATIONS[op](Call(ctx, key, tenant, params))
        except AwsError as exc:
            modelled = {e.name for e in model.error_shapes}
            if exc.code not in modelled | COMMON_ERRORS:
                ctx.extra.setdefault(ERRORS_KEY, []).append(
                    f"{op}: error {exc.code} not in the model"
                )
            raise
    wrong = check_output(model.output_shape, result) if model.output_shape is not None else []
    if wrong:
        ctx.extra.setdefault(ERRORS_KEY, []).append(f"{op}: {'; '.join(wrong)}")
        raise AwsError(
            "InternalFailure",
            "The request processing has failed because of an unknown error, exception or failure.",
            500,
        )
    return _answer(result)


def routes() -> list[BaseRoute]:
    # boto3 posts to the endpoint URL's path plus the operation's requestUri ("/").
    return [
        Route(WORKMAIL_PATH, workmail_api, methods=["POST"]),
        Route(f"{WORKMAIL_PATH}/", workmail_api, methods=["POST"]),
    ]
