"""`coexist verify-credentials`: log in to every source and target mailbox of a selection.

MigrationWiz's "Verify Credentials" (BitTitan, "How do I verify credentials?"): before any
data moves, each user's mailboxes are opened the way a pass will open them, and each gets
one result: ok, wrong password, no credentials, unreachable, TLS error, mailbox not found
(or not ready yet, or refused for another reason). Nothing is copied and no mailbox
changes: an IMAP side is logged in to and its INBOX EXAMINEd (read-only, RFC 3501 6.3.2);
a Microsoft 365 side is asked for the mailbox's Inbox with the app's Graph access
(`GET /users/{id}/mailFolders/inbox`).

IMAP logins are built here from `[source.imap]`/`[target.imap]` and the credential vault
(`coexist.vault`): the user's own login and password for that side, or, when the side has a
`master_user`, the master user's password (the vault entry `MASTER_ENTRY`) logging in as
the user (Dovecot `user*master`). With `auth = "xoauth2"` the vault's password is the
access token.

What the command changes: a user that verifies on every IMAP side and was waiting for
credentials (`credentials.WAITING_FOR`) is waiting no more; a user not yet moving whose
IMAP password is missing or refused is put to waiting for it, with the command that gives
it. One journal event per user says the results (never a secret). The result is safe to
print or write as `--json`.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from coexist.commands import check_selection, pick_users
from coexist.credentials import WAITING_FOR
from coexist.engine.context import EWS_SIGN_INS, ews_endpoint, oauth_credentials
from coexist.engine.runner import set_item
from coexist.errors import (
    AuthenticationError,
    CoexistError,
    InputError,
    NotFound,
    NotReady,
    TLSError,
    TransientError,
    Unreachable,
)
from coexist.journal import Journal
from coexist.migrate.stores.imap import endpoint_of, limits_of
from coexist.model import Phase
from coexist.runtime import batch_hold, open_journal, project_dir, retry_policy
from coexist.settings import ImapSettings, Project, load_project
from coexist.tenants.auth import TenantCredentials
from coexist.tenants.ews import EwsLimits, EwsServer
from coexist.tenants.graph import GraphAdapter
from coexist.tenants.imap import (
    Credentials,
    ImapConnections,
    MasterPassword,
    OAuth2Token,
    Password,
)
from coexist.tenants.oauth import TokenSource
from coexist.vault import MASTER_ENTRY, Vault

SIDES = ("source", "target")

OK = "ok"
WRONG_PASSWORD = "wrong password"
NO_CREDENTIALS = "no credentials"
UNREACHABLE = "unreachable"
TLS_ERROR = "TLS error"
NOT_FOUND = "mailbox not found"
NOT_READY = "mailbox not ready"
REFUSED = "refused"
# A failed check's result by the error's class, most specific first (TLSError and
# Unreachable are both endpoint failures; Unreachable is also transient).
RESULT_OF_ERROR: tuple[tuple[type[CoexistError], str], ...] = (
    (TLSError, TLS_ERROR),
    (Unreachable, UNREACHABLE),
    (AuthenticationError, WRONG_PASSWORD),
    (NotReady, NOT_READY),
    (NotFound, NOT_FOUND),
    (TransientError, UNREACHABLE),
)
# Results that say the server itself cannot be used: every other user of that side would
# get the same answer, so the side is not asked again in this run.
SERVER_RESULTS = frozenset({UNREACHABLE, TLS_ERROR})


@dataclass(frozen=True)
class SideResult:
    """One mailbox's check: never holds a password."""

    kind: str  # m365 | imap | exchange | workmail
    result: str
    mailbox: str  # the login or address checked
    message: str = ""
    next: str | None = None

    @property
    def ok(self) -> bool:
        return self.result == OK


@dataclass(frozen=True)
class UserResult:
    user: str
    name: str | None
    source: SideResult
    target: SideResult

    @property
    def ok(self) -> bool:
        return self.source.ok and self.target.ok

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **asdict(self)}


def result_of(exc: CoexistError) -> str:
    """The verification result a failure stands for."""
    return next((r for cls, r in RESULT_OF_ERROR if isinstance(exc, cls)), REFUSED)


def failed(kind: str, mailbox: str, exc: CoexistError) -> SideResult:
    """A side's failed check, with the error's own message and next step."""
    return SideResult(kind, result_of(exc), mailbox, exc.message, exc.next_step)


# -- an IMAP side -----------------------------------------------------------------------------


