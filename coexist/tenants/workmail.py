"""Amazon WorkMail's admin API over boto3 (the only module that imports boto3).

WorkMail is AWS JSON 1.1 (`X-Amz-Target: WorkMailService.<Op>`, SigV4): boto3's `workmail`
client speaks it. This adapter gives the rest of coexist the few operations a migration needs
(list organisations, users, create and register users, aliases, mailbox permissions for the
migration account), each as an awaitable call whose SDK work runs in a thread.

- Endpoint: AWS's own for the region (boto3's default), or `endpoint_url` (the sandbox);
  certificates are always verified, against `ca_file` where one is given (boto3 `verify=`).
- Credentials: the access key id from the settings or environment, its secret from the
  project's credential vault or the environment; handed to boto3's session only, never
  logged, never in an error (errors come from AWS's answer, which never carries it).
- Retries: boto3's own retrying is off (`total_max_attempts=1`): a throttled or failed read
  is retried by coexist's injected RetryPolicy (`read_retry`), a write by the engine, which
  re-observes first, as for every other adapter (DESIGN.md "Adapters and errors").
- Plan mode: a write is recorded with its parameters (passwords redacted) and not sent;
  reads are sent, so the plan reflects the organisation as it is.
- Errors: AWS's codes are mapped to coexist's error tree (`map_error`) with what to run next.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import boto3
from botocore import xform_name
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from coexist.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    NotReady,
    PermissionDenied,
    RemoteError,
    TransientError,
)
from coexist.retry import RetryPolicy

from .base import READ_RETRY, connection_error
from .plan import WriteRecorder, before_write, redact_secrets

log = logging.getLogger(__name__)
SERVICE = "workmail"
# Operations that change the organisation: recorded in plan mode, never retried in place.
WRITES = frozenset(
    {
        "CreateUser",
        "RegisterToWorkMail",
        "CreateAlias",
        "DeleteAlias",
        "PutMailboxPermissions",
        "DeleteMailboxPermissions",
        "DeregisterFromWorkMail",
        "DeleteUser",
        "ResetPassword",
    }
)
# What a planned CreateUser "returns": later planned writes name the user by it.
PLANNED_ID = "(planned)"
FULL_ACCESS = "FULL_ACCESS"
PAGE = 100  # MaxResults' maximum in the model (ListUsers, ListAliases, ...)

# AWS error codes -> (coexist error, what to do). Throttling is AWS's common code (botocore
# retryhandler's throttling list); 5xx codes are AWS's generic ones.
_TRANSIENT = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "InternalFailure",
        "ServiceUnavailable",
        "DirectoryUnavailableException",
    }
)
_NOT_FOUND = frozenset(
    {"EntityNotFoundException", "OrganizationNotFoundException", "MailDomainNotFoundException"}
)
_CONFLICT = frozenset(
    {
        "NameAvailabilityException",
        "EmailAddressInUseException",
        "EntityAlreadyRegisteredException",
        "ReservedNameException",
    }
)
_AUTH = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignatureException",
        "MissingAuthenticationTokenException",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "ExpiredTokenException",
        "DirectoryServiceAuthenticationFailedException",
    }
)


@dataclass(frozen=True)
class WorkMailEndpoint:
    """Where and as whom: region, organisation, endpoint (None: AWS's), CA bundle, key id."""

    region: str
    organization_id: str
    access_key_id: str
    endpoint_url: str | None = None
    ca_file: str | None = None
    side: str = "target"

    @property
    def url(self) -> str:
        return self.endpoint_url or f"https://workmail.{self.region}.amazonaws.com"


def map_error(exc: ClientError, operation: str, ep: WorkMailEndpoint) -> RemoteError:
    """The coexist error for an AWS error answer, naming the operation and what to do."""
    err = exc.response.get("Error") or {}
    code = str(err.get("Code") or "")
    message = str(err.get("Message") or code or "error")
    status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
    text = f"WorkMail {operation}: {message} ({code})"
    kw: dict[str, Any] = {
        "service": SERVICE,
        "code": code,
        "status": status,
        "operation": operation,
    }
    side = ep.side
    if code in _TRANSIENT or status >= 500:
        return TransientError(text, **kw)
    if code in _AUTH:
        return AuthenticationError(
            text,
            next_step=f"check [{side}.workmail] access_key_id ({ep.access_key_id}) and its secret "
            f"(coexist credentials, or AWS_SECRET_ACCESS_KEY) and region {ep.region}; then run "
            "the command again",
            **kw,
        )
    if code in ("AccessDeniedException", "AccessDenied"):
        return PermissionDenied(
            text,
            next_step="give the access key's IAM identity the workmail:* actions this command "
            f"uses ({operation}) on organisation {ep.organization_id}",
            **kw,
        )
    if code in _NOT_FOUND:
        next_step = (
            f"check [{side}.workmail] organization_id ({ep.organization_id}) and region"
            if code == "OrganizationNotFoundException"
            else "add the domain to the WorkMail organisation (Domains) or fix the address"
            if code == "MailDomainNotFoundException"
            else None
        )
        return NotFound(text, next_step=next_step, **kw)
    if code in _CONFLICT:
        return Conflict(
            text,
            next_step="the name or address belongs to another WorkMail user, group or "
            "resource: rename it there, or change the user's target address in the batch file",
            **kw,
        )
    if code == "OrganizationStateException":
        return NotReady(text, reason="the WorkMail organisation is not active yet", **kw)
    if code == "LimitExceededException":
        # A quota (e.g. aliases per user), not a rate: waiting does not lift it.
        return InvalidRequest(
            text, next_step="raise the WorkMail quota (Service Quotas) or remove entries", **kw
        )
    return InvalidRequest(text, **kw)


class WorkMailAdmin:
    """One WorkMail organisation's admin API: `await call(Operation, **params) -> dict`."""

    service = SERVICE

    def __init__(
        self,
        ep: WorkMailEndpoint,
        secret_access_key: str,
        *,
        label: str = "target",
        plan: WriteRecorder | None = None,
        read_retry: RetryPolicy = READ_RETRY,
        timeout: float = 60.0,
        concurrency: int = 8,
    ) -> None:
        self.ep = ep
        self.label = label
        self.plan = plan
        self.read_retry = read_retry
        self.calls = 0
        self.writes = 0
        session = boto3.session.Session(
            aws_access_key_id=ep.access_key_id,
            aws_secret_access_key=secret_access_key,
            region_name=ep.region,
        )
        self._client = session.client(
            SERVICE,
            endpoint_url=ep.endpoint_url,
            verify=ep.ca_file or True,
            config=Config(
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=timeout,
                read_timeout=timeout,
                max_pool_connections=concurrency,
            ),
        )

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    async def call(self, operation: str, **params: Any) -> dict[str, Any]:
        """One operation (the organisation id is added); a write in plan mode is recorded."""
        params = {"OrganizationId": self.ep.organization_id, **params}
        if operation == "ListOrganizations":
            params.pop("OrganizationId")
        log.debug("%s WorkMail %s %s", self.label, operation, redact_secrets(params))  # -v
        if operation in WRITES:
            if self.plan is not None:
                self.plan.record(SERVICE, self.label, operation, params)
                return {"UserId": PLANNED_ID} if operation == "CreateUser" else {}
            before_write()
            out = await self._send(operation, params)
            self.writes += 1
            return out
        return await self.read_retry.call(lambda: self._send(operation, params))

    async def _send(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        self.calls += 1
        method = getattr(self._client, xform_name(operation))
        try:
            answer: dict[str, Any] = await asyncio.to_thread(method, **params)
        except ClientError as exc:
            raise map_error(exc, operation, self.ep) from None
        except BotoCoreError as exc:
            raise connection_error(
                exc,
                service=SERVICE,
                who="the Amazon WorkMail API",
                url=self.ep.url,
                setting="workmail endpoint / region",
                side=self.label,
                what=operation,
            ) from exc
        answer.pop("ResponseMetadata", None)
        plain: dict[str, Any] = _plain(answer)
        return plain

    async def pages(self, operation: str, key: str, **params: Any) -> list[Any]:
        """Every entry of a paged List* operation."""
        out: list[Any] = []
        token: str | None = None
        while True:
            extra = {"NextToken": token} if token else {}
            page = await self.call(operation, MaxResults=PAGE, **params, **extra)
            out.extend(page.get(key) or [])
            token = page.get("NextToken")
            if not token:
                return out

    # -- what provisioning uses ------------------------------------------------------------
    async def organization(self) -> dict[str, Any]:
        return await self.call("DescribeOrganization")

    async def users(self) -> list[dict[str, Any]]:
        users: list[dict[str, Any]] = await self.pages("ListUsers", "Users")
        return users

    async def find_user(self, *names: str) -> dict[str, Any] | None:
        """The user (ListUsers summary) whose email or name is one of `names` (any case);
        None if there is none. A user being deleted does not count."""
        wanted = {n.lower() for n in names if n}
        for u in await self.users():
            if u.get("State") == "DELETED":
                continue
            if str(u.get("Email") or "").lower() in wanted or str(u.get("Name")).lower() in wanted:
                return u
        return None

    async def aliases(self, entity_id: str) -> list[str]:
        return [a.lower() for a in await self.pages("ListAliases", "Aliases", EntityId=entity_id)]

    async def permissions(self, entity_id: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = await self.pages(
            "ListMailboxPermissions", "Permissions", EntityId=entity_id
        )
        return found


def _plain(value: Any) -> Any:
    """boto3's answer as JSON data: its timestamps (datetime) as ISO 8601 text, so an answer
    can go into the journal as a step's observed state."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return value


def secret_from(
    vault_secret: str | None, env: Mapping[str, str], env_name: str = "AWS_SECRET_ACCESS_KEY"
) -> str | None:
    """The secret access key: the vault's, else the environment's (boto3's own variable)."""
    return vault_secret or env.get(env_name) or None
