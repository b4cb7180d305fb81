"""EWS passes under a drained Exchange throttling budget (sandbox profile `published`, buckets
empty at the start), with exchangelib over HTTPS/NTLM against the sandbox's EWS face.

Many passes at once on one shared delegation budget (or one budget per mailbox under
impersonation) keep many requests in flight, so the face answers ErrorServerBusy with
BackOffMilliseconds over and over. Before `coexist.tenants.ews` kept its own session pool
(`_SteadyPoolProtocol`) this hung for ever in exchangelib 5.6 (its `decrease_poolsize` takes
the pool's non-reentrant lock, then `get_session` -> `increase_poolsize` takes it again), and
before the budget governor (`tenants/ews_governor.py`) callers racing for the same recharged
milliseconds exhausted their retries. Each test is bounded by a pytest timeout of the
`thread` method: a hang fails the run (the process is ended with every thread's stack)
instead of blocking it; nothing here asserts on timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coexist.journal import Journal
from coexist.migrate.stores.ews import EwsStore
from coexist.retry import RetryPolicy
from coexist.sandbox import Sandbox
from coexist.sandbox.ews import EWS_PATH
from coexist.sandbox.ews.face import ERRORS_KEY
from coexist.tenants import ews
from coexist.tenants.ews import AdminLogin, EwsEndpoint, EwsLimits, EwsServer
from tests.ewsclient import PASSWORD, mailboxes, migration_account, org
from tests.integration.test_ews_store import message, sync_context, sync_pass

MAILBOXES = 4
ITEMS = 5
# The product's default policy shape (runtime.retry_policy: 5 attempts; a busy answer with
# its back-off is retried until the policy's time is up).
RETRY = RetryPolicy(max_attempts=5, max_wait_s=120)


@pytest.fixture
def drained(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """A sandbox of its own enforcing the published EWS budget at the requested time scale,
    every budget empty at the start: source Exchange 2016, target Exchange 2019."""
    scale = float(request.param)
    with Sandbox(
        tmp_path / "sb", seed=13, users=8, profile="published", time_scale=scale, drained=True
    ) as sb:
        org(sb, "source", "exchange2016")
        org(sb, "target", "exchange2019")
        yield sb


def server(sb: Sandbox, side: str, login: str, access: str) -> EwsServer:
    endpoint = EwsEndpoint(
        sb.base_url + EWS_PATH,
        auth="ntlm",
        version="Exchange2016",
        access=access,  # type: ignore[arg-type]
        ca_file=sb.connection["ca_file"],
        side=side,
    )
    # 20 requests in flight on the server, as the product's delegation bound (EwsLimits).
    return EwsServer(endpoint, AdminLogin(login, PASSWORD), EwsLimits(MAILBOXES, 5, 20), RETRY)


def move_all(sb: Sandbox, tmp_path: Path, access: str) -> dict[str, Any]:
    """MAILBOXES passes at once from source to target mailboxes; per-user copies, the
    source totals, and what the governors and the face saw."""
    srcs = mailboxes(sb, "source", MAILBOXES)
    tgts = mailboxes(sb, "target", MAILBOXES)
    for i, u in enumerate(srcs):
        for n in range(ITEMS):
            sb.mail.insert_message("source", u.id, "inbox", message(n, f"paced{i}"))
    impersonation = access == "impersonation"
    src_admin = migration_account(
        sb, "source", full_access=[u.primary_smtp or "" for u in srcs], impersonation=impersonation
    )
    tgt_admin = migration_account(
        sb, "target", full_access=[u.primary_smtp or "" for u in tgts], impersonation=impersonation
    )
    journal = Journal.open(f"sqlite:///{tmp_path / 'journal.sqlite'}")
    ctx = sync_context(journal)

    async def main() -> dict[str, Any]:
        src_srv = server(sb, "source", src_admin, access)
        tgt_srv = server(sb, "target", tgt_admin, access)

        async def one(s: Any, t: Any) -> tuple[str, int, Counter[str]]:
            async with (
                src_srv.mailbox(s.primary_smtp) as sm,
                tgt_srv.mailbox(t.primary_smtp) as tm,
            ):
                src, tgt = EwsStore(sm), EwsStore(tm, label="target")
                total = sum((await src.totals()).values())
                return s.primary_smtp, total, await sync_pass(ctx, s.primary_smtp, src, tgt)

        try:
            done = await asyncio.gather(*(one(s, t) for s, t in zip(srcs, tgts, strict=True)))
            return {
                "passes": done,
                "busy": sum(
                    st.busy
                    for g in (src_srv.governor, tgt_srv.governor)
                    for st in g.all_stats().values()
                ),
                "budgets": len(tgt_srv.governor.all_stats()),
            }
        finally:
            await src_srv.close()
            await tgt_srv.close()

    try:
        out = asyncio.run(main())
        out["copied"] = {
            key: Counter(
                r["source_identity"] for r in journal.mapped_items(key) if r["status"] == "copied"
            )
            for key, _total, _counts in out["passes"]
        }
    finally:
        journal.close()
    return out


def check(sb: Sandbox, out: dict[str, Any]) -> None:
    for key, total, counts in out["passes"]:
        assert total >= ITEMS and counts["copied"] == total, (key, total, counts)
        assert all(n == 1 for n in out["copied"][key].values()), key
        assert len(out["copied"][key]) == total, key
    # The budget did bind: the face said busy, and the governor paused for it.
    assert out["busy"] > 0
    assert not (sb.ctx.extra.get(ERRORS_KEY) if sb.ctx else None)


@pytest.mark.timeout(420, method="thread")
@pytest.mark.parametrize("drained", [1], indirect=True)
def test_many_requests_on_a_drained_delegation_budget_complete_at_time_scale_1(
    drained: Sandbox, tmp_path: Path
) -> None:
    """Four passes at once on one drained delegation budget at time scale 1 (ErrorServerBusy
    over and over, 20 requests allowed in flight): no hang in exchangelib's session pool,
    every item copied once, no retries exhausted."""
    out = move_all(drained, tmp_path, "delegation")
    check(drained, out)
    assert out["budgets"] == 1  # delegation: the admin's one budget


@pytest.mark.timeout(420, method="thread")
@pytest.mark.parametrize("drained", [5], indirect=True)
def test_a_drained_delegation_budget_at_time_scale_5_completes(
    drained: Sandbox, tmp_path: Path
) -> None:
    """The same at time scale 5 (back-offs of a few ms, the race finding 2 lost): paced to
    the budget, every item once, no retries exhausted."""
    out = move_all(drained, tmp_path, "delegation")
    check(drained, out)


@pytest.mark.timeout(420, method="thread")
@pytest.mark.parametrize("drained", [5], indirect=True)
def test_drained_impersonation_budgets_complete_each_on_its_own(
    drained: Sandbox, tmp_path: Path
) -> None:
    """Under impersonation each mailbox has its own drained budget: the governor keeps one
    per mailbox (target side: one per impersonated user) and every pass completes."""
    out = move_all(drained, tmp_path, "impersonation")
    check(drained, out)
    assert out["budgets"] == MAILBOXES


@pytest.mark.timeout(300, method="thread")
@pytest.mark.parametrize("drained", [1], indirect=True)
def test_twenty_threads_on_a_drained_budget_do_not_hang_exchangelibs_session_pool(
    drained: Sandbox,
) -> None:
    """The deadlock itself, without the governor in front: 20 threads call exchangelib at
    once (GetFolder) through the accounts `EwsServer` builds, on one drained delegation
    budget, each retrying the ErrorServerBusy it is told. exchangelib's own Protocol shrinks
    its pool on each busy answer and hangs all of them (every thread still waiting after
    minutes); the server's `_SteadyPoolProtocol` keeps its pool and all threads finish."""
    sb = drained
    users = [u.primary_smtp or "" for u in mailboxes(sb, "source", 4)]
    admin = migration_account(sb, "source", full_access=users)
    endpoint = EwsEndpoint(
        sb.base_url + EWS_PATH, auth="ntlm", ca_file=sb.connection["ca_file"], side="source"
    )
    srv = EwsServer(endpoint, AdminLogin(admin, PASSWORD), EwsLimits(4, 5, 20), RETRY)
    accounts = [ews.build_account(srv.config, u, "delegation", srv.protocol) for u in users]
    finished: list[int] = []
    failed: list[BaseException] = []

    def worker(i: int) -> None:
        account, done = accounts[i % len(accounts)], 0
        try:
            while done < 5:
                try:
                    account.root.refresh()
                    done += 1
                except ews.ews_errors.ErrorServerBusy as exc:
                    time.sleep(min(exc.back_off or 0.1, 0.2))
            finished.append(i)
        except BaseException as exc:  # reported below, not lost in the thread
            failed.append(exc)

    # Daemon threads: a hung one must not keep the test process alive after the verdict.
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)  # a guard against a hang, not a timing figure
    try:
        assert not failed, failed
        assert sorted(finished) == list(range(20)), f"{20 - len(finished)} threads hung"
        assert srv.protocol.session_pool_size >= 1
    finally:
        asyncio.run(srv.close())
