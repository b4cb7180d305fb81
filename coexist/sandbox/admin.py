"""The sandbox's admin channel: what an operator rehearsing on it changes by command.

A served sandbox holds its state in memory and saves it itself, so an edit of state.json
under a running server is lost at its next save. Every change here therefore goes to the
running server when there is one, and into the state directory when there is not:

- `serve.lock`: `Sandbox.start()` holds an exclusive lock (flock) on it until its state is
  saved on stop, and a command changing a stopped sandbox holds it while it writes, so a
  `serve` never starts half-way through that change (it waits). The kernel drops the lock
  when its process ends, killed or not, so "locked" means "a process has this state now".
- `admin.json` (owner-only): where the running server listens and its admin token, a fresh
  random one per start; removed when the server stops.
- The endpoints, under `/_sandbox/admin/` on the server's own HTTPS port (loopback, the
  sandbox's CA), answer only `Authorization: Bearer <token>` from a loopback address. They
  are no part of any Microsoft face: no chaos, no rate limits, nothing a product could call.
- `serve.json`: the port `coexist sandbox serve` used last, which it reuses by default so
  that connection.json stays valid across restarts.

`reach()` picks the way; the operations (`set_auto_forwarding`, `seed_mail`, `deliver`) are
the same functions either way, run on the server's World and MailStore or on loaded ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import ipaddress
import json
import os
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from . import mailseed, transport
from .graph.mail import MAIL_STORE_KEY
from .mailstore import MailStore, Recipient
from .model import STATE_FILE, User, World
from .routing import route
from .web import HTTPFailure, ctx_of

LOCK_FILE = "serve.lock"
ADMIN_FILE = "admin.json"
PORT_FILE = "serve.json"
PREFIX = "/_sandbox/admin"
TOKEN_KEY = "admin_token"  # SandboxContext.extra

# The Default outbound spam policy's AutoForwardingMode values (Set-HostedOutboundSpamFilterPolicy).
MODES = {"on": "On", "off": "Off", "automatic": "Automatic"}
REACH_WAIT_S = 30.0  # a server starting or stopping holds the lock without answering yet
_POLL_S = 0.05


class SandboxError(Exception):
    """An admin request that cannot be done as asked; `next_step` says what to do instead."""

    def __init__(self, message: str, next_step: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.next_step = next_step


class PortTaken(SandboxError):
    """The port asked for (or used last time) is held by another process."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"port {port} on {host} is in use by another process")
        self.host = host
        self.port = port


# -- the state directory's lock ---------------------------------------------------------------
class StateLock:
    """The exclusive lock on `state_dir/serve.lock` (see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def try_acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for the lock."""
        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


# -- files ------------------------------------------------------------------------------------
def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Owner-only from the start (the admin token must never be readable by others)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def new_token() -> str:
    return secrets.token_urlsafe(32)


def announce(state_dir: Path, base_url: str, token: str) -> None:
    """Tell commands how to reach this running server (`admin.json`)."""
    _write_private(state_dir / ADMIN_FILE, {"url": base_url, "token": token, "pid": os.getpid()})


