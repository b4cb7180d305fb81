"""Sandbox throughput: can later benchmarks trust the sandbox not to be their bottleneck?

Starts `coexist sandbox serve` in its own process (one uvicorn worker: one core),
then drives it over HTTPS from this process with real tokens and httpx. Prints
one JSON object:

- `requests_per_s.users_page`       GET /v1.0/users?$top=100 (a page of 100 users)
- `requests_per_s.invoke_command`   Get-Mailbox -Identity <upn> over InvokeCommand
- `requests_per_s.batch`            POST /v1.0/$batch of 20 GET /users/{id} (outer calls/s)
- `baseline_requests_per_s`         the unauthenticated OpenID configuration document on the
                                    same server in the same run: the HTTP+TLS floor cost
- `goal_requests_per_s`             500 (issue 2)
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from azure.identity import ClientSecretCredential

DURATION_S = float(os.environ.get("BENCH_SECONDS", "3"))
CONCURRENCY = 8
USERS = 1000


def start_server(state: Path) -> subprocess.Popen[str]:
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
            "fast",
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


async def measure(call: Callable[[], Awaitable[None]]) -> float:
    done = 0
    stop = time.perf_counter() + DURATION_S

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await call()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return done / (time.perf_counter() - t0)


async def run(conn: dict[str, Any]) -> dict[str, Any]:
    src = conn["tenants"]["source"]
    cred = ClientSecretCredential(
        src["tenant_id"],
        src["client_id"],
        src["client_secret"],
        authority=src["authority"],
        disable_instance_discovery=True,
        connection_verify=conn["ca_file"],
    )
    graph_tok = cred.get_token("https://graph.microsoft.com/.default").token
    exo_tok = cred.get_token("https://outlook.office365.com/.default").token
    verify = ssl.create_default_context(cafile=conn["ca_file"])
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(verify=verify, limits=limits, timeout=30) as http:
        g = {"Authorization": f"Bearer {graph_tok}"}
        users = (
            await http.get(src["graph_url"] + "/users", params={"$top": "100"}, headers=g)
        ).json()
        ids = [u["id"] for u in users["value"]][:20]
        upn = users["value"][0]["userPrincipalName"]
        e = {
            "Authorization": f"Bearer {exo_tok}",
            "X-ResponseFormat": "json",
            "X-CmdletName": "Get-Mailbox",
        }
        body = {"CmdletInput": {"CmdletName": "Get-Mailbox", "Parameters": {"Identity": upn}}}
        batch = {
            "requests": [
                {"id": str(i), "method": "GET", "url": f"/users/{u}"} for i, u in enumerate(ids)
            ]
        }

        async def oidc() -> None:
            r = await http.get(
                f"{src['authority']}/{src['tenant_id']}/v2.0/.well-known/openid-configuration"
            )
            r.raise_for_status()

        async def users_page() -> None:
            r = await http.get(src["graph_url"] + "/users", params={"$top": "100"}, headers=g)
            r.raise_for_status()

        async def invoke() -> None:
            r = await http.post(src["exo_url"], json=body, headers=e)
            r.raise_for_status()

        async def batch_call() -> None:
            r = await http.post(src["graph_url"] + "/$batch", json=batch, headers=g)
            r.raise_for_status()

        baseline = await measure(oidc)
        figures = {
            "users_page": await measure(users_page),
            "invoke_command": await measure(invoke),
            "batch": await measure(batch_call),
        }
    return {
        "benchmark": "sandbox",
        "duration_s_per_figure": DURATION_S,
        "concurrency": CONCURRENCY,
        "users_in_tenant": USERS,
        "requests_per_s": {k: round(v, 1) for k, v in figures.items()},
        "batch_inner_requests_per_s": round(figures["batch"] * len(ids), 1),
        "baseline_requests_per_s": round(baseline, 1),
        "goal_requests_per_s": 500,
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        proc = start_server(state)
        try:
            conn = json.loads((state / "connection.json").read_text())
            result = asyncio.run(run(conn))
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
