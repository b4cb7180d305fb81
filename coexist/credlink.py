"""End users give their own source credentials through a one-time link (issue 15).

MigrationWiz's "Waiting For End User": where the provider grants no admin access, each user
of a batch without stored source credentials is mailed a link (`coexist credentials request
--batch B`); the page behind it (`coexist credentials serve`, `coexist.credserve`) takes
their login and password, checks them against the source at once (`verify_given`: IMAP login
and EXAMINE, EWS: the user's own login opening their own mailbox), stores them in the
vault and lets the user's pass run.

A link's token is `<id>.<expires>.<signature>`: `id` 16 random hex digits (public: logs and
the journal name a link by it), `expires` Unix seconds, `signature` HMAC-SHA256 over both
under a key kept in the encrypted vault (entry `LINK_KEY_ENTRY`, made on first use). A
changed id or expiry breaks the signature; the journal keeps only the SHA-256 of the whole
token (the user's `detail.end_user_link`: id, hash, sent/expiry times, state, attempts),
so the journal can tell a token it issued and not forge one. A link is `active` until it is
`used` (credentials taken), `revoked` (`credentials revoke`), `locked` (too many wrong
passwords: the operator is told by a journal warning and the user's status line) or
superseded by a newer link (`--resend`); its expiry is checked against the clock (injected
in tests).

The user's state while a link is out: `waiting`, `waiting_for` starting with
`WAITING_FOR_END_USER` ("end user: ..."), with the time the link was sent; the commands that
skip users waiting for credentials skip these too (`credentials.CREDENTIAL_WAITS`).

Nothing here logs, journals or returns a password or a token's signature.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jinja2

from coexist import mailer
from coexist.commands import RESUMABLE, RETRYABLE, pick_users, unfinished
from coexist.credcheck import OK, ImapChecker, SideResult, address_of, failed
from coexist.credentials import WAITING_FOR, WAITING_FOR_END_USER, master_sides
from coexist.engine.context import Context, SideOptions, ews_endpoint, open_sides
from coexist.engine.runner import set_item
from coexist.errors import Busy, CoexistError, InputError
from coexist.journal import Journal
from coexist.retry import RetryPolicy
from coexist.runtime import batch_hold, open_journal, project_dir
from coexist.settings import ImapSettings, Project, load_project
from coexist.tenants.ews import AdminLogin, EwsLimits, EwsServer
from coexist.tenants.imap import Credentials, Password
from coexist.vault import LINK_KEY_ENTRY, Credential, Vault

LINK_SIDE = "source"
DETAIL = "end_user_link"  # the user's detail key holding its link (no secret in it)
ACTIVE, USED, REVOKED, LOCKED, SUPERSEDED = "active", "used", "revoked", "locked", "superseded"
TEMPLATES = Path(__file__).parent / "templates" / "credlink"

Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _iso(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).replace(microsecond=0).isoformat()


# -- tokens ------------------------------------------------------------------------------------
class LinkRefused(Exception):
    """A link that cannot be used: `reason` is what the page says (no secret in it)."""

    def __init__(self, reason: str, status: int = 404, link_id: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.link_id = link_id


def link_key(vault: Vault, *, create: bool = True) -> bytes:
    """The links' HMAC key, made and kept in the vault on first use (`create`; else a vault
    without one has issued no link, and every token is refused)."""
    held = vault.get(LINK_KEY_ENTRY, LINK_SIDE) if vault.exists() else None
    if held is None and not create:
        raise LinkRefused(_INVALID)
    if held is None:
        vault.put({(LINK_KEY_ENTRY, LINK_SIDE): Credential("hmac-sha256", secrets.token_hex(32))})
        held = vault.get(LINK_KEY_ENTRY, LINK_SIDE)
        assert held is not None
    return bytes.fromhex(held.password)


def _signature(key: bytes, link_id: str, expires: int) -> str:
    mac = hmac.new(key, f"coexist-credential-link:{link_id}.{expires}".encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


def make_token(key: bytes, expires: dt.datetime) -> tuple[str, str]:
    """A new link's (id, token)."""
    link_id = secrets.token_hex(8)
    stamp = int(expires.timestamp())
    return link_id, f"{link_id}.{stamp}.{_signature(key, link_id, stamp)}"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def link_id_of(token: str) -> str:
    """The public part of a token (for logs), or "?" when it has no such shape."""
    head = token.split(".", 1)[0]
    return head if len(head) == 16 and all(c in "0123456789abcdef" for c in head) else "?"


