"""What executors get: the project, the journal, and both tenants' adapters."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from coexist.retry import RetryPolicy
from coexist.tenants.auth import TenantEndpoint
from coexist.tenants.base import READ_RETRY
from coexist.tenants.exo import ExoRunner
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.mailbox_governor import MailboxLimits
from coexist.tenants.plan import WriteRecorder
from coexist.tenants.throttle import WriteBudget, WriteLimits


@dataclass
class Side:
    """One tenant as the executors see it."""

    label: str  # "source" | "target"
    endpoint: TenantEndpoint
    graph: GraphAdapter
    exo: ExoRunner

    @property
    def calls(self) -> int:
        return self.graph.calls + self.exo.calls

    @property
    def writes(self) -> int:
        return self.graph.writes + self.exo.writes


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
    source: TenantEndpoint,
    target: TenantEndpoint,
    *,
    concurrency: int = 8,
    plan: WriteRecorder | None = None,
    read_retry: RetryPolicy = READ_RETRY,
    mailbox_limits: MailboxLimits | None = None,
    write_limits: WriteLimits | None = None,
) -> AsyncIterator[tuple[Side, Side]]:
    """Adapters for both tenants, closed on exit; reads retried with `read_retry`. A tenant's
    Graph and Exchange adapters share one directory-write budget (per app + tenant)."""
    sides = []
    for label, ep in (("source", source), ("target", target)):
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
            await s.graph.close()
            await s.exo.close()
