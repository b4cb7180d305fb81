"""The CLI of end-user credential links: `coexist credentials request | revoke | serve`
(`coexist.credlink`, `coexist.credserve`). Registered on `credentials` by `coexist.cli`."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape

from coexist import credlink, credserve
from coexist.cli import (
    _users,
    credentials_group,
    handles_errors,
    json_option,
    out,
    project_option,
)

FilePath = click.Path(dir_okay=False, path_type=Path)


@credentials_group.command("request")
@project_option
@click.option("--batch", default=None, help="The batch whose users get a link.")
@click.option(
    "--users", "--user", "users", default=None, help="Comma-separated users (instead of --batch)."
)
@click.option("--plan", is_flag=True, help="Say who would get a link; send nothing.")
@click.option("--resend", is_flag=True, help="Send a new link even where one is still valid.")
@json_option
@handles_errors
def credentials_request_cmd(
    project: Path, batch: str | None, users: str | None, plan: bool, resend: bool, as_json: bool
) -> None:
    """Mail each user without source credentials a one-time link to give them."""
    result = credlink.request(project, batch=batch, users=_users(users), plan=plan, resend=resend)
    if as_json:
        click.echo(json.dumps(result))
        return
    for mail in result["messages"]:
        out.print(escape(f"would send a link to {mail['to']}: {mail['subject']}"))
    for s in result["sent"]:
        out.print(escape(f"link {s['link']} sent to {s['user']} (valid until {s['expires_at']})"))
    for s in result["skipped"]:
        out.print(escape(f"skipped {s['user']}: {s['reason']}"))
    for r in result["refused"]:
        out.print(f"[red]refused[/red] {escape(r['user'])} by {escape(r['via'])}")


@credentials_group.command("revoke")
@project_option
@click.option("--batch", default=None, help="The batch whose links are withdrawn.")
@click.option("--user", "--users", "users", default=None, help="Comma-separated users.")
@json_option
@handles_errors
def credentials_revoke_cmd(
    project: Path, batch: str | None, users: str | None, as_json: bool
) -> None:
    """Withdraw credential links: they can no longer be used."""
    result = credlink.revoke(project, batch=batch, users=_users(users))
    if as_json:
        click.echo(json.dumps(result))
        return
    for r in result["revoked"]:
        click.echo(f"link {r['link']} of {r['user']} revoked")
    if not result["revoked"]:
        click.echo("no active link to revoke")


@credentials_group.command("serve")
@project_option
@click.option("--host", default=None, help="Listen address ([credential_link] host).")
@click.option("--port", type=int, default=None, help="Port ([credential_link] port).")
@click.option("--cert", type=FilePath, default=None, help="TLS certificate chain (PEM).")
@click.option("--key", type=FilePath, default=None, help="Its private key (PEM).")
@click.option(
    "--demo-cert", is_flag=True, help="No certificate: issue one from a demo CA (trustme)."
)
@click.option("--run", is_flag=True, help="Run a user's pass as soon as its credentials come.")
@handles_errors
def credentials_serve_cmd(
    project: Path,
    host: str | None,
    port: int | None,
    cert: Path | None,
    key: Path | None,
    demo_cert: bool,
    run: bool,
) -> None:
    """The HTTPS page behind the links (runs until stopped)."""
    srv = credserve.server(
        project, host=host, port=port, cert=cert, key=key, demo_cert=demo_cert, run=run
    )
    click.echo(
        f"credential link page on https://{srv.config.host}:{srv.config.port} (Ctrl-C stops it)"
    )
    srv.run()
