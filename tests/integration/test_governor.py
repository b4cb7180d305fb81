"""The per-mailbox governor and the directory-write budget against the sandbox under
`published` (time-scaled)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from coexist.errors import TransientError
from coexist.sandbox import Sandbox, seed
from coexist.sandbox.limits import PUBLISHED
from coexist.sandbox.model import User
from coexist.sandbox.server import profile_settings
from coexist.tenants.auth import TenantEndpoint
from coexist.tenants.exo import ExoRunner
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.mailbox_governor import MB, MailboxLimits
from coexist.tenants.throttle import DIRECTORY_WRITE_WINDOW_S, WriteBudget, WriteLimits
from tests.clients import bearer, tls

TIME_SCALE = 30.0
READS = 60
WRITES = 8  # 8 x 1 MB bodies: about half a second of the scaled upload budget


def published(sandbox: Sandbox, time_scale: float = TIME_SCALE) -> list[User]:
    """Re-seed under `published`; two source mailboxes."""
    world = sandbox.reset(seed.generate(7, 40, profile_settings("published", 7, time_scale)))
    with world.lock:
        users = [u for u in world.source.users.values() if u.is_mailbox and u.exchange_guid][:2]
    for u in users:
        sandbox.mail.ensure_mailbox("source", u.id)
    return users


def spend_budgets(sandbox: Sandbox, conn: dict[str, Any], users: list[User]) -> None:
    """Arrange: another client of the same app has just spent these mailboxes' Outlook
    budgets, so the limits bind from the first request."""
    assert sandbox.ctx is not None
    client_id = conn["tenants"]["source"]["client_id"]
    for u in users:
        for bucket, limit in PUBLISHED.items():
            if bucket.startswith("outlook_"):
                sandbox.ctx.limiter.admit(bucket, (client_id, u.id), limit.capacity)


def adapter(conn: dict[str, Any]) -> GraphAdapter:
    limits = MailboxLimits(time_scale=TIME_SCALE, start_full=False)  # the budgets are spent
    return GraphAdapter(TenantEndpoint.from_sandbox(conn, "source"), mailbox_limits=limits)


async def burst(graph: GraphAdapter, user: User) -> None:
    reads = [
        graph.send("GET", f"users/{user.id}/mailFolders/inbox/messages", params={"$top": 1})
        for _ in range(READS)
    ]
    body = {"subject": "budget", "body": {"contentType": "text", "content": "x" * MB}}
    writes = [graph.send("POST", f"users/{user.id}/messages", json=body) for _ in range(WRITES)]
    await asyncio.gather(*reads, *writes)


def test_a_burst_to_one_mailbox_stays_within_its_limits(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """70 requests at once to one mailbox (8 with 1 MB bodies) from a spent budget: at most
    4 in flight, paced by the request and upload budgets, and not one refused by the service."""
    [user, _] = published(sandbox)
    spend_budgets(sandbox, conn, [user])

    async def run() -> GraphAdapter:
        async with adapter(conn) as graph:
            await burst(graph, user)
            return graph

    graph = asyncio.run(run())
    stats = graph.mailboxes.stats(user.id)
    assert stats.throttled == 0
    assert graph.calls == READS + WRITES  # a refused read would have been sent again
    assert graph.writes == WRITES
    assert stats.peak_in_flight <= 4
    assert stats.upload_bytes > WRITES * MB
    assert stats.paced_s > 0  # the budgets, not luck, kept it under the limits


def test_many_mailboxes_are_governed_independently(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Bursts to two mailboxes in parallel: each within 4 in flight, none refused."""
    users = published(sandbox)
    spend_budgets(sandbox, conn, users)

    async def run() -> GraphAdapter:
        async with adapter(conn) as graph:
            await asyncio.gather(*(burst(graph, u) for u in users))
            return graph

    graph = asyncio.run(run())
    for u in users:
        stats = graph.mailboxes.stats(u.id)
        assert stats.throttled == 0 and stats.peak_in_flight <= 4
    assert graph.calls == len(users) * (READS + WRITES)


def test_an_ungoverned_burst_is_refused(sandbox: Sandbox, conn: dict[str, Any]) -> None:
    """Control: the same read burst sent without the governor gets 429s from the sandbox, so
    the clean runs above are the governor's doing."""
    [user, _] = published(sandbox, time_scale=1.0)
    headers = {"Authorization": f"Bearer {bearer(conn, 'source')}"}
    spend_budgets(sandbox, conn, [user])

    async def run() -> list[int]:
        base = conn["tenants"]["source"]["graph_url"].rstrip("/") + "/"
        async with httpx.AsyncClient(base_url=base, headers=headers, verify=tls(conn)) as http:
            url = f"users/{user.id}/mailFolders/inbox/messages"
            answers = await asyncio.gather(*(http.get(url) for _ in range(READS)))
        return [a.status_code for a in answers]

    codes = asyncio.run(run())
    assert 429 in codes


