"""An OAuth 2.0 token endpoint over HTTPS for the IMAP XOAUTH2 tests (Google's shape).

It answers RFC 6749 section 6 refresh requests as https://oauth2.googleapis.com/token does
(form POST of grant_type=refresh_token, client_id, client_secret, refresh_token; JSON
{"access_token", "expires_in", "scope", "token_type": "Bearer"}; a refusal {"error":
"invalid_grant" | "invalid_client", "error_description"} with 400/401), and mints each
access token with the test Dovecot's key (`DovecotServer.oauth_token`), so the token it
gives is one the Dovecot checks and accepts for that user: the pair behaves as Gmail's
token endpoint and IMAP server do. `stale`: that many answers carry a token whose JWT has
already expired though `expires_in` says an hour (a token revoked or refused before its
time), to prove that a refused token is replaced once.
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs

import trustme

# (login, lifetime in seconds) -> an access token the IMAP server accepts for that login
Minter = Callable[[str, int], str]


class TokenEndpoint:
    """A running token endpoint (`start`/`stop`, or a context manager)."""

    def __init__(
        self, root: Path, mint: Minter, client_id: str, client_secret: str, lifetime_s: int = 60
    ) -> None:
        self.mint = mint
        self.client_id = client_id
        self.client_secret = client_secret
        self.lifetime_s = lifetime_s
        self.refresh_tokens: dict[str, str] = {}  # refresh token -> login
        self.stale = 0
        self.issued: list[str] = []  # every access token given, in order
        self.requests: list[dict[str, str]] = []  # every request's form, secrets included
        ca = trustme.CA(organization_name="token endpoint")
        cert = ca.issue_cert("127.0.0.1")
        self.ca_file = root / "token-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(context)
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                form = {
                    k: v[0]
                    for k, v in parse_qs(self.rfile.read(length).decode()).items()
                }  # fmt: skip
                status, body = endpoint.answer(self.path, form)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}/token"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, form: dict[str, str]) -> tuple[int, dict[str, object]]:
        self.requests.append(form)
        if path != "/token":
            return 404, {"error": "not_found"}
        if (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            return 401, {"error": "invalid_client", "error_description": "Unauthorized"}
        if form.get("grant_type") != "refresh_token":
            return 400, {"error": "unsupported_grant_type", "error_description": "Invalid"}
        login = self.refresh_tokens.get(form.get("refresh_token", ""))
        if login is None:
            return 400, {"error": "invalid_grant", "error_description": "Bad Request"}
        lifetime = self.lifetime_s
        if self.stale:
            self.stale -= 1
            lifetime = -60
        token = self.mint(login, lifetime)
        self.issued.append(token)
        return 200, {
            "access_token": token,
            "expires_in": 3599 if lifetime < 0 else lifetime,
            "scope": "https://mail.google.com/",
            "token_type": "Bearer",
        }

    def start(self) -> TokenEndpoint:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> TokenEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
