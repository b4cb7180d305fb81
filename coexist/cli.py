"""The click shell: parse options, call `coexist.commands`, render with rich."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from coexist import commands, credcheck, credentials, files, logs, vault
from coexist.engine.runner import Outcome
from coexist.errors import CoexistError, InputError, redact
from coexist.files import write_private
from coexist.model import PHASES, STATUS_STATES
from coexist.permissions import MOVER_NEEDS, NEEDS
from coexist.progress import PassesPlanned, PassEvent
from coexist.progressview import PassView

err = Console(stderr=True)
out = Console()
log = logging.getLogger("coexist.cli")

DirPath = click.Path(file_okay=False, path_type=Path)
STATUS_STYLE = {
    "ok": "green",
    "failed": "red",
    "waiting": "yellow",
    "planned": "cyan",
    "started": "yellow",
}
# The sandbox's limit profiles (coexist.sandbox.limits.PROFILES; not imported: the CLI
# imports the sandbox only when a sandbox command runs).
PROFILES = ["published", "fast", "chaos", "realistic"]
# Organisation kinds a sandbox tenant can be (coexist.sandbox.ews.orgs.KINDS; not imported
# here: the CLI loads the sandbox only for sandbox commands).
ORG_KINDS = ["m365", "exchange2016", "exchange2019", "workmail"]


def _fail(exc: CoexistError, as_json: bool) -> None:
    log.error("%s", exc, exc_info=exc)
    if as_json:
        click.echo(json.dumps(exc.to_dict()))
    else:
        # Messages name settings as `[scope] group`; escape so rich does not eat them as markup.
        # Not folded to the console's width: a path or address in the message stays whole
        # for the operator to copy and for logs to grep (rich folded a long temp path inside
        # "bad.csv"); the terminal wraps the line.
        err.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
    sys.exit(exc.exit_code)


def _unexpected(exc: Exception, as_json: bool) -> None:
    """Any other exception is a bug: one line and the log file holding its traceback."""
    log.error("unexpected %s", type(exc).__name__, exc_info=exc)
    run = logs.current()
    where = (
        f"the traceback is in {run.path}"
        if run is not None and run.path is not None and not run.broken
        else f"no log file could be written ({run.broken if run else 'no log'})"
    )
    text = redact(f"unexpected {type(exc).__name__}: {exc}")
    if as_json:
        path = str(run.path) if run is not None and run.path is not None else None
        click.echo(json.dumps({"error": "internal", "message": text, "log": path}))
    else:
        err.print(f"[red]error:[/red] {escape(text)} (a bug in coexist; {where})", soft_wrap=True)
    sys.exit(1)


VERBOSE = "coexist.verbose"


def _verbose(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    ctx.meta[VERBOSE] = ctx.meta.get(VERBOSE, False) or value


def _log_home(params: dict[str, Any]) -> Path | None:
    """The directory a command works on, which holds its run log (`coexist.logs`)."""
    for name in ("project", "state", "directory"):
        value = params.get(name)
        if isinstance(value, Path):
            return value
    return None


class CoexistCommand(click.Command):
    """Every command: `-v/--verbose`, a run log, and no traceback for anything that escapes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(
            click.Option(
                ["-v", "--verbose"],
                is_flag=True,
                expose_value=False,
                callback=_verbose,
                help="More detail on stderr: ids, every HTTP request and cmdlet (the run's "
                "log file under logs/ gets it too).",
            )
        )

    def invoke(self, ctx: click.Context) -> Any:
        names: list[str] = []
        node = ctx
        while node.parent is not None:  # the root's name is how Python was started: "coexist"
            names.insert(0, str(node.info_name))
            node = node.parent
        command = " ".join(["coexist", *names])
        run = logs.start(_log_home(ctx.params), command, verbose=bool(ctx.meta.get(VERBOSE)))
        as_json = bool(ctx.params.get("as_json"))
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except CoexistError as exc:  # commands without @handles_errors
            _fail(exc, as_json)
        except Exception as exc:
            _unexpected(exc, as_json)
        except BaseException as exc:  # SystemExit (an exit code), KeyboardInterrupt
            if not isinstance(exc, SystemExit):
                log.warning("interrupted (%s)", type(exc).__name__)
            raise
        finally:
            run.close()


class CoexistGroup(click.Group):
    """A group whose commands and subgroups are Coexist ones."""

    command_class = CoexistCommand
    group_class = type  # subgroups (`batch`, `sandbox`) are CoexistGroups too


class LiveProgress:
    """Live progress on stderr: a line per changed/failed/waiting step, and a bar of items."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self.view = PassView(err)  # the data passes' live view (`pass_event`)

    def pass_event(self, event: PassEvent) -> None:
        """A data pass's event: the live view of the command's passes (stderr)."""
        if self.quiet:
            return
        if isinstance(event, PassesPlanned) and self._bar is not None:
            self._bar.stop()  # one live display at a time: the passes' view takes over
            self._bar = None
        self.view(event)

    def __call__(self, o: Outcome) -> None:
        if o.status == "failed":
            self.view.model.step_failed(o.subject)  # its pass will not run in this command
        if self.quiet or (o.status == "ok" and not o.changed) or o.resting:
            return
        style = STATUS_STYLE.get(o.status, "white")
        text = escape(o.error or o.detail)
        if o.status == "waiting" and o.look_again_at:
            text += f"; looking again at {_clock(o.look_again_at)}"
        who = escape(f"{o.name:24} {o.label or o.subject}")  # a name may hold `[...]`
        line = f"[{style}]{o.status:8}[/{style}] {who}  {text}"
        (self._bar.console if self._bar else err).print(line)

    def advance(self, done: int, total: int) -> None:
        if self.quiet or self.view.active:  # the passes' view counts mailboxes itself
            return
        if self._bar is None:
            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("items", total=total)
        assert self._task is not None
        self._bar.update(self._task, completed=done, total=total)
        if done >= total:
            self._bar.stop()
            self._bar = None


def _clock(iso_time: str) -> str:
    """A journaled look-again time for people: the UTC time of day (the date when not today)."""
    try:
        when = datetime.fromisoformat(iso_time).astimezone(UTC)
    except ValueError:
        return iso_time
    today = datetime.now(UTC).date()
    return when.strftime("%H:%M:%S UTC" if when.date() == today else "%Y-%m-%d %H:%M:%S UTC")


def _progress(as_json: bool) -> LiveProgress:
    return LiveProgress(quiet=as_json)


def handles_errors(fn: Callable[..., None]) -> Callable[..., None]:
    """Turn a CoexistError into a clear message (or JSON) and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except CoexistError as exc:
            _fail(exc, bool(kwargs.get("as_json")))

    return wrapper


def project_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--project",
        "project",
        type=DirPath,
        default=Path("."),
        show_default=True,
        help="Project directory (holds project.toml and the journal).",
    )(fn)


def json_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(fn)


def plan_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--plan",
        is_flag=True,
        help="List every write this would make (cmdlets, Graph requests); send none.",
    )(fn)


def selection_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option(
        "--all",
        "all_users",
        is_flag=True,
        help="Every user of the project (never assumed: name a batch or users, or say --all).",
    )(fn)
    fn = click.option("--users", default=None, help="Comma-separated source addresses.")(fn)
    return click.option(
        "--batch",
        default=None,
        help="A batch CSV file, or a batch name recorded by `batch import`.",
    )(fn)


def _users(users: str | None) -> list[str] | None:
    """--users as a list, None when not given. A blank `--users " "` stays an empty list,
    which the command refuses (it once selected every user)."""
    return None if users is None else [u.strip() for u in users.split(",") if u.strip()]


