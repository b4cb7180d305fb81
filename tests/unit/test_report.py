"""The report's pieces that need no project: throughput buckets, the chart, CSV columns and
the SMTP relay's settings read from the environment."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from coexist import report
from coexist.errors import InputError
from coexist.journal.schema import PASS_KINDS

T0 = dt.datetime(2026, 12, 5, 4, 0, 0, tzinfo=dt.UTC)


def a_pass(start_s: float, end_s: float, size: int, copied: int) -> dict[str, Any]:
    return {
        "started_at": T0 + dt.timedelta(seconds=start_s),
        "finished_at": T0 + dt.timedelta(seconds=end_s),
        "counts": {"bytes": size, "copied": copied},
    }


def test_throughput_spreads_each_pass_over_its_duration_and_keeps_every_byte() -> None:
    """A pass's bytes go to the buckets its duration covers, in proportion; the buckets sum
    to what the passes copied, and the width keeps the bucket count bounded."""
    flow = report.throughput([a_pass(0, 20, 2000, 20), a_pass(10, 30, 1000, 10)])
    assert flow["bucket_seconds"] == 1
    assert sum(b["bytes"] for b in flow["buckets"]) == 3000
    assert sum(b["items"] for b in flow["buckets"]) == 30
    assert flow["buckets"][0]["bytes"] == 100  # 2000 B over 20 s
    assert flow["buckets"][15]["bytes"] == 150  # both passes running
    long = report.throughput([a_pass(0, 7 * 3600, 10**9, 1000)])
    assert len(long["buckets"]) <= report.MAX_BUCKETS
    assert sum(b["bytes"] for b in long["buckets"]) == pytest.approx(10**9, abs=10)


def test_throughput_and_chart_without_a_copying_pass_are_empty() -> None:
    """A project whose passes copied nothing (or did not end) has no bars to draw."""
    running = {**a_pass(0, 1, 10, 1), "finished_at": None}
    flow = report.throughput([running, a_pass(0, 5, 0, 0)])
    assert flow["buckets"] == []
    assert report.chart(flow)["bars"] == []


def test_csv_has_a_column_pair_per_pass_kind() -> None:
    """Every journal pass kind has its items and bytes columns, so they sum to the user's."""
    assert set(report.PASS_ORDER) == set(PASS_KINDS)
    for kind in PASS_KINDS:
        assert {f"{kind}_items", f"{kind}_bytes"} <= set(report.CSV_COLUMNS)


RELAY = {"COEXIST_SMTP_HOST": "smtp.example.com", "COEXIST_SMTP_FROM": "c@example.com"}


def test_smtp_settings_default_ports_and_refuse_what_cannot_work() -> None:
    """STARTTLS on 587 by default, implicit TLS on 465; a missing host or sender, an unknown
    security mode, half a login or a missing CA file is refused before anything is sent,
    naming the variable and never echoing the password."""
    assert report.smtp_settings(RELAY)["port"] == 587
    assert report.smtp_settings({**RELAY, "COEXIST_SMTP_SECURITY": "TLS"})["port"] == 465
    bad: list[dict[str, str]] = [
        {"COEXIST_SMTP_FROM": "c@example.com"},
        {"COEXIST_SMTP_HOST": "smtp.example.com"},
        {**RELAY, "COEXIST_SMTP_SECURITY": "none"},
        {**RELAY, "COEXIST_SMTP_PORT": "smtp"},
        {**RELAY, "COEXIST_SMTP_PASSWORD": "hunter2-secret"},
        {**RELAY, "COEXIST_SMTP_USER": "u"},
        {**RELAY, "COEXIST_SMTP_CA_FILE": "/nonexistent/ca.pem"},
    ]
    for env in bad:
        with pytest.raises(InputError) as err:
            report.smtp_settings(env)
        assert "COEXIST_SMTP_" in str(err.value)
        assert "hunter2-secret" not in str(err.value)
