"""bench/ews_bench.py runs end to end at `--quick` sizes and prints its one JSON object.

Keys and shapes only: a timing figure from a loaded test machine proves nothing, so no rate
is asserted (README quotes the full run's figures).
"""

from __future__ import annotations

from tests.benchrun import run_quick


def test_the_quick_ews_bench_prints_every_figure() -> None:
    """The quick run moves every mailbox it made (Exchange -> Exchange under delegation,
    impersonation and unthrottled, Microsoft 365 -> WorkMail, the memory mailbox) and prints
    each headline figure with the budget charges behind its ceiling."""
    out = run_quick("ews_bench.py")
    for access in ("delegation", "impersonation"):
        part = out["ews_to_ews"][access]
        assert part["copied"] == part["items"] > 0, part
        assert isinstance(out["items_per_s"][access], float)
        assert isinstance(out["mb_per_s"][access], float)
        assert isinstance(out["ews_budget_fraction"][access], float)
        budget = part["budget"]
        assert {"source", "target"} <= set(budget) and budget["ceiling_items_per_s"] > 0
    # Impersonation spends one budget per mailbox, delegation one for the account.
    assert out["ews_to_ews"]["impersonation"]["budget"]["target"]["keys"] == 2
    assert out["ews_to_ews"]["delegation"]["budget"]["target"]["keys"] == 1
    workmail = out["graph_to_workmail"]
    assert workmail["copied"] == workmail["items"] and "source" not in workmail["budget"]
    assert out["memory"]["copied"] == out["memory"]["items"]
    assert isinstance(out["peak_rss_mb"], float) and out["peak_rss_mb"] > 0
    # The face validated every request and response (payloads by strict base64 decoding).
    assert out["face_validation"]["schema"] is True
