"""Sandbox server: app assembly, TLS (trustme CA), background thread, persistence.

`Sandbox` is the Python API (context manager) used by tests, `coexist demo`
and `coexist sandbox serve`. It serves both tenants on one HTTPS port:

- identity: `/{tenant}/v2.0/.well-known/openid-configuration`, `/{tenant}/oauth2/v2.0/token`
- Graph:    `/v1.0/...` (tenant taken from the token, as graph.microsoft.com does)
- Exchange: `/adminapi/beta/{tenantId}/InvokeCommand`

State lives in `state_dir/state.json` (saved shortly after every change and
on stop); `connection.json` there tells a coexist project how to connect. A started
sandbox holds the state directory's lock until it has saved on stop, and answers the
admin channel (`admin.py`: `coexist sandbox policy`, `seed-mail`, `deliver`).
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import trustme
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute

from coexist.files import private_dir, write_private

from . import admin, ews, exo, graph, psrp, seed, transport, workmail
from . import dns as dnsface
from .connections import ConnectionProtocol
from .graph.mail import MAIL_STORE_KEY
from .graph.outlook_items import PIM_STORE_KEY
from .identity import Issuer
from .limits import Limiter
from .mailstore import MAIL_DB, MailStore, Recipient
from .model import STATE_FILE, Settings, World
from .web import HTTPFailure, SandboxContext, exo_error_body, graph_error_body

log = logging.getLogger(__name__)

CONNECTION_FILE = "connection.json"
CA_FILE = "ca.pem"

# How `coexist sandbox serve` stops on SIGINT or SIGTERM (it promises to end within 5 s):
# requests in flight get GRACEFUL_S to finish (uvicorn's graceful shutdown; then they are
# cancelled), the server thread SERVER_STOP_S from the signal, then the state is saved; at
# STOP_DEADLINE_S whatever is still running is cut short (hard exit). Well under 5 s, so a
# loaded machine still keeps the promise.
GRACEFUL_S = 1  # seconds (uvicorn takes an int)
SERVER_STOP_S = 2.0
STOP_DEADLINE_S = 3.5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long a starting sandbox waits for its state directory while a short command holds it
# (`coexist sandbox policy` on the stopped sandbox) before saying who holds it.
STATE_LOCK_WAIT_S = 10.0
_POLL_S = 0.05

Scope = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]], Awaitable[None]
]


def profile_settings(profile: str, seed_value: int, time_scale: float = 1.0) -> Settings:
    """Settings for a limit profile; chaos turns on faults and replication lag, realistic
    Microsoft 365's minutes (every figure in unscaled seconds, divided by `time_scale`)."""
    s = Settings(seed=seed_value, profile=profile, time_scale=time_scale)
    if profile == "chaos":
        s.chaos_rate = 0.05
        s.replication_delay_s = 0.5
        s.provisioning_delay_s = 2.0
    elif profile == "fast":
        s.provisioning_delay_s = 0.5
    elif profile == "realistic":
        # A licensed MailUser's mailbox: 5 to 30 minutes, drawn per user (FACTS.md,
        # "Licensing a cloud MailUser": "after a delay"; the range is *unverified*).
        s.provisioning_delay_s, s.provisioning_delay_max_s = 300.0, 1800.0
        # Exchange-created objects reach Graph after 1 to 10 minutes (FACTS.md: "minutes,
        # not seconds"; the range is *unverified*).
        s.replication_delay_s, s.replication_delay_max_s = 60.0, 600.0
        # Graph's Outlook APIs serve a new mailbox up to 10 minutes after Exchange has it
        # (Graph known issues, "No instant access after creation": up to 15 minutes after
        # licensing, 404 meanwhile; the split is *unverified*).
        s.rest_delay_s, s.rest_delay_max_s = 0.0, 600.0
        # Graph refuses to PATCH a new Exchange-created user for up to 5 minutes after it
        # appears (the DualWrite "currently undergoing migration" answer; *unverified*).
        s.graph_patch_refusal = "migrating"
        s.graph_patch_window_s, s.graph_patch_window_max_s = 0.0, 300.0
    return s


