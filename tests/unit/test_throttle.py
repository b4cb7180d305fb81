"""Pacing maths of the per-mailbox governor and of the directory-write budget (injected
clock, no timing), and request routing."""

from __future__ import annotations

import asyncio
import base64

import pytest

from coexist.tenants.graph import directory_writes
from coexist.tenants.mailbox_governor import (
    MB,
    MailboxGovernor,
    MailboxLimits,
    TokenBucket,
    batch_mailboxes,
    import_bytes,
    mailbox_of,
)
from coexist.tenants.throttle import WriteBudget, WriteLimits


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_published_rates() -> None:
    """The sustained rates are Microsoft's published per-mailbox limits, scaled by time_scale."""
    limits = MailboxLimits()
    assert limits.request_rate == pytest.approx(10_000 / 600)
    assert limits.upload_rate == pytest.approx(150 * MB / 300)
    scaled = MailboxLimits(time_scale=20)
    assert scaled.request_rate == pytest.approx(20 * 10_000 / 600)
    assert scaled.upload_rate == pytest.approx(20 * 150 * MB / 300)


def test_full_bucket_admits_its_capacity_then_paces_at_the_rate() -> None:
    """A fresh bucket lets its capacity through at once; beyond it each unit waits 1/rate more."""
    clock = Clock()
    bucket = TokenBucket(capacity=10, rate=2.0, clock=clock)
    assert [bucket.reserve(1) for _ in range(10)] == [0.0] * 10
    waits = [bucket.reserve(1) for _ in range(4)]
    assert waits == pytest.approx([0.5, 1.0, 1.5, 2.0])


def test_reservations_are_served_at_exactly_the_refill_rate() -> None:
    """Sending each request when its reservation says keeps the rate at the ceiling, never above:
    over any horizon the units sent are at most capacity + rate * elapsed."""
    clock = Clock()
    bucket = TokenBucket(capacity=5, rate=4.0, clock=clock, tokens=0.0)
    send_times = [clock.now + bucket.reserve(1) for _ in range(40)]
    assert send_times == sorted(send_times)
    assert send_times[-1] - clock.now == pytest.approx(40 / 4.0)
    for n, t in enumerate(send_times, start=1):
        assert n <= 0 + 4.0 * (t - clock.now) + 1e-9  # started empty: no burst allowance


def test_bucket_refills_with_time_up_to_capacity() -> None:
    """Idle time refills the bucket, but never beyond its capacity."""
    clock = Clock()
    bucket = TokenBucket(capacity=10, rate=1.0, clock=clock, tokens=0.0)
    clock.now += 4
    assert bucket.reserve(4) == 0.0
    clock.now += 1000
    assert bucket.reserve(10) == 0.0
    assert bucket.reserve(1) == pytest.approx(1.0)


def test_a_cost_over_capacity_waits_for_a_full_bucket_only() -> None:
    """An item larger than the whole budget is sent once the bucket is full, not never."""
    clock = Clock()
    bucket = TokenBucket(capacity=100, rate=10.0, clock=clock, tokens=0.0)
    assert bucket.reserve(250) == pytest.approx(10.0)


def test_drain_forgets_the_balance_but_keeps_queued_debt() -> None:
    """After a refusal the bucket holds nothing; reservations already queued stay queued."""
    clock = Clock()
    bucket = TokenBucket(capacity=10, rate=1.0, clock=clock)
    bucket.drain()
    assert bucket.reserve(1) == pytest.approx(1.0)
    bucket.drain()  # negative balance (queued debt) is kept
    assert bucket.reserve(1) == pytest.approx(2.0)


def test_upload_budget_paces_large_imports_at_150_mb_per_5_minutes() -> None:
    """Imports of 10 MB each from an empty upload budget leave every 20 s (0.5 MB/s)."""
    clock = Clock()
    gov = MailboxGovernor(MailboxLimits(), clock)
    gov.throttled("mbx", None, upload=True)  # drained: the service said the budget is spent
    waits = [gov.reserve("mbx", 1, 10 * MB) for _ in range(3)]
    assert waits == pytest.approx([20.0, 40.0, 60.0])


