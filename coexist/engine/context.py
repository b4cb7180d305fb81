"""What executors get: the project, the journal, and both tenants' adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from coexist.errors import ConfigError
from coexist.retry import RetryPolicy
from coexist.tenants.auth import TenantEndpoint
from coexist.tenants.base import READ_RETRY
from coexist.tenants.exo import ExoRunner
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.mailbox_governor import MailboxLimits
from coexist.tenants.plan import WriteRecorder
from coexist.tenants.throttle import WriteBudget, WriteLimits

# What each endpoint kind offers a phase (DESIGN.md "Endpoint kinds"): a directory (who
# exists; recipients created and forwarded), Exchange cmdlets, a mailbox store (folders and
# items). An IMAP server is a store only: its users come from a batch file, and its cutover
# is an MX change, not a forward.
DIRECTORY, CMDLETS, STORE = "directory", "cmdlets", "store"
KIND_CAPABILITIES: dict[str, frozenset[str]] = {
    "m365": frozenset({DIRECTORY, CMDLETS, STORE}),
    "imap": frozenset({STORE}),
}
_BOTH = frozenset({DIRECTORY, CMDLETS})
# What each command asks of each side (a side not named: nothing).
COMMAND_NEEDS: dict[str, dict[str, frozenset[str]]] = {
    "discover": {"source": frozenset({DIRECTORY}), "target": frozenset({DIRECTORY})},
    "rediscover": {"source": frozenset({DIRECTORY}), "target": frozenset({DIRECTORY})},
    "groups": {"source": frozenset({DIRECTORY}), "target": _BOTH},
    "provision": {"source": frozenset({DIRECTORY}), "target": _BOTH},
    "preflight": {"source": frozenset({DIRECTORY}), "target": frozenset({DIRECTORY})},
    # Licensing target MailUsers (prestage.convert) is Microsoft 365's own step: it asks
    # the target's directory itself; a pass needs stores only (IMAP -> IMAP too).
    "prestage": {"source": frozenset({STORE}), "target": frozenset({STORE})},
    "cutover": {"source": _BOTH | {STORE}, "target": _BOTH | {STORE}},
    "rollback": {"source": _BOTH, "target": _BOTH},
    "verify-mailflow": {"source": frozenset({DIRECTORY}), "target": frozenset({DIRECTORY})},
    # Matching reads the target's directory; --create-missing also waits for the mailbox
    # through Exchange (Get-Recipient). The source's users are the journal's.
    "automatch": {"target": _BOTH},
}
# Why a kind lacks a capability, and what to do instead (for the error).
_INSTEAD = {
    ("imap", DIRECTORY): "its users come from a batch file: coexist batch import",
    ("imap", CMDLETS): "IMAP has no recipients or forwarding: its cutover is an MX change",
}
_SAID = {DIRECTORY: "a directory", CMDLETS: "Exchange cmdlets", STORE: "a mailbox store"}


def capability_missing(
    side: str, kind: str, capability: str, command: str | None, file: str = "project.toml"
) -> ConfigError:
    """The error for a command (or a step, `command` None) that needs what a side's kind
    cannot do."""
    instead = _INSTEAD.get((kind, capability))
    asker = f"`coexist {command}`" if command else "this step"
    return ConfigError(
        f"{asker} needs {_SAID.get(capability, capability)} on the {side}, and the {side} is of kind "
        f"{kind!r}, which has none" + (f" ({instead})" if instead else ""),
        file=file,
        key=f"{side}.kind",
        next_step=f"run a command this {side} kind supports, or set [{side}] kind",
    )


def check_command(kinds: dict[str, str], command: str, file: str = "project.toml") -> None:
    """Refuse a command that needs a capability a side's kind lacks, before any connection."""
    for side, needs in COMMAND_NEEDS.get(command, {}).items():
        kind = kinds.get(side, "m365")
        for capability in sorted(needs - KIND_CAPABILITIES.get(kind, frozenset())):
            raise capability_missing(side, kind, capability, command, file)


