"""One plain function per command. The click shell (`cli.py`) only parses and renders;
tests call these directly.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from coexist.errors import InputError
from coexist.tenants.auth import TenantEndpoint
from coexist.tenants.exo import ExoRunner
from coexist.tenants.graph import GraphAdapter


# -- sandbox -------------------------------------------------------------------------
def sandbox_serve(
    state: Path,
    *,
    seed: int = 1,
    users: int = 50,
    profile: str = "fast",
    port: int = 0,
    time_scale: float = 1.0,
    ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Serve the sandbox pair until interrupted; `ready` gets the connection info."""
    from coexist.sandbox.server import Sandbox, run_forever

    sb = Sandbox(state, seed=seed, users=users, profile=profile, port=port, time_scale=time_scale)
    run_forever(sb, lambda s: ready(s.connection) if ready else None)


def sandbox_deliver(
    state: Path, to: str, sender: str | None = None, tenant: str | None = None
) -> dict[str, Any]:
    """Route one message through the sandbox whose state is in `state` (running or not)."""
    from coexist.sandbox.model import STATE_FILE, World
    from coexist.sandbox.routing import route

    if not (state / STATE_FILE).exists():
        raise InputError(
            f"no sandbox state in {state} (missing {STATE_FILE})",
            next_step=f"coexist sandbox serve --state {state}",
        )
    world = World.load(state)
    result: dict[str, Any] = route(world, to, sender=sender, tenant_hint=tenant).to_dict()
    return result


# -- demo ----------------------------------------------------------------------------
async def tenant_summary(ep: TenantEndpoint) -> dict[str, Any]:
    """What an operator sees first about a tenant, read through Graph and Exchange."""
    async with GraphAdapter(ep) as graph, ExoRunner(ep) as exo:
        users = await graph.list_all(
            "users", {"$select": "id,userPrincipalName,usageLocation", "$top": "999"}
        )
        groups = await graph.list_all(
            "groups", {"$select": "id,displayName,mailEnabled,securityEnabled", "$top": "999"}
        )
        skus = (await graph.send("GET", "subscribedSkus"))["value"]
        org = (await graph.send("GET", "organization"))["value"][0]
        recipients = await exo.run("Get-Recipient", ResultSize="Unlimited")
        domains = await exo.run("Get-AcceptedDomain")
        policy = await exo.run("Get-HostedOutboundSpamFilterPolicy", Identity="Default")
    kinds = Counter(str(r.get("RecipientTypeDetails")) for r in recipients)
    return {
        "organization": org.get("displayName"),
        "tenant_id": ep.tenant_id,
        "users": len(users),
        "groups": len(groups),
        "recipients": dict(sorted(kinds.items())),
        "accepted_domains": [d.get("DomainName") for d in domains],
        "auto_forwarding_mode": policy[0].get("AutoForwardingMode") if policy else None,
        "licenses": [
            {
                "sku": s["skuPartNumber"],
                "enabled": s["prepaidUnits"]["enabled"],
                "consumed": s["consumedUnits"],
            }
            for s in skus
        ],
    }


def demo(
    directory: Path | None = None,
    *,
    seed: int = 1,
    users: int = 50,
    profile: str = "fast",
    progress: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Seed a sandbox pair, serve it, and summarise both tenants through the real APIs."""
    from coexist.sandbox.server import Sandbox

    base = directory or Path(tempfile.mkdtemp(prefix="coexist-demo-"))
    state = base / "sandbox"
    progress(f"starting sandbox tenants in {state}")
    with Sandbox(state, seed=seed, users=users, profile=profile) as sb:
        conn = sb.connection

        async def both() -> dict[str, Any]:
            out = {}
            for key in ("source", "target"):
                progress(f"reading the {key} tenant through Graph and Exchange")
                out[key] = await tenant_summary(TenantEndpoint.from_sandbox(conn, key))
            return out

        summary = asyncio.run(both())
    (base / "demo-summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return {"directory": str(base), "state": str(state), "tenants": summary}
