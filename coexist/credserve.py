"""`coexist credentials serve`: the HTTPS page behind a credential link (`coexist.credlink`).

GET /l/<token> shows which mailbox is being moved and by whom, and a form (login,
password); POST checks them against the source at once and answers within seconds: right
ones go to the vault and the user is released (its pass run now with `--run`, else by the
next prestage/cutover/retry); wrong ones are counted against the link (then it locks).

What the page guards:
- CSRF: double-submit: a random value in a `__Host-` cookie (Secure, HttpOnly,
  SameSite=Strict) and in the form, compared in constant time.
- Rate limits: a sliding minute per link and per client address; a burst beyond
  `[credential_link] requests_per_minute` is answered 429 with Retry-After.
- Headers: HSTS, a Content-Security-Policy with `default-src 'none'` (one stylesheet of its
  own, forms to itself only, no script at all, no framing), no referrer, no caching.
- Logs: uvicorn's access log is off; this module writes its own (`logs/credential-link-
  access.log` in the project), where a path names a link by its id only: the token's
  signature and anything typed never reach a log, the journal or a reply.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from coexist import credlink
from coexist.credcheck import OK, WRONG_PASSWORD
from coexist.errors import Busy, InputError
from coexist.files import private_dir
from coexist.runtime import open_journal
from coexist.settings import Project, load_project
from coexist.vault import Credential, Vault

CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
CSRF_COOKIE = "__Host-coexist-csrf"
ACCESS_LOG = "credential-link-access.log"
MAX_BODY = 16 * 1024  # a login and a password; anything bigger is not this form
CSS = credlink.TEMPLATES / "page.css"

log = logging.getLogger(__name__)


def safe_path(path: str) -> str:
    """A request path as the access log shows it: a link by its id only."""
    if path.startswith("/l/"):
        return f"/l/{credlink.link_id_of(path[3:])}"
    return path if path in ("/", "/static/page.css") else "/(other)"


class RateLimit:
    """At most `limit` requests a minute per key (a sliding window of monotonic times)."""

    def __init__(self, limit: int, window_s: float = 60.0) -> None:
        self.limit = limit
        self.window_s = window_s
        self.seen: dict[str, deque[float]] = {}

    def allow(self, key: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        times = self.seen.setdefault(key, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True


class Guard:
    """ASGI middleware: security headers on every response, and the access log line."""

    def __init__(self, app: ASGIApp, access: logging.Logger) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.decode().lower() not in {h.lower() for h in SECURITY_HEADERS}
                ]
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            self.access.info(
                '%s "%s %s" %s', client[0], scope.get("method"), safe_path(scope["path"]), status
            )


@dataclass
class Page:
    """The app's state: the project, its clock and what it runs."""

    project: Project
    env: Mapping[str, str] | None
    clock: credlink.Clock
    run: bool
    limits: RateLimit
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    passes: set[asyncio.Task[Any]] = field(default_factory=set)

    def vault(self) -> Vault:
        return Vault.open(self.project.directory, env=self.env)

    def render(self, status: int, title: str, **values: Any) -> HTMLResponse:
        defaults: dict[str, Any] = {
            "lang": "en",
            "title": title,
            "operator": credlink.operator_name(self.project),
            "view": "refused",
            "error": "",
            "address": "",
            "name": "",
            "login": "",
            "csrf": "",
            "action": "",
            "expires": "",
            "attempts_left": 0,
        }
        html = credlink.environment(self.project).get_template("page.html.j2")
        return HTMLResponse(html.render({**defaults, **values}), status_code=status)

    def refused(self, exc: credlink.LinkRefused) -> HTMLResponse:
        return self.render(exc.status, "This link cannot be used", error=exc.reason)