def _render_run(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    # Everything that comes from the journal or a tenant is escaped: rich would take a
    # `[redacted]`, a `[target]` or a `[Sales]` in a name for markup and drop it (issue 10).
    for batch, run in (result.get("runbooks_in_progress") or {}).items():
        out.print(
            f"note: a playbook run on batch {escape(batch)} is in progress: {escape(run['text'])}"
        )
    if result.get("plan"):
        for w in result.get("writes", []):
            out.print(f"[cyan]would[/cyan] {escape(w['text'])}")
        out.print(f"{len(result.get('writes', []))} writes planned; nothing was sent.")
    if "enqueued" in result:  # [engine] executor = "queue": one job per user
        when = f" for {result['scheduled_at']}" if result.get("scheduled_at") else ""
        out.print(
            f"{result['command']}: {len(result['enqueued'])} users queued{when}"
            + (
                f", {len(result['already_queued'])} already queued"
                if result["already_queued"]
                else ""
            )
            + (f"; jobs ended: {result['jobs']}" if "jobs" in result else "")
        )
        for a in result.get("already_running", []):  # a second job would only repeat it
            on = f" on {a['worker']}" if a.get("worker") else ""
            out.print(
                f"{escape(str(a['user']))}: {result['command']} already running{on} "
                f"(job {a['job']}); nothing queued"
            )
    steps = ", ".join(f"{k} {v}" for k, v in sorted(result.get("steps", {}).items()))
    if result.get("plan"):  # a plan changed nothing
        out.print(f"steps: {steps or 'none'}; would change {result.get('would_change', 0)}")
    else:
        out.print(f"steps: {steps or 'none'}; changed {result.get('changed', 0)}")
    for f in result.get("failed", []):
        out.print(f"[red]failed[/red] {escape(str(f['error']))}\n  next: {escape(str(f['next']))}")
    for w in result.get("waiting", []):
        again = f"; looking again at {_clock(w['look_again_at'])}" if w.get("look_again_at") else ""
        out.print(
            f"[yellow]waiting[/yellow] {escape(str(w.get('user') or w['item']))} "
            f"{escape(w['step'])}: {escape(w['detail'])}{again}"
        )
    for sk in result.get("skipped", []):
        out.print(
            f"[yellow]skipped[/yellow] {escape(str(sk['user']))}: {escape(sk['reason'])}"
            f"\n  next: {escape(sk['next'])}"
        )
    for w in result.get("awaiting_confirmation", []):
        out.print(
            f"[yellow]confirm[/yellow] {escape(str(w['user']))}: candidates "
            f"{escape(', '.join(w['candidates']))}\n  next: {escape(w['next_step'])}"
        )
    if est := result.get("estimate"):  # a data pass's estimate, against the actual after
        out.print(escape(str(est.get("actual_text") or est.get("text"))), soft_wrap=True)
    if result.get("failed"):
        sys.exit(1)


@click.group(cls=CoexistGroup)
@click.version_option(package_name="coexist")
def main() -> None:
    """coexist: move mailboxes between Microsoft 365 tenants while both stay in use."""


# -- project -------------------------------------------------------------------------
@main.command("init")
@click.argument("directory", type=DirPath)
@click.option("--force", is_flag=True, help="Overwrite an existing project.toml.")
@handles_errors
def init_cmd(directory: Path, force: bool) -> None:
    """Write a documented project.toml into DIRECTORY."""
    path = commands.init(directory, force=force)
    out.print(f"wrote {path}; fill in the tenants and domains, then run `coexist preflight`")


@main.command("permissions")
@click.option(
    "--command",
    "command",
    type=click.Choice(sorted(NEEDS)),
    default=None,
    help="Only what this command needs.",
)
@click.option(
    "--mover",
    type=click.Choice(sorted(MOVER_NEEDS)),
    default=None,
    help="Add what this data mover ([migration] mover) needs in prestage and cutover.",
)
@json_option
def permissions_cmd(command: str | None, mover: str | None, as_json: bool) -> None:
    """Print exactly which permissions coexist needs, per tenant (least privilege)."""
    rows = commands.permissions(command, mover)
    if as_json:
        click.echo(json.dumps(rows))
        return
    table = Table(title=f"permissions for {command or 'every command'}")
    for col in ("tenant", "api", "permission", "alternatives", "why"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(r[c] for c in ("tenant", "api", "permission", "alternatives", "why")))
    out.print(table)


@main.command("preflight")
@project_option
@selection_options
@json_option
@handles_errors
def preflight_cmd(
    project: Path, batch: str | None, users: str | None, all_users: bool, as_json: bool
) -> None:
    """Check permissions, scope, domains, forwarding policy, seats and conflicts; for an
    Exchange or WorkMail side: endpoint, admin login, access grants, version, region."""
    result = commands.preflight_checks(
        project, batch=batch, users=_users(users), all_users=all_users
    )
    if as_json:
        click.echo(json.dumps(result))
    else:
        table = Table(title="preflight")
        for col in ("check", "status", "detail", "fix"):
            table.add_column(col)
        for c in result["checks"]:
            style = {"ok": "green", "warn": "yellow", "fail": "red"}[c["status"]]
            table.add_row(
                c["check"],
                f"[{style}]{c['status']}[/{style}]",
                escape(c["detail"]),
                escape(c["fix"]),
            )
        out.print(table)
    if not result["ok"]:
        sys.exit(1)


@main.command("discover")
@project_option
@plan_option
@json_option
@handles_errors
def discover_cmd(project: Path, plan: bool, as_json: bool) -> None:
    """Record the mailboxes in scope."""
    _discovered(commands.discover(project, plan=plan), as_json)


@main.command("rediscover")
@project_option
@plan_option
@json_option
@handles_errors
def rediscover_cmd(project: Path, plan: bool, as_json: bool) -> None:
    """Add new scope members and align changed addresses; never removes."""
    _discovered(commands.discover(project, plan=plan, rediscover=True), as_json)


def _discovered(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result))
        return
    would = "would have " if result.get("plan") else ""  # a plan added nothing
    out.print(
        f"{would}added {len(result['added'])}, aligned {len(result['aligned'])}, "
        f"unchanged {result['unchanged']}, left scope {len(result['left_scope'])}, "
        f"skipped {len(result['skipped'])}"
    )
    for s in result["skipped"]:
        out.print(f"[yellow]skipped[/yellow] {s.get('address') or s['id']}: {escape(s['reason'])}")
    for w in result["warnings"]:
        out.print(f"[yellow]warning[/yellow] {escape(w)}")


@main.command("groups")
@project_option
@plan_option
@json_option
@handles_errors
def groups_cmd(project: Path, plan: bool, as_json: bool) -> None:
    """Copy the selected group kinds with their members."""
    _render_run(commands.groups(project, plan=plan, progress=_progress(as_json)), as_json)


@main.command("provision")
@project_option
@selection_options
@plan_option
@click.option(
    "--adopt",
    is_flag=True,
    help="Take over a target MailUser or mailbox that routes to a user's source mailbox but "
    "that this project's journal did not make (left by a lost journal); journaled. Without "
    "it such a user fails, naming the object.",
)
@json_option
@handles_errors
def provision_cmd(
    project: Path,
    batch: str | None,
    users: str | None,
    all_users: bool,
    plan: bool,
    adopt: bool,
    as_json: bool,
) -> None:
    """Create target MailUsers that forward to the source (or match existing ones)."""
    result = commands.provision(
        project,
        batch=batch,
        users=_users(users),
        all_users=all_users,
        plan=plan,
        adopt=adopt,
        progress=_progress(as_json),
    )
    verb = "would adopt" if result.get("plan") else "adopted"
    for a in [] if as_json else result.get("adopted", []):
        out.print(
            escape(f"{verb} {a['user']}: {a['target']} ({a['target_address']})"), style="green"
        )
    _render_run(result, as_json)


@main.command("confirm")
@project_option
@click.argument("user_arg", metavar="[USER", required=False)
@click.argument("target_arg", metavar="TARGET]", required=False)
@click.option("--user", help="Source address of the user waiting for a match.")
@click.option(
    "--target",
    help="The target to use: provision's match mode takes the recipient's object id; a user "
    "`coexist automatch` decided takes an address (a candidate's, or any target user's).",
)
@json_option
@handles_errors
def confirm_cmd(
    project: Path,
    user_arg: str | None,
    target_arg: str | None,
    user: str | None,
    target: str | None,
    as_json: bool,
) -> None:
    """Choose the target for an ambiguous user: `confirm USER TARGET` or `--user --target`."""
    who, what = user or user_arg, target or target_arg
    if not who or not what:
        raise click.UsageError("name the user and the target: coexist confirm USER TARGET")
    result = commands.confirm(project, who, what)
    if as_json:
        click.echo(json.dumps(result))
    elif "target_name" in result:  # automatch: the journal holds the target now
        name = f" ({result['target_name']})" if result.get("target_name") else ""
        click.echo(f"{who} → {result['target']}{name}; confirmed, no rule changes it")
    else:
        click.echo(f"{who} → {what}; run `coexist provision --users {who}` again")


@main.command("automatch")
@project_option
@selection_options
@click.option(
    "--rules",
    help="Ordered, comma-separated: same-address, local-part (in the destination domain), "
    "first-last (the user file's First/Last Name), display-name. Default: all, in that order.",
)
@click.option(
    "--create-missing",
    is_flag=True,
    help="Create a target user for each user no rule matches (POST /users with a generated "
    "password nobody sees), license it ([prestage] license_sku) and wait for its mailbox.",
)
@plan_option
@json_option
@handles_errors
def automatch_cmd(
    project: Path,
    batch: str | None,
    users: str | None,
    all_users: bool,
    rules: str | None,
    create_missing: bool,
    plan: bool,
    as_json: bool,
) -> None:
    """Match each user to an existing target mailbox by ordered rules (CodeTwo's automatch)."""
    result = commands.automatch(
        project,
        batch=batch,
        users=_users(users),
        all_users=all_users,
        rules=rules,
        create_missing=create_missing,
        plan=plan,
        progress=_progress(as_json),
    )
    if not as_json:
        _render_matches(result)
    _render_run(result, as_json)


