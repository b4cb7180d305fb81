"""One plain function per command. The click shell (`cli.py`) only parses and renders;
tests call these directly.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import shlex
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from coexist import automatch as am
from coexist import batches, credentials, estimate, jobs, statusmail
from coexist import preflight as pf
from coexist.cutover.arrivals import Arrivals, count_arrivals
from coexist.cutover.flow import (
    MODES,
    cutover_plan,
    forward_contact_step,
    hosted_cutover_plan,
    rollback_plan,
)
from coexist.cutover.hosted import mail_route, runs_hosted_cmdlets
from coexist.discovery.discover import discover as discover_users
from coexist.engine.context import CMDLETS, DIRECTORY, SOURCE_KIND_MOVES, ews_admin
from coexist.engine.runner import ItemPlan, Outcome, epoch, resting, set_item
from coexist.engine.step import Step
from coexist.errors import Busy, ConfigError, InputError
from coexist.files import private_dir, write_private
from coexist.journal import Batch, Journal, claims
from coexist.journal.claims import Writer, playbook_runs
from coexist.migrate.passes import DataPassStep
from coexist.migrate.summary import data_summary, waiting_text
from coexist.model import PHASES, STATUS_STATES, Phase, phase_at_least
from coexist.permissions import MOVER_NEEDS, NEEDS, needs
from coexist.provisioning.convert import LicenseStep, MailboxReadyStep
from coexist.provisioning.exchange import object_id
from coexist.provisioning.grants import (
    FullAccessRevokedStep,
    FullAccessStep,
    ImpersonationStep,
    mailbox_of,
)
from coexist.provisioning.groups import COPIED_GROUPS, group_steps, plan_group, source_groups
from coexist.provisioning.mailusers import ADOPTED, provision_users
from coexist.provisioning.plan import MATCHABLE_KINDS
from coexist.provisioning.provision import (
    plan_targets,
    prestage_plans,
    provision_plans,
    target_index,
)
from coexist.provisioning.workmail import workmail_steps
from coexist.retry import RetryPolicy
from coexist.runtime import Session, open_journal, project_dir, project_writer, session
from coexist.settings import Project, load_project, parse_duration, write_project
from coexist.tenants.auth import TenantCredentials, TenantEndpoint
from coexist.tenants.exo import ExoRunner
from coexist.tenants.graph import BATCH_REQUESTS, GraphAdapter
from coexist.verify import verify


# -- sandbox -------------------------------------------------------------------------
def sandbox_serve(
    state: Path,
    *,
    seed: int = 1,
    users: int = 50,
    profile: str = "fast",
    port: int | None = None,
    time_scale: float = 1.0,
    drained: bool = False,
    ready: Callable[[dict[str, Any]], None] | None = None,
    kinds: dict[str, str] | None = None,
) -> None:
    """Serve the sandbox pair until interrupted; `ready` gets the connection info.

    `kinds` makes a tenant another kind of organisation ({"source": "exchange2016"}; kinds in
    coexist.sandbox.ews.KINDS), served over EWS.

    `port` None: the port this state directory was served on last time, so connection.json
    stays valid (else any free one); 0: any free port. The port served is remembered.
    """
    from coexist.sandbox import admin
    from coexist.sandbox.server import Sandbox, run_forever

    remembered = admin.remembered_port(state) if port is None else None
    chosen = port if port is not None else (remembered or 0)

    def make() -> Sandbox:
        return Sandbox(
            state,
            seed=seed,
            users=users,
            profile=profile,
            port=chosen,
            time_scale=time_scale,
            drained=drained,
            kinds=kinds,
        )

    def serving(sandbox: Sandbox) -> None:
        admin.remember_port(state, sandbox.port)
        if ready:
            ready(sandbox.connection)

    try:
        run_forever(make, serving)
    except admin.PortTaken as exc:
        raise _port_taken(state, exc.host, exc.port, remembered=remembered is not None) from exc
    except admin.SandboxError as exc:
        raise InputError(exc.message, next_step=exc.next_step) from exc


def _port_taken(state: Path, host: str, port: int, *, remembered: bool) -> InputError:
    if remembered:
        return InputError(
            f"port {port} on {host}, where the sandbox of {state} was served last "
            "(the port its connection.json names), is in use by another process",
            next_step="stop that process and serve again; or serve on any free port with "
            f"`coexist sandbox serve --state {state} --port 0` (then a project that copied "
            "connection.json's URLs needs them again; one with `sandbox_connection` follows)",
        )
    return InputError(
        f"port {port} on {host} is in use by another process",
        next_step="choose another --port, or --port 0 for any free port",
    )


def sandbox_deliver(
    state: Path,
    to: str,
    sender: str | None = None,
    tenant: str | None = None,
    *,
    subject: str = "Test message (coexist sandbox deliver)",
    body: str = "",
) -> dict[str, Any]:
    """Deliver one message through the running sandbox of `state`: every copy is stored (the
    recipients' mailboxes, the sender's Sent Items, NDRs) and readable through Graph. When
    the sandbox is not running, only the route is computed from the saved state, and the
    result says so (`through`: "route", `stored` empty, `note`)."""
    from coexist.sandbox import admin
    from coexist.sandbox.model import World

    try:
        with admin.reach(state) as server:
            if server is not None:
                payload = {
                    "to": to,
                    "sender": sender,
                    "tenant": tenant,
                    "subject": subject,
                    "body": body,
                }
                delivered: dict[str, Any] = server.call("deliver", payload)
                return delivered
            result = admin.route_only(World.load(state), to, sender, tenant)
    except admin.SandboxError as exc:
        raise InputError(exc.message, next_step=exc.next_step) from exc
    result["note"] = (
        f"the sandbox of {state} is not running: this is the route computed from its saved "
        f"state, and no message was stored (serve it with `coexist sandbox serve --state "
        f"{state}` to deliver one)"
    )
    return result


def sandbox_policy(state: Path, auto_forwarding: str, tenant: str = "both") -> dict[str, Any]:
    """Set the Default outbound spam policy's AutoForwardingMode (`on`, `off`, `automatic`) in
    the sandbox's source, target or both tenants: in the running server, else in its saved
    state (then served on the next start)."""
    from coexist.sandbox import admin
    from coexist.sandbox.model import World

    mode = admin.MODES.get(auto_forwarding.lower())
    if mode is None:
        raise InputError(
            f"--auto-forwarding {auto_forwarding!r}: choose one of {', '.join(admin.MODES)}"
        )
    tenants = ["source", "target"] if tenant == "both" else [tenant]
    try:
        with admin.reach(state) as server:
            if server is not None:
                rows = server.call("policy", {"tenants": tenants, "mode": mode})
                through = "server"
            else:
                world = World.load(state)
                rows = admin.set_auto_forwarding(world, tenants, mode)
                if any(r["changed"] for r in rows):
                    world.save(state)
                through = "state"
    except admin.SandboxError as exc:
        raise InputError(exc.message, next_step=exc.next_step) from exc
    return {"state": str(state), "through": through, "tenants": rows}


def sandbox_ews_account(
    state: Path,
    tenant: str,
    name: str,
    *,
    password: str | None = None,
    kind: str | None = None,
    full_access: list[str] | None = None,
    impersonation: bool | None = None,
    revoke: bool = False,
) -> dict[str, Any]:
    """Create or change an EWS account of a sandbox organisation (a migration account with
    FullAccess on mailboxes and/or ApplicationImpersonation), in the running server or the
    saved state (`coexist.sandbox.admin.ews_account`)."""
    from coexist.sandbox import admin
    from coexist.sandbox.model import World

    payload: dict[str, Any] = {
        "tenant": tenant, "name": name, "password": password, "kind": kind,
        "full_access": list(full_access or []), "impersonation": impersonation,
        "revoke": revoke,
    }  # fmt: skip
    try:
        with admin.reach(state) as server:
            if server is not None:
                row = server.call("ews-account", payload)
                through = "server"
            else:
                world = World.load(state)
                row = admin.ews_account(
                    world, tenant, name, password=password, kind=kind,
                    full_access=full_access or [], impersonation=impersonation, revoke=revoke,
                )  # fmt: skip
                world.save(state)
                through = "state"
    except admin.SandboxError as exc:
        raise InputError(exc.message, next_step=exc.next_step) from exc
    return {"state": str(state), "through": through, **row}


def sandbox_seed_mail(
    state: Path, users: list[str], per_user: int, *, tenant: str = "source", seed: int = 1
) -> dict[str, Any]:
    """Give each named mailbox `per_user` seeded messages (dated over the past year, in
    folders as real mailboxes have them; `coexist.sandbox.mailseed`), through the running
    server or into the saved state. Messages a mailbox already holds from the same seed are
    not added again."""
    from coexist.sandbox import admin
    from coexist.sandbox.mailstore import MAIL_DB, MailStore
    from coexist.sandbox.model import World

    names = [u.strip() for u in users if u.strip()]
    if not names:
        raise InputError("--users names no mailbox", next_step="--users alice@...,bob@...")
    if per_user < 1:
        raise InputError(f"--per-user {per_user}: give at least 1 message per mailbox")
    try:
        with admin.reach(state) as server:
            if server is not None:
                payload = {"tenant": tenant, "users": names, "per_user": per_user, "seed": seed}
                rows = server.call("seed-mail", payload)
                through = "server"
            else:
                world = World.load(state)
                store = MailStore(state / MAIL_DB)
                try:
                    rows = admin.seed_mail(world, store, tenant, names, per_user, seed)
                finally:
                    store.close()
                through = "state"
    except admin.SandboxError as exc:
        raise InputError(exc.message, next_step=exc.next_step) from exc
    return {"state": str(state), "through": through, "mailboxes": rows}


# -- helpers -------------------------------------------------------------------------
Progress = Callable[[Outcome], None]


def _result(sess: Session, **extra: Any) -> dict[str, Any]:
    counts = Counter(o.status for o in sess.outcomes)
    failed = [
        {
            "user": o.label or o.subject,
            "item": o.subject,
            "step": o.name,
            "error": o.error,
            "next": o.next_step,
        }
        for o in sess.outcomes
        if o.status == "failed"
    ]
    waiting = [
        {
            "user": o.label or o.subject,  # people read addresses; `item` keeps the id
            "item": o.subject,
            "step": o.name,
            "detail": o.detail,
            "look_again_at": o.look_again_at,
        }
        for o in sess.outcomes
        if o.status == "waiting"
    ]
    changed = sum(1 for o in sess.outcomes if o.changed)
    out: dict[str, Any] = {
        "plan": sess.planning,
        "steps": dict(counts),
        # A plan changed nothing: it counts what the real run would change (issue 10).
        ("would_change" if sess.planning else "changed"): changed,
        "failed": failed,
        "waiting": waiting,
        "skipped": sess.skipped,
        "calls": {"source": sess.ctx.source.calls, "target": sess.ctx.target.calls},
        "writes": {"source": sess.ctx.source.writes, "target": sess.ctx.target.writes},
        **extra,
    }
    if sess.planning:
        out["writes"] = sess.planned_writes()
    if sess.runbooks:  # a plan beside a playbook run on its batch (coexist.runtime)
        out["runbooks_in_progress"] = sess.runbooks
    return out


# -- arguments: every one checked before the command's first write ---------------------------
def check_selection(
    what: str,
    batch: str | Path | None,
    users: list[str] | None,
    all_users: bool,
    *,
    default_all: bool = False,
) -> list[str] | None:
    """An explicit selection: exactly one of --batch, --users, --all, none of them blank.

    A blank `--users " "` once selected every user (issue 10): a selection that names
    nobody is an error, and acting on every user takes `--all` unless the command only
    reads (`default_all`: preflight). Returns the named users, blanks dropped.
    """
    given = [
        name
        for name, value in (("--batch", batch), ("--users", users), ("--all", all_users or None))
        if value is not None
    ]
    if len(given) > 1:
        raise InputError(
            f"{what}: pass one of --batch, --users or --all, not {' and '.join(given)}",
            next_step=f"coexist {what} --batch FILE.csv  (or --users a@example.com, or --all)",
        )
    if batch is not None and not str(batch).strip():
        raise InputError(
            f"{what}: --batch is blank: it must name a batch CSV file or a batch name",
            next_step=f"coexist {what} --batch NAME  (`coexist batch export` lists the batches)",
        )
    named = None if users is None else [u.strip() for u in users if u.strip()]
    if named == []:
        raise InputError(
            f"{what}: --users names no user (it is empty or blank)",
            next_step=f"coexist {what} --users a@example.com,b@example.com  (or --all)",
        )
    if not given and not default_all:
        raise InputError(
            f"{what}: no users selected; pass --batch, --users, or --all for every user "
            "of the project",
            next_step=f"coexist {what} --batch FILE.csv  (or --users a@example.com, or --all)",
        )
    return named


def _duration_arg(option: str, value: str | None) -> dt.timedelta | None:
    """A duration from the command line (90d, 12h, 1d12h), refused before any write."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise InputError(f"{option}: {exc}", next_step=f"{option} 90d") from None


