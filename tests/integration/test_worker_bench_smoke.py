"""bench/worker_bench.py runs end to end at `--quick` sizes and prints its one JSON object.

Keys and shapes only: a timing figure from a loaded test machine proves nothing, so no rate
is asserted (README quotes the full run's figures).
"""

from __future__ import annotations

from tests.benchrun import run_quick


def test_the_quick_worker_bench_prints_every_figure() -> None:
    """Each step's workers move every new item of every mailbox through queued prestage
    jobs, all jobs succeed, and each step after the first has its scaling_efficiency."""
    out = run_quick("worker_bench.py")
    steps = out["steps"]
    assert [s["workers"] for s in steps] == [1, 2]
    for step in steps:
        assert step["items"] == out["mailboxes"] * out["items_per_mailbox_per_step"], step
        assert step["jobs"] == {"succeeded": out["mailboxes"]} and not step["failed"], step
        assert isinstance(step["items_per_s"], float) and step["items_per_s"] > 0
        assert set(step["cpu_s"]) == {"workers", "sandbox", "queueing_command"}
    assert "scaling_efficiency" not in steps[0]
    assert isinstance(steps[1]["scaling_efficiency"], float)
    assert out["cores"] >= 1 and "bound by this machine" in out["note"]