_MATCH_STYLE = {"ambiguous": "yellow", "taken": "yellow", "unmatched": "red"}


def _render_matches(result: dict[str, Any]) -> None:
    """One line per user: the target's address and name, or what the operator decides."""
    for m in result.get("matches", []):
        mark = "" if m["changed"] else " (unchanged)"
        style = _MATCH_STYLE.get(m["status"], "green")
        out.print(f"{escape(m['user'])} → {escape(m['text'])}{mark}", style=style)
        if m["status"] == "ambiguous":
            out.print(f"  next: coexist confirm {escape(m['user'])} ADDRESS")
    for r in result.get("not_created", []):
        out.print(f"[yellow]not created[/yellow] {escape(r['user'])}: {escape(r['reason'])}")


@main.command("prestage")
@project_option
@selection_options
@click.option(
    "--older-than", default=None, help="Data pass window, e.g. 90d (default from project.toml)."
)
@click.option("--since", default=None, help="Only items received on/after this ISO date or time.")
@click.option("--until", default=None, help="Only items received before this ISO date or time.")
@click.option("--at", default=None, help="Start the data pass at this ISO time.")
@click.option(
    "--trial",
    is_flag=True,
    help="A trial pass: only recent items ([trial] days) or a few per folder ([trial] items); "
    "later passes do not copy them again.",
)
@click.option(
    "--wait",
    is_flag=True,
    help='[engine] executor = "queue": follow the users\' jobs until they end.',
)
@plan_option
@json_option
@handles_errors
def prestage_cmd(
    project: Path,
    batch: str | None,
    users: str | None,
    all_users: bool,
    older_than: str | None,
    since: str | None,
    until: str | None,
    at: str | None,
    trial: bool,
    wait: bool,
    plan: bool,
    as_json: bool,
) -> None:
    """Convert and license now, then the pre-stage data pass."""
    result = commands.prestage(
        project,
        batch=batch,
        users=_users(users),
        all_users=all_users,
        older_than=older_than,
        since=since,
        until=until,
        at=at,
        trial=trial,
        plan=plan,
        progress=_progress(as_json),
        wait=wait,
    )
    _render_run(result, as_json)


@main.command("cutover")
@project_option
@selection_options
@click.option(
    "--wait",
    is_flag=True,
    help='[engine] executor = "queue": follow the users\' jobs until they end.',
)
@plan_option
@json_option
@handles_errors
def cutover_cmd(
    project: Path,
    batch: str | None,
    users: str | None,
    all_users: bool,
    wait: bool,
    plan: bool,
    as_json: bool,
) -> None:
    """The final data pass, then swap forwarders (or rename the source)."""
    result = commands.cutover(
        project,
        batch=batch,
        users=_users(users),
        all_users=all_users,
        plan=plan,
        progress=_progress(as_json),
        wait=wait,
    )
    _render_run(result, as_json)


@main.command("grant-access")
@project_option
@selection_options
@click.option(
    "--side",
    type=click.Choice(["source", "target"]),
    default="source",
    show_default=True,
    help="The Exchange organisation whose mailboxes the migration account is granted.",
)
@click.option(
    "--revoke",
    is_flag=True,
    help="Take the grants away again (Remove-MailboxPermission; the impersonation role "
    "assignment coexist made).",
)
@plan_option
@json_option
@handles_errors
def grant_access_cmd(
    project: Path,
    batch: str | None,
    users: str | None,
    all_users: bool,
    side: str,
    revoke: bool,
    plan: bool,
    as_json: bool,
) -> None:
    """Grant the migration account FullAccess on the batch's mailboxes, or the impersonation
    role (Exchange over remote PowerShell, by [S.ews] access); --revoke takes them away."""
    result = commands.grant_access(
        project,
        batch=batch,
        users=_users(users),
        all_users=all_users,
        side=side,
        revoke=revoke,
        plan=plan,
        progress=_progress(as_json),
    )
    _render_run(result, as_json)


@main.command("rollback")
@project_option
@selection_options
@plan_option
@click.option(
    "--yes",
    is_flag=True,
    help="Roll back even though mail was delivered to the target mailboxes since cutover "
    "(it stays there; without --yes the rollback stops and names the count per user).",
)
@json_option
@handles_errors
def rollback_cmd(
    project: Path,
    batch: str | None,
    users: str | None,
    all_users: bool,
    plan: bool,
    yes: bool,
    as_json: bool,
) -> None:
    """Undo a cutover from its recorded before-state."""
    result = commands.rollback(
        project,
        batch=batch,
        users=_users(users),
        all_users=all_users,
        plan=plan,
        yes=yes,
        progress=_progress(as_json),
    )
    if not as_json:
        _render_arrivals(result.get("delivered_since_cutover") or [])
    _render_run(result, as_json)


def _render_arrivals(rows: list[dict[str, Any]]) -> None:
    """What rollback leaves in the target mailboxes: mail delivered there since cutover."""
    kept = [r for r in rows if r["messages"] is None or r["messages"] > 0]
    if rows and not kept:
        out.print("no mail was delivered to the target mailboxes since cutover")
    for r in kept:
        count = "an unknown number of" if r["messages"] is None else f"{r['messages']:,}"
        out.print(
            escape(
                f"kept in the target: {r['user']}: {count} messages delivered to the target "
                "mailbox since cutover stay there"
            ),
            style="yellow",
        )


@main.command("retry")
@project_option
@click.option(
    "--wait",
    is_flag=True,
    help='[engine] executor = "queue": follow the users\' jobs until they end.',
)
@plan_option
@json_option
@handles_errors
def retry_cmd(project: Path, wait: bool, plan: bool, as_json: bool) -> None:
    """Re-run the failed and waiting users' last command.

    Users of a batch a playbook run holds are left to the run and named (exit code 2 when
    any was; the others are retried all the same)."""
    result = commands.retry(project, plan=plan, progress=_progress(as_json), wait=wait)
    refused = result.get("refused") or []
    if as_json:
        click.echo(json.dumps(result, default=str))
        if refused:
            sys.exit(2)
        return
    out.print(f"retried: {result['retried'] or 'nothing to retry'}")
    for r in refused:
        out.print(
            f"[red]refused[/red] {escape(r['user'])} ({escape(r['command'])}): "
            f"{escape(r['error'])}\n  next: {escape(r['next'])}",
            soft_wrap=True,
        )
    failed = False
    for name, r in result["results"].items():
        out.print(f"[bold]{name}[/bold]")
        try:
            _render_run(r, False)
        except SystemExit:  # a user failed (exit 1): the other commands' results still shown
            failed = True
    # A refused user outranks a failed one: the operator has a runbook to wait for.
    if refused:
        sys.exit(2)
    if failed:
        sys.exit(1)


@main.command("worker")
@project_option
@click.option("--concurrency", type=int, default=2, show_default=True, help="Users at once.")
@click.option(
    "--queues",
    default=None,
    help="Only these queues, comma-separated: prestage, cutover (default: both).",
)
@click.option("--name", default=None, help="Shown by `coexist status` (default: host:PID).")
@click.option(
    "--heartbeat", type=float, default=10.0, show_default=True, help="Seconds between heartbeats."
)
@click.option(
    "--stalled-after",
    type=float,
    default=30.0,
    show_default=True,
    help="A worker silent this many seconds is gone: its jobs are queued again.",
)
@click.option(
    "--stop-grace",
    type=float,
    default=60.0,
    show_default=True,
    help="On SIGTERM the running passes pause after their current item and are queued "
    "again; seconds they get to do so before they are cancelled.",
)
@handles_errors
def worker_cmd(
    project: Path,
    concurrency: int,
    queues: str | None,
    name: str | None,
    heartbeat: float,
    stalled_after: float,
    stop_grace: float,
) -> None:
    """Take prestage and cutover jobs from the project's PostgreSQL journal ([engine]
    executor = "queue"), until SIGTERM."""
    from coexist import worker  # procrastinate: only for projects that queue

    worker.serve(
        project,
        concurrency=concurrency,
        queues=_users(queues),
        name=name,
        heartbeat_s=heartbeat,
        stalled_after_s=stalled_after,
        stop_grace_s=stop_grace,
    )


