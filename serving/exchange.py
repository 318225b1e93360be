"""`Exchange`: one request's way through the proxy, from the backend picked to the response relayed.

The `Forwarder` (serving/proxy.py) makes one per request head and the two connections drive it
with callbacks: the client's (`serving.http_connection`) with the request body, the backend's
(`serving.upstream`) with the response. It holds what a retry needs (the backends tried, whether
some of the body left already) and streams each side's chunks to the other as they come, so no
body is buffered; when the exchange ends it settles with the monitor (in-flight, latency, the
backend judged) and either hands the client connection on to its next request or breaks it off.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Protocol

from rl_lb.retry_budget import RetryBudget
from serving.backend import Backend
from serving.http_connection import ClientConnection
from serving.http_message import Request, request_head, response_head
from serving.monitor import Monitor
from serving.tunnel import Tunnels, open_tunnel, upgrade_headers
from serving.upstream_conn import UpstreamConnection

__all__ = ["IDEMPOTENT", "Exchange", "ExchangeHost", "PathCounters"]

log = logging.getLogger("rl_lb.serving.proxy")
"""The request path's logger: the name the proxy's log settings know (`serving.proxy`'s)."""

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
"""Methods whose failed attempt is retried on another backend (before any body left)."""
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY = (204, 304)
_INLINE = 1 << 14
"""Response head and first body chunk leave in one write below this size (one segment)."""


class PathCounters(Protocol):
    """The request path's counters an exchange adds to (`ProxyStats`, serving/proxy.py)."""

    retries: int
    errors: Counter[str]


class ExchangeHost(Protocol):
    """What an exchange uses of the `Forwarder` that made it (serving/proxy.py): the forwarder
    imports this module to make exchanges, so this one names what it needs instead of importing
    that one back."""

    monitor: Monitor
    budget: RetryBudget
    tunnels: Tunnels
    retries: int
    max_body: int
    total_timeout: float
    preserve_host: bool
    proto: bytes
    stopping: bool

    @property
    def stats(self) -> PathCounters: ...  # read-only: `ProxyStats` counts more than this

    def pick(self, tried: list[Backend]) -> Backend | None: ...

    def unavailable(self, conn: ClientConnection) -> None: ...

    def fail(
        self,
        conn: ClientConnection,
        status: int,
        reason: str,
        message: str,
        backend: str | None = None,
        *,
        close: bool = False,
    ) -> None: ...


class Exchange:
    """One request's way through the proxy: attempts on backends, then the response relayed."""

    __slots__ = (
        "backend",
        "body_bytes",
        "body_started",
        "chunked_out",
        "close_after",
        "conn",
        "done",
        "forwarder",
        "head",
        "headed",
        "request",
        "sent",
        "started",
        "status",
        "tried",
        "up",
    )

    def __init__(self, forwarder: ExchangeHost, conn: ClientConnection, request: Request) -> None:
        self.forwarder = forwarder
        self.conn = conn
        self.request = request
        request.sink = self
        self.tried: list[Backend] = []
        self.backend: Backend | None = None
        self.up: UpstreamConnection | None = None
        self.started = 0.0
        self.body_bytes = 0
        self.body_started = False
        """Some of the body went to a backend: the request can no longer be replayed."""
        self.sent = not request.has_body
        """The whole request went to the backend."""
        self.head: bytes | None = None
        """The response head, held back to leave with the first body bytes."""
        self.headed = False
        self.status = 0
        self.chunked_out = False
        self.close_after = False
        self.done = False

    # -- attempts ---------------------------------------------------------------------------

    def attempt(self, backend: Backend | None) -> None:
        if backend is None:
            self.done = True
            self.forwarder.unavailable(self.conn)
            return
        self.backend = backend
        self.started = self.forwarder.monitor.begin(backend)
        conn = backend.pool.acquire(self)
        if conn is not None:
            self.on_connected(conn)

    def on_connected(self, up: UpstreamConnection) -> None:
        backend = self.backend
        if self.done or backend is None:
            up.pool.release(up, reusable=True)
            return
        self.up = up
        request = self.request
        forwarder = self.forwarder
        pool = backend.pool
        head = request_head(
            request,
            pool.prefix,
            pool.netloc,
            self.conn.peer,
            forwarder.preserve_host,
            forwarder.proto,
        )
        deadline = self.started + forwarder.total_timeout
        up.start(self, head, request.method == b"HEAD", deadline)
        if self.conn.write_paused:
            up.pause_reading(True)
        if request.has_body and not self.sent:
            if request.expect_continue and not request.buffered and not request.complete:
                self.conn.write(_CONTINUE)
            self.conn.attach(request)

    def on_connect_failed(self, reason: str, message: str) -> None:
        if not self.done:
            self._attempt_failed(504 if reason == "connect-timeout" else 502, reason, message, True)

    def _attempt_failed(self, status: int, reason: str, message: str, retriable: bool) -> None:
        forwarder = self.forwarder
        monitor = forwarder.monitor
        backend = self.backend
        assert backend is not None
        monitor.answered(backend, self.started, 0)
        monitor.end(backend)
        self.up = None
        request = self.request
        log.debug("%s %s via %s failed: %s", request.method, request.target, backend.url, message)
        tried = self.tried
        tried.append(backend)
        if (
            retriable
            and len(tried) <= forwarder.retries
            and request.method in IDEMPOTENT
            and not self.body_started
        ):
            next_backend = forwarder.pick(tried)
            if next_backend is not None and forwarder.budget.try_retry():
                forwarder.stats.retries += 1
                self.conn.detach(request)
                self.attempt(next_backend)
                return
        self.done = True
        forwarder.fail(self.conn, status, reason, f"{reason}: {message}", backend=backend.url)

    # -- the request body (from the client connection) --------------------------------------

    def on_request_body(self, data: bytes) -> None:
        up = self.up
        if self.done or up is None:
            return
        self.body_bytes += len(data)
        limit = self.forwarder.max_body
        if limit and self.body_bytes > limit:
            self._client_failed(413, "body-too-large", f"body over {limit} bytes")
            return
        self.body_started = True
        if self.request.chunked:
            up.send(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            up.send(data)
        up.touch()

    def on_request_end(self) -> None:
        self.sent = True
        if self.request.chunked and self.up is not None and not self.done:
            up = self.up
            up.send(b"0\r\n\r\n")

    def on_request_error(self, message: str) -> None:
        """The client left, or its body broke off or was malformed."""
        if self.done:
            return
        if self.headed:
            self._finish(broken=True, by_backend=False)
            return
        self._client_failed(400, "client-body", message)

    def _client_failed(self, status: int, reason: str, message: str) -> None:
        """The exchange ends for the client's reasons: nothing is held against the backend."""
        self.done = True
        backend = self.backend
        monitor = self.forwarder.monitor
        if backend is not None:
            if self.up is None:
                backend.pool.cancel(self)
            else:
                backend.pool.release(self.up, reusable=False)
                self.up = None
            if self.headed:
                monitor.judge(backend, self.status >= 500)
                monitor.end(backend)
            else:
                monitor.abandon(backend)
                monitor.end(backend)
        if self.conn.transport is not None and not self.headed:
            self.forwarder.fail(self.conn, status, reason, message, close=True)
        else:
            self.conn.abort()

    # -- flow control -----------------------------------------------------------------------

    def on_client_paused(self, paused: bool) -> None:
        if self.up is not None:
            self.up.pause_reading(paused)

    def on_upstream_paused(self, paused: bool) -> None:
        self.conn.pause_reading(paused)

    # -- the response (from the upstream connection) ----------------------------------------

    def on_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], version: str
    ) -> None:
        backend = self.backend
        assert backend is not None
        self.forwarder.monitor.answered(backend, self.started, status, judged=False)
        self.headed = True
        self.status = status
        self.request.status = status
        out, length = response_head(status, reason, headers, version)
        request = self.request
        if status == 101:  # the head leaves with the tunnel (`on_upgrade`)
            self.head = b"".join(out) + upgrade_headers(headers)
            return
        if not length and request.method != b"HEAD" and status not in _NO_BODY:
            if request.version == "1.1":
                self.chunked_out = True
                out.append(b"Transfer-Encoding: chunked\r\n")
            else:
                self.close_after = True
        if self.close_after or not request.keep_alive or self.forwarder.stopping:
            out.append(b"Connection: close\r\n")
        elif request.version == "1.0":
            out.append(b"Connection: keep-alive\r\n")
        out.append(b"\r\n")
        self.head = b"".join(out)

    def on_upgrade(self, rest: bytes) -> bool:
        """The backend switched protocols: the exchange is over for the balancer (in-flight
        down, the time to the 101 was its latency sample) and a tunnel carries both
        connections on (`rest`: the backend's first bytes after the 101)."""
        up, backend, head = self.up, self.backend, self.head
        if self.request.upgrade is None or self.done or up is None or backend is None:
            return False
        self.done = True
        self.up = self.head = None
        monitor = self.forwarder.monitor
        monitor.judge(backend, False)
        monitor.end(backend)
        open_tunnel(self.forwarder.tunnels, self.conn, up, (head or b"") + rest)
        return True

    def on_body(self, data: bytes) -> None:
        if self.chunked_out:
            data = b"%x\r\n%b\r\n" % (len(data), data)
        head = self.head
        if head is None:
            self.conn.write(data)
        elif len(data) < _INLINE:
            self.head = None
            self.conn.write(head + data)
        else:
            self.head = None
            self.conn.write(head)
            self.conn.write(data)

    def flush(self) -> None:
        """The head goes out at the latest when the backend's bytes at hand are handled."""
        if self.head is not None:
            head, self.head = self.head, None
            self.conn.write(head)

    def on_end(self) -> None:
        if self.chunked_out:
            self.on_body(b"")
        self.flush()
        self._finish(broken=False, by_backend=False)

    def on_upstream_error(self, reason: str, message: str) -> None:
        if self.done:
            return
        self.up = None
        if not self.headed and reason == "upstream-timeout" and not self.sent:
            # The backend was waiting for the rest of the body: the client is the slow one.
            msg = "the request body did not arrive in time"
            self._client_failed(408, "client-timeout", msg)
            return
        if not self.headed:
            status = 504 if reason == "upstream-timeout" else 502
            self._attempt_failed(status, reason, message, reason == "upstream-reset")
            return
        self.forwarder.stats.errors["upstream-broke"] += 1
        assert self.backend is not None
        log.debug("response from %s broke off: %s", self.backend.url, message)
        self._finish(broken=True, by_backend=True)

    def _finish(self, broken: bool, by_backend: bool) -> None:
        """The response is over (`broken`: cut short, by the backend or the client)."""
        self.done = True
        backend = self.backend
        assert backend is not None
        up, self.up = self.up, None
        if up is not None:
            up.pool.release(up, reusable=not broken and up.keep_alive and up.done and self.sent)
        monitor = self.forwarder.monitor
        monitor.judge(backend, by_backend or self.status >= 500)
        monitor.end(backend)
        if broken:
            self.conn.abort()
        else:
            self.conn.finish(keep_alive=not self.close_after)