def test_request_and_upload_budgets_are_per_mailbox() -> None:
    """Spending one mailbox's budgets does not slow another mailbox."""
    clock = Clock()
    gov = MailboxGovernor(MailboxLimits(requests=2, upload_bytes=MB), clock)
    assert gov.reserve("a", 2, MB) == 0.0
    assert gov.reserve("a", 1) > 0.0
    assert gov.reserve("b", 2, MB) == 0.0


def test_the_longer_of_both_budgets_decides() -> None:
    """A request waits for whichever budget (requests or upload bytes) covers it later."""
    clock = Clock()
    by_upload = MailboxGovernor(
        MailboxLimits(requests=10, requests_window_s=1, upload_bytes=100, upload_window_s=1), clock
    )
    assert by_upload.reserve("m", 1, 100) == 0.0
    assert by_upload.reserve("m", 1, 50) == pytest.approx(0.5)
    assert by_upload.reserve("m", 1, 400) == pytest.approx(1.5)  # 400 clamped to the capacity
    by_requests = MailboxGovernor(
        MailboxLimits(requests=1, requests_window_s=1, upload_bytes=100, upload_window_s=1), clock
    )
    assert by_requests.reserve("m", 1, 10) == 0.0
    assert by_requests.reserve("m", 1, 10) == pytest.approx(1.0)  # upload would allow it now


def test_retry_after_pauses_the_mailbox() -> None:
    """A throttled answer pauses every later request to that mailbox for the Retry-After."""
    clock = Clock()
    gov = MailboxGovernor(MailboxLimits(), clock)
    gov.throttled("m", 7.0)
    assert gov.reserve("m") == pytest.approx(7.0)
    clock.now += 5
    assert gov.reserve("m") == pytest.approx(2.0)
    assert gov.reserve("other") == 0.0
    assert gov.stats("m").throttled == 1


def test_aliases_share_one_state() -> None:
    """The import/export mailbox id and the user id are one mailbox: one budget, case-blind."""
    clock = Clock()
    gov = MailboxGovernor(MailboxLimits(requests=1), clock)
    gov.alias("MBX:ABC@tenant", "User-1")
    assert gov.reserve("user-1") == 0.0
    assert gov.reserve("mbx:abc@TENANT") > 0.0


def test_throttle_halves_the_concurrency_window_and_success_restores_it() -> None:
    """AIMD per mailbox: a refusal halves the allowed requests in flight, successes grow it."""
    gov = MailboxGovernor(MailboxLimits(), Clock())
    gov.throttled("m", None)
    box = gov._box("m")
    assert box.window == 2.0
    for _ in range(10):
        gov.success("m")
    assert box.window == 4.0


def test_no_more_than_four_requests_in_flight_per_mailbox() -> None:
    """Many concurrent callers on one mailbox never hold more than 4 slots; another mailbox
    is not blocked by them."""

    async def run() -> tuple[int, int]:
        gov = MailboxGovernor(MailboxLimits(), Clock())
        release = asyncio.Event()
        in_flight = 0
        peak = 0

        async def call(box: str) -> None:
            nonlocal in_flight, peak
            async with gov.slot(box):
                in_flight += 1 if box == "a" else 0
                peak = max(peak, in_flight)
                await release.wait()
                in_flight -= 1 if box == "a" else 0

        tasks = [asyncio.create_task(call("a")) for _ in range(12)]
        await asyncio.sleep(0)
        await asyncio.wait_for(call_b_then_release(gov, release), timeout=5)
        await asyncio.gather(*tasks)
        return peak, gov.stats("a").peak_in_flight

    async def call_b_then_release(gov: MailboxGovernor, release: asyncio.Event) -> None:
        async with gov.slot("b"):
            pass
        release.set()

    peak, recorded = asyncio.run(run())
    assert peak == 4 and recorded == 4


