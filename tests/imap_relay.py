"""A TLS relay in front of the test Dovecot that ends a session the way Exchange Online
does when the OAuth token it logged in with expires ("* BYE Session invalidated -
AccessTokenExpired"), at a chosen point: after the server has appended (its tagged
`OK [APPENDUID ...]`), so the APPEND landed and the client never hears it did — the
write whose outcome is unknown. Bytes are relayed as they are otherwise; the server is the
real Dovecot. Dovecot itself never ends a session at a token's expiry (it checks a token at
login only), hence this relay."""

from __future__ import annotations

import socket
import ssl
import threading
from contextlib import suppress
from pathlib import Path

import trustme

EXPIRED_BYE = b"* BYE Session invalidated - AccessTokenExpired\r\n"


class ByeRelay:
    """Relays IMAP over TLS to `upstream`; `cut_at = n`: the n-th APPEND answer the server
    sends reaches the client as EXPIRED_BYE instead, and that connection closes."""

    def __init__(self, root: Path, host: str, port: int, ca_file: Path) -> None:
        self.upstream = (host, port)
        ca = trustme.CA(organization_name="bye relay")
        self.ca_file = root / "relay-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ca.issue_cert("127.0.0.1").configure_cert(self._server_tls)
        self._client_tls = ssl.create_default_context(cafile=str(ca_file))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.cut_at: int | None = None
        self.appends = 0  # APPEND answers the server sent through the relay
        self.cut = 0  # sessions ended with EXPIRED_BYE
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        with suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            client = self._server_tls.wrap_socket(conn, server_side=True)
            raw = socket.create_connection(self.upstream)
            server = self._client_tls.wrap_socket(raw, server_hostname=self.upstream[0])
        except OSError:
            with suppress(OSError):
                conn.close()
            return
        threading.Thread(target=self._up, args=(client, server), daemon=True).start()
        try:
            while data := server.recv(65536):
                if b"[APPENDUID" in data and self._cutting():
                    client.sendall(EXPIRED_BYE)
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, server)

    def _cutting(self) -> bool:
        with self._lock:
            self.appends += 1
            if self.cut_at is not None and self.appends == self.cut_at:
                self.cut += 1
                return True
            return False

    def _up(self, client: ssl.SSLSocket, server: ssl.SSLSocket) -> None:
        try:
            while data := client.recv(65536):
                server.sendall(data)
        except OSError:
            pass
        finally:
            _close(client, server)


def _close(*socks: socket.socket) -> None:
    for s in socks:
        with suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with suppress(OSError):
            s.close()
