"""Plan mode at the adapter boundary, like alembic's offline SQL mode.

The same apply code runs; an adapter with a `WriteRecorder` describes each
write (cmdlet with parameters, Graph request) instead of sending it. Reads are
still sent, so the plan reflects the live state. The engine sets
`current_step` so every planned write names the step that wanted it.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

current_step: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "coexist_current_step", default=None
)
# Called by an adapter right before it sends a write. The engine uses it to journal a
# step as `started` (with its intent) just before the step's first write, so a step
# that finds nothing to change leaves the journal, and its recorded before-state, alone.
write_hook: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar(
    "coexist_write_hook", default=None
)


def before_write() -> None:
    hook = write_hook.get()
    if hook is not None:
        hook()


MAIL = "mail"  # PlannedWrite.system of a planned pass's summary (what it would do, said once)

# Cmdlet verbs that only read. Everything else (New-, Set-, Add-, Remove-,
# Enable-, ...) is a write and is captured in plan mode.
READ_VERBS = ("Get-", "Test-")


def is_write_cmdlet(cmdlet: str) -> bool:
    return not cmdlet.startswith(READ_VERBS)


@dataclass(frozen=True)
class PlannedWrite:
    system: str  # "exchange" | "graph" | "imap" | "mail" (a planned pass's summary line)
    tenant: str  # "source" | "target" (or a tenant id)
    operation: str  # cmdlet name, or "PATCH /users/{id}"
    params: dict[str, Any]
    step: str | None

    def describe(self) -> str:
        """The write as an operator would type it: a cmdlet line, or a Graph request with
        its JSON body. Plain text: a renderer must escape it (`[target]`, `[redacted]`)."""
        if self.system == MAIL:
            return f"[{self.tenant}] {self.operation}"
        if self.system == "exchange":
            args = " ".join(f"-{k} {_ps(v)}" for k, v in self.params.items())
            return f"[{self.tenant}] {self.operation} {args}".rstrip()
        body = json.dumps(self.params, ensure_ascii=False, default=str)
        return f"[{self.tenant}] {self.operation} {body}"


# Where a planned data pass collects its writes (`migrate.planpass`): a pass records one
# write per message (an APPEND, a Graph POST with the message's body), which the plan shows
# summed up per folder instead. Set inside the pass's task, so only its writes go there.
captured: contextvars.ContextVar[list[PlannedWrite] | None] = contextvars.ContextVar(
    "coexist_captured_writes", default=None
)


def _ps(value: Any) -> str:
    """A parameter value in PowerShell syntax.

    A None parameter *is* sent, as JSON null, and clears the property: it prints as
    `$null`, the way an operator clears it, never as Python's `None` (Set-Mailbox
    reference, -ForwardingAddress / -ForwardingSmtpAddress: "blank ($null), which means
    no forwarding ... is configured"). A parameter coexist does not mean to set is never
    passed to the adapter, so a plan never shows it.
    """
    if value is None:
        return "$null"
    if isinstance(value, bool):
        return "$true" if value else "$false"
    if isinstance(value, dict) and value.get("@odata.type") == "#Exchange.GenericHashTable":
        parts = [f"{k}={_ps(v)}" for k, v in value.items() if not k.startswith("@")]
        return "@{" + "; ".join(parts) + "}"
    if isinstance(value, list):
        return ",".join(_ps(v) for v in value)
    text = str(value)
    return f"'{text}'" if any(c in text for c in " ,;'@{}") else text


@dataclass
class WriteRecorder:
    """Collects the writes a plan-mode run would have sent."""

    writes: list[PlannedWrite] = field(default_factory=list)

    def record(self, system: str, tenant: str, operation: str, params: dict[str, Any]) -> None:
        # Redacted here, not when printed: a planned write's text (`describe`) and any
        # other rendering of it must never carry a password, even a generated one.
        write = PlannedWrite(system, tenant, operation, redact_secrets(params), current_step.get())
        into = captured.get()
        (self.writes if into is None else into).append(write)


REDACTED = "[redacted]"


def redact_secrets(params: dict[str, Any]) -> dict[str, Any]:
    """A copy with every `password` value (at any depth, e.g. Graph passwordProfile) redacted."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: REDACTED if str(k).lower() == "password" else clean(v) for k, v in value.items()
            }
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    cleaned: dict[str, Any] = clean(params)
    return cleaned
