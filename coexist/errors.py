"""The one error tree of coexist.

    CoexistError                   every error the product raises on purpose
    ├── ConfigError                bad project settings: names file and key
    ├── InputError                 bad operator input (batch files, flags)
    ├── StorageError               the journal or a project file could not be written or
    │                              read (disk full, read-only, no permission, I/O error):
    │                              the run stops before its next tenant write
    ├── Busy                       another coexist command is writing to the same
    │                              project (or users) right now: names it, its PID and host
    └── RemoteError                an external system said no, or could not be reached
        ├── AuthenticationError    token could not be obtained / was rejected (401)
        ├── PermissionDenied       missing application permission or role (403)
        ├── NotFound               the object does not exist (yet: replication lag)
        ├── Conflict               an address or name is already taken
        ├── InvalidRequest         the service rejected the request as malformed (400)
        ├── NotReady               Microsoft 365 has not caught up yet (a mailbox still
        │                          provisioning, an object still replicating): the step
        │                          waits and is looked at again later, minutes not seconds
        ├── TLSError               the endpoint's certificate is not trusted, or the TLS
        │                          handshake failed: names the endpoint, the cause and the
        │                          setting that fixes it (`ca_file`); the run stops
        └── TransientError         throttling, 5xx, connection reset: retry later
            │                      (`retry_after` seconds when the service said so)
            └── Unreachable        no connection to the endpoint (name not resolved,
                                   connection refused, no answer): names the endpoint, the
                                   cause and the fix; retried, then the run stops

Foreign exceptions (httpx, azure-identity, kiota, SQLite/PostgreSQL, OSError) are mapped
to these at the boundary (`coexist.tenants.*`, `coexist.journal.db`, `coexist.batches`)
with `raise ... from exc`. Every error carries fields, and `next_step` says what the
operator can run next. An error whose class sets `stops_run` ends the whole command
(the runner does not record it against one user and go on: the cause is not the user's).
Secrets never appear in messages: `redact()` is applied to every text that came from
outside. Anything else that escapes a command is a bug: the CLI prints one line and the
path of the run's log file, which holds the traceback (`coexist.logs`).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

_SECRET_PATTERNS = [
    # Bearer tokens and JWTs
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"), r"\1[redacted]"),
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    # form fields and JSON members that carry secrets
    (
        re.compile(
            r"(?i)((?:client_secret|client_assertion|password|access_token|refresh_token)"
            r"[\"']?\s*[:=]\s*[\"']?)[^\"'&\s,}]+"
        ),
        r"\1[redacted]",
    ),
    # Pre-authenticated URLs: the query parameter is the credential (mailbox importUrl and
    # attachment uploadUrl carry `authtoken=`, graph/import-exchange-mailbox-item and
    # outlook-large-attachments; Azure SAS URLs carry `sig=`).
    (re.compile(r"(?i)([?&](?:authtoken|sig|code|token)=)[^&#\s\"']+"), r"\1[redacted]"),
    # A PEM private key (an app certificate file read by mistake into a message).
    (
        re.compile(r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----", re.S),
        "[redacted-private-key]",
    ),
]


def redact(text: str) -> str:
    """Remove tokens, secrets and passwords from a message that came from outside."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


class CoexistError(Exception):
    """Base of every deliberate coexist error."""

    # True: the whole command stops on this error (it is not one user's: the disk, the
    # network, a certificate); the runner re-raises it instead of failing a step.
    stops_run: ClassVar[bool] = False
    # The CLI's exit code: 2 means bad input (nothing changed), 1 that something failed.
    exit_code: ClassVar[int] = 2

    def __init__(self, message: str, *, next_step: str | None = None, **fields: Any) -> None:
        self.message = redact(message)
        self.next_step = next_step
        self.fields = fields
        super().__init__(self.message)

    def __str__(self) -> str:
        text = self.message
        if self.next_step:
            text += f"\n  next: {self.next_step}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "next_step": self.next_step,
            **{k: v for k, v in self.fields.items() if v is not None},
        }


