"""Limit profiles: token buckets, time scaling, concurrency and seeded chaos."""

from __future__ import annotations

import time

from coexist.sandbox.limits import PUBLISHED, Limiter
from coexist.sandbox.model import Settings


def test_published_bucket_admits_capacity_then_throttles() -> None:
    """The directory-write bucket admits Microsoft's 3,000 then answers with a Retry-After."""
    lim = Limiter(Settings(profile="published"))
    key = ("tenant", "app")
    admitted = sum(lim.admit("directory_write", key) is None for _ in range(3000))
    assert admitted == 3000
    retry = lim.admit("directory_write", key)
    assert retry is not None and retry >= 1  # whole seconds at real time


def test_buckets_are_keyed_per_app_and_tenant() -> None:
    """Exhausting one app's bucket leaves another app's untouched."""
    lim = Limiter(Settings(profile="published"))
    for _ in range(3000):
        lim.admit("directory_write", ("t", "a"))
    assert lim.admit("directory_write", ("t", "a")) is not None
    assert lim.admit("directory_write", ("t", "b")) is None


def test_time_scale_shortens_retry_after() -> None:
    """With time_scale 1000 the wait is a fraction of a second and the ceiling 1000x higher."""
    lim = Limiter(Settings(profile="published", time_scale=1000))
    assert lim.admit("directory_write", ("t", "a"), cost=3000) is None
    retry = lim.admit("directory_write", ("t", "a"), cost=3000)
    assert retry is not None and retry < 1
    assert lim.ceiling_per_s("directory_write") == PUBLISHED["directory_write"].rate(1000)


def test_fast_profile_never_throttles() -> None:
    """The fast profile admits everything (tests are not slowed by limits)."""
    lim = Limiter(Settings(profile="fast"))
    assert all(lim.admit("directory_write", ("t", "a")) is None for _ in range(5000))


def test_outlook_concurrency_is_four_per_mailbox() -> None:
    """A fifth concurrent request on one mailbox is refused under published limits."""
    lim = Limiter(Settings(profile="published"))
    key = ("app", "mailbox")
    with (
        lim.concurrency(key) as a,
        lim.concurrency(key) as b,
        lim.concurrency(key) as c,
        lim.concurrency(key) as d,
        lim.concurrency(key) as e,
    ):
        assert (a, b, c, d, e) == (True, True, True, True, False)
    with lim.concurrency(key) as again:
        assert again


def test_chaos_is_deterministic_for_a_seed() -> None:
    """The same seed gives the same sequence of faults."""

    def faults(seed: int) -> list[str | None]:
        lim = Limiter(Settings(profile="chaos", seed=seed, chaos_rate=0.3))
        return [lim.chaos() for _ in range(200)]

    assert faults(3) == faults(3)
    assert faults(3) != faults(4)
    assert {"throttle", "unavailable", "reset"} <= set(faults(3))


def test_sync_state_expiry_by_age_and_on_demand() -> None:
    """A sync state expires once older than the (time-scaled) maximum age, or when expired on demand."""
    from coexist.sandbox.model import Settings, World

    s = Settings(time_scale=10.0, sync_state_max_age_s=100.0)
    assert not s.sync_state_expired(1000.0, now=1009.0)
    assert s.sync_state_expired(1000.0, now=1011.0)
    world = World(tenants={}, settings=s)
    issued = time.time()
    assert not s.sync_state_expired(issued)
    world.expire_sync_states()
    assert s.sync_state_expired(issued)