def withdraw(state_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (state_dir / ADMIN_FILE).unlink()


def remembered_port(state_dir: Path) -> int | None:
    """The port `coexist sandbox serve` used last on this state directory, if any."""
    data = _read(state_dir / PORT_FILE) or {}
    port = data.get("port")
    return port if isinstance(port, int) and 0 < port < 65536 else None


def remember_port(state_dir: Path, port: int) -> None:
    _write_private(state_dir / PORT_FILE, {"port": port})


# -- the operations ---------------------------------------------------------------------------
def set_auto_forwarding(world: World, tenants: Sequence[str], mode: str) -> list[dict[str, Any]]:
    """Set the Default outbound spam policy's AutoForwardingMode in each of `tenants`."""
    if mode not in MODES.values():
        raise SandboxError(f"AutoForwardingMode {mode!r} is not one of {', '.join(MODES.values())}")
    unknown = [key for key in tenants if key not in world.tenants]
    if unknown:  # before any change
        raise SandboxError(f"no tenant {unknown[0]!r} in this sandbox (source, target)")
    rows = []
    with world.lock:
        for key in tenants:
            tenant = world.tenants[key]
            before = tenant.auto_forwarding_mode
            if before != mode:
                tenant.auto_forwarding_mode = mode
                tenant.touch()
            rows.append(
                {
                    "tenant": key,
                    "domain": tenant.initial_domain,
                    "policy": tenant.default_outbound_policy.name,
                    "before": before,
                    "after": mode,
                    "changed": before != mode,
                }
            )
    return rows


def find_mailbox(world: World, key: str, text: str) -> User:
    """A mailbox of tenant `key` by SMTP address, UserPrincipalName or object id."""
    tenant = world.tenants.get(key)
    if tenant is None:
        raise SandboxError(f"no tenant {key!r} in this sandbox (source, target)")
    with world.lock:
        tenant.settle()
        owner = tenant.address_owner(text)
        if owner is None:
            low = text.strip().lower()
            owner = next(
                (u for u in tenant.users.values() if low in (u.user_principal_name.lower(), u.id)),
                None,
            )
    if not isinstance(owner, User) or not owner.is_mailbox:
        what = "no mailbox" if owner is None else "not a mailbox"
        raise SandboxError(
            f"{text}: {what} in the {key} tenant ({tenant.initial_domain})",
            next_step="name mailboxes by their SMTP address or UserPrincipalName",
        )
    return owner


def seed_mail(
    world: World, store: MailStore, key: str, users: Sequence[str], per_user: int, seed: int
) -> list[dict[str, Any]]:
    """Give each mailbox `per_user` seeded messages (mailseed; seed `seed`): those it already
    holds are not added again, so a second run changes nothing."""
    mailboxes = [find_mailbox(world, key, u) for u in users]  # all named, before any write
    rows = []
    for user in mailboxes:
        have = mailseed.seeded_numbers(store, key, user.id, seed=seed)
        added = mailseed.seed_mailbox(store, key, user.id, seed=seed, items=per_user, skip=have)
        rows.append(
            {
                "tenant": key,
                "user": user.primary_smtp or user.user_principal_name,
                "added": added.items,
                "bytes": added.bytes,
                "seeded": len(have | set(range(per_user))),
            }
        )
    return rows


def deliver(
    world: World,
    store: MailStore,
    to: str,
    sender: str | None,
    tenant_hint: str | None,
    subject: str,
    body: str,
) -> dict[str, Any]:
    """Submit one message as Exchange's transport would (`transport.submit`): every copy is
    stored. The answer is the route of `to` plus what was stored where."""
    out = transport.Outgoing(subject=subject, body=body, to=[Recipient(to, to)])
    try:
        report = transport.submit(world, store, sender, out, tenant_hint=tenant_hint)
    except transport.SubmitError as exc:
        raise SandboxError(f"{exc.address} is not an address") from exc
    except ValueError as exc:  # a raw X500 DN with no tenant to resolve it in
        raise SandboxError(str(exc), next_step="name the tenant with --tenant") from exc
    result: dict[str, Any] = report.routes[to].to_dict()
    result.update(
        stored=[c.to_dict() for c in report.copies],
        internet_message_id=report.internet_message_id,
        subject=subject,
        through="server",
    )
    return result


def route_only(
    world: World, to: str, sender: str | None, tenant_hint: str | None
) -> dict[str, Any]:
    """Where a message would go, computed from the saved state; nothing is stored."""
    try:
        result: dict[str, Any] = route(world, to, sender=sender, tenant_hint=tenant_hint).to_dict()
    except ValueError as exc:
        raise SandboxError(str(exc), next_step="name the tenant with --tenant") from exc
    result.update(stored=[], through="route")
    return result


# -- server side ------------------------------------------------------------------------------
Handler = Callable[[Request, dict[str, Any]], Awaitable[Any]]


def ews_account(
    world: World,
    tenant: str,
    name: str,
    *,
    password: str | None = None,
    kind: str | None = None,
    full_access: Sequence[str] = (),
    impersonation: bool | None = None,
    revoke: bool = False,
) -> dict[str, Any]:
    """Make `tenant` an EWS organisation of `kind` (if given) and create or change its account
    `name`: a new password creates (or replaces) it; FullAccess grants on mailboxes (addresses,
    or "*" for all) and the ApplicationImpersonation role are added, or removed with `revoke`
    (ews/orgs.py). Returns the account as the face sees it (no password)."""
    from .ews import orgs

    if tenant not in world.tenants:
        raise SandboxError(f"no tenant {tenant!r} (source or target)")
    try:
        if kind is not None:
            orgs.set_kind(world, tenant, kind)
        t = world.tenants[tenant]
        if t.kind not in orgs.EWS_KINDS:
            raise SandboxError(
                f"{tenant} is a Microsoft 365 tenant: its mailboxes are not served over EWS",
                next_step=f"give it a kind: --kind {' | '.join(orgs.EWS_KINDS)}",
            )
        for address in full_access:
            if address != "*" and orgs.mailbox_user(t, address) is None:
                raise SandboxError(f"no mailbox {address!r} in {tenant}")
        if password is not None:
            existing = orgs.find_account(t, name)
            account = orgs.add_account(
                world, tenant, name, password,
                full_access=list(existing.full_access) if existing else [],
                impersonation=bool(existing and existing.impersonation),
            )  # fmt: skip
        account = orgs.grant(
            world, tenant, name, full_access=list(full_access), impersonation=impersonation,
            revoke=revoke,
        )  # fmt: skip
    except orgs.OrgError as exc:
        raise SandboxError(str(exc)) from exc
    return {
        "tenant": tenant,
        "kind": t.kind,
        "account": account.upn,
        "netbios": f"{orgs.netbios(t)}\\{account.name}",
        "full_access": list(account.full_access),
        "impersonation": account.impersonation,
    }


def _refused(status: int, message: str, next_step: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "next_step": next_step}}, status_code=status)


