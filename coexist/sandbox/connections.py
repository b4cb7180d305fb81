"""Per-TCP-connection state for the faces (NTLM binds its authentication to the connection).

IIS keeps Windows (NTLM) authentication on the TCP connection that made the handshake: later
requests on that keep-alive connection carry no Authorization header, and a new connection
starts unauthenticated. An ASGI request scope carries only the client's (address, port), which
a new connection may reuse at once (a SIGKILLed client's sockets close with RST, leaving no
TIME_WAIT), so state keyed by it leaks into a stranger's connection. The server's HTTP
protocol object lives exactly as long as its connection; `ConnectionProtocol` (uvicorn's h11
protocol, chosen through the public `Config(http=...)` setting) gives each one a `Connection`,
hands it to the app in the request scope's `extensions` (the ASGI spec's place for server
extensions), and empties it when the connection is lost.
"""

from __future__ import annotations

import threading
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol

EXTENSION = "coexist.connection"


class Connection:
    """State that lives as long as one TCP connection (`state` is emptied when it closes)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.closed = False
        self.lock = threading.Lock()  # handlers run in the thread pool

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.state.clear()


def connection_of(scope: Any) -> Connection | None:
    """The request's connection, or None when the server did not provide one."""
    found = (scope.get("extensions") or {}).get(EXTENSION)
    return found if isinstance(found, Connection) else None


class ConnectionProtocol(H11Protocol):
    """uvicorn's h11 HTTP protocol with a `Connection` per TCP connection.

    uvicorn reads `self.app` for each request (h11_impl.py `handle_events`), so wrapping it
    here puts this connection into every request's scope.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = Connection()
        app = self.app
        connection = self.connection

        async def tagged(scope: Any, receive: Any, send: Any) -> None:
            extensions = scope.setdefault("extensions", {})
            extensions[EXTENSION] = connection
            await app(scope, receive, send)

        self.app = tagged

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            super().connection_lost(exc)
        finally:
            self.connection.close()
