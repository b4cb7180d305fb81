"""verify-mailflow: probe messages prove where mail for each user lands.

For each user, probes go to the source address, the target address and the
source LegacyExchangeDN as an X500 (IMCEAEX) address — what a reply to old
mail is sent to. They are sent with Graph `sendMail` from a service mailbox in
the target tenant, and found again with Graph reads of the source and target
mailboxes. Each must land exactly once, in the mailbox that should be live at
the user's phase, and nowhere else. Exchange delivers asynchronously, so reads
poll until every probe is found or the wait runs out.

Permissions (see `coexist permissions --command verify-mailflow`): Mail.Send in
the target, Mail.Read in both tenants (application permissions; an application
access policy may scope them to the migrating mailboxes).
"""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from coexist.discovery.scope import odata_quote
from coexist.engine.context import Context
from coexist.errors import CoexistError, InputError
from coexist.model import Phase, encode_imceaex
from coexist.provisioning.provision import source_of
from coexist.retry import RetryPolicy


@dataclass
class Probe:
    user: str
    kind: str  # source | target | x500
    address: str
    expected: str  # source | target
    subject: str
    found: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        other = "target" if self.expected == "source" else "source"
        return self.found.get(self.expected, 0) == 1 and self.found.get(other, 0) == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "probe": self.kind,
            "address": self.address,
            "expected": self.expected,
            "found": self.found,
            "ok": self.ok,
        }


def live_side(phase: str | None, mode: str, kind: str) -> str:
    """Which mailbox should receive a probe of `kind` for a user in `phase`."""
    if phase != Phase.CUTOVER.value:
        return "source"
    if mode == "leave-forward-on-target" and kind == "source":
        return "source"
    return "target"


def probes_for(ctx: Context, item: dict[str, Any], token: str) -> list[Probe]:
    src = source_of(item)
    mode = ctx.project.cutover.mode
    phase = item.get("phase")
    out = [("source", src.primary_smtp)]
    if item.get("target_address"):
        out.append(("target", str(item["target_address"])))
    if src.legacy_exchange_dn and item.get("target_id"):
        # A reply to old mail from a target user resolves the X500 inside the target.
        out.append(("x500", encode_imceaex(src.legacy_exchange_dn, ctx.project.destination_domain)))
    return [
        Probe(
            user=src.primary_smtp,
            kind=kind,
            address=address,
            expected=live_side(phase, mode, kind),
            subject=f"coexist probe {token} {kind} {item['key']}",
        )
        for kind, address in out
    ]


async def _send(ctx: Context, sender: str, probe: Probe) -> None:
    await ctx.target.graph.send(
        "POST",
        f"users/{sender}/sendMail",
        json={
            "message": {
                "subject": probe.subject,
                "body": {
                    "contentType": "Text",
                    "content": "coexist mail-flow probe; safe to delete.",
                },
                "toRecipients": [{"emailAddress": {"address": probe.address}}],
            },
            "saveToSentItems": False,
        },
    )


async def _count(ctx: Context, side: str, mailbox: str | None, subject: str) -> int:
    if not mailbox:
        return 0
    try:
        found = await ctx.side(side).graph.list_all(
            f"users/{mailbox}/messages",
            {"$filter": f"subject eq {odata_quote(subject)}", "$select": "id,subject"},
        )
    except CoexistError as exc:
        if exc.stops_run:  # the endpoint is unreachable: "0 probes" would be a false answer
            raise
        return 0  # not a mailbox (yet): nothing can have landed there
    return len(found)


async def verify(
    ctx: Context,
    items: list[dict[str, Any]],
    sender: str,
    wait_s: float = 60.0,
    retry: RetryPolicy | None = None,
) -> list[Probe]:
    if not sender:
        raise InputError(
            "no service mailbox to send probes from",
            next_step="set [verify] service_mailbox in project.toml",
        )
    token = uuid.uuid4().hex[:10]
    probes = [p for item in items for p in probes_for(ctx, item, token)]
    policy = retry or RetryPolicy()
    # Every probe leaves from the one service mailbox: Outlook allows 4 concurrent
    # requests per app per mailbox (Microsoft Graph throttling limits, Outlook service).
    sending = asyncio.Semaphore(4)

    async def send(p: Probe) -> None:
        async with sending:
            # A throttled or dropped sendMail is sent again: a probe sent twice shows up as
            # found twice (a visible failure), a probe never sent as a false "not delivered".
            await policy.call(functools.partial(_send, ctx, sender, p))

    await asyncio.gather(*(send(p) for p in probes))
    boxes = {
        i["key"]: (i["key"], i.get("target_id") if i.get("phase") in _HAS_TARGET_MAILBOX else None)
        for i in items
    }
    deadline = time.monotonic() + wait_s
    delay = 0.2

    async def look(p: Probe) -> None:
        source_box, target_box = boxes[p.subject.rsplit(" ", 1)[1]]
        source, target = await asyncio.gather(
            _count(ctx, "source", source_box, p.subject),
            _count(ctx, "target", target_box, p.subject),
        )
        p.found = {"source": source, "target": target}

    while True:
        # Concurrent reads, bounded by the adapters' per-tenant concurrency.
        await asyncio.gather(*(look(p) for p in probes))
        # Stop once every probe has landed somewhere: waiting longer cannot move a
        # misrouted copy, only bring in late ones.
        if all(sum(p.found.values()) >= 1 for p in probes) or time.monotonic() > deadline:
            return probes
        await asyncio.sleep(delay)
        delay = min(delay * 2, 10)


_HAS_TARGET_MAILBOX = {Phase.PRESTAGED.value, Phase.CUTOVER.value, Phase.ROLLED_BACK.value}
