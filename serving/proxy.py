"""The request path: pick a backend, stream the request there and the response back.

Nothing here buffers a body: request chunks go to the backend as the client sends them and
response chunks to the client as the backend sends them, so memory stays flat whatever the size
(a full write buffer on one side pauses reading on the other). The path is what gets profiled
against nginx, so it is made of callbacks on two `asyncio.Protocol`s (`serving.http_server` for
clients, `serving.upstream` for backends) joined by one `Exchange` per request: no task, future,
timer or header dictionary per request, and no work that the control loop can do instead.
"""

from __future__ import annotations

import bisect
import logging
import math
import random
from collections import Counter

from rl_lb.retry_budget import RetryBudget
from rl_lb.types import NoBackendAvailable
from serving.config import ProxyConfig
from serving.controller import Controller
from serving.http_message import (
    Request,
    error_response,
    origin_form,
    request_head,
    response_head,
)
from serving.http_server import ClientConnection
from serving.monitor import LATENCY_BUCKETS, Backend, Monitor
from serving.tunnel import Tunnels, open_tunnel, upgrade_headers
from serving.upstream import UpstreamConnection

__all__ = ["IDEMPOTENT", "Exchange", "Forwarder", "ProxyStats"]

log = logging.getLogger("rl_lb.serving.proxy")

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_NO_BODY = (204, 304)
_INLINE = 1 << 14
"""Response head and first body chunk leave in one write below this size (one segment)."""


class ProxyStats:
    """Counters of the request path that are not per backend (exported by `serving.prom`)."""

    def __init__(self) -> None:
        self.retries = 0
        self.errors: Counter[str] = Counter()
        """Responses the proxy produced itself, by reason (the X-RL-LB-Error value)."""
        self.responses: Counter[str] = Counter()
        """What clients got, by status class (`2xx`…) or `broken` (cut off mid-response)."""
        self.duration_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.duration_sum = 0.0
        """Whole exchanges as the client sees them: head received to response complete."""

    def answered(self, status: int, seconds: float) -> None:
        """One client exchange ended (`HttpServer.on_answered`)."""
        self.responses[f"{status // 100}xx" if status else "broken"] += 1
        self.duration_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.duration_sum += seconds


class Forwarder:
    """Turns each request head into an `Exchange` (or a refusal); the server's handler."""

    def __init__(
        self, config: ProxyConfig, monitor: Monitor, controller: Controller, stats: ProxyStats
    ) -> None:
        self.monitor = monitor
        self.controller = controller
        self.stats = stats
        self.max_body = config.max_body_bytes
        self.retries = config.control.retries.retries
        self.preserve_host = config.preserve_host
        self.total_timeout = config.total_timeout_s or math.inf
        self.budget = RetryBudget(config.control.retries, monitor.clock)
        self.retry_after = str(max(1, math.ceil(config.control_interval_s)))
        self.stopping = False
        self.proto = b"https" if config.tls_cert else b"http"
        self.upgrades = frozenset(u.encode() for u in config.allowed_upgrades)
        self.tunnels = Tunnels(config.tunnel_idle_timeout_s, config.tunnel_max_duration_s)

    def fail(
        self,
        conn: ClientConnection,
        status: int,
        reason: str,
        message: str,
        backend: str | None = None,
        *,
        close: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Answer with an error of the proxy's own (counted by reason)."""
        self.stats.errors[reason] += 1
        response = error_response(status, reason, message, backend, close=close, extra=extra)
        conn.respond(response, keep_alive=not close)

    def __call__(self, conn: ClientConnection, request: Request) -> None:
        method = request.method
        if method == b"CONNECT":
            msg = "CONNECT is refused: rl-lb is a reverse proxy"
            self.fail(conn, 405, "connect", msg, close=True)
            return
        if request.target[:1] != b"/":
            own = origin_form(request.target, conn.sockname)
            if own is None:
                msg = "requests for other hosts are refused"
                self.fail(conn, 400, "absolute-form", msg, close=True)
                return
            request.target = own
        length = request.length
        if self.max_body and length is not None and length > self.max_body:
            msg = f"body over {self.max_body} bytes"
            self.fail(conn, 413, "body-too-large", msg, close=True)
            return
        if request.upgrade is not None and not self._allowed(request.upgrade):
            request.upgrade = None  # forwarded as a plain request, the Upgrade dropped
        self.budget.request()
        Exchange(self, conn, request).attempt(self.pick(()))

    def _allowed(self, upgrade: bytes) -> bool:
        return all(p.strip().lower() in self.upgrades for p in upgrade.split(b","))

    def pick(self, tried: tuple[Backend, ...] | list[Backend]) -> Backend | None:
        monitor = self.monitor
        try:
            backend = monitor.backends[self.controller.picker.pick(monitor.view)]
        except NoBackendAvailable:
            return None
        if backend not in tried:
            return backend
        available = monitor.view.available
        others = [b for b in monitor.backends if available[b.index] and b not in tried]
        return random.choice(others) if others else None

    def unavailable(self, conn: ClientConnection) -> None:
        metrics = self.monitor.metrics
        busy = any(metrics.available[b.index] and not b.draining for b in self.monitor.backends)
        reason, message = (
            ("overloaded", "every live backend is at its in-flight limit")
            if busy
            else ("no-backend", "no live backend")
        )
        self.fail(conn, 503, reason, message, extra={"Retry-After": self.retry_after})


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

    def __init__(self, forwarder: Forwarder, conn: ClientConnection, request: Request) -> None:
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