class ImapChecker:
    """Logs users in to one IMAP server ([source.imap] or [target.imap]), its connections
    bounded like a pass's (`connections_per_server`, `connections_per_mailbox`)."""

    def __init__(self, side: str, settings: ImapSettings, vault: Vault | None, command: str):
        self.side = side
        self.settings = settings
        self.vault = vault
        self.command = command  # e.g. "coexist credentials set --project P"
        self.connections = ImapConnections(endpoint_of(settings, side), limits_of(settings))
        self.server_failure: SideResult | None = None
        self.tokens: dict[str, TokenSource] = {}  # the side's OAuth token sources

    def credentials(self, key: str, login: str) -> Credentials | None:
        """How user `key` logs in, as a pass does (engine/context.ImapServer): with its own
        password (or token), else through the master user (None: the vault has neither)."""
        if self.vault is None:
            return None
        own = self.vault.get(key, self.side)
        if self.settings.auth == "xoauth2":
            # The side's OAuth client, where the vault holds one: a token obtained now.
            name = own.login if own is not None else login
            refreshed = oauth_credentials(
                self.vault, self.side, key, name, None, self.vault.directory, self.tokens
            )
            if refreshed is not None:
                return refreshed
        if own is not None and self.settings.auth == "xoauth2":
            return OAuth2Token(own.login, own.password)
        if own is not None:
            plain = self.settings.auth == "plain"
            mechanism: Literal["login", "plain"] = "plain" if plain else "login"
            return Password(own.login, own.password, mechanism)
        master = self.settings.master_user
        held = self.vault.get(MASTER_ENTRY, self.side) if master else None
        if master and held is not None:
            return MasterPassword(login, master, held.password)
        return None

    def _fix(self, user: str) -> str:
        """The command that gives this side's password for `user` (or the master's)."""
        if self.settings.master_user:
            return f"{self.command} --master --side {self.side}"
        return f"{self.command} --user {user} --side {self.side}"

    def _missing(self, user: str, login: str) -> SideResult:
        if self.settings.master_user:
            return SideResult(
                "imap",
                NO_CREDENTIALS,
                login,
                f"no password for master user {self.settings.master_user} ([{self.side}.imap] "
                "master_user) in the credential vault",
                self._fix(user),
            )
        return SideResult(
            "imap",
            NO_CREDENTIALS,
            login,
            f"no {self.side} password for {login} in the credential vault",
            self._fix(user),
        )

    async def check(self, item: Mapping[str, Any]) -> SideResult:
        """Log in as the user and EXAMINE its INBOX (read-only: nothing changes)."""
        user = str(item.get("source_address") or item["key"])  # how commands name the user
        login = login_of(item, self.side, self.vault)
        if self.server_failure is not None:
            return SideResult(
                "imap",
                self.server_failure.result,
                login,
                self.server_failure.message,
                self.server_failure.next,
            )
        creds = self.credentials(str(item["key"]), login)
        if creds is None:
            return self._missing(user, login)
        try:
            async with self.connections.session(creds) as session:
                await session.run(lambda s: s.examine("INBOX"))
        except CoexistError as exc:
            result = failed("imap", creds.user, exc)
            if result.result == WRONG_PASSWORD:
                result = SideResult(
                    "imap",
                    WRONG_PASSWORD,
                    creds.user,
                    exc.message,
                    f"{self._fix(user)}; then run `coexist verify-credentials` again",
                )
            if result.result in SERVER_RESULTS:
                self.server_failure = result
            return result
        return SideResult("imap", OK, creds.user)


# -- an EWS side (exchange, workmail) ----------------------------------------------------------


class EwsChecker:
    """Opens users' mailboxes on one EWS server as a pass does: with the side's admin
    (delegation or impersonation), or each with its user's own login from the vault (access
    "own"), and reads each Inbox."""

    def __init__(self, project: Project, side: str, env: Mapping[str, str] | None) -> None:
        self.side = side
        self.kind = project.tenant(side).kind
        self.command = (
            f"coexist credentials set --project {project.directory} --master --side {side}"
        )
        self.server: EwsServer | None = None
        self.missing: SideResult | None = None
        self.server_failure: SideResult | None = None
        try:
            sign_in = EWS_SIGN_INS[project.tenant(side).ews.access](project, side, env)
        except CoexistError as exc:
            self.missing = SideResult(
                self.kind, NO_CREDENTIALS, str(project.tenant(side).ews.admin), exc.message,
                exc.next_step,
            )  # fmt: skip
            return
        settings = project.tenant(side).ews
        self.per_user = sign_in.logins is not None  # one user's failure is that user's
        self.server = EwsServer(
            ews_endpoint(settings, side, self.kind),
            sign_in.admin,
            EwsLimits.for_access(settings.access, settings.mailboxes_at_once),
            retry=retry_policy(project),
            logins=sign_in.logins,
        )

    async def check(self, item: Mapping[str, Any]) -> SideResult:
        address = address_of(item, self.side)
        if self.missing is not None:
            return self.missing
        if self.server_failure is not None:
            return self.server_failure
        assert self.server is not None
        try:
            async with self.server.mailbox(address) as mailbox:
                await mailbox.probe()
        except InputError as exc:  # access "own": the vault has no password for this user
            return SideResult(self.kind, NO_CREDENTIALS, address, exc.message, exc.next_step)
        except CoexistError as exc:
            result = failed(self.kind, address, exc)
            admins = result.result == WRONG_PASSWORD and not self.per_user
            if result.result in SERVER_RESULTS or admins:
                # The admin's login or the endpoint: every user of this side would fail alike.
                self.server_failure = result
            return result
        return SideResult(self.kind, OK, address)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()


