"""`coexist demo --scenario hosted-exchange` (Exchange 2016 -> Exchange 2019 over EWS) and
`--scenario workmail` (Microsoft 365 -> Amazon WorkMail): the operator's EWS runbook, end to
end against the sandbox's EWS face.

The sandbox serves its source and target tenants as the organisation kinds the scenario
names (`Sandbox(kinds=...)`). Each EWS side gets a migration account made through the
sandbox's account API. Hosted Exchange: the account has no grant yet, and coexist grants it
(`grant-access`, Add-MailboxPermission over the organisation's remote PowerShell, the sandbox's
/PowerShell face); WorkMail: FullAccess on the demo's mailboxes, as the console would grant
it. Then the runbook goes through the same command functions the CLI runs: write the project
(`[source] kind = "exchange"` / `[target] kind = "workmail"`, `[S.ews]` url/auth/version/admin,
powershell_url for hosted Exchange), `credentials set --master` (the admin's password to the
vault, under a fresh demo vault key), `batch import` of the user mapping, `grant-access` (hosted
Exchange), `verify-credentials`, `prestage --older-than 90d` (hosted Exchange: the forwarding
objects first), `cutover` (the full pass; hosted Exchange: then each mailbox forwards to its
forwarding object, keeping no copy), `status` with the per-folder reconciliation, `cutover`
once more, which must copy nothing, and (hosted Exchange) a message to each old address,
which must land once in the new mailbox only.

With `--scenario workmail` the WorkMail users do not exist yet: the project's
`[target.workmail]` names the sandbox's AWS WorkMail API (`sandbox/workmail.py`), and prestage
creates each user there (CreateUser, RegisterToWorkMail) and grants the migration account
FULL_ACCESS (PutMailboxPermissions) through boto3 before the data pass; `prestage --plan`
first lists those calls and sends none, and a second prestage sends no WorkMail write.

The demo is ok when every seeded message is in the target exactly once (by Message-ID, in a
folder of the same path), except messages the target refuses (WorkMail's ~23 MB limit), which
must be skipped and reported with the reason; every user is cut over; the re-run copies 0;
every grant is made and every probe lands where it should.
What the target holds is read from the sandbox's store (the demo owns the sandbox); the
migration itself only talks HTTPS (EWS, remote PowerShell, and Graph for a Microsoft 365
source).
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import tempfile
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coexist import commands, credentials, demorunbook
from coexist.errors import InputError
from coexist.files import private_dir, write_private
from coexist.imapdemo import _vault_key
from coexist.model import Phase

EWS_DEMO_USERS = 3
EWS_DEMO_ITEMS = 24
MAX_USERS = 10
BATCH = "ews-wave-1"
OLDER_THAN = "90d"
ACCOUNT = "svc-migrate"
POWERSHELL_PATH = "/PowerShell"  # the sandbox's remote PowerShell (sandbox/psrp)
PROBE_SENDER = "probe@elsewhere.example"
# WorkMail's per-message limit as the face models it (~23 MB, *unverified*; NOTES-ewsface).
OVERSIZE_BYTES = 24 * 1024 * 1024
OVERSIZE_SUBJECT = "Scanned archive (oversize)"
# Organisation kinds per scenario (sandbox tenant key -> kind; m365 = the sandbox default).
SCENARIOS = {
    "hosted-exchange": {"source": "exchange2016", "target": "exchange2019"},
    "workmail": {"source": "m365", "target": "workmail"},
}
# Project kind and [S.ews] settings for each sandbox organisation kind.
EWS_SETTINGS = {
    "exchange2016": {"kind": "exchange", "auth": "ntlm", "version": "Exchange2016"},
    "exchange2019": {"kind": "exchange", "auth": "ntlm", "version": "Exchange2016"},
    "workmail": {"kind": "workmail", "auth": "basic", "version": "Exchange2010_SP2"},
}

Say = Callable[[str], None]


@dataclass
class Pair:
    """One migrating user: source and target address and the sandbox mailbox ids."""

    source: str
    target: str
    source_id: str
    target_id: str


@dataclass
class Run:
    """One demo run: project, sandbox, people, what was seeded, what each step said."""

    project: Path
    sandbox: Any
    scenario: str
    pairs: list[Pair]
    say: Say
    progress: commands.Progress | None
    seeded: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)
    oversize: dict[str, str] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)


def hosted_exchange_demo(directory: Path | None = None, **options: Any) -> dict[str, Any]:
    """Hosted Exchange 2016 -> Exchange 2019 over EWS (full fidelity: ExportItems/UploadItems)."""
    return _demo("hosted-exchange", directory, **options)


def workmail_demo(directory: Path | None = None, **options: Any) -> dict[str, Any]:
    """Microsoft 365 (Graph) -> Amazon WorkMail (EWS, Basic, MIME): one oversize message is
    refused by WorkMail, skipped and reported."""
    return _demo("workmail", directory, **options)


def _demo(
    scenario: str,
    directory: Path | None,
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
    from coexist.sandbox.limits import PROFILES
    from coexist.sandbox.server import Sandbox

    count = EWS_DEMO_USERS if users is None else users
    per_user = EWS_DEMO_ITEMS if items is None else items
    commands._choice_arg("--profile", profile, PROFILES)
    if mode != "forward-on-source":
        raise InputError(
            f"--mode {mode}: the EWS demos cut over with forwarding objects (hosted Exchange) "
            "or the MX change (WorkMail)",
            next_step=f"leave out --mode with --scenario {scenario}",
        )
    if not 1 <= count <= MAX_USERS or per_user < 1 or time_scale <= 0:
        raise InputError(
            f"--users {count}: the EWS demos seed 1 to {MAX_USERS} users (at least 1 message "
            f"each, time scale above 0)",
            next_step=f"--users {EWS_DEMO_USERS}",
        )
    base = private_dir((directory or Path(tempfile.mkdtemp(prefix="coexist-demo-"))).resolve())
    if (base / "project.toml").exists():
        raise InputError(
            f"{base} already holds a project: the EWS demos start from an empty directory",
            next_step=f"coexist demo --scenario {scenario} --dir NEW_DIR",
        )
    kinds = SCENARIOS[scenario]
    say(
        f"starting the sandbox ({kinds['source']} -> {kinds['target']}, profile {profile}, "
        f"time scale {time_scale:g}) in {base / 'sandbox'}"
    )
    with ExitStack() as stack:
        sb = stack.enter_context(
            Sandbox(
                base / "sandbox",
                seed=seed,
                users=max(10, count),
                profile=profile,
                time_scale=time_scale,
                kinds={k: v for k, v in kinds.items() if v != "m365"},
            )
        )
        stack.enter_context(_vault_key())
        run = Run(base, sb, scenario, _pairs(sb, count), say, progress)
        if scenario == "workmail":
            _new_workmail_users(run)
        _seed(run, seed, per_user)
        # The demo runs the hosted-Exchange cmdlets through coexist (grant-access, forwarding
        # objects, forwards); the organisation's own grants would be made by its admin.
        passwords = _accounts(run, kinds, coexist_grants=True)
        commands.init(base, overrides=_settings(run, kinds, passwords, powershell=True))
        say(
            f"project written: {base / 'project.toml'} ([source] kind = "
            f"{_kind(kinds['source'])}, [target] kind = {_kind(kinds['target'])})"
        )
        for side, (_admin, password) in passwords.items():
            say(f"credentials set --master --side {side} (the migration account's password)")
            credentials.credentials_set_master(base, password, side=side)
        if scenario == "workmail":
            _workmail_key(run)
        for name, step in RUNBOOKS[scenario]:
            run.results[name] = step(run)
        _resolve_targets(run)
        return _verdict(run)


def _has_powershell(org_kind: str) -> bool:
    """Whether the demo reaches this organisation's cmdlets (hosted Exchange: /PowerShell)."""
    return org_kind.startswith("exchange")