@main.command("status")
@project_option
@click.option("--batch", default=None)
@click.option("--state", type=click.Choice(STATUS_STATES), default=None, help="Only this state.")
@click.option("--phase", type=click.Choice(PHASES), default=None, help="Only this phase.")
@click.option("--user", default=None, help="One user (any of its addresses).")
@json_option
@handles_errors
def status_cmd(
    project: Path,
    batch: str | None,
    state: str | None,
    phase: str | None,
    user: str | None,
    as_json: bool,
) -> None:
    """Where every user stands: phase, state, last step, data, errors."""
    result = commands.status(project, batch=batch, state=state, phase=phase, user=user)
    if as_json:
        click.echo(json.dumps(result, default=str))
        return
    out.print(status_table(result))
    if result.get("data_scope") and result["users"]:
        # Once for the project, not per row: every user of an IMAP source is alike.
        out.print(f"data: {escape(result['data_scope'])}")
    if result["groups"]:
        out.print(groups_table(result))
    for run_batch, who in (result.get("playbook_runs") or {}).items():
        out.print(escape(f"playbook run in progress on batch {run_batch}: {who}"))
    for row in result["users"] if user else []:
        if row.get("reconciliation"):
            out.print(reconciliation_table(row))


def reconciliation_table(row: dict[str, Any]) -> Table:
    """One user's last reconciliation: per target folder, source against target items."""
    recon = row["reconciliation"]
    verdict = (
        "no unexplained difference"
        if not recon.get("unexplained")
        else f"{recon['unexplained']} items unexplained"
    )
    table = Table(title=f"reconciliation of {row['user']}: {verdict}")
    cols = (
        "source folders",
        "source",
        "target",
        "skipped",
        "pending",
        "deleted",
        "new",
        "MB",
        "source MB",
        "target MB",
    )
    for col in cols:
        table.add_column(col, justify="left" if col == "source folders" else "right")
    table.add_column("difference", justify="right")
    for f in recon.get("folders") or []:
        diff = int(f.get("difference") or 0)
        table.add_row(
            escape(", ".join(f.get("source_folders") or [])),
            str(f.get("source_items", 0)),
            str(f.get("target_items", 0)),
            str(f.get("skipped", 0)),
            str(f.get("pending", 0)),
            str(f.get("deleted_at_source", 0)),
            str(f.get("arrived_in_target", 0)),  # delivered to the live target mailbox
            f"{int(f.get('copied_bytes') or 0) / 1e6:.1f}",
            _megabytes(f.get("source_bytes")),  # where the store reports folder sizes
            _megabytes(f.get("target_bytes")),
            f"[red]{diff}[/red]" if diff else "0",
        )
    skipped = [
        f"{s['folder']}: {s['subject']!r} ({s['reason']})" for s in recon.get("skipped_items") or []
    ]
    said = ["skipped: " + "; ".join(skipped)] if skipped else []
    # Copied without part of their state (the replied/forwarded state a target refused).
    if not_kept := [
        f"{s['folder']}: {s['subject']!r} ({s['reason']})"
        for s in recon.get("not_kept_items") or []
    ]:
        said.append("copied incompletely: " + "; ".join(not_kept))
    if said:  # skipped and reported, never dropped silently: each one by folder and subject
        table.caption = escape(" | ".join(said))
    return table


def _megabytes(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.1f}"


def status_table(result: dict[str, Any]) -> Table:
    table = Table(title="users")
    for col in (
        "user",
        "target",
        "batch",
        "phase",
        "state",
        "last step",
        "data",
        "error / waiting",
    ):
        table.add_column(col)
    for r in result["users"]:
        style = STATUS_STYLE.get(str(r["state"]), "white")
        table.add_row(
            str(r["user"]),
            str(r["target"] or ""),
            str(r["batch"] or ""),
            str(r["phase"]),
            f"[{style}]{r['state']}[/{style}]",
            str(r["last_step"] or ""),
            escape(str(r["data"] or "")),
            escape(_why(r)),
        )
    return table


def groups_table(result: dict[str, Any]) -> Table:
    """The copied groups: kind, target address, state, members not mapped yet, and why."""
    table = Table(title="groups")
    for col in ("group", "kind", "target", "state", "unmapped members", "error / waiting"):
        table.add_column(col, justify="right" if col == "unmapped members" else "left")
    for g in result["groups"]:
        style = STATUS_STYLE.get(str(g["state"]), "white")
        table.add_row(
            escape(str(g["group"])),
            str(g["kind"] or ""),
            str(g["target"] or ""),
            f"[{style}]{g['state']}[/{style}]",
            str(g["unmapped_members"]),
            escape(_why(g)),
        )
    return table


def _why(row: dict[str, Any]) -> str:
    """A status row's error, or what it waits for and when coexist looks again."""
    if row.get("error"):
        return str(row["error"])
    if row.get("worker"):  # [engine] executor = "queue": the job running or queued for it
        return str(row["worker"])
    if row.get("state") == "started":  # a prestage / cutover a run left unfinished
        return f"{row['progress']}; continue it: {row['next']}"
    if row.get("state") != "waiting" or not row.get("waiting_for"):
        return ""
    again = row.get("look_again_at")
    return str(row["waiting_for"]) + (f"; looking again at {_clock(again)}" if again else "")


@main.group("batch")
def batch_group() -> None:
    """Batch CSV files, as operators keep them."""


@batch_group.command("import")
@project_option
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--name", default=None, help="Batch name for rows without a Batch column.")
@json_option
@handles_errors
def batch_import_cmd(project: Path, file: Path, name: str | None, as_json: bool) -> None:
    """Record batch names from FILE: a batch CSV (Source Email[, Batch]), CodeTwo's user CSV
    (Login, Password, First Name, Last Name, Display Name) or MigrationWiz's Bulk Add CSV
    (Source Email, Source Login Name, Source Password, Destination Email, ...). Passwords go
    to the encrypted credential vault (key: COEXIST_VAULT_KEY)."""
    result = commands.batch_import(project, file, name=name)
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"assigned: {result['assigned']}")
    _render_credentials_import(result)


@batch_group.command("set-window")
@project_option
@click.argument("batch")
@click.argument("windows", nargs=-1)
@click.option("--timezone", default=None, help="IANA time zone (default: [schedule] timezone).")
@click.option("--clear", is_flag=True, help="Drop the batch's windows: the project's apply.")
@json_option
@handles_errors
def batch_set_window_cmd(
    project: Path,
    batch: str,
    windows: tuple[str, ...],
    timezone: str | None,
    clear: bool,
    as_json: bool,
) -> None:
    """Run BATCH's data passes only inside WINDOWS, e.g. "20:00-06:00" or "Mon-Fri
    19:00-07:00" (several allowed); outside them its passes pause and resume inside."""
    result = commands.batch_set_window(
        project, batch, list(windows), timezone=timezone, clear=clear
    )
    if as_json:
        click.echo(json.dumps(result))
        return
    click.echo(f"batch {batch}: run window {result['windows']}")
    if "next_open" in result:
        state = "open now" if result["open_now"] else f"opens {result['next_open']}"
        closes = f", closes {result['next_close']}" if result["next_close"] else ""
        click.echo(f"{state}{closes}")


@batch_group.command("export")
@project_option
@click.option("--batch", default=None)
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@handles_errors
def batch_export_cmd(project: Path, batch: str | None, output: Path | None) -> None:
    """Write users (with batch, phase, state) as CSV."""
    text = commands.batch_export(project, batch=batch)
    if output:
        try:
            write_private(output, text, atomic=False)  # a report of names and addresses
        except OSError as exc:
            raise files.write_failed(
                output,
                exc,
                next_step="choose an --output path this user can write, on a disk with space",
            ) from exc
    else:
        click.echo(text, nl=False)


def _render_credentials_import(result: dict[str, Any]) -> None:
    """What a user file's import did with users and credentials (never a password)."""
    if result.get("added"):
        click.echo(f"users added from the {result['shape']} file: {result['added']}")
    stored, same = result.get("credentials_stored", 0), result.get("credentials_unchanged", 0)
    if stored or same:
        click.echo(f"credentials stored in the vault: {stored} ({same} unchanged)")
    waiting = result.get("waiting_for_credentials") or []
    if waiting:
        who = ", ".join(f"{w['user']} ({w['side']})" for w in waiting[:20])
        more = f" and {len(waiting) - 20} more" if len(waiting) > 20 else ""
        out.print(f"[yellow]waiting for credentials[/yellow]: {escape(who)}{more}")
        out.print("  next: coexist credentials set --user ADDRESS  (or import them in a CSV)")