@pytest.mark.parametrize(
    ("url", "mailbox"),
    [
        ("users/u1/messages/x/$value", "u1"),
        ("/users/u1/mailFolders/inbox/childFolders", "u1"),
        ("users/u1/calendars/c/events", "u1"),
        ("users/u1/contacts", "u1"),
        ("users/u1/todo/lists", "u1"),
        ("https://graph.example/v1.0/admin/exchange/mailboxes/MBX:1@t/folders?$top=5", "MBX:1@t"),
        (
            "https://outlook.example/api/gbeta/Mailboxes('MBX:1@t')/importItem?authtoken=s",
            "MBX:1@t",
        ),
        (
            "https://outlook.example/api/gv1.0/Mailboxes('MBX:1@t')/importItem?authtoken=s",
            "MBX:1@t",
        ),
        ("https://outlook.example/owa/x/Mailboxes('MBX:2@t')/importItem?authtoken=s", "MBX:2@t"),
        (
            "https://outlook.example/api/v2.0/Users('u1@t')/Messages('m')/AttachmentSessions('s')",
            "u1",
        ),
        ("users/u1", None),
        ("users/u1/settings/exchange", None),
        ("users/u1/memberOf", None),
        ("groups/g/members", None),
    ],
)
def test_mailbox_of(url: str, mailbox: str | None) -> None:
    """Outlook requests are charged to their mailbox; directory requests to none."""
    assert mailbox_of(url) == mailbox


def test_batch_inner_requests_are_charged_per_mailbox() -> None:
    """Each inner request of a $batch counts against its own mailbox."""
    body = {
        "requests": [
            {"id": "1", "method": "GET", "url": "/users/a/messages/1"},
            {"id": "2", "method": "GET", "url": "/users/a/messages/2"},
            {"id": "3", "method": "GET", "url": "/users/b/messages/3"},
            {"id": "4", "method": "GET", "url": "/users/b"},
        ]
    }
    assert batch_mailboxes(body) == {"a": 2, "b": 1}


@pytest.mark.parametrize("size", [0, 1, 2, 3, 1000, 1001, 1002])
def test_import_bytes_is_the_decoded_stream_size(size: int) -> None:
    """The upload charged for an import is the decoded item stream, computed without decoding."""
    data = base64.b64encode(b"x" * size).decode()
    assert import_bytes({"Data": data}) == size


# -- directory-write budget ---------------------------------------------------------------


def test_write_budget_is_the_published_one() -> None:
    """By default coexist paces directory writes to Microsoft's 3,000 per 150 s per app + tenant."""
    limits = WriteLimits()
    assert (limits.writes, limits.window_s) == (3000, 150.0)
    assert limits.rate == pytest.approx(20.0)


def test_a_fresh_budget_admits_its_writes_then_paces_at_the_rate() -> None:
    """A full budget lets its writes go at once; beyond it each write waits 1/rate more."""
    clock = Clock()
    budget = WriteBudget(WriteLimits(writes=10, window_s=5), clock)
    for _ in range(10):
        assert budget.delay() == 0.0
        budget.take()
    waits = []
    for _ in range(3):
        waits.append(budget.delay())
        clock.now += waits[-1]
        budget.take()
    assert waits == pytest.approx([0.5, 0.5, 0.5])


def test_writes_sent_when_the_budget_says_never_exceed_it() -> None:
    """Sending each write as soon as the budget covers it: over any horizon the writes taken
    are at most the window's writes plus the rate times the time elapsed."""
    clock = Clock()
    start = clock.now
    limits = WriteLimits(writes=50, window_s=10)
    budget = WriteBudget(limits, clock)
    for _ in range(500):
        clock.now += budget.delay()
        budget.take()
        budget.done()
        assert budget.taken <= limits.writes + limits.rate * (clock.now - start) + 1e-9
    assert budget.taken == 500 and budget.in_flight == 0


