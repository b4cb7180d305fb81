"""Provisioning throughput against Microsoft's published directory-write limit.

Two runs of `coexist provision` for every user mailbox of a 2,000-user sandbox
pair, each sandbox in its own process (so the client does not share its core):

1. `published` profile, time-scaled, rate buckets drained at the start: the
   sustained ceiling is 3,000 directory writes per 150 s per app and tenant
   (FACTS.md) times `time_scale`. The project's `engine.directory_write_budget`
   is the published 3,000 scaled the same way, so coexist paces its writes to the
   sandbox's budget as it would to Microsoft's. `write_ceiling_fraction` is the
   achieved write rate over that ceiling; 1.0 means coexist keeps the limit
   saturated.
2. `fast` profile (no limits) with the same users and a budget too large to bind:
   what the client itself can do (`unthrottled_writes_per_s`), so the ceiling run
   is known to be bound by the limit, not by coexist.

Prints one JSON object with both, and `calls_per_user` (HTTP calls to Graph and
Exchange, both tenants, per provisioned user; refused attempts count, so the
figure at the ceiling over the unthrottled one is what leaning on 429s costs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from coexist import commands
from coexist.sandbox.limits import PUBLISHED
from coexist.tenants.throttle import DIRECTORY_WRITE_WINDOW_S

USERS = int(os.environ.get("BENCH_USERS", "2000"))
TIME_SCALE = float(os.environ.get("BENCH_TIME_SCALE", "5"))
# The client's budget per 150 s: the sandbox's scaled ceiling, and for the unthrottled run
# one that never binds.
PACED_BUDGET = round(PUBLISHED["directory_write"].rate(TIME_SCALE) * DIRECTORY_WRITE_WINDOW_S)
UNBOUND_BUDGET = 10**9


def serve(state: Path, profile: str) -> subprocess.Popen[str]:
    args = [
        sys.executable,
        "-m",
        "coexist.cli",
        "sandbox",
        "serve",
        "--state",
        str(state),
        "--users",
        str(USERS),
        "--profile",
        profile,
        "--time-scale",
        str(TIME_SCALE),
    ]
    if profile == "published":
        args.append("--drained")
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip() == "ready":
            return proc
    raise SystemExit("sandbox did not start")


def provision_all(profile: str, budget: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        proc = serve(base / "sandbox", profile)
        try:
            conn = str(base / "sandbox" / "connection.json")
            project = base / "project"
            commands.init(
                project,
                overrides={
                    "source.sandbox_connection": conn,
                    "target.sandbox_connection": conn,
                    "domains.destination_domain": "contoso.example",
                    "scope.group": "",  # every user mailbox of the source
                    "engine.concurrency_per_tenant": 16,
                    "engine.directory_write_budget": budget,
                },
            )
            commands.discover(project)
            start = time.perf_counter()
            result = commands.provision(project, all_users=True)
            elapsed = time.perf_counter() - start
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    writes = result["writes"]["source"] + result["writes"]["target"]
    calls = result["calls"]["source"] + result["calls"]["target"]
    # Users provisioned: the batch less the users any step failed for (provision runs more
    # than one step per user, so step counts are not user counts).
    users = result["users"] - len({f["item"] for f in result["failed"]})
    return {
        "users": users,
        "failed": len(result["failed"]),
        "elapsed_s": elapsed,
        "writes": writes,
        "calls": calls,
    }


def main() -> None:
    ceiling = PUBLISHED["directory_write"].rate(TIME_SCALE)
    limited = provision_all("published", PACED_BUDGET)
    free = provision_all("fast", UNBOUND_BUDGET)
    achieved = limited["writes"] / limited["elapsed_s"]
    print(
        json.dumps(
            {
                "benchmark": "provision",
                "users": limited["users"],
                "failed": limited["failed"] + free["failed"],
                "time_scale": TIME_SCALE,
                "client_write_budget_per_150s": PACED_BUDGET,
                "elapsed_s": round(limited["elapsed_s"], 2),
                "directory_writes": limited["writes"],
                "writes_per_s": round(achieved, 1),
                "ceiling_writes_per_s": round(ceiling, 1),
                "write_ceiling_fraction": round(achieved / ceiling, 3),
                "unthrottled_writes_per_s": round(free["writes"] / free["elapsed_s"], 1),
                "calls_per_user": round(limited["calls"] / max(1, limited["users"]), 2),
                "calls_per_user_unthrottled": round(free["calls"] / max(1, free["users"]), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