# `ctx.extra[REQUEST_LOG_KEY] = []` makes the server append (method, path) of every HTTP
# request it receives (tests count a pass's requests with it); absent, nothing is kept.
REQUEST_LOG_KEY = "request_log"


class ChaosMiddleware:
    """Under the chaos profile, fails a seeded share of Graph / Exchange calls.

    `$batch` is left to its handler, which throttles each inner request on its
    own as Graph does. A "reset" sends headers and part of the body, then drops
    the connection, which clients see as a broken connection.
    """

    def __init__(self, app: ASGIApp, ctx: SandboxContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        seen = self.ctx.extra.get(REQUEST_LOG_KEY)
        if seen is not None and path:
            # Tests count what the service receives (not what one client logs: the Graph
            # adapter's lean HTTP pool logs nothing, its importUrls carry credentials).
            seen.append((str(scope.get("method", "")), path))
        is_graph = path.startswith("/v1.0/") and not path.startswith("/v1.0/$batch")
        is_exo = path.startswith("/adminapi/")
        fault = self.ctx.limiter.chaos() if (is_graph or is_exo) else None
        if fault is None:
            await self.app(scope, receive, send)
            return
        if fault == "reset":
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", b"4096"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b'{"value": [', "more_body": True})
            raise ConnectionResetError("sandbox chaos: connection reset")
        retry_after = self.ctx.limiter.chaos_retry_after()
        if fault == "throttle":
            status, code, msg = 429, "TooManyRequests", "Too many requests."
        else:
            status, code, msg = 503, "ServiceUnavailable", "Service Unavailable."
        body = graph_error_body(code, msg) if is_graph else exo_error_body(code, msg)
        data = json.dumps(body).encode()
        ra = str(int(retry_after)) if float(retry_after).is_integer() else f"{retry_after:.3f}"
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    (b"retry-after", ra.encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})


async def _http_failure(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPFailure)
    return exc.response


def build_app(ctx: SandboxContext) -> Starlette:
    # The admin channel first: no Microsoft face may answer its paths.
    routes: list[BaseRoute] = [
        *admin.routes(),
        *dnsface.routes(),  # `coexist sandbox dns set/show` (sandbox/dns.py)
        *graph.routes(),
        *exo.routes(),
        *ews.routes(),
        *psrp.routes(),  # remote PowerShell for the Exchange organisations (issue 13)
        *workmail.routes(),  # AWS WorkMail admin API (boto3), sandbox/workmail.py
        *ctx.issuer.routes(),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPFailure: _http_failure})
    app.state.ctx = ctx
    app.add_middleware(ChaosMiddleware, ctx=ctx)
    return app


def write_atomically(path: Path, data: bytes) -> None:
    """Write a file whole or not at all (write + rename): a sandbox stopped at any moment
    (`run_forever` may cut start-up short) never leaves half a certificate behind. Owner-only,
    like all of the state: it holds the apps' keys and client secrets."""
    write_private(path, data)


