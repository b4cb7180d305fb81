"""The sandbox's DNS zones as state: saved and loaded with the World, old states without
them load, record changes keep a CNAME alone and bump the zone's serial."""

from __future__ import annotations

from pathlib import Path

import pytest

from coexist.sandbox import seed
from coexist.sandbox.dns import DnsError, ensure_zones, set_records, show
from coexist.sandbox.model import World
from coexist.sandbox.server import profile_settings

DOMAIN = seed.TARGET_DOMAIN


def world() -> World:
    w = seed.generate(2, 3, profile_settings("fast", 2))
    ensure_zones(w)
    return w


def test_zones_round_trip_through_state(tmp_path: Path) -> None:
    """A changed zone is saved and loaded with its records and serial."""
    w = world()
    set_records(w, DOMAIN, "MX", ["10 mx.new.example"])
    w.save(tmp_path)
    loaded = World.load(tmp_path)
    assert loaded.dns[DOMAIN].serial == w.dns[DOMAIN].serial == 2
    assert show(loaded, DOMAIN) == show(w, DOMAIN)


def test_state_without_zones_loads_and_gets_defaults(tmp_path: Path) -> None:
    """A state saved before DNS existed loads with no zones; ensure_zones makes the defaults."""
    w = world()
    data = w.to_dict()
    del data["dns"]
    old = World.from_dict(data)
    assert old.dns == {}
    assert sorted(ensure_zones(old)) == sorted(w.dns)


def test_change_counts_as_a_world_change() -> None:
    """The saver notices a DNS change (World.version grows)."""
    w = world()
    before = w.version
    set_records(w, f"www.{DOMAIN}", "A", ["192.0.2.1"])
    assert w.version > before


def test_cname_stands_alone() -> None:
    """Setting a CNAME replaces the name's other records; another type beside it is refused."""
    w = world()
    set_records(w, f"mail.{DOMAIN}", "A", ["192.0.2.1"])
    set_records(w, f"mail.{DOMAIN}", "CNAME", ["mail.elsewhere.example"])
    rows = [r for r in show(w, DOMAIN) if r["name"] == f"mail.{DOMAIN}"]
    assert [(r["type"], r["value"]) for r in rows] == [("CNAME", "mail.elsewhere.example.")]
    with pytest.raises(DnsError, match="has a CNAME"):
        set_records(w, f"mail.{DOMAIN}", "TXT", ["x"])


def test_long_txt_is_split_into_strings() -> None:
    """A TXT text over 255 bytes is stored as several strings of at most 255 (RFC 1035 3.3.14)."""
    w = world()
    set_records(w, f"long.{DOMAIN}", "TXT", ["a" * 600])
    [row] = [r for r in show(w, DOMAIN) if r["name"] == f"long.{DOMAIN}"]
    assert row["value"] == " ".join(['"' + "a" * 255 + '"'] * 2 + ['"' + "a" * 90 + '"'])