def _loopback(request: Request) -> bool:
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Authenticate (the token, from loopback), read the JSON body, map SandboxError to 400."""

    async def endpoint(request: Request) -> Response:
        token = ctx_of(request).extra.get(TOKEN_KEY)
        given = request.headers.get("authorization", "")
        if not (token and _loopback(request)) or not hmac.compare_digest(
            given.encode(), f"Bearer {token}".encode()
        ):
            raise HTTPFailure(_refused(401, "sandbox admin: not authorized"))
        payload: dict[str, Any] = {}
        if request.method == "POST":
            try:
                payload = await request.json()
            except ValueError:
                payload = {}
            if not isinstance(payload, dict):
                raise HTTPFailure(_refused(400, "sandbox admin: the body must be a JSON object"))
        try:
            return JSONResponse(await handler(request, payload))
        except SandboxError as exc:
            raise HTTPFailure(_refused(400, exc.message, exc.next_step)) from exc

    return endpoint


def _field(payload: dict[str, Any], name: str, kind: type, *, optional: bool = False) -> Any:
    """One member of a request body, of the type asked (a bad body is a 400, not a 500)."""
    value = payload.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SandboxError(f"sandbox admin: {name!r} must be a {kind.__name__}")
    return value


def _names(payload: dict[str, Any], name: str) -> list[str]:
    values = _field(payload, name, list)
    if not all(isinstance(v, str) for v in values):
        raise SandboxError(f"sandbox admin: {name!r} must be a list of strings")
    return list(values)


async def _ping(request: Request, _payload: dict[str, Any]) -> Any:
    return {"pid": os.getpid()}


async def _policy(request: Request, p: dict[str, Any]) -> Any:
    return set_auto_forwarding(ctx_of(request).world, _names(p, "tenants"), _field(p, "mode", str))


async def _seed_mail(request: Request, p: dict[str, Any]) -> Any:
    ctx = ctx_of(request)
    store: MailStore = ctx.extra[MAIL_STORE_KEY]
    # Off the event loop: seeding writes many items, and Graph keeps serving meanwhile.
    return await run_in_threadpool(
        seed_mail,
        ctx.world,
        store,
        _field(p, "tenant", str),
        _names(p, "users"),
        _field(p, "per_user", int),
        _field(p, "seed", int),
    )


async def _deliver(request: Request, p: dict[str, Any]) -> Any:
    ctx = ctx_of(request)
    return deliver(
        ctx.world,
        ctx.extra[MAIL_STORE_KEY],
        _field(p, "to", str),
        _field(p, "sender", str, optional=True),
        _field(p, "tenant", str, optional=True),
        _field(p, "subject", str, optional=True) or "",
        _field(p, "body", str, optional=True) or "",
    )


async def _ews_account(request: Request, p: dict[str, Any]) -> Any:
    return ews_account(
        ctx_of(request).world,
        _field(p, "tenant", str),
        _field(p, "name", str),
        password=_field(p, "password", str, optional=True),
        kind=_field(p, "kind", str, optional=True),
        full_access=_names(p, "full_access") if p.get("full_access") else [],
        impersonation=_field(p, "impersonation", bool, optional=True),
        revoke=bool(_field(p, "revoke", bool, optional=True)),
    )


def routes() -> list[BaseRoute]:
    return [
        Route(f"{PREFIX}/ews-account", _endpoint(_ews_account), methods=["POST"]),
        Route(f"{PREFIX}/ping", _endpoint(_ping), methods=["GET"]),
        Route(f"{PREFIX}/policy", _endpoint(_policy), methods=["POST"]),
        Route(f"{PREFIX}/seed-mail", _endpoint(_seed_mail), methods=["POST"]),
        Route(f"{PREFIX}/deliver", _endpoint(_deliver), methods=["POST"]),
    ]


# -- client side ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Announced:
    """What `admin.json` says about the running server."""

    url: str
    token: str
    pid: int


def announced(state_dir: Path) -> Announced | None:
    data = _read(state_dir / ADMIN_FILE)
    if data is None:
        return None
    try:
        return Announced(str(data["url"]), str(data["token"]), int(data["pid"]))
    except (KeyError, TypeError, ValueError):
        return None


class AdminClient:
    """Calls the running server's admin endpoints (TLS verified against the sandbox's CA)."""

    def __init__(self, state_dir: Path, where: Announced) -> None:
        self.state_dir = state_dir
        self.where = where
        from .server import CA_FILE  # the server module imports this one

        self._http = httpx.Client(
            base_url=where.url.rstrip("/") + PREFIX,
            verify=ssl.create_default_context(cafile=str(state_dir / CA_FILE)),
            headers={"Authorization": f"Bearer {where.token}"},
            timeout=120,
        )

    def close(self) -> None:
        self._http.close()

    def alive(self) -> bool:
        """The announced server answers, as the process that announced itself."""
        try:
            r = self._http.get("/ping", timeout=10)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.json().get("pid") == self.where.pid

    def call(self, operation: str, payload: dict[str, Any]) -> Any:
        try:
            r = self._http.post(f"/{operation}", json=payload)
        except httpx.HTTPError as exc:
            raise SandboxError(
                f"the sandbox at {self.where.url} stopped answering ({type(exc).__name__})",
                next_step="look at the `coexist sandbox serve` terminal, then run this again",
            ) from exc
        if r.status_code != 200:
            error = (
                r.json().get("error", {})
                if r.headers.get("content-type", "").startswith("application/json")
                else {}
            )
            raise SandboxError(
                error.get("message") or f"sandbox admin answered {r.status_code}",
                error.get("next_step"),
            )
        return r.json()


@contextlib.contextmanager
def reach(state_dir: Path, wait_s: float = REACH_WAIT_S) -> Iterator[AdminClient | None]:
    """The running server's admin client; or None, with the state directory locked so that
    the caller can change the saved state (no server starts until it is done)."""
    if not (state_dir / STATE_FILE).exists():
        raise SandboxError(
            f"no sandbox state in {state_dir} (missing {STATE_FILE})",
            next_step=f"coexist sandbox serve --state {state_dir}",
        )
    lock = StateLock(state_dir)
    deadline = time.monotonic() + wait_s
    while True:
        if lock.try_acquire():
            try:
                yield None
            finally:
                lock.release()
            return
        where = announced(state_dir)
        if where is not None:
            client = AdminClient(state_dir, where)
            try:
                if client.alive():
                    yield client
                    return
            finally:
                client.close()
        if time.monotonic() >= deadline:
            raise SandboxError(
                f"the sandbox state in {state_dir} is held by a process that does not answer "
                f"(a `coexist sandbox serve` starting or stopping, pid "
                f"{where.pid if where else 'unknown'})",
                next_step="wait for it to be ready or stopped, then run this again",
            )
        time.sleep(0.1)
