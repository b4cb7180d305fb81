"""Provisioning throughput against Microsoft's published directory-write limit.

Serves a 2,000-user sandbox pair under the `published` profile (time-scaled, in
its own process so the client does not share its core), discovers every user
mailbox, then times `coexist provision` for all of them. Prints one JSON object:

- `write_ceiling_fraction`: directory writes achieved over what the limit allows
  in the same run — 3,000 writes per 150 s per app and tenant (FACTS.md), i.e.
  the bucket's burst capacity plus its sustained rate times the elapsed time,
  both scaled by `time_scale`;
- `calls_per_user`: HTTP calls (Graph + Exchange, both tenants) per provisioned user;
- the raw figures behind them.
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

from coexist import commands
from coexist.sandbox.limits import PUBLISHED

USERS = int(os.environ.get("BENCH_USERS", "2000"))
TIME_SCALE = float(os.environ.get("BENCH_TIME_SCALE", "10"))


def serve(state: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
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
            "published",
            "--time-scale",
            str(TIME_SCALE),
        ],
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


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        proc = serve(base / "sandbox")
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
                },
            )
            commands.discover(project)
            start = time.perf_counter()
            result = commands.provision(project)
            elapsed = time.perf_counter() - start
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    created = result["steps"].get("ok", 0)
    writes = result["writes"]["source"] + result["writes"]["target"]
    limit = PUBLISHED["directory_write"]
    rate = limit.rate(TIME_SCALE)
    allowed = limit.capacity + rate * elapsed
    calls = result["calls"]["source"] + result["calls"]["target"]
    print(
        json.dumps(
            {
                "benchmark": "provision",
                "users": created,
                "failed": len(result["failed"]),
                "elapsed_s": round(elapsed, 2),
                "time_scale": TIME_SCALE,
                "directory_writes": writes,
                "writes_per_s": round(writes / elapsed, 1),
                "ceiling_writes_per_s": round(rate, 1),
                "burst_capacity": limit.capacity,
                "allowed_writes_in_run": round(allowed),
                "write_ceiling_fraction": round(writes / allowed, 3),
                "calls_per_user": round(calls / max(1, created), 2),
            }
        )
    )


if __name__ == "__main__":
    main()