def test_batch_get_sends_throttled_inner_requests_again(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """A $batch answers 200 with inner 429s once the budget is spent; batch_get sends those
    again after Retry-After until every GET has its answer - none is taken for a failure."""
    # Unscaled: the spent budget refills ~17 requests/s, fewer than the batch asks for.
    [user, _] = published(sandbox, time_scale=1.0)
    spend_budgets(sandbox, conn, [user])
    urls = [f"/users/{user.id}/mailFolders/inbox?$select=displayName"] * 20

    async def run() -> tuple[list[Any], GraphAdapter]:
        # The client believes the budget is full, so the service has to refuse.
        ep = TenantEndpoint.from_sandbox(conn, "source")
        async with GraphAdapter(ep, mailbox_limits=MailboxLimits()) as graph:
            return await graph.batch_get(urls), graph

    bodies, graph = asyncio.run(run())
    assert [b["displayName"] for b in bodies] == ["Inbox"] * 20
    assert graph.mailboxes.stats(user.id).throttled > 0


# -- directory writes: one budget per app + tenant, shared by Graph and Exchange -------------

# Scaled so the sandbox's sustained directory-write rate (10/s) is far below what the client
# can send even on a loaded machine: the budget, not the client's speed, spaces the writes.
WRITE_TIME_SCALE = 0.5
WRITES_EACH = 10  # Graph PATCHes and Set-User cmdlets each: about 2 s of the scaled budget


def spend_directory_writes(sandbox: Sandbox, conn: dict[str, Any], key: str = "source") -> None:
    """Arrange: another client of the same app has just spent the tenant's write budget."""
    assert sandbox.ctx is not None
    t = conn["tenants"][key]
    limit = PUBLISHED["directory_write"]
    sandbox.ctx.limiter.admit("directory_write", (t["tenant_id"], t["client_id"]), limit.capacity)


def both_adapters(conn: dict[str, Any], budget: WriteBudget) -> tuple[GraphAdapter, ExoRunner]:
    ep = TenantEndpoint.from_sandbox(conn, "source")
    return GraphAdapter(ep, write_budget=budget), ExoRunner(ep, write_budget=budget)


def test_directory_writes_are_paced_to_the_published_budget(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """20 directory writes at once (Graph PATCH and Exchange Set-User, one budget) against a
    tenant whose write budget was just spent: every one is sent once, after taking a token,
    and the service refuses none. Load cannot change that: the client's budget starts empty
    after the service's was spent and refills at the same rate, and a write reaches the
    service after it was sent, so the service always holds at least the client's tokens."""
    published(sandbox, time_scale=WRITE_TIME_SCALE)
    with sandbox.world.lock:
        targets = [u for u in sandbox.world.source.users.values()][:WRITES_EACH]
    spend_directory_writes(sandbox, conn)
    scaled = WriteLimits(window_s=DIRECTORY_WRITE_WINDOW_S / WRITE_TIME_SCALE, start_full=False)
    budget = WriteBudget(scaled)

    async def run() -> tuple[GraphAdapter, ExoRunner]:
        graph, exo = both_adapters(conn, budget)
        async with graph, exo:
            patches = [
                graph.send("PATCH", f"users/{u.id}", json={"jobTitle": "Paced"}) for u in targets
            ]
            cmdlets = [exo.run("Set-User", Identity=u.id, Department="Paced") for u in targets]
            await asyncio.gather(*patches, *cmdlets)
        return graph, exo

    graph, exo = asyncio.run(run())
    writes = 2 * len(targets)
    assert budget.refusals == 0
    assert graph.calls + exo.calls == writes  # none sent twice
    assert graph.writes + exo.writes == writes
    assert budget.taken == writes  # every write sent took a token first
    assert budget.paced_s > 0  # started empty: the budget, not luck, spaced them


def test_a_refused_write_realigns_the_budget_and_pauses(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """A client that wrongly believes the budget is fresh: its writes are refused with
    Retry-After; each refusal is counted, the budget no longer believes it holds writes,
    and the tenant's requests pause for the Retry-After."""
    # Scaled down so the spent budget gains one write per 50 s: every write here is refused.
    published(sandbox, time_scale=0.001)
    spend_directory_writes(sandbox, conn)
    budget = WriteBudget()  # believes a fresh window: 3,000 writes
    with sandbox.world.lock:
        targets = [u for u in sandbox.world.source.users.values()][:4]

    async def run() -> tuple[list[BaseException | None], ExoRunner]:
        _, exo = both_adapters(conn, budget)
        async with exo:
            sent = [exo.run("Set-User", Identity=u.id, Department="Refused") for u in targets]
            results = await asyncio.gather(*sent, return_exceptions=True)
        return [r if isinstance(r, BaseException) else None for r in results], exo

    errors, exo = asyncio.run(run())
    assert all(isinstance(e, TransientError) and e.status == 429 for e in errors), errors
    assert all(isinstance(e, TransientError) and (e.retry_after or 0) > 1 for e in errors)
    assert budget.refusals == len(targets) and budget.in_flight == 0
    assert budget.delay() > 0  # realigned: the next write waits for the rate to earn it
    assert exo.writes == 0 and exo.calls == len(targets)  # writes are not retried here
    assert exo.throttled == len(targets)  # each paused the tenant for its Retry-After


def test_writes_are_not_paced_when_the_budget_covers_them(
    sandbox: Sandbox, conn: dict[str, Any]
) -> None:
    """A fresh default budget (3,000 writes) lets a handful of writes through without a wait."""
    budget = WriteBudget()
    with sandbox.world.lock:
        targets = [u for u in sandbox.world.source.users.values()][:5]

    async def run() -> None:
        graph, _ = both_adapters(conn, budget)
        async with graph:
            for u in targets:
                await graph.send("PATCH", f"users/{u.id}", json={"jobTitle": "Fresh"})

    asyncio.run(run())
    assert budget.taken == len(targets) and budget.paced_s == 0.0 and budget.refusals == 0