class ConfigError(CoexistError):
    """Project settings are wrong; `file` and `key` say where."""

    def __init__(self, message: str, *, file: str, key: str | None = None, **kw: Any) -> None:
        where = f"{file}" + (f" [{key}]" if key else "")
        super().__init__(f"{where}: {message}", file=file, key=key, **kw)


class InputError(CoexistError):
    """Operator input (batch file, command-line) is wrong."""


class StorageError(CoexistError):
    """The journal or a project file could not be written or read: disk full, read-only
    file system or directory, no permission, an I/O error. `path` names the file (or the
    masked journal URL), `cause` what the system said. A failed journal write stops the
    run before its next tenant write, so nothing is left done but not journaled."""

    stops_run = True
    exit_code = 1

    def __init__(self, message: str, *, path: str, cause: str, **kw: Any) -> None:
        super().__init__(message, path=path, cause=cause, **kw)
        self.path = path
        self.cause = cause


class Busy(CoexistError):
    """Another coexist command holds what this one needs to write (`coexist.journal.claims`).

    Raised before this command writes anything; `holders` says who (command, PID, host,
    since when), so the operator can wait for it or find the process.
    """


class RemoteError(CoexistError):
    """An external system refused a request."""

    def __init__(
        self,
        message: str,
        *,
        service: str,
        code: str | None = None,
        status: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, service=service, code=code, status=status, **kw)
        self.service = service
        self.code = code
        self.status = status


class AuthenticationError(RemoteError):
    """No valid token: wrong secret/certificate, unknown app or tenant, expired token."""


class PermissionDenied(RemoteError):
    """The app lacks an application permission or admin role."""


class NotFound(RemoteError):
    """The object does not exist (or is not replicated yet)."""


class Conflict(RemoteError):
    """An address or name is already used by another object."""


class InvalidRequest(RemoteError):
    """The service rejected the request as invalid (a bug or bad input)."""


class NotReady(RemoteError):
    """The object is there but not ready yet; `reason` says what is awaited, without ids.

    Not retried in place: the runner records the step as `waiting` with a time to look
    again, and `coexist retry` (or the next run) continues it then.
    """

    def __init__(self, message: str, *, reason: str, **kw: Any) -> None:
        super().__init__(message, reason=reason, **kw)
        self.reason = reason


class _EndpointFailure(RemoteError):
    """An endpoint could not be used at all (not one request refused): `endpoint` names it,
    `cause` says what failed. Every other request to it would fail the same way, so the run
    stops. The common part of `TLSError` and `Unreachable`; not raised itself."""

    stops_run = True
    exit_code = 1

    def __init__(self, message: str, *, endpoint: str, cause: str, **kw: Any) -> None:
        super().__init__(message, endpoint=endpoint, cause=cause, **kw)
        self.endpoint = endpoint
        self.cause = cause


class TLSError(_EndpointFailure):
    """TLS to an endpoint failed: its certificate is not trusted (a TLS-inspecting proxy, a
    private CA, a sandbox served again with a new CA) or the handshake failed (not an HTTPS
    port). Retrying cannot help and verification is never turned off: the run stops."""


class TransientError(RemoteError):
    """Throttled or temporarily unavailable; retry after `retry_after` seconds if given.

    `retryable=False`: transient in kind, but the client library already retried it (the
    token endpoint, which azure-identity retries itself), so it is not retried again.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        retryable: bool = True,
        **kw: Any,
    ) -> None:
        super().__init__(message, retry_after=retry_after, **kw)
        self.retry_after = retry_after
        self.retryable = retryable


class Unreachable(_EndpointFailure, TransientError):
    """No connection to an endpoint: its name does not resolve, it refused the connection,
    or it did not answer in time. Retried like any transient failure; when the retries are
    spent the run stops (every other request to that endpoint would fail the same way)."""