def build_app(
    directory: Path,
    *,
    env: Mapping[str, str] | None = None,
    clock: credlink.Clock = credlink.utcnow,
    run: bool = False,
    access: logging.Logger | None = None,
) -> ASGIApp:
    """The page's ASGI app for the project in `directory`."""
    project = load_project(directory, env=env)
    page = Page(project, env, clock, run, RateLimit(project.credential_link.requests_per_minute))
    routes = [
        Route("/l/{token}", _handler(page, _show), methods=["GET"]),
        Route("/l/{token}", _handler(page, _submit), methods=["POST"]),
        Route("/static/page.css", _css(page), methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    return Guard(app, access or logging.getLogger("coexist.credserve.access"))


def _css(page: Page) -> Callable[[Request], Awaitable[Response]]:
    async def css(request: Request) -> Response:
        override = page.project.credential_link.templates
        path = override / "page.css" if override and (override / "page.css").is_file() else CSS
        return FileResponse(path, media_type="text/css")

    return css


def _handler(
    page: Page, fn: Callable[[Page, Request, str], Awaitable[Response]]
) -> Callable[[Request], Awaitable[Response]]:
    """Rate limits (per link, per client address) before the page looks at anything."""

    async def handle(request: Request) -> Response:
        token = str(request.path_params["token"])
        client = request.client.host if request.client else "-"
        if not (
            page.limits.allow(f"link:{token.split('.')[0][:32]}")
            and page.limits.allow(f"client:{client}")
        ):
            response = page.render(
                429, "Too many requests", error="Too many requests. Wait a minute and try again."
            )
            response.headers["Retry-After"] = "60"
            return response
        return await fn(page, request, token)

    return handle


def _find(page: Page, token: str) -> credlink.Link:
    """The token's link (LinkRefused with the page's words otherwise)."""
    vault = page.vault()
    journal = open_journal(page.project)
    try:
        key = credlink.link_key(vault, create=False)
        return credlink.find_link(journal, key, token, page.clock())
    finally:
        journal.close()


def _form(page: Page, link: credlink.Link, token: str, csrf: str, **values: Any) -> dict[str, Any]:
    limit = page.project.credential_link.attempts
    return {
        "view": "form",
        "address": link.address,
        "name": str(link.item.get("name") or ""),
        "csrf": csrf,
        "action": f"/l/{token}",
        "expires": str(link.record.get("expires_at", "")).replace("T", " ")[:16],
        "attempts_left": max(0, limit - int(link.record.get("attempts") or 0)),
        **values,
    }


def _with_csrf(response: Response, csrf: str) -> Response:
    response.set_cookie(CSRF_COOKIE, csrf, secure=True, httponly=True, samesite="strict", path="/")
    return response


async def _show(page: Page, request: Request, token: str) -> Response:
    try:
        link = await run_in_threadpool(_find, page, token)
    except credlink.LinkRefused as exc:
        return page.refused(exc)
    csrf = secrets.token_urlsafe(32)
    title = "Confirm your mailbox sign-in"
    return _with_csrf(page.render(200, title, **_form(page, link, token, csrf)), csrf)


async def _submit(page: Page, request: Request, token: str) -> Response:
    body = await request.body()
    if len(body) > MAX_BODY:
        return page.render(413, "This link cannot be used", error="The form was too large.")
    fields = {k: v[0] for k, v in parse_qs(body.decode(errors="replace")).items() if v}
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = fields.get("csrf", "")
    if not cookie or not given or not hmac.compare_digest(cookie, given):
        return page.render(
            403,
            "This form has expired",
            error="This form has expired or did not come from this page. Open your link again.",
        )
    lock = page.locks.setdefault(credlink.link_id_of(token), asyncio.Lock())
    async with lock:  # one answer per link at a time: a double submit cannot store twice
        try:
            link = await run_in_threadpool(_find, page, token)
        except credlink.LinkRefused as exc:
            return page.refused(exc)
        login = fields.get("login", "").strip()
        password = fields.get("password", "")
        title = "Confirm your mailbox sign-in"
        csrf = secrets.token_urlsafe(32)
        if not login or not password:
            values = _form(
                page, link, token, csrf, login=login, error="Enter your login and password."
            )
            return _with_csrf(page.render(400, title, **values), csrf)
        result = await credlink.verify_given(page.project, link.item, Credential(login, password))
        if result.result == OK:
            command = await run_in_threadpool(_accept, page, link, login, password)
            # A project whose passes run on workers ([engine] executor = "queue") gets the
            # user's job queued at once: the command only enqueues it, a worker runs it.
            if page.run or page.project.engine.executor == "queue":
                _start_pass(page, link.address, command)
            return page.render(200, "Thank you", view="done", address=link.address)
        if result.result != WRONG_PASSWORD:
            # The server, not the user: nothing counted, nothing stored; try again later.
            log.warning(
                "credential link %s: source check said %s", link.record["id"], result.result
            )
            error = (
                "Your mail server could not be reached to check your sign-in. Nothing was "
                "stored; please try again in a few minutes."
            )
            values = _form(page, link, token, csrf, login=login, error=error)
            return _with_csrf(page.render(503, title, **values), csrf)
        left, locked = await run_in_threadpool(_wrong, page, link)
        if locked:
            return page.refused(
                credlink.LinkRefused(
                    "The login or password was wrong too many times; this link is now locked. "
                    "Your migration team has been told.",
                    status=403,
                )
            )
        error = f"The login or password is not right. Nothing was stored. Attempts left: {left}."
        values = _form(page, link, token, csrf, login=login, error=error, attempts_left=left)
        return _with_csrf(page.render(400, title, **values), csrf)


def _accept(page: Page, link: credlink.Link, login: str, password: str) -> str:
    journal = open_journal(page.project)
    try:
        return credlink.accept(journal, page.project, page.vault(), link, login, password)
    finally:
        journal.close()


def _wrong(page: Page, link: credlink.Link) -> tuple[int, bool]:
    journal = open_journal(page.project)
    try:
        return credlink.wrong_attempt(journal, page.project, link, page.clock())
    finally:
        journal.close()


def _start_pass(page: Page, address: str, command: str) -> None:
    """Run the user's pass in this process, in the background (`--run`)."""

    async def one() -> None:
        try:
            result = await asyncio.to_thread(
                credlink.run_pass, page.project.directory, address, command
            )
            log.info(
                "credential link: %s of %s ended: %s changed, %s failed",
                command,
                address,
                result.get("changed"),
                len(result.get("failed") or []),
            )
        except Busy as exc:  # a playbook run holds the user's batch: the pass stays queued
            log.warning("credential link: %s of %s not run now: %s", command, address, exc)
        except Exception:
            log.exception("credential link: %s of %s failed", command, address)

    task = asyncio.get_running_loop().create_task(one())
    page.passes.add(task)
    task.add_done_callback(page.passes.discard)


# -- the server -----------------------------------------------------------------------------
def access_logger(directory: Path) -> logging.Logger:
    """The access log of the page, in the project's logs directory (owner-only)."""
    logs = private_dir(directory / "logs")
    logger = logging.getLogger(f"coexist.credserve.access.{directory}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.FileHandler(logs / ACCESS_LOG, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
    return logger


def certificate(
    project: Project, cert: Path | None, key: Path | None, demo: bool
) -> tuple[Path, Path]:
    """The certificate and key the page serves: the options', the settings', or (`demo`)
    one issued by a CA made for the project (trustme, as the sandbox does; its CA is left in
    credential-link/ca.pem for the browser that should trust it)."""
    cl = project.credential_link
    cert = cert or cl.cert_file
    key = key or cl.key_file
    if cert and key:
        return cert, key
    if not demo:
        raise InputError(
            "credentials serve needs a TLS certificate and its key",
            next_step="pass --cert FILE --key FILE, or set [credential_link] cert_file and "
            "key_file (or --demo-cert for a demo)",
        )
    import trustme

    where = private_dir(project.directory / "credential-link")
    ca = trustme.CA(organization_name="coexist credential link demo")
    leaf = ca.issue_cert(cl.host, "localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(where / "key.pem"))
    return where / "cert.pem", where / "key.pem"


def server(
    directory: Path,
    *,
    host: str | None = None,
    port: int | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    demo_cert: bool = False,
    run: bool = False,
    env: Mapping[str, str] | None = None,
    clock: credlink.Clock = credlink.utcnow,
) -> Any:
    """A uvicorn server of the page (not started: `.run()` blocks, `.should_exit` stops)."""
    import uvicorn

    project = load_project(directory, env=env)
    if not credlink.takes_end_user_credentials(project):
        raise InputError(
            f"the source is of kind {project.source.kind!r}: its users give no credentials "
            "of their own",
            next_step="end-user links are for IMAP and Exchange/WorkMail sources",
        )
    Vault.open(project.directory, env=env)  # the key now, not at the first user's answer
    cert_file, key_file = certificate(project, cert, key, demo_cert)
    app = build_app(
        project.directory, env=env, clock=clock, run=run, access=access_logger(project.directory)
    )
    config = uvicorn.Config(
        app,
        host=host or project.credential_link.host,
        port=port if port is not None else project.credential_link.port,
        ssl_certfile=str(cert_file),
        ssl_keyfile=str(key_file),
        access_log=False,  # its lines hold the whole path, token included: ours do not
        log_config=None,
        lifespan="off",
        server_header=False,
    )
    return uvicorn.Server(config)


def started_at(srv: Any) -> str:
    """The address a started server listens on."""
    sock = srv.servers[0].sockets[0].getsockname()
    return f"https://{sock[0]}:{sock[1]}"
