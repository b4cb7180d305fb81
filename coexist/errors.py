"""The one error tree of coexist.

    CoexistError                   every error the product raises on purpose
    ├── ConfigError                bad project settings: names file and key
    ├── InputError                 bad operator input (batch files, flags)
    ├── Busy                       another coexist command is writing to the same
    │                              project (or users) right now: names it, its PID and host
    └── RemoteError                an external system said no (service, code, status)
        ├── AuthenticationError    token could not be obtained / was rejected (401)
        ├── PermissionDenied       missing application permission or role (403)
        ├── NotFound               the object does not exist (yet: replication lag)
        ├── Conflict               an address or name is already taken
        ├── InvalidRequest         the service rejected the request as malformed (400)
        ├── NotReady               Microsoft 365 has not caught up yet (a mailbox still
        │                          provisioning, an object still replicating): the step
        │                          waits and is looked at again later, minutes not seconds
        └── TransientError         throttling, 5xx, connection reset: retry later
                                   (`retry_after` seconds when the service said so)

Foreign exceptions (httpx, azure-identity, kiota) are mapped to these at the
adapter boundary (`coexist.tenants.*`) with `raise ... from exc`. Every error
carries fields, and `next_step` says what the operator can run next.
Secrets never appear in messages: `redact()` is applied to every text that
came from outside.
"""

from __future__ import annotations

import re
from typing import Any

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
]


def redact(text: str) -> str:
    """Remove tokens, secrets and passwords from a message that came from outside."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


class CoexistError(Exception):
    """Base of every deliberate coexist error."""

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


class TransientError(RemoteError):
    """Throttled or temporarily unavailable; retry after `retry_after` seconds if given."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kw)
        self.retry_after = retry_after
