"""discover / rediscover: record the users in scope in the journal.

Rediscovery adds new scope members and aligns changed UPNs and SMTP addresses
of known users; it never removes a user (one who left the scope is flagged, and
stays where it is in the lifecycle).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from coexist.engine.context import Context
from coexist.engine.runner import set_item
from coexist.model import Phase, SourceMailbox

from .scope import ScopeResult, resolve_scope


@dataclass
class DiscoveryReport:
    added: list[str] = field(default_factory=list)
    aligned: list[dict[str, Any]] = field(default_factory=list)
    unchanged: int = 0
    left_scope: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "aligned": self.aligned,
            "unchanged": self.unchanged,
            "left_scope": self.left_scope,
            "skipped": self.skipped,
            "warnings": self.warnings,
        }


def _changes(old: dict[str, Any], new: SourceMailbox) -> dict[str, Any]:
    fields = (
        "upn",
        "primary_smtp",
        "email_addresses",
        "display_name",
        "alias",
        "legacy_exchange_dn",
    )
    now = new.to_dict()
    return {f: {"from": old.get(f), "to": now[f]} for f in fields if old.get(f) != now[f]}


async def discover(ctx: Context) -> DiscoveryReport:
    """Record every mailbox in scope; align what changed; never remove."""
    scope: ScopeResult = await resolve_scope(
        ctx.source.graph, ctx.source.exo, ctx.project.scope.group
    )
    report = DiscoveryReport(skipped=scope.skipped, warnings=scope.warnings)
    if ctx.planning:
        report.added = [mb.primary_smtp for mb in scope.mailboxes]
        return report
    journal = ctx.journal
    in_scope = set()
    for mb in scope.mailboxes:
        in_scope.add(mb.id)
        item = journal.get_item("user", mb.id)
        if item is None:
            journal.upsert_item(
                "user",
                mb.id,
                name=mb.display_name,
                source_address=mb.primary_smtp,
                phase=Phase.DISCOVERED.value,
                state="ok",
                detail={"source": mb.to_dict(), "in_scope": True},
            )
            report.added.append(mb.primary_smtp)
            continue
        detail = item.get("detail") or {}
        changes = _changes(detail.get("source") or {}, mb)
        if changes:
            report.aligned.append({"user": mb.primary_smtp, "changes": changes})
        else:
            report.unchanged += 1
        journal.update_item("user", mb.id, name=mb.display_name, source_address=mb.primary_smtp)
        set_item(journal, "user", mb.id, source=mb.to_dict(), in_scope=True)
    for item in journal.items(kind="user"):
        if item["key"] not in in_scope and (item.get("detail") or {}).get("in_scope", True):
            set_item(journal, "user", item["key"], in_scope=False)
            report.left_scope.append(item.get("source_address") or item["key"])
    return report
