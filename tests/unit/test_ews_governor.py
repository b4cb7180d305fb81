"""The EWS budget governor (`coexist.tenants.ews_governor`): budget keys by access mode, a
busy answer pausing every caller of its budget, the AIMD window, the in-flight bound. A fake
clock and asyncio's own scheduling: no sleeps measured, no timing asserted."""

from __future__ import annotations

import asyncio

from coexist.tenants.ews_governor import EwsGovernor, budget_key


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_delegation_charges_every_mailbox_to_the_admins_one_budget() -> None:
    """Under delegation every request is the admin's (one budget, whichever mailbox);
    under impersonation each impersonated user is a budget of its own."""
    assert budget_key("delegation", "svc@a", "ann@a") == budget_key("delegation", "SVC@a", "bob@a")
    assert budget_key("impersonation", "svc@a", "ann@a") != budget_key(
        "impersonation", "svc@a", "bob@a"
    )
    assert budget_key("impersonation", "svc@a", "Ann@A") == "user:ann@a"
    # A request acting for no mailbox is the admin's under either mode.
    assert budget_key("impersonation", "svc@a", None) == "admin:svc@a"


def test_a_busy_answer_pauses_every_caller_of_that_budget_and_no_other() -> None:
    """ErrorServerBusy's back-off pauses the budget it came from (all its callers) until it
    is over; another budget is not paused; a longer pause is never cut by a shorter one."""
    clock = Clock()
    g = EwsGovernor(concurrency=4, clock=clock)
    g.throttled("admin:svc", 2.0)
    assert g.pause_left("admin:svc") == 2.0 and not g.admits("admin:svc")
    assert g.pause_left("user:ann") == 0.0 and g.admits("user:ann")
    g.throttled("admin:svc", 0.5)
    assert g.pause_left("admin:svc") == 2.0
    clock.now += 2.0
    assert g.pause_left("admin:svc") == 0.0 and g.admits("admin:svc")
    assert g.stats("admin:svc").busy == 2


def test_the_window_halves_on_busy_and_grows_back_on_success() -> None:
    """AIMD: each busy answer halves the requests allowed in flight (never below one);
    each success adds 1/window back, up to the bound."""
    g = EwsGovernor(concurrency=8, clock=Clock())
    key = "admin:svc"
    assert g.window(key) == 8
    for expected in (4, 2, 1, 1):
        g.throttled(key, None)
        assert g.window(key) == expected
    for _ in range(200):
        g.success(key)
    assert g.window(key) == 8


def test_in_flight_requests_stay_within_the_window() -> None:
    """However many callers queue on one budget, no more than its window are in flight;
    all of them are served."""

    async def main() -> tuple[int, int]:
        g = EwsGovernor(concurrency=3)
        in_flight = peak = 0

        async def caller() -> None:
            nonlocal in_flight, peak
            async with g.slot("admin:svc"):
                in_flight += 1
                peak = max(peak, in_flight)
                await asyncio.sleep(0)
                await asyncio.sleep(0)
                in_flight -= 1
            g.success("admin:svc")

        await asyncio.gather(*(caller() for _ in range(20)))
        return peak, g.stats("admin:svc").requests

    peak, served = asyncio.run(main())
    assert peak == 3 and served == 20


def test_a_queued_caller_waits_out_a_pause_that_started_after_it_queued() -> None:
    """A caller queued behind a full window does not go out into a back-off a busy answer
    set while it waited: it is admitted only once the pause is over."""

    async def main() -> list[str]:
        g = EwsGovernor(concurrency=1)
        order: list[str] = []
        first_in = asyncio.Event()
        release = asyncio.Event()

        async def first() -> None:
            async with g.slot("k"):
                first_in.set()
                await release.wait()
                g.throttled("k", 0.05)  # the answer: busy, back off
                order.append("first done")

        async def second() -> None:
            await first_in.wait()
            async with g.slot("k"):
                # Admitted only when the pause set after it queued has run out.
                order.append("second sent" if g.pause_left("k") == 0 else "second in pause")

        task = asyncio.gather(first(), second())
        await first_in.wait()
        await asyncio.sleep(0)
        release.set()
        await task
        return order

    assert asyncio.run(main()) == ["first done", "second sent"]