# -- credentials -----------------------------------------------------------------------------
@main.group("credentials")
def credentials_group() -> None:
    """Per-user passwords in the project's encrypted vault (key: COEXIST_VAULT_KEY)."""


@credentials_group.command("set")
@project_option
@click.option("--user", default=None, help="The user (any of its addresses, or its login).")
@click.option(
    "--master",
    is_flag=True,
    help="The side's master user password ([SIDE.imap] master_user) instead of a user's: "
    "it opens every mailbox of that IMAP server.",
)
@click.option(
    "--side", type=click.Choice(["source", "target"]), default="source", show_default=True
)
@click.option("--login", default=None, help="The mailbox login, when it is not the address.")
@click.option(
    "--oauth-app",
    is_flag=True,
    help='The side\'s OAuth client (auth = "xoauth2"), whose secret is then read as the '
    "password: coexist obtains and refreshes access tokens itself.",
)
@click.option("--client-id", default=None, help="--oauth-app: the application (client) id.")
@click.option(
    "--token-url",
    default=None,
    help="--oauth-app: the token endpoint, e.g. https://login.microsoftonline.com/TENANT/"
    "oauth2/v2.0/token (Microsoft 365) or https://oauth2.googleapis.com/token (Google).",
)
@click.option(
    "--grant",
    type=click.Choice(["client_credentials", "refresh_token"]),
    default="client_credentials",
    show_default=True,
    help="--oauth-app: client_credentials (Microsoft 365: the app's own token for every "
    "mailbox) or refresh_token (Google: each user's refresh token is its password).",
)
@click.option(
    "--scope",
    default=None,
    help="--oauth-app: the scope asked for (client_credentials: "
    "https://outlook.office365.com/.default unless given).",
)
@click.option("--ca-file", default=None, help="--oauth-app: the token endpoint's CA bundle.")
@click.option(
    "--aws-key",
    default=None,
    metavar="ACCESS_KEY_ID",
    help="A workmail side's AWS access key for WorkMail's admin API ([SIDE.workmail]): its "
    "id here, its secret read as the password.",
)
@click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of stdin (else it is asked for, hidden). "
    "There is no option that takes it on the command line: shell history and ps keep those.",
)
@json_option
@handles_errors
def credentials_set_cmd(
    project: Path,
    user: str | None,
    master: bool,
    side: str,
    login: str | None,
    oauth_app: bool,
    client_id: str | None,
    token_url: str | None,
    grant: str,
    scope: str | None,
    ca_file: str | None,
    aws_key: str | None,
    password_stdin: bool,
    as_json: bool,
) -> None:
    """Store one user's password in the vault (or, --master, the side's master user's;
    --oauth-app, the side's OAuth client secret; --aws-key, a WorkMail side's AWS secret)."""
    if aws_key is not None:
        if user is not None or login is not None or master or oauth_app:
            raise InputError(
                "credentials set: --aws-key stores the side's AWS access key; leave out "
                "--user, --login, --master and --oauth-app",
                next_step=f"coexist credentials set --aws-key AKIA... --side {side}",
            )
        secret = (
            sys.stdin.readline().rstrip("\r\n")
            if password_stdin
            else click.prompt(
                f"{side} AWS secret access key for {aws_key}",
                hide_input=True,
                confirmation_prompt=True,
                err=True,
            )
        )
        stored = credentials.credentials_set_workmail_key(
            project, secret, side=side, key_id=aws_key
        )
        if as_json:
            click.echo(json.dumps(stored))
            return
        said = "stored" if stored["changed"] else "unchanged"
        click.echo(f"{side} AWS access key {stored['login']}: {said}")
        return
    if oauth_app and (user is not None or login is not None or master):
        raise InputError(
            "credentials set: --oauth-app stores the side's OAuth client (its login is "
            "--client-id); leave out --user, --login and --master",
            next_step=f"coexist credentials set --oauth-app --side {side} --client-id ID "
            "--token-url URL",
        )
    _check_set_target(user, master or oauth_app, login, side)
    whose = f"the {side} master user" if master else str(user)
    what = "password"
    if oauth_app:
        whose, what = f"the {side} OAuth client {client_id}", "client secret"
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt(
            f"{side} {what} for {whose}", hide_input=True, confirmation_prompt=True, err=True
        )
    if oauth_app:
        result = credentials.credentials_set_oauth_app(
            project,
            password,
            side=side,
            client_id=client_id or "",
            token_url=token_url or "",
            grant=grant,
            scope=scope,
            ca_file=ca_file,
        )
        if as_json:
            click.echo(json.dumps(result))
            return
        said = "stored" if result["changed"] else "unchanged"
        click.echo(f"{side} OAuth client {result['client_id']} ({result['grant']}): {said}")
        for address in result["no_longer_waiting"]:
            click.echo(f"  no longer waiting for credentials: {address}")
        return
    if master:
        result = credentials.credentials_set_master(project, password, side=side)
    else:
        result = credentials.credentials_set(project, str(user), password, side=side, login=login)
    if as_json:
        click.echo(json.dumps(result))
        return
    said = "stored" if result["changed"] else "unchanged"
    if master:
        click.echo(f"{side} master user password ({result['login']}): {said}")
        for address in result["no_longer_waiting"]:
            click.echo(f"  no longer waiting for credentials: {address}")
    else:
        click.echo(f"{result['side']} credentials of {result['user']} ({result['login']}): {said}")


def _check_set_target(user: str | None, master: bool, login: str | None, side: str) -> None:
    """`credentials set` stores a user's password or the master user's: exactly one."""
    if master and (user is not None or login is not None):
        raise InputError(
            "credentials set: --master stores the master user's password (its login is "
            "[SIDE.imap] master_user); leave out --user and --login",
            next_step=f"coexist credentials set --master --side {side}",
        )
    if not master and user is None:
        raise InputError(
            "credentials set: name the user (--user) or say --master",
            next_step=f"coexist credentials set --user alice@example.com --side {side}",
        )


@credentials_group.command("list")
@project_option
@json_option
@handles_errors
def credentials_list_cmd(project: Path, as_json: bool) -> None:
    """Which users have which credentials (logins; never a password), and who waits."""
    result = credentials.credentials_list(project)
    if as_json:
        click.echo(json.dumps(result))
        return
    if not result["exists"]:
        click.echo(f"no credential vault yet ({result['vault']})")
    else:
        # Addresses and logins whole (no wrapping mid-address); the names are in --json.
        table = Table("user", "source login", "target login", "set")
        for column in table.columns[:3]:
            column.no_wrap = True
        for r in result["users"]:
            src, tgt = r.get("source") or {}, r.get("target") or {}
            when = max(src.get("set_at", ""), tgt.get("set_at", ""))[:10]
            cells = (r["user"], src.get("login"), tgt.get("login"), when)
            table.add_row(*(escape(str(v or "")) for v in cells))
        out.print(table)
        for side, held in result["master"].items():
            if held:
                said = f"{held['login']}, set {held['set_at'][:10]}"
                out.print(f"{side} master user password: {escape(said)}")
    for w in result["waiting"]:
        out.print(f"[yellow]waiting[/yellow] {escape(w['user'])}: {escape(str(w['waiting_for']))}")


@credentials_group.command("purge")
@project_option
@click.option("--users", default=None, help="Comma-separated users whose credentials go.")
@click.option(
    "--all", "all_users", is_flag=True, help="Delete the whole vault (the project has ended)."
)
@click.option("--master", is_flag=True, help="Remove the master user passwords.")
@click.option(
    "--side",
    type=click.Choice(["source", "target"]),
    default=None,
    help="With --master: only this side's (default: both).",
)
@json_option
@handles_errors
def credentials_purge_cmd(
    project: Path,
    users: str | None,
    all_users: bool,
    master: bool,
    side: str | None,
    as_json: bool,
) -> None:
    """Remove credentials from the vault: --all when the project ends, some users', or the
    master user passwords (--master)."""
    result = credentials.credentials_purge(
        project, users=_users(users), all_users=all_users, master=master, side=side
    )
    if as_json:
        click.echo(json.dumps(result))
    elif master:
        click.echo(f"master user passwords removed: {', '.join(result['master']) or 'none'}")
    elif result["purged"] == "all":
        gone = "deleted" if result["vault_deleted"] else "there was none"
        click.echo(f"credential vault: {gone}")
    else:
        click.echo(f"credentials removed: {', '.join(result['purged']) or 'none'}")