def check_token(key: bytes, token: str, now: dt.datetime) -> str:
    """The link id of a genuine, unexpired token; LinkRefused otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or link_id_of(token) == "?":
        raise LinkRefused("This link is not valid.")
    link_id, stamp, sig = parts[0], int(parts[1]), parts[2]
    if not hmac.compare_digest(_signature(key, link_id, stamp), sig):
        raise LinkRefused("This link is not valid.", link_id=link_id)
    if now.timestamp() >= stamp:
        raise LinkRefused("This link has expired.", status=410, link_id=link_id)
    return link_id


@dataclass(frozen=True)
class Link:
    """A link as the journal holds it (on its user)."""

    user_key: str
    item: dict[str, Any]
    record: dict[str, Any]

    @property
    def address(self) -> str:
        return str(self.item.get("source_address") or self.user_key)


def find_link(journal: Journal, key: bytes, token: str, now: dt.datetime) -> Link:
    """The journal's active link of a genuine token; LinkRefused (with the reason the page
    shows) for a tampered, expired, unknown, used, revoked or locked one."""
    link_id = check_token(key, token, now)
    for item in journal.items(kind="user"):
        record = (item.get("detail") or {}).get(DETAIL) or {}
        if record.get("id") != link_id:
            # An earlier link of this user (superseded, used, revoked, locked)?
            for old in record.get("history") or []:
                if old.get("id") == link_id:
                    raise LinkRefused(_REFUSALS.get(str(old.get("state")), _INVALID), 410, link_id)
            continue
        if not hmac.compare_digest(str(record.get("hash")), token_hash(token)):
            break
        if record.get("state") != ACTIVE:
            raise LinkRefused(_REFUSALS.get(str(record.get("state")), _INVALID), 410, link_id)
        return Link(str(item["key"]), item, record)
    raise LinkRefused(_INVALID, link_id=link_id)


_INVALID = "This link is not valid."
_REFUSALS = {
    USED: "This link has already been used.",
    REVOKED: "This link has been withdrawn.",
    SUPERSEDED: "A newer link has been sent to you; use that one.",
    LOCKED: "This link is locked after too many wrong passwords. Your migration team has "
    "been told.",
}
HISTORY = 10  # earlier links kept per user (id and state), so the page says why one is refused


# -- templates ---------------------------------------------------------------------------------
def environment(project: Project) -> jinja2.Environment:
    """The link's templates: the operator's directory first (`[credential_link] templates`),
    then coexist's; autoescaped HTML, undefined names an error."""
    dirs = [str(p) for p in (project.credential_link.templates, TEMPLATES) if p]
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(dirs),
        autoescape=jinja2.select_autoescape(["html", "html.j2"]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )


def operator_name(project: Project) -> str:
    return project.credential_link.operator or project.project.name


def base_url(project: Project) -> str:
    cl = project.credential_link
    return (cl.url or f"https://{cl.host}:{cl.port}").rstrip("/")


