"""`coexist demo --scenario imap` (Dovecot -> sandbox Microsoft 365) and `--scenario
imap-to-imap` (Dovecot -> Dovecot): the operator's IMAP runbook, end to end.

A real Dovecot (`coexist.sandbox.dovecot`) gets a few users with seeded mailboxes
(`coexist.sandbox.imapseed`). Then the runbook (`RUNBOOK`) goes through the same command
functions the CLI runs: write the project (`[source] kind = "imap"`), `batch import` a
CodeTwo user CSV with the passwords (they go to the credential vault; the CSV is deleted
after), `verify-credentials` where this version has it, `prestage --older-than 90d`, the MX
change (the operator's: a printed checkpoint), `cutover` (the full pass), `status` with
per-folder counts, and `cutover` once more, which must copy nothing. The demo is ok only if
every seeded message is in the target exactly once, in the folder it maps to, every user
is cut over, and the second cutover copied 0.

The vault key is a fresh COEXIST_VAULT_KEY for the demo's run (unless one is set), never
printed or written: the vault cannot be opened after the demo, whose Dovecot is gone then.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import io
import json
import os
import secrets
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coexist import commands, credentials, demorunbook
from coexist.errors import InputError
from coexist.files import private_dir, write_private
from coexist.model import Phase
from coexist.vault import ENV_KEY, new_key

IMAP_DEMO_USERS = 3
IMAP_DEMO_ITEMS = 16
SOURCE_DOMAIN = "oldmail.example"
IMAP_TARGET_DOMAIN = "newmail.example"
BATCH = "imap-wave-1"
OLDER_THAN = "90d"
CSV_NAME = "users-codetwo.csv"
# People of the imap-to-imap demo (the imap demo takes the sandbox tenant's mailboxes).
PEOPLE = (
    ("alice", "Alice", "Archer"),
    ("bruno", "Bruno", "Díaz"),
    ("chen", "Chen", "Wei"),
    ("dora", "Dora", "Łukasik"),
    ("emeka", "Emeka", "Okafor"),
)
# The source folders a Microsoft 365 target files under its well-known folders (their
# display names in the target), as the IMAP store maps RFC 6154 special use.
M365_WELL_KNOWN = {"INBOX": "Inbox", "Sent": "Sent Items", "Drafts": "Drafts"}

Say = Callable[[str], None]


@dataclass(frozen=True)
class Person:
    """One migrating user: source login, target address, name, hierarchy delimiter."""

    login: str
    target: str
    first: str
    last: str
    separator: str = "/"

    @property
    def display_name(self) -> str:
        return " ".join(part for part in (self.first, self.last) if part)


@dataclass(frozen=True)
class Found:
    """A message found in a target mailbox: its Message-ID and folder path (names)."""

    message_id: str
    folder: tuple[str, ...]


@dataclass
class Target:
    """The target of an IMAP scenario: its project settings, its people, how to read back
    what a target mailbox holds, and where a source folder should land."""

    kind: str
    settings: dict[str, Any]
    people: list[Person]
    read: Callable[[Person], list[Found]]
    expected_folder: Callable[[tuple[str, ...]], tuple[str, ...]]
    # The target's master user password, where a master user opens every target mailbox.
    master_password: str | None = field(default=None, repr=False)


@dataclass
class Run:
    """One demo run: where its project is, what was seeded, what each step said."""

    project: Path
    target: Target
    csv_text: str = field(repr=False)
    say: Say
    progress: commands.Progress | None
    results: dict[str, Any] = field(default_factory=dict)


# -- scenarios --------------------------------------------------------------------------------
def imap_to_m365_demo(
    directory: Path | None = None,
    *,
    seed: int = 1,
    users: int | None = None,
    profile: str = "fast",
    time_scale: float = 1.0,
    mode: str = "forward-on-source",
    items: int | None = None,
    say: Say = lambda _m: None,
    progress: commands.Progress | None = None,
) -> dict[str, Any]:
    """Dovecot -> the sandbox's Microsoft 365 tenant: each IMAP user moves into an existing
    target mailbox (the CSV's Destination Email column)."""
    count, per_user = _sizes(users, items, mode)
    base = _base(directory)
    with ExitStack() as stack:
        target = stack.enter_context(
            _m365_target(base / "sandbox", count, seed, profile, time_scale, say)
        )
        return _demo(base, stack, target, per_user, seed, say, progress)


def imap_to_imap_demo(
    directory: Path | None = None,
    *,
    seed: int = 1,
    users: int | None = None,
    profile: str = "fast",
    time_scale: float = 1.0,
    mode: str = "forward-on-source",
    items: int | None = None,
    say: Say = lambda _m: None,
    progress: commands.Progress | None = None,
) -> dict[str, Any]:
    """Dovecot -> another Dovecot (as imapsync does): the target signs in as its master user.
    `profile` and `time_scale` are the sandbox's: this scenario has none to give them to."""
    if (profile, time_scale) != ("fast", 1.0):
        raise InputError(
            "--profile and --time-scale set the sandbox's Microsoft 365: the imap-to-imap "
            "demo has no sandbox",
            next_step="leave them out, or use --scenario imap",
        )
    count, per_user = _sizes(users, items, mode)
    base = _base(directory)
    with ExitStack() as stack:
        target = stack.enter_context(_imap_target(count, say))
        return _demo(base, stack, target, per_user, seed, say, progress)


def _sizes(users: int | None, items: int | None, mode: str) -> tuple[int, int]:
    """Users and messages per user, and Dovecot there; checked before anything starts."""
    if mode != "forward-on-source":
        raise InputError(
            f"--mode {mode}: an IMAP source has no forwarding (its cutover is an MX change)",
            next_step="leave out --mode with --scenario imap / imap-to-imap",
        )
    from coexist.sandbox.dovecot import binaries

    binaries()  # Dovecot installed? (a ConfigError naming the packages, before any file)
    count = IMAP_DEMO_USERS if users is None else users
    per_user = IMAP_DEMO_ITEMS if items is None else items
    if not 1 <= count <= len(PEOPLE) or per_user < 1:
        raise InputError(
            f"--users {count}: the IMAP demos seed 1 to {len(PEOPLE)} users "
            f"(and at least 1 message each, not {per_user})",
            next_step=f"--users {IMAP_DEMO_USERS}",
        )
    return count, per_user


def _base(directory: Path | None) -> Path:
    base = private_dir((directory or Path(tempfile.mkdtemp(prefix="coexist-demo-"))).resolve())
    if (base / "project.toml").exists():
        raise InputError(
            f"{base} already holds a project: the IMAP demos start from an empty directory",
            next_step="coexist demo --scenario imap --dir NEW_DIR",
        )
    return base


# -- targets ------------------------------------------------------------------------------------
@contextmanager
def _m365_target(
    state: Path, count: int, seed: int, profile: str, time_scale: float, say: Say
) -> Iterator[Target]:
    """The sandbox's target tenant; its first `count` user mailboxes receive the IMAP users."""
    from coexist.sandbox import seed as sandbox_seed
    from coexist.sandbox.server import Sandbox
    from coexist.tenants.auth import TenantEndpoint

    say(f"starting the sandbox Microsoft 365 tenants (profile {profile}) in {state}")
    with Sandbox(state, seed=seed, users=20, profile=profile, time_scale=time_scale) as sb:
        with sb.world.lock:
            mailboxes = sorted(
                (
                    u
                    for u in sb.world.target.users.values()
                    if u.recipient_type_details == "UserMailbox"
                ),
                key=lambda u: u.user_principal_name,
            )[:count]
        people = []
        for i, u in enumerate(mailboxes):
            local = u.user_principal_name.split("@")[0]
            first, last = u.given_name or local, u.surname or ""
            people.append(
                Person(
                    f"{local}@{SOURCE_DOMAIN}",
                    u.user_principal_name,
                    first,
                    last,
                    separator="." if i == 1 else "/",
                )
            )
        endpoint = TenantEndpoint.from_sandbox(sb.connection, "target")
        yield Target(
            kind="m365",
            settings={
                "target.sandbox_connection": str(state / "connection.json"),
                "domains.destination_domain": sandbox_seed.TARGET_DOMAIN,
            },
            people=people,
            read=lambda p: asyncio.run(_graph_messages(endpoint, p.target)),
            expected_folder=_m365_folder,
        )


def _m365_folder(path: tuple[str, ...]) -> tuple[str, ...]:
    """Where a source folder lands in Microsoft 365: special ones under their well-known
    folder's display name, the rest as they are."""
    return (M365_WELL_KNOWN.get(path[0], path[0]), *path[1:])


async def _graph_messages(endpoint: Any, address: str) -> list[Found]:
    """Every message of a Microsoft 365 mailbox (Message-ID and folder path), read with the
    same Graph client coexist uses (GET mailFolders, childFolders, messages)."""
    from coexist.tenants.graph import GraphAdapter

    out: list[Found] = []
    async with GraphAdapter(endpoint) as graph:
        todo: list[tuple[str, tuple[str, ...]]] = [
            (f["id"], (f["displayName"],))
            for f in await graph.list_all(
                f"users/{address}/mailFolders", {"$top": "999", "includeHiddenFolders": "true"}
            )
        ]
        while todo:
            folder_id, path = todo.pop()
            children = await graph.list_all(
                f"users/{address}/mailFolders/{folder_id}/childFolders", {"$top": "999"}
            )
            todo += [(c["id"], (*path, c["displayName"])) for c in children]
            messages = await graph.list_all(
                f"users/{address}/mailFolders/{folder_id}/messages",
                {"$select": "internetMessageId", "$top": "999"},
            )
            out += [Found(str(m.get("internetMessageId")), path) for m in messages]
    return out


@contextmanager
def _imap_target(count: int, say: Say) -> Iterator[Target]:
    """A second Dovecot; each person has a mailbox there with the same delimiter."""
    from coexist.sandbox.dovecot import MASTER_USER, running_dovecot
    from coexist.tenants.imap import ImapEndpoint

    with running_dovecot(name="coexist-demo-target", archive=True) as server:
        say(f"target Dovecot listening on {server.host}:{server.tls_port} (implicit TLS)")
        people = [
            Person(
                f"{local}@{SOURCE_DOMAIN}",
                f"{local}@{IMAP_TARGET_DOMAIN}",
                first,
                last,
                separator="." if i == 1 else "/",
            )
            for i, (local, first, last) in enumerate(PEOPLE[:count])
        ]
        for p in people:
            server.add_user(p.target, separator=p.separator)
        endpoint = ImapEndpoint(server.host, server.tls_port, "tls", server.ca_file, side="target")
        yield Target(
            kind="imap",
            settings={
                "target.kind": "imap",
                "target.imap.host": server.host,
                "target.imap.port": server.tls_port,
                "target.imap.security": "implicit-tls",
                "target.imap.ca_file": str(server.ca_file),
                "target.imap.master_user": MASTER_USER,
            },
            people=people,
            read=lambda p: _imap_messages(endpoint, p.target, server.master_password),
            expected_folder=lambda path: path,
            # What the operator gives once (a master user opens every target mailbox).
            master_password=server.master_password,
        )


def _imap_messages(endpoint: Any, login: str, master_password: str) -> list[Found]:
    """Every message of an IMAP mailbox (Message-ID and folder path), read as the master
    user with coexist's IMAP adapter."""
    from coexist.sandbox.dovecot import MASTER_USER
    from coexist.tenants.imap import ImapSession, MasterPassword

    out: list[Found] = []
    with ImapSession.open(endpoint, MasterPassword(login, MASTER_USER, master_password)) as s:
        for folder in s.list_folders(status=False):
            if not folder.selectable:
                continue
            _validity, uids = s.list_uids(folder.name)
            out += [Found(str(r.message_id), folder.path) for r in s.refs(folder.name, uids)]
    return out


# -- the runbook ----------------------------------------------------------------------------------
def _demo(
    base: Path,
    stack: ExitStack,
    target: Target,
    per_user: int,
    seed: int,
    say: Say,
    progress: commands.Progress | None,
) -> dict[str, Any]:
    """Seed the source Dovecot, write the project, run the runbook, check the target."""
    from coexist.sandbox import imapseed
    from coexist.sandbox.dovecot import running_dovecot

    source = stack.enter_context(running_dovecot(name="coexist-demo-source"))
    say(f"source Dovecot listening on {source.host}:{source.tls_port} (implicit TLS)")
    seeds = []
    for p in target.people:
        user = source.add_user(p.login, secrets.token_urlsafe(12), separator=p.separator)
        seeds.append(imapseed.SeedUser(user.login, user.password, p.separator))
    manifest = imapseed.seed(
        source.host, source.tls_port, source.ca_file, seeds, seed=seed, items=per_user
    )
    say(
        f"seeded {len(manifest.messages)} messages in {len(seeds)} IMAP mailboxes "
        "(quotes, non-ASCII and '/' in folder names, a deep tree, INBOX children, old and new "
        "mail, one large attachment)"
    )
    stack.enter_context(_vault_key())
    commands.init(base, overrides=_settings(source, target))
    say(
        f"project written: {base / 'project.toml'} ([source] kind = imap, [target] kind = {target.kind})"
    )
    run = Run(base, target, _codetwo_csv(target.people, seeds), say, progress)
    run.results["seeded"] = manifest.summary()
    for name, step in RUNBOOK:
        run.results[name] = step(run)
    found = {p.login: target.read(p) for p in target.people}
    return _verdict(run, manifest, found)


def _settings(source: Any, target: Target) -> dict[str, Any]:
    return {
        "project.name": f"imap demo ({target.kind} target)",
        "source.kind": "imap",
        "source.imap.host": source.host,
        "source.imap.port": source.tls_port,
        "source.imap.security": "implicit-tls",
        "source.imap.ca_file": str(source.ca_file),
        # Commands leave waiting users at once; the demo continues them (commands.wait_out).
        "engine.wait_in_command_s": 0,
        **target.settings,
    }


def _codetwo_csv(people: list[Person], seeds: list[Any]) -> str:
    """CodeTwo's user CSV (Login, Password, First Name, Last Name, Display Name) with the
    target address and a batch name, ";"-separated as Excel writes it in many locales."""
    text = io.StringIO()
    w = csv.writer(text, delimiter=";", lineterminator="\r\n")
    w.writerow(
        [
            "Login",
            "Password",
            "First Name",
            "Last Name",
            "Display Name",
            "Destination Email",
            "Batch",
        ]
    )
    for p, s in zip(people, seeds, strict=True):
        w.writerow([p.login, s.password, p.first, p.last, p.display_name, p.target, BATCH])
    return text.getvalue()


@contextmanager
def _vault_key() -> Iterator[None]:
    """A fresh vault key in COEXIST_VAULT_KEY for the demo's commands, unless one is set;
    removed again after (it is never printed or written)."""
    if os.environ.get(ENV_KEY):
        yield
        return
    os.environ[ENV_KEY] = new_key()
    try:
        yield
    finally:
        os.environ.pop(ENV_KEY, None)


def _batch_import(run: Run) -> dict[str, Any]:
    """The operator's CSV, imported and deleted (passwords live in the vault only)."""
    run.say(f"batch import {CSV_NAME} (CodeTwo columns, ';'-separated, passwords to the vault)")
    folder = Path(tempfile.mkdtemp(prefix="coexist-demo-csv-"))
    path = write_private(folder / CSV_NAME, run.csv_text)
    try:
        result = commands.batch_import(run.project, path)
    finally:
        path.unlink(missing_ok=True)
        folder.rmdir()
    if run.target.master_password is not None:
        run.say("credentials set --master --side target (the target's master user password)")
        credentials.credentials_set_master(run.project, run.target.master_password, side="target")
    return result


def _verify_credentials(run: Run) -> dict[str, Any]:
    return demorunbook.verify_credentials(
        run, BATCH, what="log in to every source and target mailbox, move nothing"
    )


def _prestage(run: Run) -> dict[str, Any]:
    return demorunbook.prestage(run, BATCH, OLDER_THAN)


def _mx_change(run: Run) -> dict[str, Any]:
    """The operator's step between the passes: coexist does not touch DNS."""
    run.say(
        "CHECKPOINT: the operator now points the domain's MX record at the new mail system "
        "(new mail lands in the target from here on)"
    )
    return {"ok": True, "checkpoint": "MX record changed by the operator"}


def _cutover(run: Run) -> dict[str, Any]:
    return demorunbook.cutover(run, BATCH, what="flag changes")


def _status(run: Run) -> dict[str, Any]:
    return demorunbook.status(run, what="per user, and per folder: source = target")


def _again(run: Run) -> dict[str, Any]:
    return demorunbook.again(run, BATCH)


def _moved(project: Path) -> dict[str, int]:
    return demorunbook.moved(project)


# The operator's IMAP runbook, in order: (step name in the result, what runs it).
RUNBOOK: tuple[tuple[str, Callable[[Run], dict[str, Any]]], ...] = (
    ("batch_import", _batch_import),
    ("verify_credentials", _verify_credentials),
    ("prestage", _prestage),
    ("mx_change", _mx_change),
    ("cutover", _cutover),
    ("status", _status),
    ("rerun", _again),
)


# -- the verdict ----------------------------------------------------------------------------------
def _verdict(run: Run, manifest: Any, found: Mapping[str, list[Found]]) -> dict[str, Any]:
    """Per user: every seeded message exactly once in the target, in its mapped folder."""
    results = run.results
    status_rows = {str(u["user"]).lower(): u for u in results["status"]["users"]}
    per_user = []
    for p in run.target.people:
        seeded = manifest.of(p.login)
        copies = Counter(f.message_id for f in found[p.login])
        where = {f.message_id: f.folder for f in found[p.login]}
        missing = [m.subject for m in seeded if copies[m.message_id] == 0]
        doubled = [m.subject for m in seeded if copies[m.message_id] > 1]
        misplaced = [
            f"{m.subject}: {'/'.join(where[m.message_id])}"
            for m in seeded
            if copies[m.message_id] == 1
            and where[m.message_id] != run.target.expected_folder(m.folder)
        ]
        row = status_rows.get(p.login.lower(), {})
        old = sum(m.older_than(90, dt.datetime.now(dt.UTC)) for m in seeded)
        per_user.append(
            {
                "user": p.login,
                "target": p.target,
                "seeded": len(seeded),
                "older_than_90d": old,
                "prestage_copied": results["after_prestage"].get(p.login, 0),
                "cutover_copied": results["after_cutover"].get(p.login, 0)
                - results["after_prestage"].get(p.login, 0),
                "rerun_copied": results["rerun"]["copied"].get(p.login, 0),
                "in_target_once": len(seeded) - len(missing) - len(doubled),
                "missing": missing,
                "doubled": doubled,
                "misplaced": misplaced,
                "phase": row.get("phase"),
                "state": row.get("state"),
                "folders": results["status"]["folders"].get(p.login, []),
            }
        )
    ok = all(
        not (u["missing"] or u["doubled"] or u["misplaced"] or u["rerun_copied"])
        and (u["phase"], u["state"]) == (Phase.CUTOVER.value, "ok")
        for u in per_user
    ) and bool(results["verify_credentials"].get("ok", True))
    out = {
        **results,
        "users": per_user,
        "report": _report(per_user),
        "ok": ok,
        "directory": str(run.project),
        "project": str(run.project),
    }
    write_private(run.project / "demo-summary.json", json.dumps(out, indent=2, default=str) + "\n")
    return out


def _report(rows: list[dict[str, Any]]) -> list[str]:
    """Per-user lines for people (addresses, not ids), with each folder that holds mail."""
    lines = [
        "per user (seeded; copied at prestage / cutover / re-run; in the target exactly once):"
    ]
    for u in rows:
        lines.append(
            f"  {u['user']} -> {u['target']}: {u['seeded']} seeded ({u['older_than_90d']} older "
            f"than 90 days); copied {u['prestage_copied']} / {u['cutover_copied']} / "
            f"{u['rerun_copied']}; {u['in_target_once']} of {u['seeded']} once in the target; "
            f"{u['phase']}/{u['state']}"
        )
        for what in ("missing", "doubled", "misplaced"):
            if u[what]:
                lines.append(f"    {what}: " + "; ".join(u[what][:5]))
        for f in u["folders"]:
            if not (f.get("source_items") or f.get("target_items")):
                continue  # a parent folder holding no mail of its own
            lines.append(
                f"    {', '.join(f.get('source_folders') or [])}: source "
                f"{f.get('source_items')}, target {f.get('target_items')}, "
                f"{f.get('skipped', 0)} skipped, difference {f.get('difference', 0)}"
            )
    return lines