def make_app_certificate(common_name: str) -> tuple[str, str]:
    """A self-signed RSA certificate for an app registration: (key+cert PEM, cert PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return key_pem + cert_pem, cert_pem


class Sandbox:
    """A running source + target tenant pair on 127.0.0.1 over HTTPS.

    >>> with Sandbox(tmp_path, seed=1, users=20) as sb:
    ...     sb.connection["tenants"]["source"]["graph_url"]
    """

    def __init__(
        self,
        state_dir: Path | str,
        *,
        seed: int = 1,
        users: int = 50,
        profile: str = "fast",
        port: int = 0,
        host: str = "127.0.0.1",
        time_scale: float = 1.0,
        drained: bool = False,
        token_lifetime_s: int = 3599,
        world: World | None = None,
        kinds: dict[str, str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        # Organisation kinds to serve (ews/orgs.KINDS), e.g. {"source": "exchange2016"};
        # applied over the loaded or seeded state (and kept across `reset`).
        self.kinds = dict(kinds or {})
        private_dir(self.state_dir)
        self.host = host
        self._requested_port = port
        self.seed = seed
        self.users = users
        self.profile = profile
        self.time_scale = time_scale
        self.token_lifetime_s = token_lifetime_s
        self.drained = drained
        self._given_world = world is not None
        self._loaded_stamp: tuple[int, int] | None = None
        self.world = world or self._load_or_seed()
        self._apply_run_settings(self.world)
        self._lock = admin.StateLock(self.state_dir)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._saver: threading.Thread | None = None
        self._stop_saver = threading.Event()
        self._saved_version = -1
        self.port = 0
        self.ctx: SandboxContext | None = None
        self._mail: MailStore | None = None
        self.dns: dnsface.DnsFace | None = None  # the DNS face (sandbox/dns.py), once started

    # -- state -------------------------------------------------------------------
    def _state_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.state_dir / STATE_FILE).stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def _load_or_seed(self) -> World:
        self._loaded_stamp = self._state_stamp()
        if self._loaded_stamp is not None:
            return World.load(self.state_dir)
        return seed.generate(
            self.seed, self.users, profile_settings(self.profile, self.seed, self.time_scale)
        )

    def _apply_run_settings(self, world: World) -> None:
        """This run's profile, time scale and bucket start (not taken from saved state)."""
        world.settings.profile = self.profile
        world.settings.time_scale = self.time_scale
        world.settings.buckets_start_empty = self.drained
        for key, kind in self.kinds.items():
            ews.set_kind(world, key, kind)

    def _hold_state_dir(self) -> None:
        """Take the state directory's lock, then the state as it is now: a command may have
        changed the saved state of the stopped sandbox since it was loaded (admin.py)."""
        if not self._lock.acquire(STATE_LOCK_WAIT_S):
            holder = admin.announced(self.state_dir)
            raise admin.SandboxError(
                f"another process holds the sandbox state in {self.state_dir}"
                + (f" (a `coexist sandbox serve`, pid {holder.pid})" if holder else ""),
                next_step="stop the other `coexist sandbox serve` of this state directory, "
                "or serve a copy of it (--state OTHER-DIR)",
            )
        if not self._given_world and self._state_stamp() != self._loaded_stamp:
            self.world = self._load_or_seed()
            self._apply_run_settings(self.world)

    def reset(self, world: World | None = None) -> World:
        """Replace the tenants (tests re-seed per test without restarting HTTPS)."""
        new = world or seed.generate(
            self.seed, self.users, profile_settings(self.profile, self.seed, self.time_scale)
        )
        self._attach_app_certificates(new)
        for key, kind in self.kinds.items():
            ews.set_kind(new, key, kind)
        assert self.ctx is not None
        with self.world.lock:
            self.world.tenants = new.tenants
            self.world.settings = new.settings
            self.world.dns = {}  # the new tenants' domains get their providers' records
            dnsface.ensure_zones(self.world)
            self.ctx.limiter = Limiter(new.settings)
            for t in self.world.tenants.values():
                t.touch()
        self.mail.reset()
        pim = self.ctx.extra.get(PIM_STORE_KEY)  # contacts/calendar/To Do (graph/outlook_items)
        if pim is not None:
            pim.reset()
        self.save()
        return self.world

    def save(self) -> None:
        if not self._lock.held:
            return  # only the process holding the state directory writes its state
        with self.world.lock:
            version = self.world.version
            self.world.save(self.state_dir)
            self._saved_version = version
            self._loaded_stamp = self._state_stamp()  # its own save is no change from outside

    def _saver_loop(self) -> None:
        # At most once a second: each save snapshots the world under its lock.
        while not self._stop_saver.wait(1.0):
            try:
                if self.world.version != self._saved_version:
                    self.save()
            except Exception:  # never let persistence kill the server
                log.exception("sandbox state save failed")

    def _attach_app_certificates(self, world: World) -> None:
        """Each tenant's app gets a certificate credential (file in the state dir)."""
        for key, tenant in world.tenants.items():
            path = self.state_dir / f"{key}-app.pem"
            # Only the project's app (apps[0]) gets a certificate credential; other
            # seeded apps (e.g. the read-only one) authenticate with their secret.
            for app in tenant.apps[:1]:
                if path.exists():
                    text = path.read_text()
                    marker = "-----BEGIN CERTIFICATE-----"
                    on_disk = text[text.index(marker) :] if marker in text else None
                    if app.certificate_pem in (None, on_disk):
                        # Re-seeded tenants keep the credential file already handed out.
                        app.certificate_pem = on_disk
                        continue
                combined, cert_pem = make_app_certificate(app.display_name)
                write_atomically(path, combined.encode())
                app.certificate_pem = cert_pem

    # -- mail --------------------------------------------------------------------
    @property
    def mail(self) -> MailStore:
        """The mailstore (`state_dir/mail.db`); opened by `start()`, or here on first use."""
        if self._mail is None:
            self._mail = MailStore(self.state_dir / MAIL_DB)
        return self._mail

    def deliver(
        self,
        to: str | Sequence[str],
        sender: str | None = None,
        subject: str = "",
        body: str = "",
    ) -> transport.SubmitReport:
        """Submit a message as if `sender` (a sandbox mailbox or any address) sent it.

        Routes every recipient and stores the copies synchronously; returns where they went.
        """
        recipients = [to] if isinstance(to, str) else list(to)
        out = transport.Outgoing(
            subject=subject, body=body, to=[Recipient(a, a) for a in recipients]
        )
        return transport.submit(self.world, self.mail, sender, out)

    # -- TLS ---------------------------------------------------------------------
    def _tls(self) -> tuple[Path, Path]:
        ca_path = self.state_dir / CA_FILE
        server_path = self.state_dir / "server.pem"
        if not (ca_path.exists() and server_path.exists()):
            ca = trustme.CA(organization_name="coexist sandbox")
            cert = ca.issue_cert("127.0.0.1", "localhost", "::1")
            write_atomically(ca_path, ca.cert_pem.bytes())
            write_atomically(server_path, cert.private_key_and_cert_chain_pem.bytes())
        return ca_path, server_path

    # -- lifecycle ---------------------------------------------------------------
    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> Sandbox:
        """Serve; raises admin.SandboxError when the state directory is held by another
        process and admin.PortTaken when the port is."""
        self._hold_state_dir()
        try:
            return self._serve()
        except BaseException:
            if not self.serving():  # nothing to stop: let the next start have the directory
                self._lock.release()
            raise

    def _serve(self) -> Sandbox:
        _ca, server_path = self._tls()
        self._attach_app_certificates(self.world)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit this: without it uvicorn's separate header/body TLS writes
        # meet Nagle + delayed ACK and every small response waits ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((self.host, self._requested_port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise admin.PortTaken(self.host, self._requested_port) from exc
            raise
        self.port = sock.getsockname()[1]
        issuer = Issuer(self.world, self.base_url, lifetime_s=self.token_lifetime_s)
        self.ctx = SandboxContext(
            world=self.world,
            issuer=issuer,
            limiter=Limiter(self.world.settings),
            base_url=self.base_url,
            state_dir=self.state_dir,
        )
        self.ctx.extra[MAIL_STORE_KEY] = self.mail
        token = admin.new_token()
        self.ctx.extra[admin.TOKEN_KEY] = token
        config = uvicorn.Config(
            build_app(self.ctx),
            ssl_certfile=str(server_path),
            ssl_keyfile=str(server_path),
            ssl_version=ssl.PROTOCOL_TLS_SERVER,
            log_level="critical",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=30,
            timeout_graceful_shutdown=GRACEFUL_S,
            # Per-connection state for the faces (NTLM is bound to the TCP connection).
            http=ConnectionProtocol,
        )
        self._server = uvicorn.Server(config)
        # DNS on loopback (UDP+TCP): the port of the last run when free, so a project's
        # [dns] resolver stays valid across restarts (as the HTTPS port does).
        self.dns = dnsface.DnsFace(self.world, self.host).start(self._last_dns_port())
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("sandbox server failed to start")
            time.sleep(0.01)
        self.save()
        self.write_connection()
        admin.announce(self.state_dir, self.base_url, token)
        self._stop_saver.clear()
        self._saver = threading.Thread(target=self._saver_loop, name="sandbox-saver", daemon=True)
        self._saver.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving, save the state and close the stores.

        In-flight requests get uvicorn's graceful shutdown (GRACEFUL_S); `timeout` bounds the
        wait for the server thread, and the state is saved whether or not it ended by then
        (the save takes the world's lock, so it is a consistent snapshot either way).
        """
        deadline = time.monotonic() + timeout
        if self._server is not None:
            self._server.should_exit = True
        if self.dns is not None:
            self.dns.stop()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._stop_saver.set()
        if self._saver is not None:
            # A save in progress finishes first (it is one snapshot and one rename).
            self._saver.join(timeout=max(1.0, deadline - time.monotonic()))
        self.save()
        if self._mail is not None:
            self._mail.close()
            self._mail = None
        if self.ctx is not None and (pim := self.ctx.extra.pop(PIM_STORE_KEY, None)) is not None:
            pim.close()
        if self._lock.held:
            admin.withdraw(self.state_dir)
            self._lock.release()  # last: the state on disk is whole and final

    def serving(self) -> bool:
        """True while the server thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Sandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- connection --------------------------------------------------------------
    @property
    def connection(self) -> dict[str, Any]:
        tenants: dict[str, Any] = {}
        for key, tenant in self.world.tenants.items():
            app = tenant.apps[0]
            tenants[key] = {
                "tenant_id": tenant.tenant_id,
                "display_name": tenant.display_name,
                "authority": self.base_url,
                "graph_url": f"{self.base_url}/v1.0",
                "exo_url": f"{self.base_url}/adminapi/beta/{tenant.tenant_id}/InvokeCommand",
                "client_id": app.client_id,
                "client_secret": app.client_secret,
                "certificate_file": str((self.state_dir / f"{key}-app.pem").resolve()),
                "initial_domain": tenant.initial_domain,
                "domains": [d.name for d in tenant.domains],
                # What the organisation is (m365, exchange2016, exchange2019, workmail) and,
                # for the last three, where its EWS face answers (ews/orgs.py).
                "kind": tenant.kind,
                "ews_url": f"{self.base_url}{ews.EWS_PATH}",
                "autodiscover_url": f"{self.base_url}/autodiscover/autodiscover.xml",
            }
            if tenant.kind == "workmail":  # its AWS admin API: endpoint, keys, organisation id
                tenants[key]["workmail"] = workmail.connection_info(tenant, self.base_url)
        return {
            # The DNS face: `[dns] resolver = "<resolver>"` sends check-dns to it.
            **(
                {
                    "dns": {
                        "host": self.dns.host,
                        "port": self.dns.port,
                        "resolver": self.dns.address,
                    }
                }
                if self.dns
                else {}
            ),
            "ca_file": str((self.state_dir / CA_FILE).resolve()),
            "profile": self.world.settings.profile,
            "base_url": self.base_url,
            "tenants": tenants,
        }

    def _last_dns_port(self) -> int:
        try:
            port = json.loads((self.state_dir / CONNECTION_FILE).read_text())["dns"]["port"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        return port if isinstance(port, int) and 0 < port < 65536 else 0

    def write_connection(self) -> Path:
        path = self.state_dir / CONNECTION_FILE
        write_atomically(path, (json.dumps(self.connection, indent=2) + "\n").encode())
        return path


# mallopt(3) parameters (glibc <malloc.h>).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Let this process reuse the memory of freed large buffers instead of giving it back.

    Mail items cross the sandbox as megabytes of base64, several copies per request. With
    glibc's defaults each such buffer came from fresh pages (mmap, or a heap trimmed after
    every free): ~66,000 page faults a second and 40% of the sandbox's CPU in the kernel
    while it moved a 2 GB mailbox (measured, bench/graph_mover_bench.py). Buffers up to
    32 MB (mallopt(3)'s maximum M_MMAP_THRESHOLD on 64-bit) now come from the heap, which
    keeps up to 256 MB free. For a process that is only the sandbox (`sandbox serve`);
    False where the C library has no mallopt (not glibc).
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)) and bool(
        mallopt(_M_TRIM_THRESHOLD, 256 * 1024 * 1024)
    )