# -- coexist credentials request ---------------------------------------------------------------
def request(
    directory: Path | None,
    *,
    batch: str | None = None,
    users: list[str] | None = None,
    plan: bool = False,
    resend: bool = False,
    env: Mapping[str, str] | None = None,
    now: Clock = utcnow,
) -> dict[str, Any]:
    """Mail a one-time link to each selected user without stored source credentials (and
    without a valid link, unless `resend`); `plan`: say who would get one, send nothing."""
    if not batch and not users:
        raise InputError(
            "credentials request: name the batch (--batch B) or the users (--user U)",
            next_step="coexist credentials request --batch wave1 --plan",
        )
    project = load_project(project_dir(directory), env=env)
    if not takes_end_user_credentials(project):
        raise InputError(
            f"the source is of kind {project.source.kind!r}: its users give no credentials of "
            "their own (the app reaches every mailbox)",
            next_step="end-user links are for IMAP and Exchange/WorkMail sources",
        )
    journal = open_journal(project)
    try:
        items = pick_users(journal, project.directory, batch=batch, users=users)
        vault = Vault.open(project.directory, env=env)
        entries = vault.read()
        masters = master_sides(project, entries)
        clock = now()
        todo: list[dict[str, Any]] = []
        skipped: list[dict[str, str]] = []
        for item in items:
            address = str(item.get("source_address") or item["key"])
            record = (item.get("detail") or {}).get(DETAIL) or {}
            if LINK_SIDE in entries.get(str(item["key"]), {}) or LINK_SIDE in masters:
                skipped.append({"user": address, "reason": "has source credentials"})
            elif _valid(record, clock) and not resend:
                skipped.append(
                    {
                        "user": address,
                        "reason": f"link sent {record['sent_at']} is valid until "
                        f"{record['expires_at']} (--resend sends a new one)",
                    }
                )
            else:
                todo.append(item)
        if plan or not todo:
            # The plan renders each mail as it would go (an operator's template that does
            # not render fails here, before anything is sent); the link is made when sent.
            expires = clock + project.credential_link.expiry
            placeholder = f"{base_url(project)}/l/(made when sent)"
            return {
                "plan": plan,
                "sent": [],
                "would_send": [_addr(i) for i in todo] if plan else [],
                "messages": [render(project, i, placeholder, expires) for i in todo]
                if plan
                else [],
                "skipped": skipped,
                "refused": [],
            }
        # A playbook run on the batch refuses it before the first link goes (runtime).
        with batch_hold(journal, "credentials request", {"batch": batch, "users": users}):
            key = link_key(vault)
            sent, refused = asyncio.run(_send(project, journal, key, todo, clock, env))
        return {
            "plan": False,
            "sent": sent,
            "would_send": [],
            "skipped": skipped,
            "refused": refused,
        }
    finally:
        journal.close()


def _addr(item: Mapping[str, Any]) -> str:
    return str(item.get("source_address") or item["key"])


def _valid(record: Mapping[str, Any], now: dt.datetime) -> bool:
    if record.get("state") != ACTIVE or not record.get("expires_at"):
        return False
    return dt.datetime.fromisoformat(str(record["expires_at"])) > now


