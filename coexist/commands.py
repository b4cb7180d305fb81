"""One plain function per command. The click shell (`cli.py`) only parses and renders;
tests call these directly.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from coexist import batches
from coexist import preflight as pf
from coexist.cutover.flow import cutover_plan, rollback_plan
from coexist.discovery.discover import discover as discover_users
from coexist.engine.runner import ItemPlan, Outcome, epoch, resting, set_item
from coexist.errors import ConfigError, InputError
from coexist.journal import Journal
from coexist.migrate.passes import DataPassStep
from coexist.model import Phase, phase_at_least
from coexist.permissions import needs
from coexist.provisioning.groups import COPIED_GROUPS, group_steps, plan_group, source_groups
from coexist.provisioning.mailusers import readback_plans
from coexist.provisioning.plan import MATCHABLE_KINDS
from coexist.provisioning.provision import (
    plan_targets,
    prestage_plans,
    provision_plans,
    target_index,
)
from coexist.retry import RetryPolicy
from coexist.runtime import Session, open_journal, project_dir, session
from coexist.settings import load_project, parse_duration, write_project
from coexist.tenants.auth import TenantEndpoint
from coexist.tenants.exo import ExoRunner
from coexist.tenants.graph import GraphAdapter
from coexist.verify import verify


# -- sandbox -------------------------------------------------------------------------
def sandbox_serve(
    state: Path,
    *,
    seed: int = 1,
    users: int = 50,
    profile: str = "fast",
    port: int = 0,
    time_scale: float = 1.0,
    drained: bool = False,
    ready: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Serve the sandbox pair until interrupted; `ready` gets the connection info."""
    from coexist.sandbox.server import Sandbox, run_forever

    def make() -> Sandbox:
        return Sandbox(
            state,
            seed=seed,
            users=users,
            profile=profile,
            port=port,
            time_scale=time_scale,
            drained=drained,
        )

    run_forever(make, lambda s: ready(s.connection) if ready else None)


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
    out: dict[str, Any] = {
        "plan": sess.planning,
        "steps": dict(counts),
        "changed": sum(1 for o in sess.outcomes if o.changed),
        "failed": failed,
        "waiting": waiting,
        "skipped": sess.skipped,
        "calls": {"source": sess.ctx.source.calls, "target": sess.ctx.target.calls},
        "writes": {"source": sess.ctx.source.writes, "target": sess.ctx.target.writes},
        **extra,
    }
    if sess.planning:
        out["writes"] = sess.planned_writes()
    return out


