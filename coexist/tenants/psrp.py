"""On-premises/hosted Exchange cmdlets over remote PowerShell (pypsrp): a `CmdletRunner`.

Exchange's remote PowerShell is WinRM at `https://<server>/PowerShell`, configuration
`Microsoft.Exchange`, in NoLanguage mode: only commands with parameters run, a script is
refused (FACTS.md "On-prem Exchange cmdlets via pypsrp"). So every call is
`add_cmdlet(name)` + `add_parameter(k, v)`, never `add_script`. `run()` answers the same
dicts as the Exchange Online runner (`tenants/exo.py`: an object's properties by name), so
provisioning and cutover steps use either unchanged.

pypsrp is synchronous: each call runs in a worker thread. One runspace pool is opened on
first use and reused by every `run()` of this runner (opening one costs a WinRM Create plus
the PSRP negotiation); `close()` deletes it. Calls on one pool are serialised (a pool holds
one runspace here, as pypsrp opens it by default).

Errors: a cmdlet writes ErrorRecords (non-terminating) or fails the pipeline (binding,
script, unknown cmdlet); both land in `streams.error`. They are mapped to coexist's error
tree by exception type / FullyQualifiedErrorId, each with the command to run next.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, cast

import requests
from pypsrp.exceptions import AuthenticationError as PsrpAuthError
from pypsrp.exceptions import WinRMError, WinRMTransportError, WSManFaultError
from pypsrp.powershell import PowerShell, RunspacePool
from pypsrp.wsman import WSMan

from coexist.errors import (
    AuthenticationError,
    Conflict,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RemoteError,
    TLSError,
    TransientError,
    Unreachable,
)
from coexist.exospec import SpecViolation, resolve_parameter_set

from .plan import WriteRecorder, before_write, is_write_cmdlet, redact_secrets

CONFIGURATION = "Microsoft.Exchange"
SERVICE = "exchange"
AUTHS = ("kerberos", "negotiate", "ntlm", "basic")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PsrpEndpoint:
    """Where Exchange's remote PowerShell answers: `https://server:port/path`."""

    server: str
    port: int = 443
    path: str = "PowerShell"
    auth: str = "negotiate"
    ca_file: str | None = None  # None: the system's trust store; verification is never off
    label: str = "source"

    @property
    def url(self) -> str:
        return f"https://{self.server}:{self.port}/{self.path}"


@dataclass
class PsrpLogin:
    """The admin account (`user@domain` or `DOMAIN\\user`); its password never shows."""

    username: str
    password: str = field(repr=False)