async def _send(
    project: Project,
    journal: Journal,
    key: bytes,
    items: list[dict[str, Any]],
    now: dt.datetime,
    env: Mapping[str, str] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Mail each user its link, then journal the link (mail first: a run killed between the
    two leaves a link the journal does not know, refused, and the next run sends another)."""
    async with _outbox(project, journal, env) as outbox:
        return await _send_each(project, journal, key, items, now, outbox)


async def _send_each(
    project: Project,
    journal: Journal,
    key: bytes,
    items: list[dict[str, Any]],
    now: dt.datetime,
    outbox: mailer.Outbox,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    expires = now + project.credential_link.expiry
    sent: list[dict[str, Any]] = []
    refused: list[dict[str, str]] = []
    for item in items:
        address = _addr(item)
        link_id, token = make_token(key, expires)
        mail = render(project, item, f"{base_url(project)}/l/{token}", expires)
        msg = mailer.new_message(outbox.sender, [address], mail["subject"], mail["text"])
        result = await outbox.send(msg)
        if address not in result.to:
            refused.append({"user": address, "via": result.via})
            journal.event(
                None,
                "warning",
                f"credentials request: the relay refused {address}",
                item_key=str(item["key"]),
            )
            continue
        previous = (item.get("detail") or {}).get(DETAIL) or {}
        history = list(previous.get("history") or [])
        if previous.get("id"):
            state = SUPERSEDED if previous.get("state") == ACTIVE else previous.get("state")
            history = [{"id": previous["id"], "state": state}, *history][:HISTORY]
        record = {
            "id": link_id,
            "hash": token_hash(token),
            "sent_at": _iso(now),
            "expires_at": _iso(expires),
            "state": ACTIVE,
            "attempts": 0,
            "to": address,
            "via": result.via,
            "history": history,
        }
        set_item(journal, "user", str(item["key"]), **{DETAIL: record})
        _set_waiting_for_end_user(journal, project, item, record)
        journal.event(
            None,
            "info",
            f"credentials request: link {link_id} sent to {address}"
            + (f" (link {previous['id']} superseded)" if previous.get("id") else ""),
            item_key=str(item["key"]),
            data={"link": link_id, "expires_at": record["expires_at"], "via": result.via},
        )
        sent.append({"user": address, "link": link_id, "expires_at": record["expires_at"]})
    return sent, refused


def render(
    project: Project, item: Mapping[str, Any], url: str, expires: dt.datetime
) -> dict[str, str]:
    """A user's link mail: recipient, subject and text, from the templates."""
    templates = environment(project)
    address = _addr(item)
    values = {
        "name": item.get("name") or address,
        "address": address,
        "operator": operator_name(project),
        "project": project.project.name,
        "url": url,
        "expires": _iso(expires),
    }
    return {
        "to": address,
        "subject": templates.get_template("request-subject.txt.j2").render(values).strip(),
        "text": templates.get_template("request.txt.j2").render(values),
    }


@asynccontextmanager
async def _outbox(
    project: Project, journal: Journal, env: Mapping[str, str] | None
) -> AsyncIterator[mailer.Outbox]:
    """`[mail] transport`'s outbox; Graph's with the project's tenants signed in while it
    sends (`mailer.GraphSendMail` sends through the side's Graph adapter)."""
    if project.mail.transport != "graph":
        yield mailer.outbox_for(project, None, env)
        return
    async with open_sides(project, SideOptions(env=env)) as (source, target):
        yield mailer.outbox_for(project, Context(project, journal, source, target), env)


def _set_waiting_for_end_user(
    journal: Journal, project: Project, item: Mapping[str, Any], record: Mapping[str, Any]
) -> None:
    """A user not moving yet (or waiting for credentials) waits for its end user now."""
    detail = item.get("detail") or {}
    waits = str(detail.get("waiting_for") or "")
    if item.get("state") not in (None, "ok") and not (
        item.get("state") == "waiting" and waits.startswith((WAITING_FOR, WAITING_FOR_END_USER))
    ):
        return  # failed or waiting for something else: that stays what status says
    set_item(
        journal,
        "user",
        str(item["key"]),
        state="waiting",
        waiting_for=f"{WAITING_FOR_END_USER}: source credentials by link {record['id']} sent "
        f"{record['sent_at']}, valid until {record['expires_at']}",
        waiting_since=record["sent_at"],
    )


# -- coexist credentials revoke ----------------------------------------------------------------
def revoke(
    directory: Path | None,
    *,
    batch: str | None = None,
    users: list[str] | None = None,
) -> dict[str, Any]:
    """Withdraw the active links of a batch or of users; they wait for credentials again."""
    if bool(batch) == bool(users):
        raise InputError(
            "credentials revoke: name the batch (--batch B) or the users (--user U)",
            next_step="coexist credentials revoke --batch wave1",
        )
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        items = pick_users(journal, project.directory, batch=batch, users=users)
        revoked = []
        with batch_hold(journal, "credentials revoke", {"batch": batch, "users": users}):
            for item in items:
                record = dict((item.get("detail") or {}).get(DETAIL) or {})
                if record.get("state") != ACTIVE:
                    continue
                record["state"] = REVOKED
                record["revoked_at"] = _iso(utcnow())
                set_item(journal, "user", str(item["key"]), **{DETAIL: record})
                _back_to_credentials(journal, project, item, f"link {record['id']} revoked")
                journal.event(
                    None,
                    "info",
                    f"credentials revoke: link {record['id']} of {_addr(item)} withdrawn",
                    item_key=str(item["key"]),
                    data={"link": record["id"]},
                )
                revoked.append({"user": _addr(item), "link": record["id"]})
        return {"revoked": revoked}
    finally:
        journal.close()


def _back_to_credentials(
    journal: Journal, project: Project, item: Mapping[str, Any], why: str
) -> None:
    """A user waiting for its end user waits for credentials again (the command that gives
    them named), its link no longer usable."""
    waits = str((item.get("detail") or {}).get("waiting_for") or "")
    if item.get("state") != "waiting" or not waits.startswith(WAITING_FOR_END_USER):
        return
    address = _addr(item)
    set_item(
        journal,
        "user",
        str(item["key"]),
        state="waiting",
        waiting_for=f"{WAITING_FOR}: no source password, {why} (coexist credentials request "
        f"--project {project.directory} --user {address} --resend, or coexist credentials "
        f"set --user {address})",
    )


# -- what the page does with a submission ------------------------------------------------------
def wrong_attempt(
    journal: Journal, project: Project, link: Link, now: dt.datetime
) -> tuple[int, bool]:
    """Count a refused login on a link; lock it at `[credential_link] attempts` and tell the
    operator (a journal warning, the user's status line). Returns (attempts left, locked)."""
    record = dict(link.record)
    record["attempts"] = int(record.get("attempts") or 0) + 1
    limit = project.credential_link.attempts
    locked = record["attempts"] >= limit
    if locked:
        record["state"] = LOCKED
        record["locked_at"] = _iso(now)
    set_item(journal, "user", link.user_key, **{DETAIL: record})
    if locked:
        journal.event(
            None,
            "warning",
            f"credential link {record['id']} of {link.address} locked after {limit} wrong "
            "passwords",
            item_key=link.user_key,
            data={"link": record["id"], "attempts": record["attempts"]},
        )
        set_item(
            journal,
            "user",
            link.user_key,
            state="waiting",
            waiting_for=f"{WAITING_FOR_END_USER}: link {record['id']} locked after {limit} wrong "
            f"passwords at {record['locked_at']} (talk to the user, then coexist credentials "
            f"request --project {project.directory} --user {link.address} --resend)",
        )
    else:
        journal.event(
            None,
            "info",
            f"credential link {record['id']} of {link.address}: wrong credentials "
            f"({record['attempts']} of {limit})",
            item_key=link.user_key,
            data={"link": record["id"], "attempts": record["attempts"]},
        )
    return max(0, limit - record["attempts"]), locked


def accept(
    journal: Journal, project: Project, vault: Vault, link: Link, login: str, password: str
) -> str:
    """Store verified credentials, use up the link, release the user; returns the command
    whose pass the user needs next (the one it has unfinished or last ran, else prestage)."""
    vault.put({(link.user_key, LINK_SIDE): Credential(login, password)})
    record = {**link.record, "state": USED, "used_at": _iso(utcnow())}
    set_item(journal, "user", link.user_key, **{DETAIL: record})
    item = journal.get_item("user", link.user_key) or link.item
    waits = str((item.get("detail") or {}).get("waiting_for") or "")
    if item.get("state") == "waiting" and waits.startswith((WAITING_FOR, WAITING_FOR_END_USER)):
        set_item(journal, "user", link.user_key, state="ok", waiting_for=None, waiting_since=None)
    command = next_command(item)
    # Queued: `coexist retry` runs it (and prestage/cutover of the user's batch do); the
    # command's run clears it (`commands._begin`).
    set_item(journal, "user", link.user_key, queued_pass=command)
    journal.event(
        None,
        "info",
        f"credential link {record['id']}: {link.address} gave source credentials ({login}), "
        f"verified; next: {command}",
        item_key=link.user_key,
        data={"link": record["id"], "queued": command},
    )
    return command


def next_command(item: Mapping[str, Any]) -> str:
    """The pass a user that just got credentials needs: the command it left unfinished or
    last ran where `coexist retry` would re-run it, else prestage (its first pass)."""
    detail = item.get("detail") or {}
    cmd = unfinished(dict(item)) or detail.get("last_command")
    return str(cmd) if cmd in RESUMABLE else "prestage"


def run_pass(directory: Path, address: str, command: str) -> dict[str, Any]:
    """Run the user's pass: the same function `coexist prestage` / `cutover` runs, for it.

    Refused (`Busy`) while a playbook run holds the user's batch, for the whole run: the page
    is not one of the run's steps, and a pass in the middle of a runbook is what its lock
    keeps out. The pass stays queued (`queued_pass`): the next prestage, cutover or retry of
    the user runs it - the runbook's own steps among them, or `coexist retry` after it - and
    a warning on the user says so (the page's log alone would hide it from the operator)."""
    try:
        return RETRYABLE[command](directory, users=[address])
    except Busy as exc:
        if exc.fields.get("reason") == "playbook-run":
            _note_held(directory, address, command, exc)
        raise


def _note_held(directory: Path, address: str, command: str, exc: Busy) -> None:
    project = load_project(project_dir(directory))
    journal = open_journal(project)
    try:
        item = next(
            (i for i in journal.items(kind="user") if i.get("source_address") == address), None
        )
        if item is None:
            return
        next_step = (
            f"nothing to do: the runbook's next prestage, cutover or retry step on the batch "
            f"runs it; after the runbook, `coexist retry --project {project.directory}` does"
        )
        journal.event(
            None,
            "warning",
            f"credential link: the {command} pass of {address} waits: {exc.message}",
            item_key=str(item["key"]),
            data={
                "queued": command,
                "reason": "playbook-run",
                "holders": exc.fields.get("holders"),
                "next": next_step,
            },
        )
    finally:
        journal.close()


# -- checking what the user typed against the source ------------------------------------------
class _GivenImap(ImapChecker):
    """verify-credentials' IMAP check (login, EXAMINE INBOX) with the credentials the user
    typed in place of the vault's."""

    def __init__(self, settings: ImapSettings, given: Credential) -> None:
        super().__init__(LINK_SIDE, settings, None, "coexist credentials request")
        self.given = given

    def credentials(self, key: str, login: str) -> Credentials | None:
        mechanism: Literal["login", "plain"] = "plain" if self.settings.auth == "plain" else "login"
        return Password(self.given.login, self.given.password, mechanism)


async def _imap_given(project: Project, item: Mapping[str, Any], given: Credential) -> SideResult:
    return await _GivenImap(project.source.imap, given).check(item)


async def _ews_given(project: Project, item: Mapping[str, Any], given: Credential) -> SideResult:
    """The user's own login opening the user's own mailbox and reading its Inbox (what a
    pass does under `[source.ews] access = "own"`)."""
    settings = project.source.ews
    kind = project.source.kind
    address = address_of(item, LINK_SIDE)
    server = EwsServer(
        ews_endpoint(settings, LINK_SIDE, kind),
        AdminLogin(given.login, given.password),
        EwsLimits.for_access(settings.access, 1),
        retry=GIVEN_RETRY,
    )
    try:
        async with server.mailbox(address) as mailbox:
            await mailbox.probe()
    except CoexistError as exc:
        return failed(kind, address, exc)
    finally:
        await server.close()
    return SideResult(kind, OK, address)


# The user waits for the answer: a transient failure is retried briefly, then said.
GIVEN_RETRY = RetryPolicy(max_attempts=2, max_wait_s=5.0, base_s=0.5, cap_s=2.0)
GivenCheck = Callable[[Project, Mapping[str, Any], Credential], Awaitable[SideResult]]
# How a source of each kind checks credentials a user typed (kinds registered, not tested
# one by one); a kind not here takes no end-user credentials (Microsoft 365: the app's).
GIVEN_CHECKS: dict[str, GivenCheck] = {
    "imap": _imap_given,
    "exchange": _ews_given,
    "workmail": _ews_given,
}


def takes_end_user_credentials(project: Project) -> bool:
    return project.source.kind in GIVEN_CHECKS


async def verify_given(project: Project, item: Mapping[str, Any], given: Credential) -> SideResult:
    """Check a typed login and password against the source at once."""
    return await GIVEN_CHECKS[project.source.kind](project, item, given)
