"""How Exchange Online's admin REST endpoint fails, kept in one place.

Sources (public captures; every guess is marked *unverified*):
- graph2otel `internal/exoclient` fixtures, live 2026-07: binding errors are HTTP 400
  `{"code": "BadRequest", "message": "Invalid Operation"}` with the real text in
  `details[0].message` as `|<type>|<text>` and in `innererror.internalexception`; an
  unknown parameter is `AmbiguousParameterSetException`. Without Exchange.ManageAsApp
  the call is 401; with the app role but no Entra admin role it is 403, and a 403
  (missing role, or a cmdlet the caller's roles do not grant or that does not exist)
  has a body of NUL bytes, not JSON.
- Microsoft Q&A 2023 capture of a failing Remove-Mailbox: a cmdlet error is
  `{"code": "NotFound", "message": "Error executing cmdlet", "details": [{"code":
  "Client", "message": "Ex6F9304|Microsoft.Exchange.Configuration.Tasks.
  ManagementObjectNotFoundException|The operation couldn't be performed because object
  'x' couldn't be found on '<DC FQDN>'."}], "innererror": {..., "internalexception":
  {"type": "...DirectInvokeCmdletExecutionException"}}}`.
- Microsoft Q&A 1023619: an expired next link is 400 "Expired or Invalid pagination
  request. Default Expiry time is 00:30:00" (System.Exception).
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from ..web import exo_error

CMDLET_FAILED = "Error executing cmdlet"
INVALID_OPERATION = "Invalid Operation"
DIRECT_INVOKE = "Microsoft.Exchange.Management.PSDirectInvoke.DirectInvokeCmdletExecutionException"
AMBIGUOUS_SET = "Microsoft.Exchange.AdminApi.CommandInvocation.AmbiguousParameterSetException"
# *unverified*: the AdminApi type for a missing mandatory parameter.
BINDING = "System.Management.Automation.ParameterBindingException"
VALIDATION = "System.Management.Automation.ParameterBindingValidationException"
NOT_FOUND = "Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException"
AMBIGUOUS_OBJECT = "Microsoft.Exchange.Configuration.Tasks.ManagementObjectAmbiguousException"
PROXY_EXISTS = "Microsoft.Exchange.Data.ProxyAddressExistsException"
NAME_EXISTS = "Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException"  # *unverified*
NOT_ACCEPTED_DOMAIN = "Microsoft.Exchange.Data.Directory.NotAcceptedDomainException"
DATA_VALIDATION = "Microsoft.Exchange.Data.DataValidationException"
INVALID_OPERATION_EX = "System.InvalidOperationException"
TASK_ARGUMENT = "Microsoft.Exchange.Configuration.Tasks.TaskArgumentException"
# Error ids seen in the captures (the hex id is per message in Exchange).
NOT_FOUND_ID = "Ex6F9304"

# A "server" name for messages that quote the directory server (e.g. not found).
DC_FQDN = "SB1PR01A001DC001.SANDBOX01.PROD.OUTLOOK.COM"

# Public clients page with Prefer: odata.maxpagesize=1000; without it the service pages
# by 100 (ExoHelper Invoke-ExoCommand "Default is 100"; christophwille/talkingtoexorestapi
# "Default page size without this is 100").
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
NEXT_LINK_TTL_S = 30 * 60
NUL_BODY = b"\x00" * 4096  # length *unverified* ("a long run of NUL bytes")


class CmdletError(Exception):
    """A cmdlet failed the way Exchange Online reports cmdlet errors."""

    def __init__(
        self,
        message: str,
        exception_type: str,
        *,
        status: int = 400,
        error_id: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.exception_type = exception_type
        self.status = status
        self.error_id = error_id

    def response(self, request: Request | None) -> Response:
        code = {400: "BadRequest", 404: "NotFound", 500: "InternalServerError"}.get(
            self.status, "BadRequest"
        )
        return exo_error(
            self.status,
            code,
            self.message,
            request,
            outer_message=CMDLET_FAILED,
            exception_type=self.exception_type,
            error_id=self.error_id,
            internal_message=f"Exception of type '{DIRECT_INVOKE}' was thrown.",
            internal_type=DIRECT_INVOKE,
        )


@dataclass
class BindingError(Exception):
    """The AdminApi layer refused the call before running the cmdlet (HTTP 400)."""

    message: str
    exception_type: str = AMBIGUOUS_SET

    def response(self, request: Request | None) -> Response:
        return exo_error(
            400,
            "BadRequest",
            self.message,
            request,
            outer_message=INVALID_OPERATION,
            exception_type=self.exception_type,
        )


def not_found(identity: str) -> CmdletError:
    return CmdletError(
        f"The operation couldn't be performed because object '{identity}' couldn't be found "
        f"on '{DC_FQDN}'.",
        NOT_FOUND,
        status=404,
        error_id=NOT_FOUND_ID,
    )


def ambiguous_identity(identity: str) -> CmdletError:
    return CmdletError(
        f"The operation couldn't be performed because '{identity}' matches multiple entries.",
        AMBIGUOUS_OBJECT,
    )


def proxy_exists(proxy: str, owner_name: str) -> CmdletError:
    # Text: Microsoft's shared-mailbox troubleshooting page and RecipientTaskHelper.
    return CmdletError(
        f'The proxy address "{proxy}" is already being used by the proxy addresses or '
        f'LegacyExchangeDN of "{owner_name}". Please choose another proxy address.',
        PROXY_EXISTS,
    )


def name_exists(name: str) -> CmdletError:
    # Text: Microsoft's "name is already being used" troubleshooting article.
    return CmdletError(
        f'The name "{name}" is already being used. Please try another name.', NAME_EXISTS
    )


def not_accepted_domain(domain: str) -> CmdletError:
    return CmdletError(
        f"You can't use the domain {domain} because it's not an accepted domain for your "
        "organization.",
        NOT_ACCEPTED_DOMAIN,
    )


def too_long(parameter: str, value: str, limit: int) -> BindingError:
    # PowerShell's ValidateLength message.
    return BindingError(
        f"Cannot validate argument on parameter '{parameter}'. The character length of the "
        f"{len(value)} argument is too long. Shorten the character length of the argument so "
        f'it is fewer than or equal to "{limit}" characters, and then try the command again.',
        VALIDATION,
    )


def invalid_value(parameter: str, value: object, reason: str) -> BindingError:
    return BindingError(
        f"Cannot process argument transformation on parameter '{parameter}'. Cannot convert "
        f'value "{value}": {reason}',
        "Microsoft.Exchange.AdminApi.CommandInvocation.ParameterTransformationException",
    )


def not_modeled(cmdlet: str, names: list[str]) -> BindingError:
    """A valid Exchange Online parameter the sandbox does not model: refuse, never fake it."""
    return BindingError(
        f"The sandbox does not model parameter(s) {', '.join(names)} of {cmdlet}; "
        "Exchange Online accepts them but this sandbox would ignore them, so it refuses.",
        "Coexist.Sandbox.NotModeledException",
    )


def expired_page() -> BindingError:
    return BindingError(
        "Expired or Invalid pagination request. Default Expiry time is 00:30:00",
        "System.Exception",
    )