@credentials_group.command("new-key")
@project_option
@click.option(
    "--keyring",
    "to_keyring",
    is_flag=True,
    help="Keep it in the OS keyring for this project instead of printing it.",
)
@handles_errors
def credentials_new_key_cmd(project: Path, to_keyring: bool) -> None:
    """Print a new vault key (for COEXIST_VAULT_KEY), or keep it in the OS keyring."""
    key = vault.new_key()
    if to_keyring:
        vault.store_in_keyring(project.resolve(), key)
        click.echo(
            f"a new vault key is in the OS keyring ({vault.KEYRING_SERVICE}, {project.resolve()})"
        )
    else:
        click.echo(key)


@main.command("verify-credentials")
@project_option
@selection_options
@json_option
@handles_errors
def verify_credentials_cmd(
    project: Path, batch: str | None, users: str | None, all_users: bool, as_json: bool
) -> None:
    """Log in to each user's source and target mailbox; nothing is moved."""
    result = credcheck.verify_credentials(
        project, batch=batch, users=_users(users), all_users=all_users
    )
    if as_json:
        click.echo(json.dumps(result))
    else:
        out.print(credentials_table(result))
        for u in result["users"]:
            for side in ("source", "target"):
                r = u[side]
                if r["result"] != "ok":
                    out.print(
                        f"[red]{escape(u['user'])}[/red] {side}: {escape(r['message'])}"
                        + (f"\n  next: {escape(r['next'])}" if r.get("next") else "")
                    )
    if not result["ok"]:
        sys.exit(1)


def credentials_table(result: dict[str, Any]) -> Table:
    """Per user: the result of each side's login (MigrationWiz's Verify Credentials)."""
    table = Table(title=f"credentials: {result['verified']} verified, {result['failed']} failed")
    for col in ("user", "source", "target"):
        table.add_column(col, no_wrap=col == "user")
    for u in result["users"]:
        cells = [escape(u["user"])]
        for side in ("source", "target"):
            said = u[side]["result"]
            cells.append(escape(said) if said == "ok" else f"[red]{escape(said)}[/red]")
        table.add_row(*cells)
    return table


@main.command("verify-mailflow")
@project_option
@selection_options
@click.option(
    "--wait", "wait_s", default=60.0, show_default=True, help="Seconds to wait for probes."
)
@json_option
@handles_errors
def verify_cmd(
    project: Path,
    batch: str | None,
    users: str | None,
    all_users: bool,
    wait_s: float,
    as_json: bool,
) -> None:
    """Send probes to each user's source, target and X500 addresses; show where they landed."""
    result = commands.verify_mailflow(
        project, batch=batch, users=_users(users), all_users=all_users, wait_s=wait_s
    )
    if as_json:
        click.echo(json.dumps(result))
    else:
        out.print(mailflow_table(result))
        if result.get("method") == "configuration":
            for p in result["probes"]:
                out.print(f"{escape(p['user'])}: {escape(p['detail'])}")
            out.print(
                "hosted Exchange: routes read back from the source's configuration; no probe "
                "was sent"
            )
    if not result["ok"]:
        sys.exit(1)


def mailflow_table(result: dict[str, Any]) -> Table:
    table = Table(title="mail flow")
    for col in ("user", "probe", "expected", "source", "target", "ok"):
        table.add_column(col)
    for p in result["probes"]:
        mark = "[green]yes[/green]" if p["ok"] else "[red]NO[/red]"
        table.add_row(
            p["user"],
            p["probe"],
            p["expected"],
            str(p["found"].get("source", 0)),
            str(p["found"].get("target", 0)),
            mark,
        )
    return table


@main.command("check-dns")
@project_option
@click.option(
    "--domain",
    "domains",
    multiple=True,
    help="A domain to check (repeatable). "
    "Default: [dns] domains, else [domains] destination_domain.",
)
@click.option(
    "--expect-mx",
    default=None,
    help="The MX host expected ('*' allowed). Default: "
    "[dns] expect_mx, else the target kind's vendor value.",
)
@click.option(
    "--expect-autodiscover",
    default=None,
    help="The autodiscover CNAME target "
    "expected. Default: [dns] expect_autodiscover, else the vendor's.",
)
@click.option(
    "--resolver",
    default=None,
    help="IP[:PORT] of the resolver to ask. Default: [dns] resolver, else the system's.",
)
@json_option
@handles_errors
def check_dns_cmd(
    project: Path,
    domains: tuple[str, ...],
    expect_mx: str | None,
    expect_autodiscover: str | None,
    resolver: str | None,
    as_json: bool,
) -> None:
    """Check each domain's MX, autodiscover CNAME/SRV and SPF against the target (exit 1 when
    one is not yet switched, with what to change at the DNS provider)."""
    from coexist import dnscheck  # dnspython only for this command

    result = dnscheck.run_check(
        project, domains=domains, expect_mx=expect_mx,
        expect_autodiscover=expect_autodiscover, resolver=resolver,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps(result))
    else:
        styles = {"ok": "green", "warn": "yellow", "fail": "red", "error": "red"}
        out.print(escape(f"resolver: {result['resolver']}"))
        for f in result["findings"]:
            style = styles[f["status"]]
            out.print(f"[{style}]{f['status']:5}[/{style}] {escape(f['message'])}")
            if f.get("fix") and f["status"] != "ok":
                out.print(escape(f"      fix: {f['fix']}"))
    if not result["ok"]:
        sys.exit(1)


# -- sandbox ---------------------------------------------------------------------------
@main.group()
def sandbox() -> None:
    """The local Microsoft 365 tenant pair (source and target) for rehearsal and tests."""


@sandbox.command("serve")
@click.option("--seed", default=1, show_default=True, help="Seed of the tenant generator.")
@click.option("--users", default=50, show_default=True, help="Source users to generate.")
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default="fast",
    show_default=True,
    help="Limit profile: Microsoft's published limits, none, seeded chaos, or realistic "
    "(published limits plus Microsoft 365's minutes-long provisioning and replication).",
)
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    help="Speed-up of published limits and realistic timings (60: minutes become seconds).",
)
@click.option(
    "--state",
    "state",
    type=DirPath,
    default=Path("sandbox-state"),
    show_default=True,
    help="State directory (tenants, CA, connection.json); reused if it exists.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Port on 127.0.0.1. Default: the port this state directory was served on last "
    "(so connection.json stays valid), else any free one; 0: any free port.",
)
@click.option(
    "--drained",
    is_flag=True,
    help="Start rate buckets empty (benchmarks measure the sustained limit, not the burst).",
)
@click.option(
    "--source-kind",
    type=click.Choice(ORG_KINDS),
    default=None,
    help="Serve the source as this kind of organisation (exchange2016/exchange2019/workmail "
    "are served over EWS at /EWS/Exchange.asmx). Default: as saved (m365 when new).",
)
@click.option(
    "--target-kind",
    type=click.Choice(ORG_KINDS),
    default=None,
    help="Serve the target as this kind of organisation (as --source-kind).",
)
@handles_errors
def sandbox_serve(
    seed: int,
    users: int,
    profile: str,
    time_scale: float,
    state: Path,
    port: int | None,
    drained: bool,
    source_kind: str | None,
    target_kind: str | None,
) -> None:
    """Serve a source and a target tenant over HTTPS until interrupted."""

    def ready(conn: dict[str, Any]) -> None:
        click.echo(f"connection: {state / 'connection.json'}")
        click.echo(f"base_url: {conn['base_url']}")
        if conn.get("dns"):  # the DNS face: [dns] resolver for check-dns
            click.echo(f"dns: {conn['dns']['resolver']}")
        click.echo("ready")
        sys.stdout.flush()

    commands.sandbox_serve(
        state,
        seed=seed,
        users=users,
        profile=profile,
        port=port,
        time_scale=time_scale,
        drained=drained,
        ready=ready,
        kinds={k: v for k, v in (("source", source_kind), ("target", target_kind)) if v},
    )


def state_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--state",
        "state",
        type=DirPath,
        default=Path("sandbox-state"),
        show_default=True,
        help="The sandbox state directory (running or not).",
    )(fn)


def _through(result: dict[str, Any]) -> str:
    if result["through"] == "server":
        return "in the running sandbox"
    return "in the saved state (the sandbox is not running; it serves this when started)"


@sandbox.command("policy")
@state_option
@click.option(
    "--auto-forwarding",
    "auto_forwarding",
    type=click.Choice(["on", "off", "automatic"], case_sensitive=False),
    required=True,
    help="AutoForwardingMode of the Default outbound spam policy: on allows forwarding "
    "outside the organization (what coexistence needs), off blocks it, automatic is "
    "Microsoft's default (blocks it too).",
)
@click.option(
    "--tenant",
    type=click.Choice(["source", "target", "both"]),
    default="both",
    show_default=True,
    help="Which tenant's policy.",
)
@json_option
@handles_errors
def sandbox_policy(state: Path, auto_forwarding: str, tenant: str, as_json: bool) -> None:
    """Set a sandbox tenant's outbound spam policy, as a tenant admin would before a project."""
    result = commands.sandbox_policy(state, auto_forwarding, tenant)
    if as_json:
        click.echo(json.dumps(result))
        return
    out.print(escape(f"AutoForwardingMode {_through(result)}:"))
    for row in result["tenants"]:
        change = f"{row['before']} → {row['after']}" if row["changed"] else "unchanged"
        out.print(escape(f"  {row['tenant']} ({row['domain']}) {row['policy']}: {change}"))