def address_of(item: Mapping[str, Any], side: str) -> str:
    """The user's address on a side (the source address names the user everywhere)."""
    own = item.get(f"{side}_address")
    return str(own or item.get("source_address") or item["key"])


def login_of(item: Mapping[str, Any], side: str, vault: Vault | None) -> str:
    """The login a side's mailbox is opened as: the vault's, else the user file's, else the
    address."""
    held = vault.get(str(item["key"]), side) if vault is not None else None
    if held is not None:
        return held.login
    detail = (item.get("detail") or {}).get(side) or {}
    return str(detail.get("login") or address_of(item, side))


# -- a Microsoft 365 side ---------------------------------------------------------------------


class GraphChecker:
    """Asks Microsoft Graph, with the app's access, for each user's Inbox on one tenant."""

    def __init__(self, side: str, graph: GraphAdapter) -> None:
        self.side = side
        self.graph = graph
        self.server_failure: SideResult | None = None

    async def check(self, item: Mapping[str, Any]) -> SideResult:
        mailbox = str(item.get(f"{self.side}_id") or item.get(f"{self.side}_address") or "")
        shown = str(item.get(f"{self.side}_address") or mailbox)
        if self.server_failure is not None:
            f = self.server_failure
            return SideResult("m365", f.result, shown, f.message, f.next)
        if not mailbox:
            return SideResult(
                "m365",
                NOT_FOUND,
                "",
                f"the user has no {self.side} mailbox yet",
                "coexist provision (or a batch file's Destination Email)",
            )
        # The well-known folder name `inbox` (mailFolder, Microsoft Graph v1.0): a read
        # that only a mailbox Exchange serves answers.
        path = f"users/{quote(mailbox, safe='@')}/mailFolders/inbox"
        try:
            await self.graph.send("GET", path, params={"$select": "id"})
        except CoexistError as exc:
            result = failed("m365", shown, exc)
            if result.result in SERVER_RESULTS or isinstance(exc, AuthenticationError):
                # The app's own sign-in (or the tenant) failed: the same for every user.
                self.server_failure = result
            return result
        return SideResult("m365", OK, shown)


# -- the command ------------------------------------------------------------------------------

Checker = ImapChecker | GraphChecker | EwsChecker


@dataclass
class CheckerSetup:
    """What a side's checker is built from; `credentials` is shared by the Microsoft 365
    sides (both may be the same tenant), `closers` what the command closes at its end."""

    project: Project
    side: str
    vault: Vault | None
    command: str  # "coexist credentials set --project P"
    env: Mapping[str, str] | None
    credentials: TenantCredentials
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


def _imap_checker(s: CheckerSetup) -> Checker:
    return ImapChecker(s.side, s.project.tenant(s.side).imap, s.vault, s.command)


def _ews_checker(s: CheckerSetup) -> Checker:
    checker = EwsChecker(s.project, s.side, s.env)
    s.closers.append(checker.close)
    return checker


def _graph_checker(s: CheckerSetup) -> Checker:
    graph = GraphAdapter(
        s.project.endpoint(s.side),
        label=s.side,
        read_retry=retry_policy(s.project),
        credentials=s.credentials,
    )
    s.closers.append(graph.close)
    return GraphChecker(s.side, graph)


# A side's checker by its kind (endpoint kinds are registered, never tested one by one).
CHECKERS: dict[str, Callable[[CheckerSetup], Checker]] = {
    "m365": _graph_checker,
    "imap": _imap_checker,
    "exchange": _ews_checker,
    "workmail": _ews_checker,
}
# Kinds whose mailboxes are opened with passwords from the project's vault per user.
VAULT_KINDS = frozenset({"imap"})