def _choice_arg(option: str, value: str | None, choices: tuple[str, ...]) -> None:
    """A value that must be one of `choices` (click checks too; tests call commands)."""
    if value is not None and value not in choices:
        raise InputError(
            f"{option} {value!r} is not one of: {', '.join(choices)}",
            next_step=f"{option} {choices[0]}",
        )


def _blank_arg(option: str, value: str | None) -> None:
    if value is not None and not value.strip():
        raise InputError(f"{option} is blank", next_step=f"leave out {option}, or give a value")


def pick_users(
    journal: Journal,
    directory: Path,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The users a batch (CSV file or recorded name) or a list names, or every user (the
    selection was checked by `check_selection`): no batch and no users means `--all`."""
    items = journal.items(kind="user")
    if not items:
        raise InputError(
            "no users in the journal yet",
            next_step=f"coexist discover --project {directory}",
        )
    if batch is not None and Path(str(batch)).is_file():
        rows = batches.read_rows(Path(str(batch)))
        chosen = batches.select(items, [r["source"] for r in rows], what=f"{batch}")
    elif batch is not None:
        chosen = [i for i in items if i.get("batch") == str(batch)]
        if not chosen:
            raise InputError(
                f"no users in batch {batch!r}",
                next_step="coexist batch import FILE  (records batch names), or pass --batch FILE.csv",
            )
    elif users:
        chosen = batches.select(items, users, what="--users")
    else:
        chosen = items
    return chosen


def _selected(
    sess: Session,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    phase_at_least_: Phase | None = None,
    what: str,
) -> list[dict[str, Any]]:
    """The users a command works on: a batch (CSV file or recorded name), a list, or all.

    The selection was checked by `check_selection` before the command started: here no
    batch and no users means `--all` (or a command that reads every user by default).
    """
    chosen = pick_users(sess.journal, sess.project.directory, batch=batch, users=users)
    if phase_at_least_ is not None:
        behind = [i for i in chosen if not phase_at_least(i.get("phase"), phase_at_least_)]
        if behind:
            nxt = _previous_command(phase_at_least_, sess.project.directory)
            for i in behind:
                sess.skipped.append(
                    {
                        "user": i.get("source_address"),
                        "reason": f"not {phase_at_least_.value} yet (phase {i.get('phase')})",
                        "next": nxt,
                    }
                )
            chosen = [i for i in chosen if i not in behind]
            if not chosen:
                names = ", ".join(str(i.get("source_address")) for i in behind[:5])
                raise InputError(
                    f"{what}: no selected user has reached {phase_at_least_.value}: {names}",
                    next_step=nxt,
                )
    return chosen


def _previous_command(phase: Phase, directory: Path) -> str:
    cmd = {
        Phase.PROVISIONED: "provision",
        Phase.PRESTAGED: "prestage",
        Phase.CUTOVER: "cutover",
    }.get(phase, "discover")
    return f"coexist {cmd} --project {directory} ..."


def _mark(sess: Session, items: list[dict[str, Any]], command: str) -> None:
    if not sess.planning:
        marks = Batch()  # one write for the users of the command, not one per user
        for i in items:
            set_item(marks, "user", i["key"], last_command=command)
        sess.journal.write_batch(marks)


# -- resuming an interrupted prestage / cutover ------------------------------------------
# A command killed at any moment leaves each user where it got to, and running it again
# continues from there: the runs of a command since it last ended ok are one attempt at it.
# Users such a run took to the end are left alone, a data pass that finished ok in one is
# not run again, and the others' steps re-observe and go on. Each user carries the command
# it has not finished (detail `unfinished`), which status shows and `coexist retry` continues.
RESUMABLE = ("prestage", "cutover")


def unfinished(item: dict[str, Any]) -> str | None:
    """The prestage / cutover a run began for this user and did not take to the end."""
    command = (item.get("detail") or {}).get("unfinished")
    return str(command) if command in RESUMABLE else None


def last_ok_run(journal: Journal, command: str) -> int:
    """The id of the last run of `command` that ended ok (0: none). The runs of it since are
    killed or stopped by an error, and continued by the next one."""
    return _last_ok(journal.runs(), command)


def _last_ok(runs: list[dict[str, Any]], command: str) -> int:
    return max(
        (int(r["id"]) for r in runs if r["command"] == command and r["status"] == "ok"), default=0
    )


def passes_by_user(journal: Journal) -> dict[str, list[dict[str, Any]]]:
    """Every data pass in the journal, per user key, in the journal's order."""
    passes: dict[str, list[dict[str, Any]]] = {}
    for record in journal.passes():
        passes.setdefault(str(record["item_key"]), []).append(record)
    return passes


def _went_through(
    item: dict[str, Any], passes: list[dict[str, Any]], command: str, after: int
) -> bool:
    """Whether a run since `after` took this user's `command` to its end: its data pass
    (one of the user's `passes`) ran or was reused there and nothing is left unfinished."""
    if unfinished(item) == command or (item.get("detail") or {}).get("last_command") != command:
        return False
    mine = [p for p in passes if p["kind"] == command]
    return bool(mine) and int(mine[-1]["run_id"] or 0) > after


def _begin(
    sess: Session, items: list[dict[str, Any]], command: str
) -> tuple[list[dict[str, Any]], int]:
    """Mark each user's `command` as begun, except users a run this one continues already
    took to the end (listed as skipped). Returns the users to run and `last_ok_run`."""
    runs = sess.journal.runs()
    after = _last_ok(runs, command)
    resuming = any(
        r["command"] == command and after < int(r["id"]) != sess.runner.run_id for r in runs
    )
    passes = passes_by_user(sess.journal) if resuming else {}
    todo: list[dict[str, Any]] = []
    marks = Batch()  # one write for the users of the command, not one per user
    for item in items:
        if resuming and _went_through(item, passes.get(str(item["key"]), []), command, after):
            sess.skipped.append(
                {
                    "user": item.get("source_address"),
                    "reason": f"{command} already done for this user by an interrupted run "
                    "(this run continues the rest)",
                    "next": f"coexist status --project {sess.project.directory}",
                }
            )
            continue
        # queued_pass: the pass queued when the end user gave credentials (credlink) runs now.
        set_item(
            marks, "user", item["key"], last_command=command, unfinished=command, queued_pass=None
        )
        todo.append(item)
    if not sess.planning:
        sess.journal.write_batch(marks)
    return todo, after


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _in_session(
    directory: Path | None,
    command: str,
    args: dict[str, Any],
    *,
    body: Callable[[Session], Awaitable[dict[str, Any]]],
    plan: bool = False,
    retry: RetryPolicy | None = None,
    on_outcome: Progress | None = None,
) -> dict[str, Any]:
    """Run `body` in one journaled command session (see `coexist.runtime.session`)."""

    async def go() -> dict[str, Any]:
        async with session(
            directory, command, args, plan=plan, retry=retry, on_outcome=on_outcome
        ) as sess:
            return await body(sess)

    result: dict[str, Any] = asyncio.run(go())
    return result


MAX_SLEEP_S = 60.0  # no command sleeps longer than this at a time


async def _settle(
    sess: Session,
    items: list[dict[str, Any]],
    run_round: Callable[[list[dict[str, Any]]], Awaitable[None]],
) -> None:
    """Run a command's round over `items`, then keep looking at those that wait on Microsoft 365.

    A user whose look-again time has not come is reported as still waiting and not run.
    After a round, users waiting with a look-again time within `[engine] wait_in_command_s`
    of the command's start are run again once it comes (sleeping at most MAX_SLEEP_S at a
    time); the others are left waiting for `coexist retry`. Each user's outcomes in the
    result are those of its last round.
    """
    deadline = time.time() + sess.project.engine.wait_in_command_s
    todo = items
    while True:
        first = len(sess.outcomes)
        due = []
        for item in todo:
            if resting(item):
                sess.runner.still_waiting(item)
            else:
                due.append(item)
        if due:
            await run_round(due)
        if sess.planning:
            return
        looks = {
            o.subject: epoch(o.look_again_at) or 0.0
            for o in sess.outcomes[first:]
            if o.status == "waiting" and o.look_again_at
        }
        if not looks or min(looks.values()) > deadline:
            return
        sess.outcomes[first:] = [o for o in sess.outcomes[first:] if o.subject not in looks]
        await asyncio.sleep(min(MAX_SLEEP_S, max(0.0, min(looks.values()) - time.time())))
        todo = [i for k in looks if (i := sess.journal.get_item("user", k)) is not None]


def _round_outcomes(sess: Session, first: int, *statuses: str) -> set[str]:
    """Subjects with an outcome of one of `statuses` since outcome number `first`."""
    return {o.subject for o in sess.outcomes[first:] if o.status in statuses}


# -- init / permissions ------------------------------------------------------------------
def init(directory: Path, *, overrides: dict[str, Any] | None = None, force: bool = False) -> Path:
    """Write a documented project.toml."""
    return write_project(directory, overrides=overrides, force=force)


def permissions(command: str | None = None, mover: str | None = None) -> list[dict[str, str]]:
    """Exactly which permissions a command (or every command) needs, per tenant; with
    `mover`, what that data mover adds to the data passes."""
    _choice_arg("--command", command, tuple(sorted(NEEDS)))
    _choice_arg("--mover", mover, tuple(sorted(MOVER_NEEDS)))
    return [
        {
            "tenant": n.tenant,
            "api": n.api,
            "permission": n.label,
            "alternatives": ", ".join(n.any_of[1:]),
            "why": n.why,
        }
        for n in needs(command, mover)
    ]


# -- discover --------------------------------------------------------------------------
def discover(
    directory: Path | None = None, *, plan: bool = False, rediscover: bool = False
) -> dict[str, Any]:
    """Record the mailboxes in scope (rediscover: add new, align changed, never remove)."""

    async def body(sess: Session) -> dict[str, Any]:
        report = await discover_users(sess.ctx)
        return {"plan": plan, **report.to_dict()}

    return _in_session(
        directory, "rediscover" if rediscover else "discover", {}, plan=plan, body=body
    )


# -- groups ------------------------------------------------------------------------------
def groups(
    directory: Path | None = None,
    *,
    plan: bool = False,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Copy the selected group kinds to the target, members mapped."""

    async def body(sess: Session) -> dict[str, Any]:
        ctx = sess.ctx
        found = await source_groups(ctx.source, tuple(ctx.project.groups.copy))
        ctx.cache[COPIED_GROUPS] = {g.id for g in found}
        index = await target_index(ctx)
        plans = []
        for g in found:
            if not plan:
                sess.journal.upsert_item(
                    "group", g.id, name=g.display_name, source_address=g.primary_smtp
                )
                set_item(sess.journal, "group", g.id, group_kind=g.kind, source_group=g.to_dict())
            step = plan_group(g, index, ctx.project.destination_domain)
            plans.append(
                ItemPlan("group", g.id, group_steps(g, step), "provisioned", label=g.display_name)
            )
        await sess.runner.run(plans, ctx.project.engine.concurrency_per_tenant)
        if not plan:
            # Groups run concurrently, so a group's members step may have run before a
            # nested group it contains was created in this same run. Every copy exists
            # now: one more pass over the waiting groups lets one run converge, so a
            # second `groups` has nothing left to do. Still-waiting groups (members not
            # provisioned yet) come out unchanged and leave the journal alone.
            waiting = {o.subject for o in sess.outcomes if o.status == "waiting"}
            again = [p for p in plans if p.key in waiting]
            sess.outcomes[:] = [o for o in sess.outcomes if o.subject not in waiting]
            await sess.runner.run(again, ctx.project.engine.concurrency_per_tenant)
        return _result(sess, groups=len(found))

    return _in_session(
        directory, "groups", {}, plan=plan, retry=retry, on_outcome=progress, body=body
    )


# -- provision ---------------------------------------------------------------------------
def provision(
    directory: Path | None = None,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    all_users: bool = False,
    plan: bool = False,
    adopt: bool = False,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Target MailUsers forwarding to the source, with X500 proxies (match or create).

    `adopt`: a target MailUser or mailbox that routes to a user's source mailbox but that
    this journal did not make (an orphan of a lost journal) is taken over, journaled, instead
    of failing the user (coexist.provisioning.orphans).
    """
    users = check_selection("provision", batch, users, all_users)
    args = {
        "batch": str(batch) if batch else None,
        "users": users,
        "all": all_users,
        "adopt": adopt,
    }

    async def body(sess: Session) -> dict[str, Any]:
        items = _selected(sess, batch=batch, users=users, what="provision")
        _mark(sess, items, "provision")
        targets = await plan_targets(sess.ctx, items)
        plans, waiting = provision_plans(sess.ctx, items, targets, adopt=adopt)
        limit = sess.project.engine.concurrency_per_tenant
        # The target address is journaled as Exchange reads it back after every write
        # (New-MailUser makes the *source* address primary: never trust what was sent).
        await provision_users(sess.runner, sess.ctx, plans, sess.outcomes, limit)
        return _result(
            sess,
            users=len(items),
            awaiting_confirmation=waiting,
            adopted=_adoptions(sess, plans),
        )

    return _in_session(
        directory, "provision", args, plan=plan, retry=retry, on_outcome=progress, body=body
    )


def _adoptions(sess: Session, plans: list[ItemPlan]) -> list[dict[str, Any]]:
    """The orphans this run took over (provision --adopt), by user and target name."""
    taken: dict[str, dict[str, Any]] = sess.ctx.cache.get(ADOPTED, {})
    ok = {
        o.subject for o in sess.outcomes if o.name == "provision.mailuser" and o.status != "failed"
    }
    return [
        {
            "user": p.label,
            "item": p.key,
            "target": taken[p.key].get("Name"),
            "target_address": taken[p.key].get("PrimarySmtpAddress"),
            "target_id": object_id(taken[p.key]),
        }
        for p in plans
        if p.key in taken and p.key in ok
    ]


def confirm(directory: Path | None, user: str, target: str) -> dict[str, Any]:
    """match mode: the operator picks the target recipient for an ambiguous user."""
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    writer: Writer | None = None
    try:
        writer = project_writer(journal, "confirm", {"users": [user]})
        item = batches.select(journal.items(kind="user"), [user], what="confirm")[0]
        if am.decides(item):  # a user `coexist automatch` decided: the target is an address
            return am.confirm(journal, item, user, target)
        plan = dict((item.get("detail") or {}).get("target_plan") or {})
        if not plan:
            raise InputError(
                f"{user} has no target plan yet", next_step=f"coexist provision --users {user}"
            )
        _check_confirmable(journal, item, plan, user, target)
        plan.update(matched_id=target, candidates=[], candidate_kinds=[])
        set_item(journal, "user", item["key"], target_plan=plan, state="ok", waiting_for=None)
        return {"user": user, "target": target}
    finally:
        if writer is not None:
            writer.close()
        journal.close()


# -- automatch ---------------------------------------------------------------------------
def automatch(
    directory: Path | None = None,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    all_users: bool = False,
    rules: str | None = None,
    create_missing: bool = False,
    plan: bool = False,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Match each user to an existing target user by ordered rules (coexist.automatch);
    with `create_missing`, create, license and wait for the mailbox of the unmatched."""
    users = check_selection("automatch", batch, users, all_users)
    chosen = am.parse_rules(rules)
    args = {
        "batch": str(batch) if batch else None,
        "users": users,
        "all": all_users,
        "rules": list(chosen),
        "create_missing": create_missing,
    }

    async def body(sess: Session) -> dict[str, Any]:
        items = _selected(sess, batch=batch, users=users, what="automatch")
        _mark(sess, items, "automatch")
        found = await am.read_directory(sess.ctx)
        domain = sess.project.destination_domain
        sources = [am.SourceUser.from_item(i) for i in items]
        held = am.held_targets(sess.journal.items(kind="user"), {u.key for u in sources})
        decisions = am.decide_all(sources, held, found, chosen, domain)
        for u in sorted(sources, key=lambda u: u.address.lower()):  # journal writes only
            await sess.runner.run_step(
                am.MatchStep.of(u.key, u.address, decisions[u.key]), u.address
            )
        # A user created before is continued by any run (its license, its mailbox: what
        # `coexist retry` relies on); --create-missing creates the unmatched.
        refused = await _create_missing(sess, sources, decisions, found, create_missing)
        if not sess.planning:  # what the journal holds now (created users included)
            fresh = [sess.journal.get_item("user", u.key) or {"key": u.key} for u in sources]
            decisions = {
                str(i["key"]): am.Decision.recorded(am.SourceUser.from_item(i)) for i in fresh
            }
        return _result(
            sess,
            users=len(items),
            rules=list(chosen),
            matches=am.report(sources, decisions),
            not_created=refused,
        )

    return _in_session(
        directory, "automatch", args, plan=plan, retry=retry, on_outcome=progress, body=body
    )


async def _create_missing(
    sess: Session,
    sources: list[am.SourceUser],
    decisions: dict[str, am.Decision],
    found: am.Directory,
    create: bool,
) -> list[dict[str, str]]:
    """Continue the users created before (license, mailbox) and, with `create`, create,
    license and wait for the mailbox of every unmatched user; returns the users that
    cannot be created, and why."""
    wanted = (am.UNMATCHED, am.CREATED) if create else (am.CREATED,)
    todo = [u for u in sources if decisions[u.key].status in wanted]
    if not todo:
        return []
    skus = (await sess.ctx.target.graph.send("GET", "subscribedSkus"))["value"]
    sku_id = _license_sku(sess, skus)
    if sku_id is None:
        raise ConfigError(
            "automatch --create-missing licenses the users it creates: [prestage] convert is "
            "false, so no license is set",
            file=str(sess.project.file),
            key="prestage.convert",
        )
    usage = sess.project.prestage.usage_location
    dest = sess.project.destination_domain
    plans: dict[str, ItemPlan] = {}
    refused: list[dict[str, str]] = []
    for u in todo:
        step = am.create_step(u, decisions[u.key], found, dest, usage)
        if isinstance(step, str):
            refused.append({"user": u.address, "reason": step})
            continue
        steps: list[Any] = [step]
        if not sess.planning or decisions[u.key].status == am.CREATED:
            # License, then the mailbox Exchange provisions minutes later (prestage's steps).
            steps += [LicenseStep(u.key, sku_id, usage), MailboxReadyStep(u.key)]
        plans[u.key] = ItemPlan("user", u.key, steps, None, label=u.address)
    new = sum(1 for k in plans if decisions[k].status == am.UNMATCHED)
    if new > _free_seats(skus, sku_id):
        raise InputError(
            f"not enough free licenses to create {new} users: {_free_seats(skus, sku_id)} free",
            next_step="free or buy seats, or create fewer (--users)",
        )
    if not sess.planning:
        sess.journal.lock_setting("license_sku", sku_id)
    limit = sess.project.engine.concurrency_per_tenant

    async def one_round(batch: list[dict[str, Any]]) -> None:
        await sess.runner.run([plans[i["key"]] for i in batch], limit)

    items = [sess.journal.get_item("user", k) for k in plans]
    await _settle(sess, [i for i in items if i is not None], one_round)
    return refused


def _check_confirmable(
    journal: Journal, item: dict[str, Any], plan: dict[str, Any], user: str, target: str
) -> None:
    """Only a user waiting for a match takes a target: one of its candidates, able to hold
    a mailbox, and nobody else's.

    Waiting for a match is what provision decides it is (`provision_plans`): candidates
    and no match yet. Any other user's target is its own business: a cut-over user once
    took `--target ../../etc` and had it journaled (issue 10).
    """
    candidates = list(plan.get("candidates") or [])
    if not candidates or plan.get("matched_id"):
        raise InputError(
            f"{user} is not waiting for a match (phase {item.get('phase')}, state "
            f"{item.get('state')}): confirm only chooses among the candidates provision found",
            next_step="coexist status --state waiting  (the users waiting, and what for)",
        )
    kinds = dict(zip(candidates, plan.get("candidate_kinds") or [], strict=False))
    usable = [c for c in candidates if kinds.get(c) in MATCHABLE_KINDS | {None}]
    next_step = (
        f"coexist confirm --user {user} --target {usable[0]}"
        if usable
        else "no candidate can: remove the conflicting recipient or use create mode"
    )
    if target not in candidates:
        raise InputError(
            f"{target} is not one of the candidates for {user}: {', '.join(candidates)}",
            next_step=next_step,
        )
    kind = kinds.get(target)
    if kind and kind not in MATCHABLE_KINDS:
        raise InputError(
            f"{target} is a {kind}: only a MailUser or a mailbox can take over {user}",
            next_step=next_step,
        )
    for other in journal.items(kind="user"):
        if other["key"] == item["key"]:
            continue
        other_plan = (other.get("detail") or {}).get("target_plan") or {}
        if target in (other.get("target_id"), other_plan.get("matched_id")):
            raise InputError(
                f"{target} is already the target of {other.get('source_address')}",
                next_step=f"coexist status --user {other.get('source_address')}",
            )


# -- prestage ----------------------------------------------------------------------------
def _instant_arg(option: str, value: str | None) -> dt.datetime | None:
    """An ISO 8601 date or time from the command line; naive means UTC."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(
            f"{option} {value!r} is not an ISO 8601 date or time (e.g. 2024-01-31)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _license_sku(sess: Session, skus: list[dict[str, Any]]) -> str | None:
    name = sess.project.prestage.license_sku
    if not sess.project.prestage.convert:
        return None
    if not name:
        raise ConfigError(
            "a license SKU is needed to convert MailUsers",
            file=str(sess.project.file),
            key="prestage.license_sku",
        )
    sku = next(
        (s for s in skus if name.lower() in (s["skuPartNumber"].lower(), s["skuId"].lower())), None
    )
    if sku is None:
        raise ConfigError(
            f"SKU {name!r} is not subscribed in the target ({', '.join(s['skuPartNumber'] for s in skus)})",
            file=str(sess.project.file),
            key="prestage.license_sku",
        )
    # Only read the lock here: it is taken once the batch passes the seat check, so a
    # refused prestage leaves the journal as it was (issue 3: bad input changes nothing).
    locked = sess.journal.get_setting("license_sku") or sku["skuId"]
    if locked != sku["skuId"]:
        raise ConfigError(
            f"the license SKU is locked to {locked} since this project first ran; it cannot change",
            file=str(sess.project.file),
            key="prestage.license_sku",
        )
    return str(sku["skuId"])


async def _unlicensed(sess: Session, items: list[dict[str, Any]], sku_id: str) -> int:
    """How many of `items` do not hold the SKU in the target now, as Graph answers.

    Observed, not inferred from the journal: a run killed after `assignLicense` but before
    it journaled the step leaves users who hold a seat already. A user Graph does not serve
    yet (replication) needs one.
    """
    urls = [
        f"/users/{i['target_id']}?$select=id,assignedLicenses" for i in items if i.get("target_id")
    ]
    held = 0
    for start in range(0, len(urls), BATCH_REQUESTS):
        for user in await sess.ctx.target.graph.batch_get(urls[start : start + BATCH_REQUESTS]):
            licenses = (user or {}).get("assignedLicenses") or []
            held += any(str(lic.get("skuId")).lower() == sku_id.lower() for lic in licenses)
    return len(items) - held


def _free_seats(skus: list[dict[str, Any]], sku_id: str) -> int:
    sku = next(s for s in skus if s["skuId"] == sku_id)
    return int(sku["prepaidUnits"]["enabled"]) - int(sku["consumedUnits"])


def prestage(
    directory: Path | None = None,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    all_users: bool = False,
    older_than: str | None = None,
    since: str | None = None,
    until: str | None = None,
    at: str | None = None,
    trial: bool = False,
    plan: bool = False,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """Convert and license now, wait for the mailboxes, forward them back, then the data pass.

    `trial`: the pass is a trial pass (`trial_window`) instead of the pre-stage window.

    The pass moves items received before now - `older_than` (default from project.toml) and,
    when given, within [`since`, `until`) (ISO dates or times, UTC unless an offset is given).
    Mailboxes Exchange is still provisioning leave their users `waiting` with a time to
    look again (`_settle`); `coexist retry` or this command continues them. Each user goes
    through its steps on its own, and a run killed midway is continued where each user
    stopped (see "resuming an interrupted prestage / cutover").
    """
    # Every argument is checked here, before the session: a bad one used to surface only
    # after licences were assigned and mailboxes created (issue 10).
    users = check_selection("prestage", batch, users, all_users)
    older = _duration_arg("--older-than", older_than)
    start, end = _instant_arg("--since", since), _instant_arg("--until", until)
    if start and end and start >= end:
        raise InputError(f"--since {since} is not before --until {until}: the window is empty")
    when = _at_arg(at)
    if trial and (older_than or since or until):
        raise InputError(
            "prestage --trial takes its window from [trial] days and items, not from "
            "--older-than, --since or --until",
            next_step="coexist prestage --trial --batch NAME  (or leave out --trial)",
        )
    args = {
        "batch": str(batch) if batch else None,
        "users": users,
        "all": all_users,
        "older_than": older_than,
        "since": since,
        "until": until,
        "at": at,
        "trial": trial,
    }

    async def project_wide(sess: Session) -> tuple[list[dict[str, Any]], str | None]:
        """What spans the selected users: who they are, and the licence seats they need."""
        items = _selected(
            sess, batch=batch, users=users, phase_at_least_=_provisioned(sess), what="prestage"
        )
        items = _with_credentials(sess, items)
        sku_id = await _prestage_licence(sess, items) if _swaps_recipients(sess) else None
        return items, sku_id

    async def body(sess: Session) -> dict[str, Any]:
        items, sku_id = await project_wide(sess)
        pass_of = (
            trial_window(sess.project)
            if trial
            else {
                "kind": "prestage",
                "older_than_s": (
                    older if older is not None else sess.project.prestage.older_than
                ).total_seconds(),
                "since": start.isoformat() if start else None,
                "until": end.isoformat() if end else None,
            }
        )
        todo, resume_after = _begin(sess, items, "prestage")
        limit = sess.project.engine.concurrency_per_tenant
        at_reached = False  # --at: the passes start at that time, once

        def data_pass(item: dict[str, Any]) -> ItemPlan:
            key = item["key"]
            step = DataPassStep(subject=key, resume_after=resume_after, **pass_of)
            done = {"unfinished": None}
            phase = _phase_after_pass(sess, item, Phase.PRESTAGED)
            return ItemPlan(
                "user", key, [step], phase, label=str(item.get("source_address")), done=done
            )

        async def one_round(batch: list[dict[str, Any]]) -> None:
            nonlocal at_reached
            ready = {i["key"]: _prestage_plan(sess, i, sku_id) for i in batch}
            if when and not at_reached:
                # The passes start at --at: until then each user only gets ready.
                first = len(sess.outcomes)
                await sess.runner.run(list(ready.values()), limit)
                stuck = _round_outcomes(sess, first, "failed", "waiting")
                await _wait_until(when)
                at_reached = True
                passes = [data_pass(i) for i in batch if i["key"] not in stuck]
                await sess.runner.run(passes, limit)
                return
            # Per user: license -> mailbox -> forward back -> data pass, each user as soon
            # as its own previous step is done (a killed run keeps every user's progress).
            await sess.runner.run_pipelines([[ready[i["key"]], data_pass(i)] for i in batch], limit)

        await statusmail.started(sess, "prestage", batch, todo)
        kind = "trial" if trial else "prestage"
        first = await estimate.first_pass_sizes(sess, todo, kind)  # sizes before a first pass
        with estimate.watch(sess, todo, kind, first) as watch:
            await _settle(sess, todo, one_round)
        result = _result(sess, users=len(items), estimate=watch.result)
        return await statusmail.ended(sess, "prestage", batch, todo, result)

    async def chosen(sess: Session) -> list[dict[str, Any]]:
        """The queue's project-wide part: as `project_wide`, but the seats of users whose
        prestage jobs are queued or running (not licensed yet, most) are spoken for."""
        items = _selected(
            sess, batch=batch, users=users, phase_at_least_=_provisioned(sess), what="prestage"
        )
        items = _with_credentials(sess, items)
        if _swaps_recipients(sess):
            mine = {i["key"] for i in items}
            queued = [
                i
                for k in jobs.queued_users(sess.journal, "prestage")
                if k not in mine and (i := sess.journal.get_item("user", k)) is not None
            ]
            await _prestage_licence(sess, items + queued)
        return items

    request = jobs.Request(
        "prestage",
        directory,
        args,
        # What each user's job runs with (--at schedules the jobs instead).
        options={"older_than": older_than, "since": since, "until": until, "trial": trial},
        select=chosen,
        inline=lambda: _in_session(
            directory, "prestage", args, plan=plan, retry=retry, on_outcome=progress, body=body
        ),
        at=when,
        wait=wait,
    )
    return jobs.dispatch(request, executor=_executor(directory), plan=plan)


def _executor(directory: Path | None) -> str:
    """`[engine] executor` of the project (read before the command's session)."""
    return load_project(project_dir(directory)).engine.executor


async def _prestage_licence(sess: Session, items: list[dict[str, Any]]) -> str | None:
    """The licence prestage assigns (None: none), checked against the free seats."""
    skus = (await sess.ctx.target.graph.send("GET", "subscribedSkus"))["value"]
    sku_id = _license_sku(sess, skus)
    if sku_id:
        need = await _unlicensed(sess, items, sku_id)
        free = _free_seats(skus, sku_id)
        if need > free:
            part = next(s["skuPartNumber"] for s in skus if s["skuId"] == sku_id)
            raise InputError(
                f"not enough free {part} licenses: {need} users to convert, {free} free seats",
                next_step="free or buy seats, or run prestage for a smaller batch",
                needed=need,
                free=free,
            )
        if not sess.planning:
            sess.journal.lock_setting("license_sku", sku_id)
    return sku_id


# -- projects whose source is no Microsoft 365 tenant (DESIGN.md "Endpoint kinds") ------------
# An IMAP source has no directory (its users come from `coexist batch import`, in phase
# discovered, with no provisioning) and no recipients: prestage licenses and forwards
# nothing, and cutover swaps nothing: the operator changes the MX record, then cutover runs
# the full data pass (everything not copied yet) and marks the user cut over.


def _swaps_recipients(sess: Session) -> bool:
    """Whether both sides have a directory and Exchange cmdlets (Microsoft 365): licences,
    forwards, the recipient swap. Two hosted Exchange organisations have cmdlets but no
    directory here: their cutover forwards through forwarding objects instead."""
    sides = (sess.ctx.source, sess.ctx.target)
    return all(side.has(CMDLETS) and side.has(DIRECTORY) for side in sides)


def _forwards_via_contact(sess: Session) -> bool:
    """Whether cutover forwards the source mailbox to a forwarding object (the hosted-Exchange
    seed): an Exchange source with remote PowerShell, in forward-on-source mode. Without
    cmdlets (or in another mode) its cutover is the operator's MX change."""
    mode = sess.project.cutover.mode
    return runs_hosted_cmdlets(sess.ctx.source) and mode == "forward-on-source"


def _provisioned(sess: Session) -> Phase:
    """The phase prestage starts from: provisioned, or discovered where the source has no
    directory (no provisioning: a batch file's users), nor where the target has none
    (Microsoft 365 -> WorkMail/Exchange: no provisioning there either)."""
    sides = (sess.ctx.source, sess.ctx.target)
    return Phase.PROVISIONED if all(s.has(DIRECTORY) for s in sides) else Phase.DISCOVERED


def _prestage_plan(sess: Session, item: dict[str, Any], sku_id: str | None) -> ItemPlan:
    """A user's steps before its pre-stage pass (none without recipients to swap; a WorkMail
    target with its admin API configured: the user made and the migration account let in)."""
    if _swaps_recipients(sess):
        return prestage_plans(sess.ctx, item, sku_id)
    # Hosted Exchange: the forwarding object is made ahead, as the seed makes it; a WorkMail
    # target: the user made and the migration account let in.
    steps: list[Step] = (
        [forward_contact_step(sess.ctx, item)] if _forwards_via_contact(sess) else []
    )
    steps += workmail_steps(sess.ctx, item)
    return ItemPlan("user", item["key"], steps, None, label=str(item.get("source_address")))


def _with_credentials(sess: Session, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The users but those waiting for credentials (a user file gave no password, or an
    end user has not yet answered a credential link), which are listed as skipped with the
    command that gives them."""
    out = []
    for item in items:
        waits = str((item.get("detail") or {}).get("waiting_for") or "")
        if item.get("state") == "waiting" and waits.startswith(credentials.CREDENTIAL_WAITS):
            address = item.get("source_address")
            sess.skipped.append(
                {
                    "user": address,
                    "reason": f"waiting for {waits}",
                    "next": f"coexist credentials set --project {sess.project.directory} "
                    f"--user {address}",
                }
            )
            continue
        out.append(item)
    return out


def _phase_after_pass(sess: Session, item: dict[str, Any], phase: Phase) -> str | None:
    """The phase a user reaches with its data pass where no recipient step follows it (a
    user already cut over keeps its phase); None where the recipient steps record it."""
    if _swaps_recipients(sess) or item.get("phase") == Phase.CUTOVER.value:
        return None
    return phase.value


def trial_window(project: Project, now: dt.datetime | None = None) -> dict[str, Any]:
    """A trial pass's step fields (MigrationWiz's Trial Migration): items received in the
    last `[trial] days` (0: any time), at most `[trial] items` per folder (0: all)."""
    days = project.trial.days
    since = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(days=days) if days else None
    return {
        "kind": "trial",
        "since": since.isoformat() if since else None,
        "per_folder": project.trial.items or None,
    }


def _at_arg(at: str | None) -> dt.datetime | None:
    """--at: an ISO time, local time when it has no offset."""
    if not at:
        return None
    try:
        when = dt.datetime.fromisoformat(at)
    except ValueError:
        raise InputError(f"--at {at!r} is not an ISO time (e.g. 2026-11-23T02:00)") from None
    return when if when.tzinfo else when.astimezone()


async def _wait_until(when: dt.datetime) -> None:
    delay = (when - dt.datetime.now(dt.UTC)).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)


# -- cutover / rollback ------------------------------------------------------------------
def cutover(
    directory: Path | None = None,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    all_users: bool = False,
    plan: bool = False,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """The final delta pass, then the post-migration mode (forward / leave / rename).

    Per user: its swap follows its own final pass at once, so a run killed midway has cut
    over every user it got to, and the next run continues the others (a final pass that
    already finished is not run again).
    """
    users = check_selection("cutover", batch, users, all_users)
    args = {"batch": str(batch) if batch else None, "users": users, "all": all_users}

    async def chosen(sess: Session) -> list[dict[str, Any]]:
        items = _selected(
            sess, batch=batch, users=users, phase_at_least_=Phase.PRESTAGED, what="cutover"
        )
        return _with_credentials(sess, items)

    async def body(sess: Session) -> dict[str, Any]:
        items = await chosen(sess)
        todo, resume_after = _begin(sess, items, "cutover")
        limit = sess.project.engine.concurrency_per_tenant
        routing_domain = await _initial_domain(sess) if _swaps_recipients(sess) else ""

        def pipeline(item: dict[str, Any]) -> list[ItemPlan]:
            """One user's final pass, then its swap as soon as that pass has ended.

            With a mover configured, a user whose final pass did not end ok (failed,
            waiting, unreconciled) is not cut over. With mover "none" the pass state stays
            visible and the swap goes on: the operator chose to move data by other means.
            """
            key = item["key"]
            final = DataPassStep(subject=key, kind="cutover", resume_after=resume_after)
            label = str(item.get("source_address"))
            gates = sess.project.migration.mover != "none"
            done = {"unfinished": None}
            if _forwards_via_contact(sess):
                # Hosted Exchange: the final pass, then the forward to the forwarding object.
                return [
                    ItemPlan("user", key, [final], None, label=label, gates=gates),
                    hosted_cutover_plan(sess.ctx, item, done),
                ]
            if not _swaps_recipients(sess):
                # The operator's MX change is the swap: the final pass is the whole cutover.
                phase = Phase.CUTOVER.value
                return [ItemPlan("user", key, [final], phase, label=label, done=done)]
            return [
                ItemPlan("user", key, [final], None, label=label, gates=gates),
                cutover_plan(sess.ctx, item, routing_domain, done),
            ]

        async def one_round(batch: list[dict[str, Any]]) -> None:
            await sess.runner.run_pipelines([pipeline(i) for i in batch], limit)

        await statusmail.started(sess, "cutover", batch, todo)
        first = await estimate.first_pass_sizes(sess, todo, "cutover")  # before a first pass
        with estimate.watch(sess, todo, "cutover", first) as watch:
            await _settle(sess, todo, one_round)
        mode = "mx-change"
        if _swaps_recipients(sess):
            mode = sess.project.cutover.mode
        elif _forwards_via_contact(sess):
            mode = "forward-on-source (forwarding objects)"
        result = _result(sess, users=len(items), mode=mode, estimate=watch.result)
        return await statusmail.ended(sess, "cutover", batch, todo, result)

    request = jobs.Request(
        "cutover",
        directory,
        args,
        options={},
        select=chosen,
        inline=lambda: _in_session(
            directory, "cutover", args, plan=plan, retry=retry, on_outcome=progress, body=body
        ),
        wait=wait,
    )
    return jobs.dispatch(request, executor=_executor(directory), plan=plan)


async def _initial_domain(sess: Session) -> str:
    domains = await sess.ctx.source.exo.run("Get-AcceptedDomain")
    initial = next((d for d in domains if d.get("InitialDomain")), None)
    if initial is None:
        initial = next(d for d in domains if str(d.get("DomainName")).endswith(".onmicrosoft.com"))
    return str(initial["DomainName"])


def rollback(
    directory: Path | None = None,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    all_users: bool = False,
    plan: bool = False,
    yes: bool = False,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Undo a cutover from the before-state it recorded.

    A user named in `users` that was never cut over is an error, before any write; a
    batch or `all_users` rolls back those of its users that were cut over (the others
    are reported as skipped), and is an error when none was.

    Mail delivered to a target mailbox since its cutover stays there (rollback moves no
    mail): it is counted per user first, and without `yes` any such mail (or a count that
    failed) stops the rollback before its first write (InputError, rc 2).
    """
    users = check_selection("rollback", batch, users, all_users)
    args = {"batch": str(batch) if batch else None, "users": users, "all": all_users, "yes": yes}

    async def body(sess: Session) -> dict[str, Any]:
        chosen = _selected(sess, batch=batch, users=users, what="rollback")
        plans = {i["key"]: rollback_plan(sess.ctx, i) for i in chosen}
        items = [i for i in chosen if _was_cut_over(i, plans[i["key"]])]
        _refuse_never_cut_over(sess, [i for i in chosen if i not in items], named=users, left=items)
        arrived = await _arrivals(sess, items)
        if not (yes or sess.planning):
            _confirm_rollback(sess, arrived, batch=batch, users=users)
        _mark(sess, items, "rollback")
        await sess.runner.run(
            [plans[i["key"]] for i in items], sess.project.engine.concurrency_per_tenant
        )
        return _result(
            sess, users=len(items), delivered_since_cutover=[a.to_dict() for a in arrived]
        )

    return _in_session(
        directory, "rollback", args, plan=plan, retry=retry, on_outcome=progress, body=body
    )


def grant_access(
    directory: Path | None = None,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    all_users: bool = False,
    side: str = "source",
    revoke: bool = False,
    plan: bool = False,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Grant the side's migration account (its `[S.ews] admin`) what its access mode needs,
    over the organisation's remote PowerShell: FullAccess on each selected user's mailbox
    (delegation) or the ApplicationImpersonation role (impersonation); `revoke` takes them
    away again. Journaled, so a re-run changes nothing (provisioning/grants.py)."""
    users = check_selection("grant-access", batch, users, all_users)
    _choice_arg("--side", side, ("source", "target"))
    args = {"batch": str(batch) if batch else None, "users": users, "all": all_users}
    args |= {"side": side, "revoke": revoke}

    async def body(sess: Session) -> dict[str, Any]:
        sess.ctx.side(side).require(CMDLETS, "grant-access")
        items = _selected(sess, batch=batch, users=users, what="grant-access")
        account = ews_admin(sess.project, side).login
        if sess.project.tenant(side).ews.access == "impersonation":
            step = ImpersonationStep(subject=side, side=side, account=account, revoke=revoke)
            label = f"the {side} organisation"
            if not sess.planning:  # the item the role assignment's step is recorded on
                sess.journal.upsert_item("organisation", side)
            plans = [ItemPlan("organisation", side, [step], None, label=label)]
        else:
            kind = FullAccessRevokedStep if revoke else FullAccessStep
            plans = [
                ItemPlan(
                    "user",
                    i["key"],
                    [
                        kind(
                            subject=i["key"],
                            side=side,
                            mailbox=mailbox_of(i, side),
                            account=account,
                        )
                    ],
                    None,
                    label=str(i.get("source_address")),
                )
                for i in items
            ]
        await sess.runner.run(plans, sess.project.engine.concurrency_per_tenant)
        return _result(sess, users=len(items), account=account)

    return _in_session(
        directory, "grant-access", args, plan=plan, retry=retry, on_outcome=progress, body=body
    )


def _was_cut_over(item: dict[str, Any], plan: ItemPlan) -> bool:
    """Cut over (or rolled back), or partly: a cutover step recorded a before-state to restore."""
    return item.get("phase") in (Phase.CUTOVER.value, Phase.ROLLED_BACK.value) or bool(plan.steps)


def _refuse_never_cut_over(
    sess: Session,
    never: list[dict[str, Any]],
    *,
    named: list[str] | None,
    left: list[dict[str, Any]],
) -> None:
    """Users with nothing to undo: an error when named or when no one is left, else skipped.

    Rolling back a user that was never cut over once printed 'steps: none' and exited 0
    (issue 10): the operator had most likely named the wrong user.
    """
    if not never:
        return
    shown = [f"{i.get('source_address')} (phase {i.get('phase')})" for i in never]
    if named is not None or not left:
        first = never[0].get("source_address")
        raise InputError(
            f"rollback: never cut over, nothing to undo: {', '.join(shown[:10])}"
            + (" …" if len(shown) > 10 else ""),
            next_step=f"coexist status --project {sess.project.directory} --user {first}",
            users=[i.get("source_address") for i in never],
        )
    for i in never:
        sess.skipped.append(
            {
                "user": i.get("source_address"),
                "reason": f"never cut over (phase {i.get('phase')}): nothing to roll back",
                "next": f"coexist status --project {sess.project.directory} --user "
                f"{i.get('source_address')}",
            }
        )


async def _arrivals(sess: Session, items: list[dict[str, Any]]) -> list[Arrivals]:
    """Mail in each still cut-over user's target mailbox since its cutover (arrivals.py)."""
    live = [i for i in items if i.get("phase") == Phase.CUTOVER.value]
    if not sess.ctx.target.has(DIRECTORY):
        # An Exchange/WorkMail/IMAP target: nothing here reads its directory, so the count is
        # unknown, and unknown asks for the confirmation a count above zero asks for.
        why = f"the target ({sess.ctx.target.kind}) is not counted: look in its mailbox"
        return [
            Arrivals(str(i.get("source_address") or i["key"]), i["key"], None, None, why)
            for i in live
        ]
    gate = asyncio.Semaphore(sess.project.engine.concurrency_per_tenant)

    async def one(item: dict[str, Any]) -> Arrivals:
        async with gate:
            return await count_arrivals(sess.ctx, item)

    return list(await asyncio.gather(*(one(i) for i in live)))


def _confirm_rollback(
    sess: Session,
    arrived: list[Arrivals],
    *,
    batch: str | Path | None,
    users: list[str] | None,
) -> None:
    """Stop (rc 2, nothing written) when mail delivered since cutover would stay behind."""
    left = [a for a in arrived if a.needs_confirmation]
    if not left:
        return
    if batch:
        selection = f" --batch {shlex.quote(str(batch))}"
    else:
        selection = f" --users {shlex.quote(','.join(users))}" if users else " --all"
    raise InputError(
        "mail delivered to the target since cutover stays in the target mailbox after a "
        "rollback (rollback restores routing, it moves no mail): "
        + "; ".join(a.text() for a in left),
        next_step=(
            "look at that mail in the target mailboxes (move it back yourself if needed), "
            f"then: coexist rollback --project {sess.project.directory}{selection} --yes"
        ),
        delivered_since_cutover=[a.to_dict() for a in left],
    )


# -- retry -------------------------------------------------------------------------------
RETRYABLE: dict[str, Callable[..., dict[str, Any]]] = {
    "provision": provision,
    "prestage": prestage,
    "cutover": cutover,
    "rollback": rollback,
    "automatch": automatch,  # continues the users it created (license, mailbox)
}


def retry(
    directory: Path | None = None,
    *,
    plan: bool = False,
    retry_policy: RetryPolicy | None = None,
    progress: Progress | None = None,
    wait: bool = False,
) -> dict[str, Any]:
    """Re-run the failed (and waiting) users' last command for just those users, and
    continue every prestage or cutover a killed run left unfinished.

    Users waiting on Microsoft 365 whose look-again time has not come are reported as
    still waiting by that command, not looked at.

    Users of a batch a playbook run holds (`coexist.journal.claims`) are left to it: they
    are reported in ``refused`` (per user, with the run's details and what to do), and
    every other user is retried; the CLI exits 2 when any user was refused. A run that
    starts while retry works refuses the command it meets (`Busy`): retry looks again at
    which batches are held and runs that command for the users still free.
    """
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        held = {} if plan else claims.runbooks_holding(journal.engine)
        todo: dict[str, list[str]] = {}
        refused: list[dict[str, Any]] = []
        users: dict[str, dict[str, Any]] = {}
        for item in journal.items(kind="user"):
            # A pass queued when the user's end user gave credentials (coexist.credlink).
            queued = (item.get("detail") or {}).get("queued_pass")
            cmd = unfinished(item) or queued or (item.get("detail") or {}).get("last_command")
            if (
                unfinished(item) is None
                and not queued
                and item.get("state")
                not in (
                    "failed",
                    "waiting",
                )
            ):
                continue
            if cmd not in RETRYABLE:
                continue
            users[str(item["key"])] = item
            if not _refused_by_run(item, str(cmd), held, refused):
                todo.setdefault(cmd, []).append(item["key"])
        retry_groups = any(
            i.get("state") in ("failed", "waiting") for i in journal.items(kind="group")
        )
    finally:
        journal.close()
    results: dict[str, Any] = {}
    for cmd in ("automatch", "rollback", "provision", "prestage", "cutover"):
        if cmd in todo:
            # A rollback that failed part-way was confirmed when it started (its users are
            # marked only past the --yes gate): retry finishes it rather than asking again.
            extra: dict[str, Any] = {"yes": True} if cmd == "rollback" else {}
            if cmd in jobs.PRIORITY:  # the commands a queue runs per user: --wait for them
                extra["wait"] = wait
            while todo[cmd]:
                try:
                    results[cmd] = RETRYABLE[cmd](
                        directory,
                        users=todo[cmd],
                        plan=plan,
                        retry=retry_policy,
                        progress=progress,
                        **extra,
                    )
                    break
                except Busy as exc:
                    # A run started on one of these users' batches since we looked.
                    free = _still_free(project, exc, cmd, todo[cmd], users, refused)
                    if free == todo[cmd]:
                        raise  # not a run on their batches: the whole retry stops, as before
                    todo[cmd] = free
    if retry_groups:
        results["groups"] = groups(directory, plan=plan, retry=retry_policy, progress=progress)
    out: dict[str, Any] = {
        "retried": {k: len(v) for k, v in todo.items() if v},
        "results": results,
    }
    if refused:
        out["refused"] = refused
    return out


def _refused_by_run(
    item: dict[str, Any],
    command: str,
    held: Mapping[str, claims.Holder],
    refused: list[dict[str, Any]],
) -> bool:
    """Whether `item`'s batch is held by a playbook run; if so its refusal joins `refused`."""
    batch = item.get("batch")
    if not batch or batch not in held:
        return False
    who = {"user": str(item.get("source_address") or item["key"]), "key": str(item["key"])}
    refused.append({**who, "command": command, **claims.runbook_refused(held[batch], batch)})
    return True


def _still_free(
    project: Project,
    exc: Busy,
    command: str,
    keys: list[str],
    users: Mapping[str, dict[str, Any]],
    refused: list[dict[str, Any]],
) -> list[str]:
    """The users of `keys` whose batch no run holds now (those held join `refused`), after
    `command` was refused: all of `keys` when `exc` was not a playbook run's refusal."""
    if exc.fields.get("reason") != "playbook-run":
        return keys
    with open_journal(project) as journal:
        held = claims.runbooks_holding(journal.engine)
    return [k for k in keys if not _refused_by_run(users[k], command, held, refused)]


# -- status / batches --------------------------------------------------------------------
def status(
    directory: Path | None = None,
    *,
    batch: str | None = None,
    state: str | None = None,
    phase: str | None = None,
    user: str | None = None,
) -> dict[str, Any]:
    """Where every user (and group) stands: phase, state, last step, data, errors."""
    # A misspelt filter once printed an empty table with rc 0 (issue 10).
    _choice_arg("--phase", phase, PHASES)
    _choice_arg("--state", state, STATUS_STATES)
    _blank_arg("--batch", batch)
    _blank_arg("--user", user)
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        # `started` is what status makes of an ok user with an unfinished command (below).
        stored = None if state == "started" else state
        items = journal.items(kind="user", batch=batch, state=stored, phase=phase)
        if batch is not None and not journal.items(kind="user", batch=batch):
            raise InputError(
                f"no users in batch {batch!r}",
                next_step="coexist batch export  (lists every user with its batch)",
            )
        if user:
            items = batches.select(items, [user], what="status --user")
        failed_steps = {s["item_key"]: s for s in journal.steps(status="failed")}
        passes = passes_by_user(journal)
        mover = project.migration.mover  # now, not when the passes ran
        running = jobs.who_runs(journal)  # users a worker's job holds or has queued
        last_ok: dict[str, int] = {}  # per command, read once
        rows = []
        for i in items:
            detail = i.get("detail") or {}
            err = failed_steps.get(i["key"])
            mine = passes.get(i["key"], [])
            data = data_summary(mine, mover, detail.get("reconciliation"))
            rows.append(
                {
                    "user": i.get("source_address"),
                    "name": i.get("name"),
                    "target": i.get("target_address"),
                    "batch": i.get("batch"),
                    "phase": i.get("phase"),
                    "state": i.get("state"),
                    "last_step": detail.get("last_step"),
                    "data": data.text(),
                    "data_passes": data.to_dict(),
                    "waiting_for": waiting_text(detail.get("waiting_for"), mover),
                    "waiting_since": detail.get("waiting_since"),
                    "look_again_at": detail.get("look_again_at"),
                    "error": err.get("error_message") if err else None,
                    "next": err.get("next_step") if err else None,
                    "in_scope": detail.get("in_scope", True),
                    "worker": running.get(str(i["key"])),
                }
            )
            if user:  # one user: the last reconciliation of source and target folders too
                rows[-1]["reconciliation"] = detail.get("reconciliation")
            _show_unfinished(journal, i, mine, rows[-1], project, last_ok)
        if state is not None:
            rows = [r for r in rows if r["state"] == state]
        # Groups belong to no batch and no user; a --state or --phase filter applies to them.
        groups_shown = (
            [] if (user or batch) else journal.items(kind="group", state=state, phase=phase)
        )
        group_rows = [
            {
                "group": g.get("name"),
                "kind": (g.get("detail") or {}).get("group_kind"),
                "target": g.get("target_address"),
                "state": g.get("state"),
                "unmapped_members": len((g.get("detail") or {}).get("unmapped_members") or []),
                "waiting_for": (g.get("detail") or {}).get("waiting_for"),
                "look_again_at": (g.get("detail") or {}).get("look_again_at"),
                "error": (failed_steps.get(g["key"]) or {}).get("error_message"),
                "next": (failed_steps.get(g["key"]) or {}).get("next_step"),
            }
            for g in groups_shown
        ]
        summary = Counter(f"{r['phase']}/{r['state']}" for r in rows)
        return {
            "users": rows,
            "groups": group_rows,
            "summary": dict(sorted(summary.items())),
            # What no pass of this project moves (by its source's kind), else None.
            "data_scope": SOURCE_KIND_MOVES.get(project.source.kind),
            "playbook_runs": _runbooks(journal, batch),
        }
    finally:
        journal.close()


# What a user's unfinished prestage / cutover does, in its order: (step key prefix, said
# once done, said while it is the next thing to do, done only if done since the command
# last ended ok: a swap recorded by an earlier cutover, since rolled back, is not this one).
UNFINISHED_STEPS = {
    "prestage": (
        ("prestage.license:", "licensed", "licensing", False),
        ("prestage.mailbox:", "mailbox ready", "waiting for mailbox", False),
        ("prestage.target-forward:", "forwarding to the source", "forward to the source", False),
        ("migrate.pass.prestage:", "data pass done", "data pass", True),
    ),
    "cutover": (
        ("migrate.pass.cutover:", "final pass done", "final pass", True),
        ("cutover.", "forwarding swapped", "forwarding swap", True),
    ),
}


def runbooks(directory: Path | None, *, batch: str | None = None) -> dict[str, str]:
    """The playbook runs in progress (on `batch`, else any), as `status` names them: a
    report read meanwhile says its figures are still moving."""
    journal = open_journal(load_project(project_dir(directory)))
    try:
        return _runbooks(journal, batch)
    finally:
        journal.close()


def _runbooks(journal: Journal, batch: str | None) -> dict[str, str]:
    """Playbook runs in progress (one per batch, `coexist.playbook`) on `batch`, else any:
    who, since when."""
    runs = playbook_runs(journal.engine).items()
    return {b: h.describe() for b, h in runs if batch is None or b == batch}


def progress_of(
    journal: Journal,
    item: dict[str, Any],
    passes: list[dict[str, Any]],
    command: str,
    after: int,
    *,
    convert: bool = True,
) -> str:
    """Where a user's unfinished prestage / cutover stands, e.g. `prestage: licensed,
    waiting for mailbox` (a data pass of the user's `passes` counts once it ended ok in a
    run since `after`; without `convert`, prestage has no licence and mailbox steps)."""
    records = journal.steps(item_key=str(item["key"]))
    ended = {p["kind"] for p in passes if p["status"] == "ok" and int(p["run_id"] or 0) > after}
    said: list[str] = []
    for prefix, done, todo, recent in UNFINISHED_STEPS[command]:
        if not convert and prefix.startswith("prestage."):
            continue
        if prefix.startswith("migrate.pass."):
            finished = command in ended
        else:
            mine = [r for r in records if str(r["key"]).startswith(prefix)]
            finished = bool(mine) and all(
                r["status"] == "ok" and (not recent or int(r["run_id"] or 0) > after) for r in mine
            )
        if not finished:
            return f"{command}: " + ", ".join([*said[-1:], todo])
        said.append(done)
    return f"{command}: " + ", ".join([*said[-1:], "recording the result"])


def _show_unfinished(
    journal: Journal,
    item: dict[str, Any],
    passes: list[dict[str, Any]],
    row: dict[str, Any],
    project: Project,
    after: dict[str, int],
) -> None:
    """A user whose prestage / cutover a run left unfinished shows how far it got; one the
    journal says is ok shows as `started`, with the command that continues it (a waiting or
    failed one already says what it waits for, or its error and next step)."""
    command = unfinished(item)
    if command is None:
        return
    if command not in after:
        after[command] = last_ok_run(journal, command)
    row["progress"] = progress_of(
        journal, item, passes, command, after[command], convert=project.prestage.convert
    )
    if row["state"] in (None, "ok"):
        row.update(state="started", next=f"coexist retry --project {project.directory}")


def batch_import(
    directory: Path | None,
    file: Path,
    *,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Record batch names from an operator's CSV (every row must be a known user, once): a
    plain batch file, CodeTwo's user CSV or MigrationWiz's Bulk Add CSV, whose passwords go
    to the credential vault (`coexist.credentials`)."""
    _blank_arg("--name", name)
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        return credentials.import_batch(project, journal, file, name=name, env=env)
    finally:
        journal.close()


def batch_set_window(
    directory: Path | None,
    batch: str,
    windows: list[str],
    *,
    timezone: str | None = None,
    clear: bool = False,
) -> dict[str, Any]:
    """Give a batch its own run windows, or `clear` them (`coexist.schedule`)."""
    from coexist import schedule

    _blank_arg("BATCH", batch)
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        return schedule.set_batch_windows(
            project, journal, batch, windows, timezone=timezone, clear=clear
        )
    finally:
        journal.close()


def batch_export(directory: Path | None, *, batch: str | None = None) -> str:
    """The users (of one batch) as CSV: addresses, batch, phase, state."""
    _blank_arg("--batch", batch)
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        return batches.export_rows(journal.items(kind="user", batch=batch))
    finally:
        journal.close()


# -- preflight / verify ------------------------------------------------------------------
def preflight_checks(
    directory: Path | None = None,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    all_users: bool = False,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Check permissions, scope, domains, forwarding policy, seats, usage location, conflicts
    (Microsoft 365 <-> Microsoft 365); with an EWS side, each side's own checks (endpoint,
    admin login, access mode on the batch's mailboxes, version, region, concurrency).

    Reads only: with no selection it checks every discovered user.
    """
    users = check_selection("preflight", batch, users, all_users, default_all=True)
    project = load_project(project_dir(directory), env=env)
    if pf.by_side(project):
        journal = open_journal(project)
        try:
            has_users = bool(journal.items(kind="user"))
            chosen = (
                pick_users(journal, project.directory, batch=batch, users=users)
                if has_users
                else []
            )
        finally:
            journal.close()
        result: dict[str, Any] = asyncio.run(pf.side_preflight(project, chosen, env))
        return result

    async def body(sess: Session) -> dict[str, Any]:
        ctx = sess.ctx
        checks = await pf.check_permissions(
            ctx, ["discover", "provision", "groups", "prestage", "cutover"]
        )
        if any(
            c.name.endswith(("sign-in", "exchange role")) and c.status == "fail" for c in checks
        ):
            # Every later check reads a tenant: without a token (or an Exchange role) it would
            # only stop the command with the same error instead of this table.
            return {"ok": False, "checks": [c.to_dict() for c in checks], "users": 0}
        items = sess.journal.items(kind="user")
        chosen = _selected(sess, batch=batch, users=users, what="preflight") if items else []
        checks += await pf.check_scope(ctx)
        checks += await pf.check_domains(ctx)
        checks += await pf.check_forwarding(ctx, chosen)
        checks += await pf.check_licenses(ctx, chosen)
        checks += pf.check_usage_location(ctx, chosen)
        checks += await pf.check_conflicts(await target_index(ctx), ctx, chosen)
        return {
            "ok": all(c.status != "fail" for c in checks),
            "checks": [c.to_dict() for c in checks],
            "users": len(chosen),
        }

    return _in_session(directory, "preflight", {}, plan=True, body=body)


def verify_mailflow(
    directory: Path | None = None,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    all_users: bool = False,
    wait_s: float = 60.0,
) -> dict[str, Any]:
    """Send probes to each user's addresses and report where each one landed.

    Probes land in people's mailboxes: probing every user takes `all_users`.
    """
    users = check_selection("verify-mailflow", batch, users, all_users)
    if wait_s < 0:
        raise InputError(f"--wait {wait_s:g} is negative", next_step="--wait 60")

    async def body(sess: Session) -> dict[str, Any]:
        items = _selected(sess, batch=batch, users=users, what="verify-mailflow")
        if runs_hosted_cmdlets(sess.ctx.source):
            # Hosted Exchange: the route read back from the source's configuration.
            routes = [await mail_route(sess.ctx, i) for i in items]
            return {"ok": all(r["ok"] for r in routes), "probes": routes, "method": "configuration"}
        sender = sess.project.verify.service_mailbox or ""
        probes = await verify(sess.ctx, items, sender, wait_s=wait_s, retry=sess.runner.retry)
        return {"ok": all(p.ok for p in probes), "probes": [p.to_dict() for p in probes]}

    return _in_session(directory, "verify-mailflow", {}, plan=False, body=body)


# -- demo --------------------------------------------------------------------------------
async def tenant_summary(ep: TenantEndpoint) -> dict[str, Any]:
    """What an operator sees first about a tenant, read through Graph and Exchange."""
    async with (
        TenantCredentials() as credentials,  # one credential for both (closed after them)
        GraphAdapter(ep, credentials=credentials) as graph,
        ExoRunner(ep, credentials=credentials) as exo,
    ):
        users = await graph.list_all("users", {"$select": "id", "$top": "999"})
        recipients = await exo.run("Get-Recipient", ResultSize="Unlimited")
        skus = (await graph.send("GET", "subscribedSkus"))["value"]
    kinds = Counter(str(r.get("RecipientTypeDetails")) for r in recipients)
    return {
        "users": len(users),
        "recipients": dict(sorted(kinds.items())),
        "licenses": {
            s["skuPartNumber"]: f"{s['consumedUnits']}/{s['prepaidUnits']['enabled']}" for s in skus
        },
    }


DEMO_STEPS = (
    "preflight",
    "discover",
    "groups",
    "provision",
    "prestage",
    "cutover",
    "verify-mailflow",
)


# Seeded messages per demo mailbox. The sandbox and the mover share one Python process, so
# each item costs ~20 ms of CPU (MIME parsed on insert and on import, HTTPS both ways); 50
# keeps the default demo (22 mailboxes in scope of 50 users) within a minute on 2 cores.
DEMO_ITEMS = 50


def _scoped_users(project: Path) -> list[str]:
    """Source user ids of the discovered, in-scope users (the demo's batch)."""
    journal = open_journal(load_project(project))
    try:
        users = journal.items(kind="user")
    finally:
        journal.close()
    return [str(u["key"]) for u in users if (u.get("detail") or {}).get("in_scope", True)]


def data_report(directory: Path) -> list[dict[str, Any]]:
    """Per user: items and bytes moved over all passes, GB/h, and the last reconciliation.

    GB/h per mailbox is bytes copied over the summed duration of the passes that copied
    them (journal pass records), the figure operators compare movers by.
    """
    journal = open_journal(load_project(directory))
    try:
        rows = []
        for user in journal.items(kind="user"):
            detail = user.get("detail") or {}
            if not detail.get("in_scope", True):
                continue
            passes = journal.passes(str(user["key"]))
            moved = sum(int((p["counts"] or {}).get("copied", 0)) for p in passes)
            size = sum(int((p["counts"] or {}).get("bytes", 0)) for p in passes)
            seconds = sum(
                (p["finished_at"] - p["started_at"]).total_seconds()
                for p in passes
                if p["finished_at"] and (p["counts"] or {}).get("bytes")
            )
            recon = detail.get("reconciliation") or {}
            folders = recon.get("folders") or []
            rows.append(
                {
                    "user": user.get("source_address"),
                    "items": moved,
                    "bytes": size,
                    "seconds": round(seconds, 3),
                    "gb_per_hour": round(size / 1e9 / (seconds / 3600), 3) if seconds else 0.0,
                    "source_items": sum(int(f["source_items"]) for f in folders),
                    "target_items": sum(int(f["target_items"]) for f in folders),
                    "skipped": sum(int(f["skipped"]) for f in folders),
                    "arrived": sum(int(f.get("arrived_in_target") or 0) for f in folders),
                    "unexplained": recon.get("unexplained"),
                    "reconciled": bool(recon) and recon.get("unexplained") == 0,
                }
            )
        return rows
    finally:
        journal.close()


def data_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The demo's per-user data summary, one line each."""
    lines = ["data moved (items, MB, GB/h per mailbox; source = target items per folder):"]
    for r in rows:
        verdict = "reconciled" if r["reconciled"] else f"{r['unexplained']} unexplained"
        lines.append(
            f"  {r['user']}: {r['items']} items, {r['bytes'] / 1e6:.1f} MB, "
            f"{r['gb_per_hour']:.2f} GB/h; source {r['source_items']} = "
            f"target {r['target_items']} ({r['skipped']} skipped"
            + (f", {r['arrived']} new since cutover" if r.get("arrived") else "")
            + f") {verdict}"
        )
    return lines


def waiting_rows(directory: Path) -> list[dict[str, Any]]:
    """Users and groups waiting on Microsoft 365 (with a look-again time), as status shows them."""
    report = status(directory)
    rows = [{**r, "kind": "user", "who": r["user"]} for r in report["users"]]
    rows += [{**g, "kind": "group", "who": g["group"]} for g in report["groups"]]
    return [r for r in rows if r["state"] == "waiting" and r.get("look_again_at")]


def wait_out(
    directory: Path,
    *,
    bound_s: float,
    say: Callable[[str], None] = lambda _m: None,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Run `coexist retry` until nothing waits on Microsoft 365, or `bound_s` has passed.

    Sleeps until the earliest look-again time before each retry, at most MAX_SLEEP_S at a
    time, and says who waits for what and who continued. Returns each retry's result.
    """
    deadline = time.monotonic() + bound_s
    results: list[dict[str, Any]] = []
    seen: dict[str, str] = {}  # who -> what it waited for at the last look
    while waiting := waiting_rows(directory):
        now = {str(r["who"]): str(r["waiting_for"]) for r in waiting}
        for who, was in seen.items():
            if who not in now:
                say(f"continued on its own: {who} (no longer waiting for: {was})")
            elif now[who] != was:
                say(f"continued on its own: {who} ({was}: done); now waiting for: {now[who]}")
        pause = max(0.0, min(epoch(r["look_again_at"]) or 0.0 for r in waiting) - time.time())
        if now != seen:
            reasons = Counter(now.values())
            say(
                f"{len(now)} waiting for Microsoft 365: "
                + "; ".join(f"{n} × {reason}" for reason, n in reasons.most_common())
                + f"; coexist looks again in {pause:.0f} s"
            )
        seen = now
        if time.monotonic() + pause > deadline:
            say(f"still waiting after {bound_s:.0f} s: leaving them for `coexist retry`")
            return results
        time.sleep(min(MAX_SLEEP_S, pause))
        results.append(retry(directory, progress=progress))
    for who, was in seen.items():
        say(f"continued on its own: {who} (no longer waiting for: {was})")
    return results


# `coexist demo --scenario NAME`: the function that runs it ("module:function", imported when
# chosen, so the m365 demo loads no IMAP code and the reverse). Each takes the directory and
# the keyword options of `m365_demo`, and returns a result with "ok" and "directory".
DEMO_SCENARIOS = {
    "m365": "coexist.commands:m365_demo",
    "imap": "coexist.imapdemo:imap_to_m365_demo",
    "imap-to-imap": "coexist.imapdemo:imap_to_imap_demo",
    "hosted-exchange": "coexist.ewsdemo:hosted_exchange_demo",
    "workmail": "coexist.ewsdemo:workmail_demo",
}


def demo(
    directory: Path | None = None, *, scenario: str = "m365", **options: Any
) -> dict[str, Any]:
    """Run the demo `scenario` (DEMO_SCENARIOS): m365 (Microsoft 365 -> Microsoft 365, the
    default), imap (Dovecot -> sandbox Microsoft 365), imap-to-imap (Dovecot -> Dovecot)."""
    _choice_arg("--scenario", scenario, tuple(DEMO_SCENARIOS))
    module, name = DEMO_SCENARIOS[scenario].split(":")
    run: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module), name)
    return run(directory, **options)


DEMO_BATCH = "demo-wave-1"


def _demo_batch(project: Path) -> dict[str, Any]:
    """Every discovered user in DEMO_BATCH, through the operator's own round trip: the
    batch file exported, its Batch column filled, imported again."""
    import csv
    import io

    rows = list(csv.DictReader(io.StringIO(batch_export(project))))
    for row in rows:
        row["Batch"] = DEMO_BATCH
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["Source Email", "Destination Email", "Batch"],
                            extrasaction="ignore", lineterminator="\r\n")  # fmt: skip
    writer.writeheader()
    writer.writerows(rows)
    with tempfile.TemporaryDirectory(prefix="coexist-demo-batch-") as folder:
        path = write_private(Path(folder) / "batch.csv", out.getvalue())
        return batch_import(project, path)


def _demo_cutover_night(
    project: Path, say: Callable[[str], None], progress: Progress | None
) -> dict[str, Any]:
    """The cutover night as its playbook runs it (playbooks/m365-cutover-night.yaml)."""
    from coexist import playbook

    result = playbook.run_playbook(
        project, "m365-cutover-night", batch=DEMO_BATCH, yes=True, say=say, progress=progress
    )
    for step in result["steps"]:
        say(f"  {step['id']}: {step['status']} {step.get('detail') or ''}".rstrip())
    if not result["ok"]:
        say(f"playbook stopped at {result['stopped_at']}: {result['next']}")
    return result


def m365_demo(
    directory: Path | None = None,
    *,
    seed: int = 1,
    users: int | None = None,
    profile: str = "fast",
    time_scale: float = 1.0,
    mode: str = "forward-on-source",
    items: int = DEMO_ITEMS,
    say: Callable[[str], None] = lambda _m: None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Seed a sandbox pair and run the coexistence flow end to end for one batch.

    The only command that imports the sandbox (DESIGN.md): everything after the
    sandbox starts goes through the same HTTPS endpoints a real tenant offers. The
    batch's source mailboxes get `items` seeded messages each, moved by the
    full-fidelity mover (old mail at pre-stage, the rest at cutover). Under the
    `realistic` profile Microsoft 365 takes minutes (divided by `time_scale`): users
    wait for their mailboxes, and the demo runs `coexist retry` until none waits
    (`wait_out`), as an operator would.
    """
    from coexist.sandbox import mailseed
    from coexist.sandbox import seed as sandbox_seed
    from coexist.sandbox.limits import PROFILES
    from coexist.sandbox.server import Sandbox

    users = 50 if users is None else users
    # Checked before the sandbox starts or anything is written in the directory.
    _choice_arg("--profile", profile, PROFILES)
    _choice_arg("--mode", mode, MODES)
    if time_scale <= 0:
        raise InputError(f"--time-scale {time_scale:g} must be above 0", next_step="--time-scale 1")
    if users < 1 or items < 0:
        raise InputError(
            f"--users {users} must be at least 1 (and items {items} not negative)",
            next_step="--users 50",
        )
    base = private_dir((directory or Path(tempfile.mkdtemp(prefix="coexist-demo-"))).resolve())
    state = base / "sandbox"
    # The project lives in DIR itself and the sandbox state in DIR/sandbox, so
    # `coexist status --project DIR` and `coexist sandbox deliver --state DIR/sandbox`
    # work after the demo.
    project = base
    say(
        f"starting the sandbox tenants ({users} users, profile {profile}, "
        f"time scale {time_scale:g}) in {state}"
    )
    # Microsoft 365's minutes in sandbox time, and how long the demo keeps retrying.
    look_again_s = max(1, round(300 / time_scale))
    bound_s = max(300.0, 7200.0 / time_scale)
    with Sandbox(state, seed=seed, users=users, profile=profile, time_scale=time_scale) as sb:
        with sb.world.lock:
            # What the tenant admins do before a coexistence project (README runbook):
            # allow external forwarding for the migrating mailboxes in both tenants.
            for tenant in sb.world.tenants.values():
                tenant.auto_forwarding_mode = "On"
                tenant.touch()
            service = sorted(
                (
                    u
                    for u in sb.world.target.users.values()
                    if u.recipient_type_details == "UserMailbox"
                ),
                key=lambda u: u.user_principal_name,
            )[0].user_principal_name
        say("tenant preparation: outbound spam policy AutoForwardingMode On in both tenants")
        conn = str(state / "connection.json")
        if not (project / "project.toml").exists():
            init(
                project,
                overrides={
                    "project.name": "demo",
                    "source.sandbox_connection": conn,
                    "target.sandbox_connection": conn,
                    "domains.destination_domain": sandbox_seed.TARGET_DOMAIN,
                    "scope.group": sandbox_seed.SCOPE_GROUP,
                    "prestage.license_sku": "ENTERPRISEPACK",
                    "prestage.usage_location": "US",
                    "cutover.mode": mode,
                    "verify.service_mailbox": service,
                    "migration.mover": "graph-import-export",
                    # The sandbox's clock runs `time_scale` times faster: so does coexist's.
                    "engine.look_again_s": look_again_s,
                    "engine.outlook_time_scale": max(1, int(time_scale)),
                    # Commands leave waiting users at once: the demo shows them waiting
                    # and continues them with `coexist retry` (wait_out).
                    "engine.wait_in_command_s": 0,
                },
            )
        say(f"project written: {project / 'project.toml'}")
        results: dict[str, Any] = {"before": {}, "after": {}}
        results["before"] = {
            k: _run(tenant_summary(TenantEndpoint.from_sandbox(sb.connection, k)))
            for k in ("source", "target")
        }
        say("preflight")
        results["preflight"] = preflight_checks(project)
        if not results["preflight"]["ok"]:
            return {**results, "ok": False, "directory": str(base)}
        say("discover")
        results["discover"] = discover(project)
        scoped = _scoped_users(project)
        say(f"batch: every discovered user in {DEMO_BATCH} (batch export, then batch import)")
        results["batch"] = _demo_batch(project)
        say(f"seeding {items} messages in each of {len(scoped)} source mailboxes")
        seeded = mailseed.seed_mailboxes(sb.mail, "source", scoped, seed=seed, items=items)
        results["seeded"] = {k: {"items": v.items, "bytes": v.bytes} for k, v in seeded.items()}
        say("groups")
        results["groups"] = groups(project, progress=progress)
        say("provision")
        results["provision"] = provision(project, all_users=True, progress=progress)
        say("groups again: members provisioned since the first run are added")
        results["groups_again"] = groups(project, progress=progress)
        say("mail flow after provision")
        results["verify_provisioned"] = verify_mailflow(project, all_users=True, wait_s=5)
        say("prestage (convert, license, forward back, data pass)")
        results["prestage"] = prestage(project, all_users=True, progress=progress)
        results["waited"] = wait_out(project, bound_s=bound_s, say=say, progress=progress)
        results["verify_prestaged"] = verify_mailflow(project, all_users=True, wait_s=5)
        say(f"playbook m365-cutover-night --batch {DEMO_BATCH} ({mode}; manual steps confirmed "
            "with --yes, as in a rehearsal)")  # fmt: skip
        night = _demo_cutover_night(project, say, progress)
        results["cutover_night"] = night
        # The cutover command's own result, as the playbook's `cutover` step recorded it.
        ran = [s.get("result") for s in night["steps"] if s["id"] == "cutover"]
        results["cutover"] = ran[0] if ran and ran[0] else {"failed": [night.get("next")]}
        results["waited"] += wait_out(project, bound_s=bound_s, say=say, progress=progress)
        say("mail flow after cutover")
        results["verify"] = verify_mailflow(project, all_users=True, wait_s=5)
        results["status"] = status(project)
        results["data"] = data_report(project)
        for line in data_lines(results["data"]):
            say(line)
        from coexist import report

        html = report.write_html(report.build(project), base / "report.html")
        results["report_html"] = str(html)
        say(f"report written: {html} (coexist report --html)")
        results["after"] = {
            k: _run(tenant_summary(TenantEndpoint.from_sandbox(sb.connection, k)))
            for k in ("source", "target")
        }
    in_place = all(
        (u["phase"], u["state"]) == (Phase.CUTOVER.value, "ok") for u in results["status"]["users"]
    )
    flows = all(results[k]["ok"] for k in ("verify_provisioned", "verify_prestaged", "verify"))
    reconciled = all(r["reconciled"] for r in results["data"])
    night_ok = bool(results["cutover_night"].get("ok"))  # the playbook ended, every step done
    results.update(
        ok=in_place and flows and reconciled and night_ok,
        directory=str(base),
        project=str(project),
        state=str(state),
    )
    write_private(base / "demo-summary.json", json.dumps(results, indent=2, default=str) + "\n")
    return results