@sandbox.command("ews-account")
@state_option
@click.option("--tenant", type=click.Choice(["source", "target"]), required=True)
@click.option("--name", required=True, help="Account name (sAMAccountName), e.g. svc-migrate.")
@click.option(
    "--password",
    envvar="COEXIST_SANDBOX_EWS_PASSWORD",
    default=None,
    help="Create (or replace) the account with this password "
    "(or from COEXIST_SANDBOX_EWS_PASSWORD).",
)
@click.option(
    "--kind",
    type=click.Choice(ORG_KINDS),
    default=None,
    help="Also make the tenant this kind of organisation.",
)
@click.option(
    "--full-access",
    default="",
    help="Comma-separated mailbox addresses to grant FullAccess on ('*': every mailbox).",
)
@click.option(
    "--impersonation/--no-impersonation",
    default=None,
    help="Grant (or take away) the ApplicationImpersonation role (Exchange only).",
)
@click.option("--revoke", is_flag=True, help="Remove the --full-access grants instead.")
@json_option
@handles_errors
def sandbox_ews_account(
    state: Path,
    tenant: str,
    name: str,
    password: str | None,
    kind: str | None,
    full_access: str,
    impersonation: bool | None,
    revoke: bool,
    as_json: bool,
) -> None:
    """Create or grant an EWS account of a sandbox Exchange/WorkMail organisation (the
    migration account: Add-MailboxPermission FullAccess, ApplicationImpersonation)."""
    result = commands.sandbox_ews_account(
        state, tenant, name, password=password, kind=kind,
        full_access=[a.strip() for a in full_access.split(",") if a.strip()],
        impersonation=impersonation, revoke=revoke,
    )  # fmt: skip
    if as_json:
        click.echo(json.dumps(result))
        return
    out.print(escape(f"{result['account']} ({result['netbios']}) {_through(result)}:"))
    out.print(escape(f"  {result['tenant']} is {result['kind']}"))
    out.print(escape(f"  FullAccess: {', '.join(result['full_access']) or 'none'}"))
    out.print(escape(f"  ApplicationImpersonation: {'yes' if result['impersonation'] else 'no'}"))


@sandbox.command("seed-mail")
@state_option
@click.option(
    "--users",
    "users",
    required=True,
    help="Comma-separated mailboxes (SMTP address or UserPrincipalName).",
)
@click.option(
    "--per-user",
    "per_user",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="Seeded messages each mailbox holds afterwards (ones it already has are kept).",
)
@click.option(
    "--tenant",
    type=click.Choice(["source", "target"]),
    default="source",
    show_default=True,
    help="The tenant of the mailboxes.",
)
@click.option("--seed", default=1, show_default=True, help="Seed of the generated messages.")
@json_option
@handles_errors
def sandbox_seed_mail(
    state: Path, users: str, per_user: int, tenant: str, seed: int, as_json: bool
) -> None:
    """Fill sandbox mailboxes with realistic mail to migrate (dated over a year, in folders)."""
    result = commands.sandbox_seed_mail(state, users.split(","), per_user, tenant=tenant, seed=seed)
    if as_json:
        click.echo(json.dumps(result))
        return
    out.print(escape(f"seeded {_through(result)}:"))
    for row in result["mailboxes"]:
        out.print(
            escape(
                f"  {row['tenant']} {row['user']}: {row['added']} added, "
                f"{row['seeded']} seeded messages in all"
            )
        )


@sandbox.command("deliver")
@state_option
@click.option("--to", "to", required=True, help="Recipient address (SMTP, X500 or IMCEAEX).")
@click.option("--from", "sender", default=None, help="Sender address.")
@click.option(
    "--tenant",
    type=click.Choice(["source", "target"]),
    default=None,
    help="Tenant in which a bare X500 address is resolved (default: the sender's).",
)
@click.option("--subject", default="Test message (coexist sandbox deliver)", show_default=True)
@click.option("--body", default="", help="Plain-text body.")
@json_option
@handles_errors
def sandbox_deliver(
    state: Path,
    to: str,
    sender: str | None,
    tenant: str | None,
    subject: str,
    body: str,
    as_json: bool,
) -> None:
    """Send a message through the running sandbox and say where every copy was stored (when
    it is not running: where it would go)."""
    result = commands.sandbox_deliver(state, to, sender, tenant, subject=subject, body=body)
    if as_json:
        click.echo(json.dumps(result))
        return
    if result.get("note"):
        err.print(f"[yellow]note:[/yellow] {escape(result['note'])}")
    if result["outcome"] == "delivered":
        for d in result.get("deliveries") or [result]:
            out.print(escape(f"delivered: {d['tenant']} {d['mailbox']} / {d['folder']}"))
    elif result["outcome"] == "ndr":
        out.print(f"[red]NDR {result['ndr_code']}[/red] {escape(result.get('ndr_text') or '')}")
    else:
        out.print(escape(f"{result['outcome']}: {result.get('mailbox') or to}"))
    for copy in result.get("stored", []):
        where = f"{copy['tenant']} {copy['address']} / {copy['folder']}"
        out.print(escape(f"  stored: {copy['kind']} copy in {where}"))
    for hop in result.get("hops", []):
        what = " in ".join(str(hop[k]) for k in ("kind", "tenant") if hop.get(k))
        out.print(escape(f"  {hop['action']}: {hop.get('address') or ''} ({what})"))


@sandbox.group("dns")
def sandbox_dns() -> None:
    """The sandbox's DNS records (its DNS face answers them on loopback, UDP and TCP)."""


@sandbox_dns.command("set")
@state_option
@click.argument("name")
@click.argument("rtype", metavar="TYPE")
@click.argument("values", nargs=-1, metavar="VALUE...")
@click.option("--ttl", type=click.IntRange(0, 2**31 - 1), default=3600, show_default=True)
@json_option
@handles_errors
def sandbox_dns_set(
    state: Path, name: str, rtype: str, values: tuple[str, ...], ttl: int, as_json: bool
) -> None:
    """Replace NAME's TYPE records with VALUE... (none: remove them), e.g.
    `dns set contoso.example MX "0 contoso-example.mail.protection.outlook.com"`."""
    from coexist.sandbox import dns as sandbox_dns_face

    result = sandbox_dns_face.command_set(state, name, rtype, list(values), ttl)
    if as_json:
        click.echo(json.dumps(result))
        return
    out.print(escape(f"{result['name']} {result['type']} {_through(result)}:"))
    out.print(escape(f"  before: {', '.join(result['before']) or 'none'}"))
    out.print(escape(f"  after:  {', '.join(result['after']) or 'none'}"))


@sandbox_dns.command("show")
@state_option
@click.argument("domain", required=False)
@json_option
@handles_errors
def sandbox_dns_show(state: Path, domain: str | None, as_json: bool) -> None:
    """The records of DOMAIN's zone (or of every zone)."""
    from coexist.sandbox import dns as sandbox_dns_face

    result = sandbox_dns_face.command_show(state, domain)
    if as_json:
        click.echo(json.dumps(result))
        return
    for r in result["records"]:
        out.print(escape(f"{r['name']:40} {r['ttl']:>6} {r['type']:6} {r['value']}"))