def verify_credentials(
    directory: Path | None,
    *,
    batch: str | Path | None = None,
    users: list[str] | None = None,
    all_users: bool = False,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Log in to the source and target mailbox of every selected user; move nothing."""
    named = check_selection("verify-credentials", batch, users, all_users)
    project = load_project(project_dir(directory), env=env)
    journal = open_journal(project)
    try:
        selection = {"batch": batch, "users": named, "all": all_users}
        with batch_hold(journal, "verify-credentials", selection):
            items = pick_users(journal, project.directory, batch=batch, users=named)
            results = asyncio.run(_verify(project, journal, items, env))
    finally:
        journal.close()
    counts = Counter(r.source.result for r in results) + Counter(r.target.result for r in results)
    return {
        "ok": all(r.ok for r in results),
        "users": [r.to_dict() for r in results],
        "verified": sum(r.ok for r in results),
        "failed": sum(not r.ok for r in results),
        "results": dict(counts),
    }


async def _verify(
    project: Project,
    journal: Journal,
    items: list[dict[str, Any]],
    env: Mapping[str, str] | None,
) -> list[UserResult]:
    vault = _vault(project, env)
    command = f"coexist credentials set --project {project.directory}"
    checkers: dict[str, Checker] = {}
    credentials = TenantCredentials()  # one per tenant (both sides may be the same one)
    closers: list[Callable[[], Awaitable[None]]] = []
    try:
        for side in SIDES:
            setup = CheckerSetup(project, side, vault, command, env, credentials, closers)
            checkers[side] = CHECKERS[project.tenant(side).kind](setup)
        results = await asyncio.gather(*(_one(checkers, i) for i in items))
    finally:
        try:
            for close in closers:
                await close()
        finally:
            await credentials.aclose()
    for item, result in zip(items, results, strict=True):
        _record(journal, project, item, result, checkers)
    return list(results)


def _vault(project: Project, env: Mapping[str, str] | None) -> Vault | None:
    """The project's vault, opened (its key resolved) when it exists and an IMAP side needs
    it; None when there is none (every IMAP user then has no credentials)."""
    imap = any(project.tenant(s).kind in VAULT_KINDS for s in SIDES)
    if not imap or not Vault(project.directory, None).exists():
        return None
    return Vault.open(project.directory, env=env)


async def _one(checkers: Mapping[str, Checker], item: Mapping[str, Any]) -> UserResult:
    checks: list[Awaitable[SideResult]] = [checkers[s].check(item) for s in SIDES]
    source, target = await asyncio.gather(*checks)
    return UserResult(
        str(item.get("source_address") or item["key"]), item.get("name"), source, target
    )


def _record(
    journal: Journal,
    project: Project,
    item: Mapping[str, Any],
    result: UserResult,
    checkers: Mapping[str, Checker],
) -> None:
    """Journal the user's results (no secret) and bring its waiting state in line."""
    key = str(item["key"])
    said = {s: getattr(result, s).result for s in SIDES}
    journal.event(
        None,
        "info" if result.ok else "warning",
        f"verify-credentials {result.user}: source {said['source']}, target {said['target']}",
        item_key=key,
        data={"source": said["source"], "target": said["target"]},
    )
    lacking = [
        s
        for s in SIDES
        if isinstance(checkers[s], ImapChecker)
        and getattr(result, s).result in (NO_CREDENTIALS, WRONG_PASSWORD)
    ]
    _set_waiting(journal, project, item, lacking, result)


def _set_waiting(
    journal: Journal,
    project: Project,
    item: Mapping[str, Any],
    lacking: list[str],
    result: UserResult,
) -> None:
    """Clear a wait for credentials the user no longer has; put a user not yet moving to
    waiting for the IMAP passwords it lacks (missing or refused)."""
    detail = item.get("detail") or {}
    waiting = item.get("state") == "waiting"
    for_credentials = waiting and str(detail.get("waiting_for") or "").startswith(WAITING_FOR)
    key = str(item["key"])
    if not lacking:
        if for_credentials:
            set_item(journal, "user", key, state="ok", waiting_for=None)
        return
    if item.get("phase") not in (None, Phase.DISCOVERED.value):
        return  # moving already: the result says what to do; its state is its passes'
    if waiting and not for_credentials:
        return  # waiting for something else
    why = " and ".join(f"{s} password {getattr(result, s).result}" for s in lacking)
    set_item(
        journal,
        "user",
        key,
        state="waiting",
        waiting_for=f"{WAITING_FOR}: {why} (coexist credentials set --project "
        f"{project.directory} --user {result.user}, then coexist verify-credentials)",
    )