@dataclass
class Side:
    """One side (tenant or server) as the executors see it.

    `directory`, `cmdlets` and `store` are its capabilities: each raises a ConfigError
    naming the side's kind where that kind has none. `graph` and `exo` are the Microsoft 365
    adapters behind them (a phase that is m365-only may use them directly)."""

    label: str  # "source" | "target"
    endpoint: TenantEndpoint | None  # None: a kind that is no Microsoft 365 tenant
    graph_adapter: GraphAdapter | None
    exo_runner: ExoRunner | None
    kind: str = "m365"

    @property
    def graph(self) -> GraphAdapter:
        """The Microsoft 365 Graph adapter (an m365 side); a ConfigError on other kinds."""
        if self.graph_adapter is None:
            raise capability_missing(self.label, self.kind, DIRECTORY, None)
        return self.graph_adapter

    @property
    def exo(self) -> ExoRunner:
        """The Exchange Online admin adapter (an m365 side); a ConfigError on other kinds."""
        if self.exo_runner is None:
            raise capability_missing(self.label, self.kind, CMDLETS, None)
        return self.exo_runner

    def has(self, capability: str) -> bool:
        return capability in KIND_CAPABILITIES.get(self.kind, frozenset())

    def require(self, capability: str, command: str | None = None) -> None:
        """Raise the clear error if this side's kind lacks `capability` (for `command`)."""
        if not self.has(capability):
            raise capability_missing(self.label, self.kind, capability, command)

    @property
    def directory(self) -> GraphAdapter:
        """Who exists, and recipients made and forwarded: Microsoft Graph (m365)."""
        self.require(DIRECTORY)
        return self.graph

    @property
    def cmdlets(self) -> ExoRunner:
        """Exchange Online's admin cmdlets (m365)."""
        self.require(CMDLETS)
        return self.exo

    @property
    def store(self) -> GraphAdapter:
        """What this side's mailbox stores are opened over: the Graph adapter for m365
        (`migrate.stores.graph_io`/`graph_items`); a kind's own client as kinds arrive."""
        self.require(STORE)
        return self.graph

    @property
    def calls(self) -> int:
        return sum(a.calls for a in (self.graph_adapter, self.exo_runner) if a is not None)

    @property
    def writes(self) -> int:
        return sum(a.writes for a in (self.graph_adapter, self.exo_runner) if a is not None)


@dataclass
class Context:
    project: Any  # coexist.settings.Project
    journal: Any  # coexist.journal.Journal
    source: Side
    target: Side
    plan: WriteRecorder | None = None
    run_id: int | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def planning(self) -> bool:
        return self.plan is not None

    def side(self, label: str) -> Side:
        return self.source if label == "source" else self.target


@asynccontextmanager
async def open_sides(
    source: TenantEndpoint | None,
    target: TenantEndpoint | None,
    *,
    concurrency: int = 8,
    plan: WriteRecorder | None = None,
    read_retry: RetryPolicy = READ_RETRY,
    mailbox_limits: MailboxLimits | None = None,
    write_limits: WriteLimits | None = None,
    kinds: dict[str, str] | None = None,
) -> AsyncIterator[tuple[Side, Side]]:
    """Adapters for both tenants, closed on exit; reads retried with `read_retry`. A tenant's
    Graph and Exchange adapters share one directory-write budget (per app + tenant).
    A side without an endpoint (None: a kind that is no Microsoft 365 tenant, e.g. an IMAP
    source whose users come from a batch file) gets no adapters; `kinds` names its kind."""
    sides = []
    for label, ep in (("source", source), ("target", target)):
        if ep is None:
            sides.append(Side(label, None, None, None, kind=(kinds or {}).get(label, "m365")))
            continue
        budget = WriteBudget(write_limits)
        sides.append(
            Side(
                label,
                ep,
                GraphAdapter(
                    ep,
                    label=label,
                    concurrency=concurrency,
                    plan=plan,
                    read_retry=read_retry,
                    mailbox_limits=mailbox_limits,
                    write_budget=budget,
                ),
                ExoRunner(
                    ep,
                    label=label,
                    concurrency=concurrency,
                    plan=plan,
                    read_retry=read_retry,
                    write_budget=budget,
                ),
            )
        )
    try:
        yield sides[0], sides[1]
    finally:
        for s in sides:
            if s.graph_adapter is not None:
                await s.graph_adapter.close()
            if s.exo_runner is not None:
                await s.exo_runner.close()