class PsrpRunner:
    """Runs Exchange cmdlets over WinRM/PSRP: `await run(name, **params) -> list[dict]`."""

    service = "Exchange"

    def __init__(
        self,
        ep: PsrpEndpoint,
        login: PsrpLogin,
        *,
        plan: WriteRecorder | None = None,
        connection_timeout: int = 30,
        read_timeout: int = 900,
    ) -> None:
        if ep.auth not in AUTHS:
            raise ValueError(f"auth must be one of {', '.join(AUTHS)}, not {ep.auth!r}")
        self.ep = ep
        self.login = login
        self.plan = plan
        self.label = ep.label
        self.connection_timeout = connection_timeout
        # A cmdlet runs for at most 15 minutes server-side (as in exo.py); a Receive waits.
        self.read_timeout = read_timeout
        self.calls = 0
        self.writes = 0
        self._pool: RunspacePool | None = None
        self._lock = threading.Lock()

    # -- public -----------------------------------------------------------------------
    async def run(self, cmdlet: str, **params: Any) -> list[dict[str, Any]]:
        """Run one cmdlet; in plan mode a write is checked and recorded, not sent."""
        log.debug("%s %s %s", self.label, cmdlet, redact_secrets(params))
        if is_write_cmdlet(cmdlet):
            if self.plan is not None:
                self._check(cmdlet, params)
                self.plan.record(SERVICE, self.label, cmdlet, params)
                return []
            before_write()
        return await asyncio.to_thread(self._run_sync, cmdlet, params)

    async def close(self) -> None:
        await asyncio.to_thread(self._close_sync)

    async def __aenter__(self) -> PsrpRunner:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- worker thread ----------------------------------------------------------------
    def _run_sync(self, cmdlet: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self._lock:
            try:
                pool = self._open()
                ps = PowerShell(pool)
                ps.add_cmdlet(cmdlet)
                for name, value in params.items():
                    ps.add_parameter(name, ps_value(value))
                self.calls += 1
                output = ps.invoke()
            except Exception as exc:
                failure = self._transport_error(exc, cmdlet)
                if failure is None:
                    raise
                self._discard()
                raise failure from exc
            if ps.streams.error:
                raise map_error(ps.streams.error[0], cmdlet)
            if is_write_cmdlet(cmdlet):
                self.writes += 1
            return [to_dict(o) for o in output]

    def _open(self) -> RunspacePool:
        if self._pool is None:
            wsman = WSMan(
                self.ep.server,
                port=self.ep.port,
                path=self.ep.path,
                auth=self.ep.auth,
                username=self.login.username,
                password=self.login.password,
                ssl=True,
                # pypsrp documents a CA bundle path here (it becomes requests' `verify`);
                # its annotation says bool only.
                cert_validation=cast(bool, self.ep.ca_file or True),
                connection_timeout=self.connection_timeout,
                read_timeout=self.read_timeout,
            )
            pool = RunspacePool(wsman, configuration_name=CONFIGURATION)
            pool.open()
            self._pool = pool
        return self._pool

    def _discard(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                pool.connection.close()
            except Exception:  # a broken connection is being dropped anyway
                log.debug("closing a failed WinRM session", exc_info=True)

    def _close_sync(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
            if pool is None:
                return
            try:
                pool.close()
            except (WinRMError, requests.RequestException):
                log.debug("closing the runspace pool", exc_info=True)
            finally:
                pool.connection.close()

    def _check(self, cmdlet: str, params: dict[str, Any]) -> None:
        """Plan mode: refuse a call on-premises Exchange would refuse at binding."""
        try:
            resolve_parameter_set(cmdlet, params, "onprem")
        except SpecViolation as v:
            raise InvalidRequest(
                f"{cmdlet}: {v.message}",
                service=SERVICE,
                cmdlet=cmdlet,
                next_step="fix the parameters (on-premises Exchange has no "
                "Exchange-Online-only parameter), then run the command again",
            ) from v

    def _transport_error(self, exc: Exception, cmdlet: str) -> RemoteError | None:
        url = self.ep.url
        kw: dict[str, Any] = {"service": SERVICE, "cmdlet": cmdlet}
        if isinstance(exc, PsrpAuthError):
            return AuthenticationError(
                f"{cmdlet}: {url} refused the credentials of {self.login.username} "
                f"({self.ep.auth} authentication, HTTP 401)",
                status=401,
                next_step="check the admin account and its password (coexist credentials "
                "set), and that the server offers this authentication on /PowerShell",
                **kw,
            )
        if isinstance(exc, requests.exceptions.SSLError):
            return TLSError(
                f"{cmdlet}: the certificate of {url} is not trusted",
                endpoint=url,
                cause=str(exc)[:300],
                next_step="set ca_file to the CA that issued the server's certificate",
                **kw,
            )
        if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
            return Unreachable(
                f"{cmdlet}: no connection to {url}",
                endpoint=url,
                cause=str(exc)[:300],
                next_step="check the server name, port and firewall, then run again",
                **kw,
            )
        if isinstance(exc, WSManFaultError):
            return InvalidRequest(
                f"{cmdlet}: WinRM fault {exc.code}: {exc.reason}",
                code=str(exc.code),
                next_step=f"check that {url} is Exchange's remote PowerShell endpoint "
                f"(configuration {CONFIGURATION})",
                **kw,
            )
        if isinstance(exc, WinRMTransportError):
            status = exc.code
            if status in (429, 500, 502, 503, 504):
                return TransientError(f"{cmdlet}: HTTP {status} from {url}", status=status, **kw)
            return InvalidRequest(f"{cmdlet}: HTTP {status} from {url}", status=status, **kw)
        return None


# -- values both ways -----------------------------------------------------------------
def ps_value(value: Any) -> Any:
    """A parameter value pypsrp can serialise: the REST runner's `@odata.type` tags dropped."""
    if isinstance(value, dict):
        return {k: ps_value(v) for k, v in value.items() if not str(k).startswith("@")}
    if isinstance(value, list | tuple):
        return [ps_value(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    scalar = _json_scalar(value)
    if scalar is not _NOT_SCALAR:
        return scalar
    props = getattr(value, "adapted_properties", None)
    if props is not None:
        if not props and not getattr(value, "extended_properties", None):
            text = getattr(value, "to_string", None)
            return text if text is not None else None
        return to_dict(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


_NOT_SCALAR = object()


def _json_scalar(value: Any) -> Any:
    """A CLIXML primitive pypsrp hands back as a Python type JSON lacks, as JSON text.

    pypsrp's deserializer gives DateTime, TimeSpan and Decimal as their text but a Guid
    (<G>) as `uuid.UUID` and a byte[] (<BA>) as `bytes`, and a real Exchange server's
    objects carry both (Get-Mailbox: ExchangeGuid, Guid, ArchiveGuid…), while what a step
    observes is journaled as JSON (`journal.guard`): the GUID's text, base64."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(bytes(value)).decode("ascii")
    return _NOT_SCALAR


def to_dict(obj: Any) -> dict[str, Any]:
    """An output object as the dict the Exchange Online runner returns (properties by name)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    out: dict[str, Any] = {}
    for source in (getattr(obj, "adapted_properties", {}), getattr(obj, "extended_properties", {})):
        for k, v in (source or {}).items():
            out[str(k)] = _plain(v)
    if not out and obj is not None:
        out["Value"] = str(obj)
    return out


# -- errors ---------------------------------------------------------------------------
def _exception_type(record: Any) -> str:
    types = getattr(getattr(record, "exception", None), "types", None) or []
    return str(types[0]) if types else str(getattr(record, "reason", "") or "")


def _message(record: Any) -> str:
    exc = getattr(record, "exception", None)
    props = getattr(exc, "adapted_properties", None) or {}
    return str(props.get("Message") or getattr(record, "message", "") or "")


def map_error(record: Any, cmdlet: str) -> RemoteError:
    """An ErrorRecord → coexist's error tree, with what to run next."""
    etype = _exception_type(record)
    fqid = str(getattr(record, "fq_error", "") or "")
    message = f"{cmdlet}: {_message(record)}"
    kw: dict[str, Any] = {
        "service": SERVICE,
        "cmdlet": cmdlet,
        "exception_type": etype,
        "code": fqid.rsplit("] ", 1)[-1][:200] or None,
    }
    short = etype.rsplit(".", 1)[-1]
    if short == "ManagementObjectNotFoundException":
        return NotFound(message, **kw)
    if short in ("ProxyAddressExistsException", "ADObjectAlreadyExistsException") or (
        "already being used" in message
    ):
        return Conflict(message, **kw)
    if short == "CommandNotFoundException":
        return PermissionDenied(
            f"{cmdlet}: the account's Exchange roles do not include this cmdlet "
            "(Exchange hides cmdlets a role does not grant)",
            next_step="add the admin account to the Organization Management (or Recipient "
            "Management) role group on the Exchange server, then run again",
            **kw,
        )
    if short == "ParseException" or fqid == "ScriptsNotAllowed":
        return InvalidRequest(
            message,
            next_step="this is a coexist bug: Exchange's endpoint runs no scripts (report it)",
            **kw,
        )
    if short.startswith("ParameterBinding"):
        return InvalidRequest(
            message,
            next_step="fix the parameters for on-premises Exchange (`coexist ... --plan` checks "
            "them against the cmdlet reference), then run again",
            **kw,
        )
    return InvalidRequest(message, **kw)
