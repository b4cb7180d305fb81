"""The `realistic` profile's timings: seeded per object, in range, scaled, and published limits on."""

from __future__ import annotations

import time

import pytest

from coexist.sandbox.limits import Limiter
from coexist.sandbox.model import Settings
from coexist.sandbox.server import profile_settings

ALIASES = [f"user{i}" for i in range(200)]


def test_delays_are_fixed_by_seed_and_key_not_by_call_order() -> None:
    """The same seed and alias give the same delay, whichever order objects are asked for."""
    a = profile_settings("realistic", 7)
    b = profile_settings("realistic", 7)
    forward = [a.delay("provisioning", k) for k in ALIASES]
    backward = [b.delay("provisioning", k) for k in reversed(ALIASES)]
    assert forward == list(reversed(backward))
    assert a.delay("provisioning", "Alice") == a.delay("provisioning", "alice")  # aliases: no case
    other = profile_settings("realistic", 8)
    assert [other.delay("provisioning", k) for k in ALIASES] != forward


def test_realistic_provisioning_is_five_to_thirty_minutes_and_spread() -> None:
    """Mailbox provisioning after licensing is 5-30 minutes, different per user."""
    s = profile_settings("realistic", 3)
    delays = [s.delay("provisioning", k) for k in ALIASES]
    assert all(300.0 <= d <= 1800.0 for d in delays)
    assert max(delays) - min(delays) > 900.0  # drawn across the range, not one value
    assert all(60.0 <= s.delay("replication", k) <= 600.0 for k in ALIASES)
    assert all(0.0 <= s.delay("rest", k) <= 600.0 for k in ALIASES)
    assert all(0.0 <= s.delay("graph_patch", k) <= 300.0 for k in ALIASES)


@pytest.mark.parametrize("kind", ["provisioning", "replication", "rest", "graph_patch"])
def test_time_scale_divides_every_delay(kind: str) -> None:
    """At time scale 60 minutes become seconds: each delay is exactly the unscaled one / 60."""
    real = profile_settings("realistic", 5)
    fast = profile_settings("realistic", 5, time_scale=60)
    for key in ALIASES[:20]:
        assert fast.delay(kind, key) == pytest.approx(real.delay(kind, key) / 60)  # type: ignore[arg-type]
    assert all(5.0 <= fast.delay("provisioning", k) <= 30.0 for k in ALIASES)


def test_a_range_without_a_high_end_is_its_low_end() -> None:
    """Profiles that set one figure (fast, chaos, tests) keep exactly that figure."""
    s = Settings(provisioning_delay_s=0.5)
    assert {s.delay("provisioning", k) for k in ALIASES} == {0.5}
    assert profile_settings("fast", 1).delay("replication", "x") == 0.0


def test_realistic_enforces_the_published_limits() -> None:
    """Under realistic the directory-write bucket throttles after Microsoft's 3,000, as published."""
    lim = Limiter(profile_settings("realistic", 1))
    assert lim.enforcing
    assert sum(lim.admit("directory_write", ("t", "a")) is None for _ in range(3001)) == 3000


def test_only_exchange_created_objects_replicate_under_realistic() -> None:
    """Exchange's objects reach Graph after their replication delay; Graph's own are read back."""
    s = profile_settings("realistic", 9, time_scale=60)
    lim = Limiter(s)
    before = time.time()
    at = lim.visible_at("newbie")
    after = time.time()
    lag = s.delay("replication", "newbie")
    assert before + lag <= at <= after + lag
    assert lim.visible_at("sg-copy", origin="graph") == 0.0
    assert Limiter(profile_settings("fast", 9)).visible_at("newbie") == 0.0


def test_graph_refuses_patch_for_a_window_only_when_migrating() -> None:
    """`graph_writable_at` follows visibility by the seeded window; other refusal modes set none."""
    s = profile_settings("realistic", 4, time_scale=60)
    lim = Limiter(s)
    visible = time.time() + 5
    assert lim.graph_writable_at(visible, "newbie") == pytest.approx(
        visible + s.delay("graph_patch", "newbie")
    )
    s.graph_patch_refusal = "external"
    assert lim.graph_writable_at(visible, "newbie") == 0.0
