"""The click shell: parse options, call `coexist.commands`, render with rich."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from coexist import commands
from coexist.errors import CoexistError

console = Console(stderr=True)
out = Console()


def _fail(exc: CoexistError, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(exc.to_dict()))
    else:
        console.print(f"[red]error:[/red] {exc}")
    sys.exit(2)


@click.group()
@click.version_option(package_name="coexist")
def main() -> None:
    """coexist: move mailboxes between Microsoft 365 tenants while both stay in use."""


@main.group()
def sandbox() -> None:
    """The local Microsoft 365 tenant pair (source and target) for rehearsal and tests."""


@sandbox.command("serve")
@click.option("--seed", default=1, show_default=True, help="Seed of the tenant generator.")
@click.option("--users", default=50, show_default=True, help="Source users to generate.")
@click.option(
    "--profile",
    type=click.Choice(["published", "fast", "chaos"]),
    default="fast",
    show_default=True,
    help="Limit profile: Microsoft's published limits, none, or seeded chaos.",
)
@click.option("--time-scale", default=1.0, show_default=True, help="Speed-up of published limits.")
@click.option(
    "--state",
    "state",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("sandbox-state"),
    show_default=True,
    help="State directory (tenants, CA, connection.json); reused if it exists.",
)
@click.option("--port", default=0, show_default=True, help="Port on 127.0.0.1 (0: any free).")
def sandbox_serve(
    seed: int, users: int, profile: str, time_scale: float, state: Path, port: int
) -> None:
    """Serve a source and a target tenant over HTTPS until interrupted."""

    def ready(conn: dict[str, Any]) -> None:
        click.echo(f"connection: {state / 'connection.json'}")
        click.echo(f"base_url: {conn['base_url']}")
        click.echo("ready", nl=True)
        sys.stdout.flush()

    commands.sandbox_serve(
        state,
        seed=seed,
        users=users,
        profile=profile,
        port=port,
        time_scale=time_scale,
        ready=ready,
    )


@sandbox.command("deliver")
@click.option(
    "--state",
    "state",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The sandbox state directory.",
)
@click.option("--to", "to", required=True, help="Recipient address (SMTP, X500 or IMCEAEX).")
@click.option("--from", "sender", default=None, help="Sender address.")
@click.option(
    "--tenant",
    type=click.Choice(["source", "target"]),
    default=None,
    help="Tenant in which a bare X500 address is resolved (default: the sender's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the routing result as JSON.")
def sandbox_deliver(
    state: Path, to: str, sender: str | None, tenant: str | None, as_json: bool
) -> None:
    """Route a message through the sandbox and say where it ended."""
    try:
        result = commands.sandbox_deliver(state, to, sender, tenant)
    except CoexistError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        click.echo(json.dumps(result))
        return
    if result["outcome"] == "delivered":
        for d in result.get("deliveries") or [result]:
            out.print(f"delivered: {d['tenant']} {d['mailbox']} / {d['folder']}")
    elif result["outcome"] == "ndr":
        out.print(f"[red]NDR {result['ndr_code']}[/red] {result.get('ndr_text') or ''}")
    else:
        out.print(f"left the organization for {result.get('mailbox') or to}")
    for hop in result.get("hops", []):
        out.print(f"  hop: {hop}")


@main.command("demo")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the demo project and sandbox state here (default: a temporary directory).",
)
@click.option("--seed", default=1, show_default=True)
@click.option("--users", default=50, show_default=True)
@click.option(
    "--profile",
    type=click.Choice(["published", "fast", "chaos"]),
    default="fast",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True)
def demo(directory: Path | None, seed: int, users: int, profile: str, as_json: bool) -> None:
    """Start a seeded sandbox pair and show both tenants as coexist sees them."""
    try:
        result = commands.demo(
            directory,
            seed=seed,
            users=users,
            profile=profile,
            progress=lambda m: console.print(f"[cyan]…[/cyan] {m}"),
        )
    except CoexistError as exc:
        _fail(exc, as_json)
        return
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    table = Table(title="coexist sandbox tenants")
    table.add_column("")
    for key in ("source", "target"):
        table.add_column(key)
    rows: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("organization", lambda t: t["organization"]),
        ("tenant id", lambda t: t["tenant_id"]),
        ("users (Graph)", lambda t: str(t["users"])),
        ("groups (Graph)", lambda t: str(t["groups"])),
        (
            "recipients (Exchange)",
            lambda t: ", ".join(f"{k} {v}" for k, v in t["recipients"].items()),
        ),
        ("accepted domains", lambda t: ", ".join(t["accepted_domains"])),
        ("AutoForwardingMode", lambda t: str(t["auto_forwarding_mode"])),
        (
            "licenses",
            lambda t: ", ".join(
                f"{s['sku']} {s['consumed']}/{s['enabled']}" for s in t["licenses"]
            ),
        ),
    ]
    for label, get in rows:
        table.add_row(label, *(get(result["tenants"][k]) for k in ("source", "target")))
    out.print(table)
    out.print(f"state kept in {result['state']}")


if __name__ == "__main__":
    main()
