"""The client side of the request path: what one listening socket's HTTP/1.1 connections share.

Each accepted connection is a `ClientConnection` (serving/http_connection.py, parsed by llhttp);
`HttpServer` is their protocol factory and holds what they share: the request handler
(`Forwarder`), the limits (max connections, head size, a deadline for each request head), the
registry of open connections that stopping and `sweep` walk, and the ALPN hand-offs to HTTP/2.
No task, future or timer is made per request; deadlines are checked by `HttpServer.sweep` a few
times a second.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

from serving.http_connection import ClientConnection
from serving.http_message import Request

__all__ = ["HttpServer"]


class HttpServer:
    """What the connections of one listening socket share: limits, handler, registry."""

    def __init__(
        self,
        handler: Callable[[ClientConnection, Request], None],
        errors: Counter[str],
        *,
        max_connections: int,
        max_header_bytes: int,
        header_timeout: float,
        on_answered: Callable[[int, float], None] | None = None,
    ) -> None:
        self.handler = handler
        self.errors = errors
        self.max_connections = max_connections
        self.max_header_bytes = max_header_bytes
        self.max_head_bytes = 8 * max_header_bytes
        self.header_timeout = header_timeout
        self.on_answered = on_answered
        self.loop = asyncio.get_running_loop()
        self.connections: set[ClientConnection] = set()
        self.stopping = False
        self.alpn_handoff: dict[str, Callable[[asyncio.Transport], asyncio.Protocol]] = {}
        """ALPN protocol (`h2`) → the protocol factory a TLS connection that picked it goes to
        (serving.tls offers `h2` only when it is registered here)."""

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def answered(self, request: Request) -> None:
        """A client's exchange is over: its status (0: broken off) and time, to `on_answered`."""
        if self.on_answered is not None:
            self.on_answered(request.status, self.loop.time() - request.received_at)

    @property
    def busy(self) -> bool:
        """Some connection still has a request to answer."""
        return any(c.queue for c in self.connections)

    def sweep(self, now: float) -> None:
        """Close the connections past their deadline (request head, or lingering)."""
        for conn in [c for c in self.connections if 0.0 < c.deadline < now]:
            conn.close()

    def stop(self) -> None:
        """No new requests: idle connections close now, busy ones after their response."""
        self.stopping = True
        for conn in list(self.connections):
            if not conn.queue:
                conn.close()

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.close()