class _Life:
    """The sandbox's start-up, run in a thread of its own so that the main thread only waits
    for a signal: build (seed or load), start, announce."""

    def __init__(
        self,
        make: Callable[[], Sandbox],
        ready: Callable[[Sandbox], None],
        stopping: Callable[[], bool],
    ) -> None:
        self._make = make
        self._ready = ready
        self._stopping = stopping
        self.sandbox: Sandbox | None = None
        self.error: BaseException | None = None
        self.started = threading.Event()  # start-up is over: serving, failed, or skipped
        self._thread = threading.Thread(target=self._run, name="sandbox-start", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            sandbox = self._make()
            if self._stopping():
                return  # signalled while seeding: nothing was served, nothing to save
            self.sandbox = sandbox  # before start(): a half-started sandbox is stopped too
            sandbox.start()
            if not self._stopping():
                self._ready(sandbox)
        except BaseException as exc:  # reported by the main thread
            self.error = exc
        finally:
            self.started.set()

    def over(self) -> bool:
        """Start-up failed, or the server stopped on its own."""
        if not self.started.is_set():
            return False
        return self.error is not None or self.sandbox is None or not self.sandbox.serving()

    def stop(self, deadline: float) -> None:
        """Stop and save once start-up is over (start-up is never interrupted half-way)."""
        if not self.started.wait(max(0.0, deadline - time.monotonic())):
            return
        if self.sandbox is not None:
            self.sandbox.stop(timeout=max(0.0, deadline - time.monotonic()))


def _exit(code: int, why: str) -> NoReturn:
    """End the process now, without waiting for threads that did not finish."""
    print(f"sandbox: {why}", file=sys.stderr)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def run_forever(make: Callable[[], Sandbox], ready: Callable[[Sandbox], None]) -> NoReturn:
    """Build, start and announce a sandbox, and serve it until SIGINT or SIGTERM, then end the
    process (`coexist sandbox serve`, which promises to stop within 5 s of either, saving its
    state).

    The main thread only waits for the signal; the sandbox is built and started in a thread
    of its own, so a signal is noticed at once whatever the sandbox is doing (seeding,
    starting, serving a long request) and never interrupts that work half-way. (It used to
    raise KeyboardInterrupt in the main thread: raised inside `Thread.join`, Python 3.11
    marks the still-running server thread as stopped, so the stop did not wait for the
    server, closed the stores under it and let the interpreter finalise while uvicorn was
    still shutting down; SIGTERM was not handled at all and lost the last second of state.)

    On the signal: the server stops (SERVER_STOP_S), the state is saved, the process ends
    (exit status 0). STOP_DEADLINE_S after the signal, anything still running is cut short
    (exit status 1). Before this
    function installs its handlers (interpreter start, imports) the interpreter's defaults
    end the process at once; there is no state to save yet.
    """
    signals: list[int] = []  # appended by the handler: no lock, so safe at any moment

    def on_signal(signum: int, _frame: object) -> None:
        signals.append(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS}
    try:
        keep_freed_memory()
        life = _Life(make, ready, stopping=lambda: bool(signals))
        while not signals and not life.over():
            time.sleep(_POLL_S)
        signalled = time.monotonic()
        stopper = threading.Thread(
            target=life.stop, args=(signalled + SERVER_STOP_S,), name="sandbox-stop", daemon=True
        )
        stopper.start()
        stopper.join(max(0.0, signalled + STOP_DEADLINE_S - time.monotonic()))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if not life.started.is_set():
        # Every file start-up writes is replaced atomically, so cutting it short is safe.
        _exit(1, "stopped while starting, before serving anything")
    if stopper.is_alive():
        _exit(1, f"not stopped within {STOP_DEADLINE_S:g} s; state as last saved")
    if life.error is not None:
        raise life.error
    # Stopped and saved. Ending here instead of returning skips finalising an interpreter
    # that imported the whole product - 0.5-1 s on a loaded machine (measured), which the
    # 5 s promise cannot spare - and never waits for (or finalises under) a thread a request
    # handler may still hold.
    _exit(0, "stopped; state saved")


__all__ = ["CONNECTION_FILE", "Sandbox", "profile_settings", "run_forever"]