def _selected(
    sess: Session,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    phase_at_least_: Phase | None = None,
    what: str,
) -> list[dict[str, Any]]:
    """The users a command works on: a batch (CSV file or recorded name), a list, or all."""
    items = sess.journal.items(kind="user")
    if not items:
        raise InputError(
            "no users in the journal yet",
            next_step=f"coexist discover --project {sess.project.directory}",
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
        for i in items:
            set_item(sess.journal, "user", i["key"], last_command=command)


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
    runs = journal.runs()
    return max(
        (int(r["id"]) for r in runs if r["command"] == command and r["status"] == "ok"), default=0
    )


def _went_through(journal: Journal, item: dict[str, Any], command: str, after: int) -> bool:
    """Whether a run since `after` took this user's `command` to its end: its data pass
    ran (or was reused) there and nothing is left unfinished since."""
    if unfinished(item) == command or (item.get("detail") or {}).get("last_command") != command:
        return False
    passes = [p for p in journal.passes(str(item["key"])) if p["kind"] == command]
    return bool(passes) and int(passes[-1]["run_id"] or 0) > after


def _begin(
    sess: Session, items: list[dict[str, Any]], command: str
) -> tuple[list[dict[str, Any]], int]:
    """Mark each user's `command` as begun, except users a run this one continues already
    took to the end (listed as skipped). Returns the users to run and `last_ok_run`."""
    after = last_ok_run(sess.journal, command)
    resuming = any(
        r["command"] == command and after < int(r["id"]) != sess.runner.run_id
        for r in sess.journal.runs()
    )
    todo: list[dict[str, Any]] = []
    for item in items:
        if resuming and _went_through(sess.journal, item, command, after):
            sess.skipped.append(
                {
                    "user": item.get("source_address"),
                    "reason": f"{command} already done for this user by an interrupted run "
                    "(this run continues the rest)",
                    "next": f"coexist status --project {sess.project.directory}",
                }
            )
            continue
        if not sess.planning:
            set_item(sess.journal, "user", item["key"], last_command=command, unfinished=command)
        todo.append(item)
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
            step = plan_group(g, index, ctx.project.domains.destination_domain)
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
    plan: bool = False,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Target MailUsers forwarding to the source, with X500 proxies (match or create)."""

    args = {"batch": str(batch) if batch else None, "users": users}

    async def body(sess: Session) -> dict[str, Any]:
        items = _selected(sess, batch=batch, users=users, what="provision")
        _mark(sess, items, "provision")
        targets = await plan_targets(sess.ctx, items)
        plans, waiting = provision_plans(sess.ctx, items, targets)
        limit = sess.project.engine.concurrency_per_tenant
        await sess.runner.run(plans, limit)
        # The target address is journaled as Exchange reads it back after every write
        # (New-MailUser makes the *source* address primary: never trust what was sent).
        await sess.runner.run(readback_plans(sess.ctx, plans, sess.outcomes), limit)
        return _result(sess, users=len(items), awaiting_confirmation=waiting)

    return _in_session(
        directory, "provision", args, plan=plan, retry=retry, on_outcome=progress, body=body
    )


def confirm(directory: Path | None, user: str, target: str) -> dict[str, Any]:
    """match mode: the operator picks the target recipient for an ambiguous user."""
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        item = batches.select(journal.items(kind="user"), [user], what="confirm")[0]
        plan = dict((item.get("detail") or {}).get("target_plan") or {})
        if not plan:
            raise InputError(f"{user} has no target plan yet", next_step="coexist provision first")
        _check_confirmable(journal, item, plan, user, target)
        plan.update(matched_id=target, candidates=[], candidate_kinds=[])
        set_item(journal, "user", item["key"], target_plan=plan, state="ok", waiting_for=None)
        return {"user": user, "target": target}
    finally:
        journal.close()


def _check_confirmable(
    journal: Journal, item: dict[str, Any], plan: dict[str, Any], user: str, target: str
) -> None:
    """A confirmed target must be a candidate, able to hold a mailbox, and nobody else's."""
    candidates = list(plan.get("candidates") or [])
    if candidates and target not in candidates:
        raise InputError(
            f"{target} is not one of the candidates for {user}: {', '.join(candidates)}",
        )
    kinds = dict(zip(candidates, plan.get("candidate_kinds") or [], strict=False))
    kind = kinds.get(target)
    if kind and kind not in MATCHABLE_KINDS:
        usable = [c for c in candidates if kinds.get(c) in MATCHABLE_KINDS]
        raise InputError(
            f"{target} is a {kind}: only a MailUser or a mailbox can take over {user}",
            next_step=(
                f"coexist confirm --user {user} --target {usable[0]}"
                if usable
                else "no candidate can: remove the conflicting recipient or use create mode"
            ),
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
    for start in range(0, len(urls), BATCH_GETS):
        for user in await sess.ctx.target.graph.batch_get(urls[start : start + BATCH_GETS]):
            licenses = (user or {}).get("assignedLicenses") or []
            held += any(str(lic.get("skuId")).lower() == sku_id.lower() for lic in licenses)
    return len(items) - held


BATCH_GETS = 20  # json-batching: at most 20 requests in one $batch


def _free_seats(skus: list[dict[str, Any]], sku_id: str) -> int:
    sku = next(s for s in skus if s["skuId"] == sku_id)
    return int(sku["prepaidUnits"]["enabled"]) - int(sku["consumedUnits"])


def prestage(
    directory: Path | None = None,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    older_than: str | None = None,
    since: str | None = None,
    until: str | None = None,
    at: str | None = None,
    plan: bool = False,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Convert and license now, wait for the mailboxes, forward them back, then the data pass.

    The pass moves items received before now - `older_than` (default from project.toml) and,
    when given, within [`since`, `until`) (ISO dates or times, UTC unless an offset is given).
    Mailboxes Exchange is still provisioning leave their users `waiting` with a time to
    look again (`_settle`); `coexist retry` or this command continues them. Each user goes
    through its steps on its own, and a run killed midway is continued where each user
    stopped (see "resuming an interrupted prestage / cutover").
    """
    start, end = _instant_arg("--since", since), _instant_arg("--until", until)
    if start and end and start >= end:
        raise InputError(f"--since {since} is not before --until {until}: the window is empty")
    args = {
        "batch": str(batch) if batch else None,
        "users": users,
        "older_than": older_than,
        "since": since,
        "until": until,
        "at": at,
    }

    async def body(sess: Session) -> dict[str, Any]:
        items = _selected(
            sess, batch=batch, users=users, phase_at_least_=Phase.PROVISIONED, what="prestage"
        )
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
        todo, resume_after = _begin(sess, items, "prestage")
        limit = sess.project.engine.concurrency_per_tenant
        window = parse_duration(older_than) if older_than else sess.project.prestage.older_than
        at_reached = False  # --at: the passes start at that time, once

        def data_pass(item: dict[str, Any]) -> ItemPlan:
            key = item["key"]
            step = DataPassStep(
                subject=key,
                kind="prestage",
                older_than_s=window.total_seconds(),
                since=start.isoformat() if start else None,
                until=end.isoformat() if end else None,
                resume_after=resume_after,
            )
            done = {"unfinished": None}
            return ItemPlan(
                "user", key, [step], None, label=str(item.get("source_address")), done=done
            )

        async def one_round(batch: list[dict[str, Any]]) -> None:
            nonlocal at_reached
            ready = {i["key"]: prestage_plans(sess.ctx, i, sku_id) for i in batch}
            if at and not at_reached:
                # The passes start at --at: until then each user only gets ready.
                first = len(sess.outcomes)
                await sess.runner.run(list(ready.values()), limit)
                stuck = _round_outcomes(sess, first, "failed", "waiting")
                await _wait_until(at)
                at_reached = True
                passes = [data_pass(i) for i in batch if i["key"] not in stuck]
                await sess.runner.run(passes, limit)
                return
            # Per user: license -> mailbox -> forward back -> data pass, each user as soon
            # as its own previous step is done (a killed run keeps every user's progress).
            await sess.runner.run_pipelines([[ready[i["key"]], data_pass(i)] for i in batch], limit)

        await _settle(sess, todo, one_round)
        return _result(sess, users=len(items))

    return _in_session(
        directory, "prestage", args, plan=plan, retry=retry, on_outcome=progress, body=body
    )


async def _wait_until(at: str) -> None:
    try:
        when = dt.datetime.fromisoformat(at)
    except ValueError:
        raise InputError(f"--at {at!r} is not an ISO time (e.g. 2026-11-23T02:00)") from None
    if when.tzinfo is None:
        when = when.astimezone()
    delay = (when - dt.datetime.now(dt.UTC)).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)


# -- cutover / rollback ------------------------------------------------------------------
def cutover(
    directory: Path | None = None,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    plan: bool = False,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """The final delta pass, then the post-migration mode (forward / leave / rename).

    Per user: its swap follows its own final pass at once, so a run killed midway has cut
    over every user it got to, and the next run continues the others (a final pass that
    already finished is not run again).
    """

    args = {"batch": str(batch) if batch else None, "users": users}

    async def body(sess: Session) -> dict[str, Any]:
        items = _selected(
            sess, batch=batch, users=users, phase_at_least_=Phase.PRESTAGED, what="cutover"
        )
        todo, resume_after = _begin(sess, items, "cutover")
        limit = sess.project.engine.concurrency_per_tenant
        routing_domain = await _initial_domain(sess)

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
            return [
                ItemPlan("user", key, [final], None, label=label, gates=gates),
                cutover_plan(sess.ctx, item, routing_domain, done),
            ]

        async def one_round(batch: list[dict[str, Any]]) -> None:
            await sess.runner.run_pipelines([pipeline(i) for i in batch], limit)

        await _settle(sess, todo, one_round)
        return _result(sess, users=len(items), mode=sess.project.cutover.mode)

    return _in_session(
        directory, "cutover", args, plan=plan, retry=retry, on_outcome=progress, body=body
    )


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
    plan: bool = False,
    retry: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Undo a cutover from the before-state it recorded."""

    args = {"batch": str(batch) if batch else None, "users": users}

    async def body(sess: Session) -> dict[str, Any]:
        items = _selected(sess, batch=batch, users=users, what="rollback")
        items = [
            i for i in items if i.get("phase") in (Phase.CUTOVER.value, Phase.ROLLED_BACK.value)
        ]
        _mark(sess, items, "rollback")
        plans = [rollback_plan(sess.ctx, i) for i in items]
        await sess.runner.run(plans, sess.project.engine.concurrency_per_tenant)
        return _result(sess, users=len(items))

    return _in_session(
        directory, "rollback", args, plan=plan, retry=retry, on_outcome=progress, body=body
    )


# -- retry -------------------------------------------------------------------------------
RETRYABLE = {"provision": provision, "prestage": prestage, "cutover": cutover, "rollback": rollback}


def retry(
    directory: Path | None = None,
    *,
    plan: bool = False,
    retry_policy: RetryPolicy | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Re-run the failed (and waiting) users' last command for just those users, and
    continue every prestage or cutover a killed run left unfinished.

    Users waiting on Microsoft 365 whose look-again time has not come are reported as
    still waiting by that command, not looked at.
    """
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        todo: dict[str, list[str]] = {}
        for item in journal.items(kind="user"):
            cmd = unfinished(item) or (item.get("detail") or {}).get("last_command")
            if unfinished(item) is None and item.get("state") not in ("failed", "waiting"):
                continue
            if cmd in RETRYABLE:
                todo.setdefault(cmd, []).append(item["key"])
        retry_groups = any(
            i.get("state") in ("failed", "waiting") for i in journal.items(kind="group")
        )
    finally:
        journal.close()
    results: dict[str, Any] = {}
    for cmd in ("rollback", "provision", "prestage", "cutover"):
        if cmd in todo:
            results[cmd] = RETRYABLE[cmd](
                directory, users=todo[cmd], plan=plan, retry=retry_policy, progress=progress
            )
    if retry_groups:
        results["groups"] = groups(directory, plan=plan, retry=retry_policy, progress=progress)
    return {"retried": {k: len(v) for k, v in todo.items()}, "results": results}


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
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        items = journal.items(kind="user", batch=batch, state=state, phase=phase)
        if user:
            items = batches.select(items, [user], what="status --user")
        failed_steps = {s["item_key"]: s for s in journal.steps(status="failed")}
        last_ok: dict[str, int] = {}  # per command, read once
        rows = []
        for i in items:
            detail = i.get("detail") or {}
            err = failed_steps.get(i["key"])
            rows.append(
                {
                    "user": i.get("source_address"),
                    "name": i.get("name"),
                    "target": i.get("target_address"),
                    "batch": i.get("batch"),
                    "phase": i.get("phase"),
                    "state": i.get("state"),
                    "last_step": detail.get("last_step"),
                    "data": detail.get("data_state"),
                    "waiting_for": detail.get("waiting_for"),
                    "waiting_since": detail.get("waiting_since"),
                    "look_again_at": detail.get("look_again_at"),
                    "error": err.get("error_message") if err else None,
                    "next": err.get("next_step") if err else None,
                    "in_scope": detail.get("in_scope", True),
                }
            )
            if user:  # one user: the last reconciliation of source and target folders too
                rows[-1]["reconciliation"] = detail.get("reconciliation")
            _show_unfinished(journal, i, rows[-1], project.directory, last_ok)
        group_rows = [
            {
                "group": g.get("name"),
                "kind": (g.get("detail") or {}).get("group_kind"),
                "target": g.get("target_address"),
                "state": g.get("state"),
                "unmapped_members": len((g.get("detail") or {}).get("unmapped_members") or []),
                "waiting_for": (g.get("detail") or {}).get("waiting_for"),
                "look_again_at": (g.get("detail") or {}).get("look_again_at"),
            }
            for g in journal.items(kind="group")
        ]
        summary = Counter(f"{r['phase']}/{r['state']}" for r in rows)
        return {"users": rows, "groups": group_rows, "summary": dict(sorted(summary.items()))}
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


def progress_of(journal: Journal, item: dict[str, Any], command: str, after: int) -> str:
    """Where a user's unfinished prestage / cutover stands, e.g. `prestage: licensed,
    waiting for mailbox` (a data pass counts once it ended ok in a run since `after`)."""
    key = str(item["key"])
    records = journal.steps(item_key=key)
    passes = {
        p["kind"]
        for p in journal.passes(key)
        if p["status"] == "ok" and int(p["run_id"] or 0) > after
    }
    said: list[str] = []
    for prefix, done, todo, recent in UNFINISHED_STEPS[command]:
        if prefix.startswith("migrate.pass."):
            finished = command in passes
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
    row: dict[str, Any],
    directory: Path,
    after: dict[str, int],
) -> None:
    """A user whose prestage / cutover a run left unfinished shows as `started`, with how
    far it got and the command that continues it (its journal state alone may say ok)."""
    command = unfinished(item)
    if command is None or row["state"] not in (None, "ok"):
        return
    if command not in after:
        after[command] = last_ok_run(journal, command)
    row.update(
        state="started",
        progress=progress_of(journal, item, command, after[command]),
        next=f"coexist retry --project {directory}",
    )


def batch_import(directory: Path | None, file: Path, *, name: str | None = None) -> dict[str, Any]:
    """Record batch names from an operator's CSV (every row must be a known user, once)."""
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        rows = batches.read_rows(file)
        items = batches.select(
            journal.items(kind="user"), [r["source"] for r in rows], what=str(file)
        )
        assigned: Counter[str] = Counter()
        missing_name = [r["line"] for r in rows if not (r["batch"] or name)]
        if missing_name:
            raise InputError(
                f"{file}: rows {', '.join(missing_name[:10])} have no batch name",
                next_step="add a Batch column, or pass --name",
            )
        for row, item in zip(rows, items, strict=True):
            batch_name = row["batch"] or str(name)
            journal.update_item("user", item["key"], batch=batch_name)
            assigned[batch_name] += 1
        return {"assigned": dict(assigned)}
    finally:
        journal.close()


def batch_export(directory: Path | None, *, batch: str | None = None) -> str:
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
) -> dict[str, Any]:
    """Check permissions, scope, domains, forwarding policy, seats, usage location, conflicts."""

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
        checks += pf.check_conflicts(await target_index(ctx), ctx, chosen)
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
    wait_s: float = 60.0,
) -> dict[str, Any]:
    """Send probes to each user's addresses and report where each one landed."""

    async def body(sess: Session) -> dict[str, Any]:
        items = _selected(sess, batch=batch, users=users, what="verify-mailflow")
        sender = sess.project.verify.service_mailbox or ""
        probes = await verify(sess.ctx, items, sender, wait_s=wait_s, retry=sess.runner.retry)
        return {"ok": all(p.ok for p in probes), "probes": [p.to_dict() for p in probes]}

    return _in_session(directory, "verify-mailflow", {}, plan=False, body=body)


# -- demo --------------------------------------------------------------------------------
async def tenant_summary(ep: TenantEndpoint) -> dict[str, Any]:
    """What an operator sees first about a tenant, read through Graph and Exchange."""
    async with GraphAdapter(ep) as graph, ExoRunner(ep) as exo:
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


def demo(
    directory: Path | None = None,
    *,
    seed: int = 1,
    users: int = 50,
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
    from coexist.sandbox.server import Sandbox

    base = (directory or Path(tempfile.mkdtemp(prefix="coexist-demo-"))).resolve()
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
        say(f"seeding {items} messages in each of {len(scoped)} source mailboxes")
        seeded = mailseed.seed_mailboxes(sb.mail, "source", scoped, seed=seed, items=items)
        results["seeded"] = {k: {"items": v.items, "bytes": v.bytes} for k, v in seeded.items()}
        say("groups")
        results["groups"] = groups(project, progress=progress)
        say("provision")
        results["provision"] = provision(project, progress=progress)
        say("groups again: members provisioned since the first run are added")
        results["groups_again"] = groups(project, progress=progress)
        say("mail flow after provision")
        results["verify_provisioned"] = verify_mailflow(project, wait_s=5)
        say("prestage (convert, license, forward back, data pass)")
        results["prestage"] = prestage(project, progress=progress)
        results["waited"] = wait_out(project, bound_s=bound_s, say=say, progress=progress)
        results["verify_prestaged"] = verify_mailflow(project, wait_s=5)
        say(f"cutover ({mode})")
        results["cutover"] = cutover(project, progress=progress)
        results["waited"] += wait_out(project, bound_s=bound_s, say=say, progress=progress)
        say("mail flow after cutover")
        results["verify"] = verify_mailflow(project, wait_s=5)
        results["status"] = status(project)
        results["data"] = data_report(project)
        for line in data_lines(results["data"]):
            say(line)
        results["after"] = {
            k: _run(tenant_summary(TenantEndpoint.from_sandbox(sb.connection, k)))
            for k in ("source", "target")
        }
    in_place = all(
        (u["phase"], u["state"]) == (Phase.CUTOVER.value, "ok") for u in results["status"]["users"]
    )
    flows = all(results[k]["ok"] for k in ("verify_provisioned", "verify_prestaged", "verify"))
    reconciled = all(r["reconciled"] for r in results["data"])
    results.update(
        ok=in_place and flows and reconciled,
        directory=str(base),
        project=str(project),
        state=str(state),
    )
    (base / "demo-summary.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results
