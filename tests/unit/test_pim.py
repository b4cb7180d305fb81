"""Recurrence expansion, time zones and the PIM store (no HTTP)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from coexist.sandbox.pim import CALENDAR, PimStore, occurrence_dates, zone


def rec(pattern: dict[str, Any], rng: dict[str, Any]) -> dict[str, Any]:
    return {"pattern": {"interval": 1, **pattern}, "range": {"startDate": "2024-01-01", **rng}}


FAR = dt.date(2030, 1, 1)


def test_daily_numbered() -> None:
    """daily, interval 2, 3 occurrences."""
    r = rec({"type": "daily", "interval": 2}, {"type": "numbered", "numberOfOccurrences": 3})
    assert [d.isoformat() for d in occurrence_dates(r, FAR)] == [
        "2024-01-01",
        "2024-01-03",
        "2024-01-05",
    ]


def test_weekly_two_days_until_end_date() -> None:
    """weekly Mon+Thu every 2 weeks up to an end date (inclusive)."""
    r = rec(
        {
            "type": "weekly",
            "interval": 2,
            "daysOfWeek": ["monday", "thursday"],
            "firstDayOfWeek": "sunday",
        },
        {"type": "endDate", "endDate": "2024-01-18"},
    )
    assert [d.isoformat() for d in occurrence_dates(r, FAR)] == [
        "2024-01-01",
        "2024-01-04",
        "2024-01-15",
        "2024-01-18",
    ]


def test_monthly_and_yearly_patterns() -> None:
    """absoluteMonthly skips short months; relativeMonthly 'last friday'; absoluteYearly."""
    r = rec(
        {"type": "absoluteMonthly", "dayOfMonth": 31},
        {"type": "numbered", "numberOfOccurrences": 3},
    )
    assert [d.isoformat() for d in occurrence_dates(r, FAR)] == [
        "2024-01-31",
        "2024-03-31",
        "2024-05-31",
    ]
    r = rec(
        {"type": "relativeMonthly", "daysOfWeek": ["friday"], "index": "last"},
        {"type": "numbered", "numberOfOccurrences": 2},
    )
    assert [d.isoformat() for d in occurrence_dates(r, FAR)] == ["2024-01-26", "2024-02-23"]
    r = rec({"type": "absoluteYearly", "month": 2, "dayOfMonth": 29}, {"type": "noEnd"})
    assert [d.isoformat() for d in occurrence_dates(r, dt.date(2033, 1, 1))] == [
        "2024-02-29",
        "2028-02-29",
        "2032-02-29",
    ]


def test_no_end_stops_at_until() -> None:
    """noEnd series are bounded by the caller's horizon."""
    r = rec({"type": "daily"}, {"type": "noEnd"})
    assert len(list(occurrence_dates(r, dt.date(2024, 1, 10)))) == 10


def test_zones_windows_and_iana() -> None:
    """Windows and IANA names resolve; unknown names are rejected."""
    assert zone("UTC") is dt.UTC
    assert str(zone("Pacific Standard Time")) == "America/Los_Angeles"
    assert str(zone("Europe/Paris")) == "Europe/Paris"
    with pytest.raises(KeyError):
        zone("Mars Standard Time")


def test_store_defaults_items_and_reset(tmp_path: Path) -> None:
    """Default folders appear on first touch; items round-trip; reset forgets everything."""
    store = PimStore(tmp_path / "pim.db")
    cal = store.default_folder("source", "u1", CALENDAR)
    assert cal.display_name == "Calendar" and cal.well_known == "calendar"
    item = store.create_item("source", "u1", cal.id, "event", {"subject": "x"})
    updated = store.update_item(item.id, {"subject": "y"})
    assert updated.props == {"subject": "y"} and updated.change_key != item.change_key
    assert store.item("target", "u1", item.id) is None
    store.reset()
    assert store.item("source", "u1", item.id) is None
    store.close()


def test_localize_renames_default_folders(tmp_path: Path) -> None:
    """A Japanese mailbox's default calendar is '予定表' and is still the default calendar."""
    store = PimStore(tmp_path / "pim.db")
    store.localize("source", "u1", "ja")
    assert store.default_folder("source", "u1", CALENDAR).display_name == "予定表"