def test_an_empty_start_has_no_burst() -> None:
    """A budget that knows the service's window is spent (start_full=False) sends nothing
    before the rate has earned it."""
    clock = Clock()
    budget = WriteBudget(WriteLimits(writes=3000, window_s=150, start_full=False), clock)
    assert budget.delay() == pytest.approx(1 / 20)


def test_a_refusal_makes_the_writes_in_flight_a_debt() -> None:
    """The service refused one of 5 writes in flight: the budget then holds nothing, less the
    4 still in flight (the service counts them from what it gains next), so the next write
    waits for 5 writes' worth of refill."""
    clock = Clock()
    budget = WriteBudget(WriteLimits(writes=100, window_s=10), clock)
    for _ in range(5):
        budget.take()
    budget.refused()
    budget.done()
    assert budget.refusals == 1 and budget.in_flight == 4
    assert budget.delay() == pytest.approx(5 / 10)


def test_a_refusal_keeps_a_deeper_debt() -> None:
    """Writes already queued behind the budget stay queued after a refusal: it only ever
    lowers what the budget believes it holds."""
    clock = Clock()
    budget = WriteBudget(WriteLimits(writes=10, window_s=1, start_full=False), clock)
    for _ in range(20):
        budget.take()
    for _ in range(19):
        budget.done()
    budget.refused()
    assert budget.delay() == pytest.approx(21 / 10)


def test_a_write_larger_than_the_budget_waits_for_a_full_one_only() -> None:
    """A $batch costing more than the whole budget is sent once the budget is full, not never."""
    clock = Clock()
    budget = WriteBudget(WriteLimits(writes=10, window_s=1, start_full=False), clock)
    assert budget.delay(25) == pytest.approx(1.0)


def test_spend_paces_writes_only_and_keeps_arrival_order() -> None:
    """Reads (cost 0) pass straight through; writes leave in the order they asked, each
    counted in flight while it is sent."""

    async def run() -> tuple[list[int], list[int], WriteBudget]:
        budget = WriteBudget(WriteLimits(writes=1, window_s=0.002))
        order: list[int] = []
        in_flight: list[int] = []

        async def write(n: int) -> None:
            async with budget.spend(1):
                order.append(n)
                in_flight.append(budget.in_flight)
                await asyncio.sleep(0)

        async with budget.spend(0):
            assert budget.taken == 0
        await asyncio.gather(*(write(n) for n in range(8)))
        return order, in_flight, budget

    order, in_flight, budget = asyncio.run(run())
    assert order == list(range(8))
    assert all(n >= 1 for n in in_flight)
    assert budget.taken == 8 and budget.in_flight == 0


@pytest.mark.parametrize(
    ("method", "url", "body", "writes"),
    [
        ("GET", "users/u1", None, 0),
        ("PATCH", "users/u1", {}, 1),
        ("POST", "users/u1/assignLicense", {}, 1),
        ("POST", "groups/g/members/$ref", {}, 1),
        ("POST", "users/u1/messages", {}, 0),  # Outlook: the mailbox's budget
        ("PATCH", "admin/exchange/mailboxes/MBX:1@t/folders/f", {}, 0),
        (
            "POST",
            "$batch",
            {
                "requests": [
                    {"id": "1", "method": "PATCH", "url": "/users/a"},
                    {"id": "2", "method": "GET", "url": "/users/b"},
                    {"id": "3", "method": "POST", "url": "/groups/g/members/$ref"},
                    {"id": "4", "method": "POST", "url": "/users/a/messages"},
                ]
            },
            2,
        ),
    ],
)
def test_directory_writes_of_a_graph_request(
    method: str, url: str, body: object, writes: int
) -> None:
    """Only directory writes draw on the write budget; a $batch costs each inner one."""
    assert directory_writes(method, url, body) == writes
