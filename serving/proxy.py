"""The request path: pick a backend, stream the request there and the response back.

Nothing here buffers a body: request chunks go to the backend as the client sends them and
response chunks to the client as the backend sends them, so memory stays flat whatever the size
(a full write buffer on one side pauses reading on the other). The path is what gets profiled
against nginx, so it is made of callbacks on two `asyncio.Protocol`s (`serving.http_connection`
for clients, `serving.upstream` for backends) joined by one `Exchange` (`serving.exchange`) per
request: no task, future, timer or header dictionary per request, and no work that the control
loop can do instead. Here: the `Forwarder` that admits each request head and picks its backends,
and the `ProxyStats` counters of the path.
"""

from __future__ import annotations

import bisect
import math
import random
from collections import Counter

from rl_lb.retry_budget import RetryBudget
from rl_lb.types import NoBackendAvailable
from serving.backend import LATENCY_BUCKETS, Backend
from serving.config import ProxyConfig
from serving.controller import Controller
from serving.exchange import Exchange
from serving.http_connection import ClientConnection
from serving.http_message import Request, error_response, origin_form
from serving.monitor import Monitor
from serving.tunnel import Tunnels

__all__ = ["Forwarder", "ProxyStats"]


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
