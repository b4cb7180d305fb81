"""Client CPU per HTTP request of the Outlook pools' HTTP paths (issue 16, deliverable 5).

One JSON object: for each client, `time.process_time()` of this process per request, for
POSTs of a ~3 KB JSON body answered by a small JSON body (an importItem's shape), over TLS,
keep-alive, 4 requests in flight, to a uvicorn server in another process (its CPU is not
counted). Clients: httpx's default transport (httpcore on anyio), and the Outlook pools'
`tenants.transport.Pool`. BENCH_REQUESTS sets the count (2000).

    .venv/bin/python bench/http_client_bench.py
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trustme

from coexist.tenants.transport import Pool, Target

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "2000"))
IN_FLIGHT = 4
BODY = json.dumps({"FolderId": "A" * 120, "Mode": "create", "Data": "QUJD" * 700}).encode()

SERVER = """
import sys
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    more = True
    while more:
        msg = await receive()
        more = msg.get("more_body", False)
    body = b'{"itemId": "AAMkAGI2TAAA=", "changeKey": "CQAAABYAAAA"}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
import uvicorn
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), ssl_certfile=sys.argv[2],
            ssl_keyfile=sys.argv[3], log_level="warning", access_log=False)
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def _run(send: Any) -> float:
    """CPU ms per request of `send()`, after a warm-up."""
    for _ in range(IN_FLIGHT * 4):
        await send()
    per_task = REQUESTS // IN_FLIGHT

    async def worker() -> None:
        for _ in range(per_task):
            await send()

    start = time.process_time()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return (time.process_time() - start) * 1000 / (per_task * IN_FLIGHT)


async def main() -> dict[str, Any]:
    ca = trustme.CA()
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
        issued = ca.issue_cert("127.0.0.1")
        issued.cert_chain_pems[0].write_to_path(str(cert))
        issued.private_key_pem.write_to_path(str(key))
        port = _port()
        server = subprocess.Popen([sys.executable, "-c", SERVER, str(port), str(cert), str(key)])
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            url = f"https://127.0.0.1:{port}/api/v2.0/Mailboxes('x')/importItem?token=abc"
            headers = {"Content-Type": "application/json"}
            out: dict[str, Any] = {"requests": REQUESTS, "in_flight": IN_FLIGHT}

            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            async with httpx.AsyncClient(verify=ctx, timeout=60, limits=limits) as client:
                parsed = httpx.URL(url)

                async def via_httpx() -> None:
                    r = await client.post(parsed, content=BODY, headers=headers)
                    assert r.status_code == 200 and r.json()["itemId"]

                out["httpx_default_ms"] = round(await _run(via_httpx), 3)

            pool = Pool(ctx, 60, 64)
            target = Target(url)

            async def via_pool() -> None:
                r = await pool.request("POST", target, headers, (BODY,))
                assert r.status_code == 200 and r.json()["itemId"]

            out["pool_ms"] = round(await _run(via_pool), 3)
            await pool.aclose()
            return out
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main())))
