"""Mail delivered to a user's target mailbox since its cutover: what a rollback leaves behind.

Rollback restores routing from the journaled before-states; it moves no mail. Whatever the
target mailbox received after it went live (new mail, and mail the source forwarded to it)
stays there, so rollback counts it per user and asks the operator to confirm.

The moment the target went live is when cutover removed its forward back to the source
(`cutover.target-live`): before that it kept nothing (DeliverToMailboxAndForward false,
FACTS.md). Copies made by the data passes keep their original received time (the import/
export API is full fidelity; graph-items stamps PR_MESSAGE_DELIVERY_TIME), so the messages
received since that moment are the ones delivered there.

Counted live, not taken from the last reconciliation: that one was made by the cutover
pass, before the swap, and knows nothing of what arrived after it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from coexist.engine.context import Context
from coexist.errors import CoexistError

from .steps import ClearTargetForwardStep

# List messages: $top is 1 to 1000 (api-reference/v1.0/api/user-list-messages.md). The
# listing covers every folder and, per Graph's known issues, Teams chat copies too: a count
# that errs high only asks for a confirmation that was due anyway.
PAGE = "1000"


@dataclass(frozen=True)
class Arrivals:
    """One user's mail in the target since cutover (`messages` None: it could not be counted)."""

    user: str
    item: str
    since: str | None  # ISO 8601 UTC: when the target mailbox went live
    messages: int | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def needs_confirmation(self) -> bool:
        """Unknown is not none: a count that failed asks as a count above zero does."""
        return self.messages is None or self.messages > 0

    def text(self) -> str:
        if self.messages is None:
            return f"{self.user}: could not count ({self.error})"
        when = f" since {_shown(self.since)}" if self.since else ""
        noun = "message" if self.messages == 1 else "messages"
        return f"{self.user}: {self.messages:,} {noun}{when}"


def _shown(iso: str) -> str:
    return datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def live_since(ctx: Context, key: str) -> datetime | None:
    """When the user's target mailbox last went live: the start of the latest run of
    `cutover.target-live` that removed its forward (a rollback and a second cutover make
    it go live again), else of its first successful run."""
    step_key = ClearTargetForwardStep(subject=key).key
    entries = ctx.journal.history(step_key)
    oks = [n for n, e in enumerate(entries) if e["status"] == "ok"]
    if not oks:
        return None
    changed = [n for n in oks if entries[n].get("changed")]
    n = changed[-1] if changed else oks[0]
    starts = [e for e in entries[:n] if e["status"] == "started"]
    at: datetime = (starts[-1] if starts else entries[n])["at"]
    return at


async def count_arrivals(ctx: Context, item: dict[str, Any]) -> Arrivals:
    """Messages received in the user's target mailbox since it went live."""
    user = str(item.get("source_address") or item["key"])
    since = live_since(ctx, str(item["key"]))
    target = item.get("target_id")
    if since is None or not target:
        return Arrivals(user, item["key"], None, None, "the journal holds no cutover time")
    stamp = since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    try:
        rows = await ctx.target.graph.list_all(
            f"users/{target}/messages",
            {"$filter": f"receivedDateTime ge {stamp}", "$select": "id", "$top": PAGE},
        )
    except CoexistError as exc:
        return Arrivals(user, item["key"], since.isoformat(), None, exc.message)
    return Arrivals(user, item["key"], since.isoformat(), len(rows))