def _kind(org_kind: str) -> str:
    return "m365" if org_kind == "m365" else EWS_SETTINGS[org_kind]["kind"]


def _pairs(sb: Any, count: int) -> list[Pair]:
    """The first `count` user mailboxes of each tenant (by address), paired in order."""

    def mailboxes(key: str) -> list[Any]:
        with sb.world.lock:
            found = [
                u
                for u in sb.world.tenants[key].users.values()
                if u.recipient_type_details == "UserMailbox" and u.primary_smtp
            ]
        return sorted(found, key=lambda u: u.primary_smtp)

    src, tgt = mailboxes("source")[:count], mailboxes("target")
    # The same person in both organisations where the local parts match, else the next one.
    local = {t.primary_smtp.split("@")[0]: t for t in tgt}
    pairs = []
    for s in src:
        t = local.pop(s.primary_smtp.split("@")[0], None) or local.pop(next(iter(local)))
        pairs.append(Pair(s.primary_smtp, t.primary_smtp, s.id, t.id))
    return pairs


def _seed(run: Run, seed: int, per_user: int) -> None:
    """The source mailboxes: a year of mail in nested folders (`mailseed`), and for WorkMail
    one message over its size limit in the first user's Inbox."""
    from coexist.sandbox import mailseed

    store = run.sandbox.mail
    for p in run.pairs:
        mailseed.seed_mailbox(store, "source", p.source_id, seed=seed, items=per_user)
        run.seeded[p.source] = dict(_holdings(store, "source", p.source_id))
    if run.scenario == "workmail":
        p = run.pairs[0]
        mid = f"<oversize.{secrets.token_hex(6)}@ewsdemo.example>"
        mime = (
            (
                f"From: Scanner <scanner@source.example>\r\nTo: {p.source}\r\n"
                f"Subject: {OVERSIZE_SUBJECT}\r\nMessage-ID: {mid}\r\n"
                "Date: Mon, 4 Mar 2024 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
                'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
                "Content-Type: text/plain\r\n\r\nThe scans.\r\n--b\r\n"
                "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
                'Content-Disposition: attachment; filename="scans.bin"\r\n\r\n'
            ).encode()
            + b"QUFB\r\n" * (OVERSIZE_BYTES // 6 + 1)
            + b"--b--\r\n"
        )
        store.insert_message("source", p.source_id, "inbox", mime, received=dt.datetime.now(dt.UTC))
        run.seeded[p.source][mid] = ("Inbox",)
        run.oversize[p.source] = mid
    total = sum(len(v) for v in run.seeded.values())
    run.say(
        f"seeded {total} messages in {len(run.pairs)} source mailboxes (nested folders, "
        "non-ASCII names, a year of mail: old and new"
        + (", one over WorkMail's ~23 MB limit" if run.oversize else "")
        + ")"
    )


def _holdings(store: Any, tenant: str, mailbox: str) -> list[tuple[str, tuple[str, ...]]]:
    """(Message-ID, folder path: display names below the top of the mailbox) of each
    message of a mailbox."""
    paths: dict[str, tuple[str, ...]] = {}

    def path(folder_id: str) -> tuple[str, ...]:
        if folder_id not in paths:
            f = store.folder(tenant, mailbox, folder_id)
            if f is None or f.well_known == "msgfolderroot" or not f.parent_id:
                paths[folder_id] = ()
            else:
                paths[folder_id] = (*path(f.parent_id), f.display_name)
        return paths[folder_id]

    return [
        (str(m.internet_message_id), path(m.folder_id))
        for m in store.iter_messages(tenant, mailbox)
    ]


def _accounts(
    run: Run, kinds: dict[str, str], *, coexist_grants: bool = False
) -> dict[str, tuple[str, str]]:
    """Each EWS side's migration account, with FullAccess on the demo's mailboxes (the
    sandbox's account API, as the organisation's admin would grant it): side -> (UPN,
    password)."""
    from coexist.sandbox.ews import add_account

    out: dict[str, tuple[str, str]] = {}
    for side in ("source", "target"):
        if kinds[side] == "m365":
            continue
        password = secrets.token_urlsafe(18)
        mailboxes = [p.source if side == "source" else p.target for p in run.pairs]
        if coexist_grants and _has_powershell(kinds[side]):
            # coexist grants it (grant-access, over the organisation's remote PowerShell).
            account = add_account(run.sandbox.world, side, ACCOUNT, password)
            run.say(f"{side} ({kinds[side]}): migration account {account.upn}, no grant yet")
            out[side] = (account.upn, password)
            continue
        if kinds[side] == "workmail":
            mailboxes = []  # prestage grants it (PutMailboxPermissions), user by user
        account = add_account(run.sandbox.world, side, ACCOUNT, password, full_access=mailboxes)
        run.say(
            f"{side} ({kinds[side]}): migration account {account.upn} with FullAccess on "
            f"{len(mailboxes)} mailboxes"
            + (" (prestage grants it, PutMailboxPermissions)" if not mailboxes else "")
        )
        out[side] = (account.upn, password)
    return out


def _settings(
    run: Run,
    kinds: dict[str, str],
    passwords: dict[str, tuple[str, str]],
    *,
    powershell: bool = False,
) -> dict[str, Any]:
    sb = run.sandbox
    settings: dict[str, Any] = {
        "project.name": f"{run.scenario} demo",
        # Commands leave waiting users at once; the demo continues them (commands.wait_out).
        "engine.wait_in_command_s": 0,
    }
    for side, org in kinds.items():
        if org == "m365":
            settings[f"{side}.sandbox_connection"] = str(sb.state_dir / "connection.json")
            continue
        from coexist.sandbox.ews import EWS_PATH

        ews = EWS_SETTINGS[org]
        settings |= {
            f"{side}.kind": ews["kind"],
            f"{side}.ews.url": sb.base_url + EWS_PATH,
            f"{side}.ews.auth": ews["auth"],
            f"{side}.ews.version": ews["version"],
            f"{side}.ews.admin": passwords[side][0],
            f"{side}.ews.ca_file": str(sb.connection["ca_file"]),
        }
        if powershell and _has_powershell(org):
            settings[f"{side}.ews.powershell_url"] = sb.base_url + POWERSHELL_PATH
            settings[f"{side}.ews.powershell_auth"] = ews["auth"]
        if org == "workmail":  # the AWS admin API: coexist makes the users and grants
            info = sb.connection["tenants"][side]["workmail"]
            settings |= {
                f"{side}.workmail.organization_id": info["organization_id"],
                f"{side}.workmail.region": info["region"],
                f"{side}.workmail.endpoint": info["endpoint"],
                f"{side}.workmail.ca_file": str(sb.connection["ca_file"]),
            }
    return settings


# -- WorkMail: the users are coexist's to make -------------------------------------------------
def _new_workmail_users(run: Run) -> None:
    """The WorkMail organisation starts without the migrating users (a new organisation, as
    in audriga's guide): the sandbox's seeded users holding the pairs' addresses are removed,
    so prestage must create them. Their ids are known once made (`_resolve_targets`)."""
    from coexist.sandbox.ews.orgs import org_domain

    tenant = run.sandbox.world.tenants["target"]
    with run.sandbox.world.lock:
        for p in run.pairs:
            # Each person keeps their name: the new address is the source's local part.
            p.target = f"{p.source.split('@')[0]}@{org_domain(tenant)}".lower()
            owner = tenant.address_owner(p.target)
            if owner is not None:
                tenant.users.pop(owner.id, None)
            p.target_id = ""
        tenant.touch()
    run.say(
        f"target (workmail): the organisation has none of the {len(run.pairs)} users yet; "
        "prestage creates them through the AWS WorkMail API"
    )


def _workmail_key(run: Run) -> None:
    """The AWS access key of the sandbox's WorkMail organisation, into the project's vault
    (entry WORKMAIL_ENTRY): never in project.toml, never printed."""
    from coexist.vault import WORKMAIL_ENTRY, Credential, Vault

    info = run.sandbox.connection["tenants"]["target"]["workmail"]
    key = Credential(info["access_key_id"], info["secret_access_key"])
    Vault.open(run.project).put({(WORKMAIL_ENTRY, "target"): key})
    run.say("credentials: the WorkMail API's access key to the vault")


def _resolve_targets(run: Run) -> None:
    tenant = run.sandbox.world.tenants["target"]
    for p in run.pairs:
        if not p.target_id:
            owner = tenant.address_owner(p.target)
            p.target_id = owner.id if owner is not None else ""


def _workmail_writes(run: Run) -> dict[str, int]:
    from coexist.sandbox.workmail import CALLS_KEY

    writes = ("CreateUser", "RegisterToWorkMail", "CreateAlias", "PutMailboxPermissions")
    calls = run.sandbox.ctx.extra.get(CALLS_KEY, [])
    return dict(Counter(op for op, _ in calls if op in writes))


def _workmail_plan(run: Run) -> dict[str, Any]:
    run.say("prestage --plan (every WorkMail API write listed, none sent)")
    result = commands.prestage(run.project, batch=BATCH, older_than=OLDER_THAN, plan=True)
    listed = [w for w in result["writes"] if w["system"] == "workmail"]
    for w in listed:
        run.say(f"  would {w['text']}")
    result["workmail_listed"] = dict(Counter(w["operation"] for w in listed))
    result["workmail_sent"] = _workmail_writes(run)
    return result


def _workmail_prestage(run: Run) -> dict[str, Any]:
    result = _prestage(run)
    result["workmail_sent"] = _workmail_writes(run)
    run.say(
        "  WorkMail API writes: "
        + ", ".join(f"{op} {n}" for op, n in sorted(result["workmail_sent"].items()))
    )
    return result


def _workmail_prestage_again(run: Run) -> dict[str, Any]:
    run.say("prestage again (the users exist and are granted: no WorkMail write)")
    result = commands.prestage(run.project, batch=BATCH, older_than=OLDER_THAN)
    result["workmail_sent"] = _workmail_writes(run)
    return result


# -- the runbook ------------------------------------------------------------------------------
def _batch_import(run: Run) -> dict[str, Any]:
    """The operator's mapping (source address, target address, batch) as a plain CSV: with
    an EWS side there is no `discover` (no directory on it), the file lists the users."""
    run.say("batch import users.csv (Source Email, Destination Email, Display Name, Batch)")
    folder = Path(tempfile.mkdtemp(prefix="coexist-demo-csv-"))
    source = run.sandbox.world.tenants["source"]
    # MigrationWiz's Bulk Add columns with the people's names: forwarding objects are named
    # after them (hosted Exchange), WorkMail users are created with them (CreateUser).
    lines = ["Source Email,Source Login Name,Destination Email,First Name,Last Name,"
             "Display Name,Batch"]  # fmt: skip
    with run.sandbox.world.lock:
        for p in run.pairs:
            u = source.users[p.source_id]
            names = [u.given_name or "", u.surname or "", u.display_name]
            cells = [p.source, p.source, p.target, *(n.replace(",", " ") for n in names), BATCH]
            lines.append(",".join(cells))
    path = write_private(folder / "users.csv", "\r\n".join(lines) + "\r\n")
    try:
        return commands.batch_import(run.project, path)
    finally:
        path.unlink(missing_ok=True)
        folder.rmdir()


def _verify_credentials(run: Run) -> dict[str, Any]:
    return demorunbook.verify_credentials(
        run, BATCH, what="open every source and target mailbox, move nothing"
    )


def _prestage(run: Run) -> dict[str, Any]:
    return demorunbook.prestage(run, BATCH, OLDER_THAN, lower=True)


def _cutover(run: Run) -> dict[str, Any]:
    return demorunbook.cutover(run, BATCH, what="state changes", lower=True)


def _status(run: Run) -> dict[str, Any]:
    return demorunbook.status(
        run, what="reconciliation per user and per folder: source = target + skipped"
    )


def _again(run: Run) -> dict[str, Any]:
    return demorunbook.again(run, BATCH, lower=True)


def _moved(project: Path) -> dict[str, int]:
    return demorunbook.moved(project, lower=True)


def _grant_access(run: Run) -> dict[str, Any]:
    """The seed's grant, made by coexist: FullAccess for each side's migration account on the
    batch's mailboxes there, over the organisation's remote PowerShell."""
    out: dict[str, Any] = {}
    for side in ("source", "target"):
        run.say(f"grant-access --side {side} (Add-MailboxPermission FullAccess, journaled)")
        result = commands.grant_access(run.project, batch=BATCH, side=side)
        run.say(f"  {result['changed']} granted, {len(result['failed'])} failed")
        out[side] = result
    out["ok"] = not any(out[s]["failed"] for s in ("source", "target"))
    return out


def _mail_flow(run: Run) -> dict[str, Any]:
    """After cutover, mail to each old address must land once, in the new mailbox only (the
    source forwards to its forwarding object and keeps no copy)."""
    run.say("mail flow: a message to each old address, after cutover")
    rows = []
    for p in run.pairs:
        report = run.sandbox.deliver(
            p.source, sender=PROBE_SENDER, subject=f"coexist demo probe for {p.source}"
        )
        landed = [c.address for c in report.inbox_copies()]
        ok = [a.lower() for a in landed] == [p.target.lower()]
        run.say(
            f"  {p.source}: landed in {', '.join(landed) or 'no mailbox'}"
            + ("" if ok else f" (expected {p.target} only)")
        )
        rows.append({"user": p.source, "landed": landed, "ok": ok})
    return {"probes": rows, "ok": all(r["ok"] for r in rows)}


Step = tuple[str, Callable[[Run], dict[str, Any]]]
_RUNBOOK: tuple[Step, ...] = (
    ("batch_import", _batch_import),
    ("verify_credentials", _verify_credentials),
    ("prestage", _prestage),
    ("cutover", _cutover),
    ("status", _status),
    ("rerun", _again),
)
# Hosted Exchange: coexist grants access first and, with the organisation's remote PowerShell,
# makes the forwarding objects at prestage and forwards each mailbox at cutover; mail flow is
# checked last (a probe in the target would show in the reconciliation above it).
# WorkMail: the mailboxes exist once prestage has made them, so credentials are verified then.
RUNBOOKS: dict[str, tuple[Step, ...]] = {
    "hosted-exchange": (
        _RUNBOOK[0],
        ("grant_access", _grant_access),
        *_RUNBOOK[1:],
        ("mail_flow", _mail_flow),
    ),
    "workmail": (
        ("batch_import", _batch_import),
        ("plan", _workmail_plan),
        ("prestage", _workmail_prestage),
        ("verify_credentials", _verify_credentials),
        ("cutover", _cutover),
        ("status", _status),
        ("rerun", _again),
        ("prestage_again", _workmail_prestage_again),
    ),
}


# -- the verdict ------------------------------------------------------------------------------
def _skipped(project: Path) -> dict[str, list[dict[str, str]]]:
    """Items the passes skipped, per user: subject and reason (the journal's mapped items)."""
    from coexist.runtime import open_journal
    from coexist.settings import load_project

    journal = open_journal(load_project(project))
    try:
        out: dict[str, list[dict[str, str]]] = {}
        for user in journal.items(kind="user"):
            key = str(user["key"])
            rows = [r for r in journal.mapped_items(key) if r["status"] == "skipped"]
            out[str(user.get("source_address") or key).lower()] = [
                {"subject": str(r["subject"] or ""), "reason": str(r["reason"] or "")} for r in rows
            ]
        return out
    finally:
        journal.close()


def _verdict(run: Run) -> dict[str, Any]:
    results = run.results
    status_rows = {str(u["user"]).lower(): u for u in results["status"]["users"]}
    skipped = _skipped(run.project)
    now = dt.datetime.now(dt.UTC)
    per_user = []
    for p in run.pairs:
        seeded = run.seeded[p.source]
        held = _holdings(run.sandbox.mail, "target", p.target_id)
        copies = Counter(mid for mid, _ in held)
        found = dict(held)
        refused = {run.oversize[p.source]} if p.source in run.oversize else set()
        missing = [m for m in seeded if m not in refused and copies[m] == 0]
        doubled = [m for m in seeded if copies[m] > 1]
        misplaced = [
            f"{m}: {'/'.join(found[m])}" for m in seeded if copies[m] == 1 and found[m] != seeded[m]
        ]
        wrongly_copied = [m for m in refused if copies[m]]
        key = p.source.lower()
        row = status_rows.get(key, {})
        old = sum(
            1
            for m in run.sandbox.mail.iter_messages("source", p.source_id)
            if m.received and _age_days(m.received, now) > 90
        )
        per_user.append(
            {
                "user": p.source,
                "target": p.target,
                "seeded": len(seeded),
                "older_than_90d": old,
                "prestage_copied": results["after_prestage"].get(key, 0),
                "cutover_copied": results["after_cutover"].get(key, 0)
                - results["after_prestage"].get(key, 0),
                "rerun_copied": results["rerun"]["copied"].get(key, 0),
                "in_target_once": sum(1 for m in seeded if copies[m] == 1),
                "skipped": skipped.get(key, []),
                "refused_expected": len(refused),
                "missing": missing,
                "doubled": doubled,
                "misplaced": misplaced + wrongly_copied,
                "phase": row.get("phase"),
                "state": row.get("state"),
                "folders": results["status"]["folders"].get(p.source, [])
                or results["status"]["folders"].get(key, []),
            }
        )
    ok = all(
        not (u["missing"] or u["doubled"] or u["misplaced"] or u["rerun_copied"])
        and len(u["skipped"]) == u["refused_expected"]
        and (u["phase"], u["state"]) == (Phase.CUTOVER.value, "ok")
        for u in per_user
    ) and all(
        bool(results[step].get("ok", True))
        for step in ("verify_credentials", "grant_access", "mail_flow")
        if step in results
    )
    report = _report(per_user)
    if "mail_flow" in results:
        report += [
            f"  mail to {r['user']} after cutover: in {', '.join(r['landed']) or 'no mailbox'}"
            for r in results["mail_flow"]["probes"]
        ]
    if run.scenario == "workmail":
        n = len(run.pairs)
        made = {"CreateUser": n, "RegisterToWorkMail": n, "PutMailboxPermissions": n}
        results["workmail"] = {
            "listed_by_plan": results["plan"]["workmail_listed"],
            "sent_by_plan": results["plan"]["workmail_sent"],
            "sent": results["prestage"]["workmail_sent"],
            "sent_after_rerun": results["prestage_again"]["workmail_sent"],
        }
        ok = (
            ok
            and results["plan"]["workmail_listed"] == made
            and not results["plan"]["workmail_sent"]
            and results["prestage"]["workmail_sent"] == made
            and results["prestage_again"]["workmail_sent"] == made
            and all(p.target_id for p in run.pairs)
        )
    out = {
        **results,
        "scenario": run.scenario,
        "users": per_user,
        "report": report,
        "ok": ok,
        "directory": str(run.project),
        "project": str(run.project),
    }
    write_private(run.project / "demo-summary.json", json.dumps(out, indent=2, default=str) + "\n")
    return out


def _age_days(when: Any, now: dt.datetime) -> float:
    if isinstance(when, str):
        when = dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return float((now - when).total_seconds() / 86400)


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
        for s in u["skipped"]:
            lines.append(f"    skipped: {s['subject']}: {s['reason']}")
        for what in ("missing", "doubled", "misplaced"):
            if u[what]:
                lines.append(f"    {what}: " + "; ".join(u[what][:5]))
        for f in u["folders"]:
            if not (f.get("source_items") or f.get("target_items")):
                continue
            lines.append(
                f"    {', '.join(f.get('source_folders') or [])}: source "
                f"{f.get('source_items')}, target {f.get('target_items')}, "
                f"{f.get('skipped', 0)} skipped, difference {f.get('difference', 0)}"
            )
    return lines