@main.command("demo")
@click.option(
    "--dir",
    "directory",
    type=DirPath,
    default=None,
    help="Keep the project and sandbox state here (default: a temporary directory).",
)
@click.option(
    "--scenario",
    type=click.Choice(tuple(commands.DEMO_SCENARIOS)),
    default="m365",
    show_default=True,
    help="m365: Microsoft 365 -> Microsoft 365. imap: a Dovecot -> sandbox Microsoft 365. "
    "imap-to-imap: a Dovecot -> another Dovecot (IMAP scenarios need dovecot-core and "
    "dovecot-imapd). hosted-exchange: Exchange 2016 -> Exchange 2019 over EWS. workmail: "
    "Microsoft 365 -> Amazon WorkMail (EWS).",
)
@click.option("--seed", default=1, show_default=True)
@click.option(
    "--users", type=int, default=None, help="Users to seed  [default: 50; IMAP/EWS scenarios: 3]"
)
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default="fast",
    show_default=True,
    help="Sandbox profile; realistic: mailboxes take minutes, users wait and continue.",
)
@click.option(
    "--time-scale",
    default=1.0,
    show_default=True,
    help="Speed-up of the sandbox's limits and timings (realistic at 60: minutes → seconds).",
)
@click.option(
    "--mode",
    type=click.Choice(["forward-on-source", "leave-forward-on-target", "rename-source"]),
    default="forward-on-source",
    show_default=True,
    help="Post-migration mode.",
)
@json_option
@handles_errors
def demo(
    directory: Path | None,
    scenario: str,
    seed: int,
    users: int | None,
    profile: str,
    time_scale: float,
    mode: str,
    as_json: bool,
) -> None:
    """Seed a sandbox pair and run preflight → discover → groups → provision → prestage → cutover.

    --scenario imap / imap-to-imap: seed a Dovecot and run the IMAP runbook (batch import,
    verify credentials, prestage --older-than 90d, cutover, status) into the sandbox's
    Microsoft 365 or another Dovecot."""
    result = commands.demo(
        directory,
        scenario=scenario,
        seed=seed,
        users=users,
        profile=profile,
        time_scale=time_scale,
        mode=mode,
        say=lambda m: err.print(f"[cyan]…[/cyan] {escape(m)}"),
        progress=_progress(as_json),
    )
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        _demo_text(result)
        out.print(f"project kept in {result['directory']}")
        out.print(
            "[green]demo ok[/green]"
            if result["ok"]
            else "[red]demo: some users are not where they should be[/red]"
        )
    if not result["ok"]:
        sys.exit(1)


def _demo_text(result: dict[str, Any]) -> None:
    """A demo's result for people: status, mail flow (m365), per-user lines (IMAP), or the
    preflight checks that stopped it."""
    if "status" in result:
        out.print(status_table(result["status"]))
    if "verify" in result:
        out.print(mailflow_table(result["verify"]))
    for line in result.get("report", []):
        out.print(escape(line))
    if "status" not in result and "preflight" in result:
        for c in result["preflight"]["checks"]:
            out.print(escape(f"{c['status']:5} {c['check']}: {c['detail']} {c['fix']}"))


# -- playbooks (coexist/playbook.py) -----------------------------------------------------------
@main.group("playbook")
def playbook_group() -> None:
    """Operator runbooks as data (playbooks/*.yaml): list, show, run per batch."""


@playbook_group.command("list")
@json_option
@handles_errors
def playbook_list_cmd(as_json: bool) -> None:
    """The shipped playbooks (and where each file is)."""
    from coexist import playbook

    rows = [
        {"name": n, "file": str(f), "description": playbook.load(f).description}
        for n, f in playbook.available().items()
    ]
    if as_json:
        click.echo(json.dumps(rows))
        return
    for r in rows:
        out.print(escape(f"{r['name']:28} {r['description']}"))


@playbook_group.command("show")
@click.argument("name")
@json_option
@handles_errors
def playbook_show_cmd(name: str, as_json: bool) -> None:
    """The steps of playbook NAME (a name from `playbook list`, or a YAML file)."""
    from coexist import playbook

    pb = playbook.load(playbook.find(name))
    steps = playbook.describe(pb)
    if as_json:
        click.echo(json.dumps({"name": pb.name, "file": str(pb.file), "steps": steps}))
        return
    out.print(escape(f"{pb.name} ({pb.file})\n{pb.description}"))
    for n, s in enumerate(steps, 1):
        out.print(escape(f"{n:2}. {s['id']:20} {s['kind']:8} {s['title']}: {s['what']}"))


@playbook_group.command("run")
@project_option
@click.argument("name")
@click.option("--batch", required=True, help="The batch the playbook runs on.")
@plan_option
@click.option("--from", "from_step", default=None, help="Start at this step id.")
@click.option("--yes", is_flag=True, help="Confirm every checklist (rehearsals).")
@json_option
@handles_errors
def playbook_run_cmd(
    project: Path,
    name: str,
    batch: str,
    plan: bool,
    from_step: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Run playbook NAME on a batch, step by step, journaled: run it again to resume."""
    from coexist import playbook

    def say(text: str) -> None:
        if not as_json:
            err.print(escape(text))

    asks = None if (as_json or not sys.stdin.isatty()) else (lambda q: click.confirm(q))
    result = playbook.run_playbook(
        project,
        name,
        batch=batch,
        plan=plan,
        from_step=from_step,
        yes=yes,
        say=say,
        confirm=asks,
        progress=_progress(as_json),
    )
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        if plan:
            for s in result["steps"]:
                for w in s.get("writes", []):
                    out.print(escape(f"  {s['id']}: {w}"))
        verdict = "done" if result["ok"] else f"stopped at {result['stopped_at']}"
        out.print(escape(f"playbook {result['playbook']} on {batch}: {verdict}"))
        if result["next"]:
            out.print(escape(f"next: {result['next']}"))
    if not result["ok"]:
        sys.exit(1)


@main.command("report")
@project_option
@click.option("--batch", default=None, help="Only this batch (default: the whole project).")
@click.option(
    "--html",
    "html",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the report as one self-contained HTML file.",
)
@json_option
@click.option("--csv", "as_csv", is_flag=True, help="Print the report as CSV.")
@click.option(
    "--email",
    "email",
    multiple=True,
    help="Send the report to this address (repeatable) through the SMTP relay set by "
    "COEXIST_SMTP_HOST, _PORT, _SECURITY (starttls|tls), _USER, _PASSWORD, _FROM, _CA_FILE.",
)
@handles_errors
def report_cmd(
    project: Path,
    batch: str | None,
    html: Path | None,
    as_json: bool,
    as_csv: bool,
    email: tuple[str, ...],
) -> None:
    """Statistics to hand a customer: per user, batch and project, from the journal."""
    from coexist import report

    if sum((html is not None, as_json, as_csv)) > 1:
        raise InputError("choose one of --html FILE, --json, --csv", next_step="--json")
    data = report.build(project, batch=batch)
    if html is not None:
        report.write_html(data, html)  # before the send: a refused send still leaves it
    sent = report.send(data, list(email)) if email else None
    if as_json:
        click.echo(report.to_json({**data, **({"email": sent} if sent else {})}), nl=False)
        return
    if as_csv:
        click.echo(report.to_csv(data), nl=False)
        if sent:  # stdout carries the CSV only
            click.echo(f"report sent to {', '.join(sent['to'])}", err=True)
        return
    for line in report.text_lines(data):
        out.print(escape(line))
    for run_batch, who in commands.runbooks(project, batch=batch).items():
        out.print(escape(f"note: playbook run in progress on batch {run_batch}: {who}"))
    if html is not None:
        out.print(escape(f"HTML report written: {html}"))
    if sent:
        out.print(escape(f"report sent to {', '.join(sent['to'])} through {sent['relay']}"))


@main.command("notify")
@project_option
@click.option("--batch", required=True, help="The batch whose users get the notice.")
@click.option(
    "--template",
    "template",
    required=True,
    help="before-migration | after-cutover | outlook-profile | custom (then FILE).",
)
@click.argument(
    "file", required=False, type=click.Path(dir_okay=False, exists=True, path_type=Path)
)
@click.option("--date", default=None, help="The cutover date the notice names (ISO 8601).")
@click.option("--resend", is_flag=True, help="Send again to users who already got it.")
@plan_option
@json_option
@handles_errors
def notify_cmd(
    project: Path,
    batch: str,
    template: str,
    file: Path | None,
    date: str | None,
    resend: bool,
    plan: bool,
    as_json: bool,
) -> None:
    """Mail each user of a batch a notice (journaled: a re-run sends no duplicate)."""
    from coexist import notices

    result = notices.notify(
        project, batch=batch, template=template, custom=file, date=date, plan=plan, resend=resend
    )
    if as_json:
        click.echo(json.dumps(result, default=str))
    else:
        for n in result["notices"]:
            style = {"failed": "red", "planned": "cyan"}.get(n["status"], "green")
            out.print(escape(f"{n['status']:8} {n['user']}: {n['detail']}"), style=style)
            if plan:
                out.print(escape(f"Subject: {n['subject']}\n{n['text']}"))
        verb = "would send" if plan else "sent"
        count = len(result["notices"]) if plan else result["sent"]
        out.print(escape(f"{verb} {count} notices ({result['already']} sent before)"))
    if result["failed"]:
        sys.exit(1)


# `credentials request | revoke | serve` (issue 15) live in their own module.
from coexist import credlink_cli  # noqa: E402, F401

if __name__ == "__main__":
    main()
