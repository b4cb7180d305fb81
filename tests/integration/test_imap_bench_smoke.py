"""bench/imap_bench.py runs end to end at `--quick` sizes and prints its one JSON object.

Keys and shapes only: a timing figure from a loaded test machine proves nothing, so no rate
is asserted (README quotes the full run's figures).
"""

from __future__ import annotations

from coexist.sandbox.dovecot import find_binary
from tests.benchrun import run_quick
from tests.dovecot import missing


def test_the_quick_imap_bench_prints_every_figure() -> None:
    """The quick run moves every mailbox it made (IMAP -> IMAP by coexist and by doveadm,
    IMAP -> sandbox Microsoft 365, the memory mailbox) and prints each headline figure
    with the measurements behind it."""
    if find_binary("dovecot") is None or find_binary("doveadm") is None:
        missing()
    out = run_quick("imap_bench.py")
    assert set(out["imap_vs_doveadm_ratio"]) == {"small", "large"}
    for size in ("small", "large"):
        part = out["imap_to_imap"][size]
        for tool in ("coexist", "doveadm"):
            assert {"items", "msgs_per_s", "mb_per_s", "elapsed_s"} <= set(part[tool])
        # Both tools moved the whole mailbox: the ratio compares the same work.
        assert part["coexist"]["in_target"] == part["doveadm"]["items"] == part["source_items"]
        # Each run's CPU per process (the Dovecots' from /proc): what the load cannot hide.
        for run in part["coexist"]["runs_cpu_s"]:
            assert set(run) == {"client", "source_dovecot", "target_dovecot"}
            assert run["source_dovecot"] > 0 and run["target_dovecot"] > 0
        for run in part["doveadm"]["runs_cpu_s"]:
            assert run["doveadm"] > 0 and run["source_dovecot"] > 0
    for figure in ("upload_ceiling_fraction", "request_ceiling_fraction", "peak_rss_mb"):
        assert isinstance(out[figure], float), (figure, out)
    m365 = out["imap_to_m365"]
    assert "error" not in m365["upload"] and "error" not in m365["requests"]
    assert m365["requests"]["copied"] == out["imap_to_imap"]["small"]["source_items"]
    assert out["memory"]["in_target"] == out["memory"]["items"]
