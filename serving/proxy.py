"""The request path: pick a backend, stream the request there and the response back.

Nothing here buffers a body: request chunks go to the backend as the client sends them and
response chunks to the client as the backend sends them, so memory stays flat whatever the
size (aiohttp's flow control pauses whichever side runs ahead). The path is kept lean, since
it is what gets profiled against nginx: one connection pool per backend, no cookie jar, no
automatic headers or decompression, and no work that the control loop can do instead.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from rl_lb.types import Clock, NoBackendAvailable
from serving.config import ProxyConfig
from serving.controller import Controller
from serving.monitor import Backend, Monitor

__all__ = ["HOP_BY_HOP", "IDEMPOTENT", "Forwarder", "LimitedServer", "ProxyStats", "RetryBudget"]

log = logging.getLogger("rl_lb.serving.proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "transfer-encoding",
        "upgrade",
        "proxy-authenticate",
        "proxy-authorization",
        "trailer",
    }
)
"""RFC 9110 §7.6.1: meaningful for one connection only, never forwarded."""
_NOT_FORWARDED = HOP_BY_HOP | {"expect", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
"""Also rewritten by the proxy itself (Expect: 100-continue is answered here)."""
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class RetryBudget:
    """Linkerd/Finagle retry budget: retries may add `ratio` of the recent requests.

    Over a sliding `ttl_s` window, a retry is allowed while retries < ratio × requests +
    min_per_s × ttl_s; the floor keeps a quiet proxy able to retry at all. A budget rather than
    a per-request limit because retries multiply load exactly when backends are failing.
    """

    def __init__(
        self, ratio: float, clock: Clock, *, ttl_s: float = 10.0, min_per_s: float = 10.0
    ) -> None:
        self.ratio = ratio
        self._clock = clock
        self._slots = 10
        self._slot_len = ttl_s / self._slots
        self._floor = min_per_s * ttl_s
        self._ids = [-1] * self._slots
        self._requests = [0] * self._slots
        self._retries = [0] * self._slots

    def _slot(self) -> int:
        s = int(self._clock() / self._slot_len)
        r = s % self._slots
        if self._ids[r] != s:
            self._ids[r] = s
            self._requests[r] = 0
            self._retries[r] = 0
        return r

    def request(self) -> None:
        self._requests[self._slot()] += 1

    def try_retry(self) -> bool:
        """Take one retry from the budget if there is room."""
        r = self._slot()
        oldest = self._ids[r] - self._slots
        live = [k for k in range(self._slots) if self._ids[k] > oldest]
        requests = sum(self._requests[k] for k in live)
        retries = sum(self._retries[k] for k in live)
        if retries + 1 > self.ratio * requests + self._floor:
            return False
        self._retries[r] += 1
        return True


class ProxyStats:
    """Counters of the request path that are not per backend (exported by `serving.prom`)."""

    def __init__(self) -> None:
        self.retries = 0
        self.errors: Counter[str] = Counter()
        """Responses the proxy produced itself, by reason (the X-RL-LB-Error value)."""


class _BodyTooLargeError(Exception):
    pass


class _Body:
    """The client's request body as an async iterable, re-iterable until a chunk is taken.

    aiohttp asks for a fresh iterator per attempt, so a connection that failed before any chunk
    was read can be retried with the same body; `consumed` says whether that is still possible.
    """

    __slots__ = ("client_error", "consumed", "limit", "request", "too_large")

    def __init__(self, request: web.BaseRequest, limit: int) -> None:
        self.request = request
        self.limit = limit
        self.consumed = False
        self.too_large = False
        self.client_error = False

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._chunks()

    async def _chunks(self) -> AsyncIterator[bytes]:
        request = self.request
        if request.headers.get("Expect", "").lower() == "100-continue":
            await request.writer.write(_CONTINUE)
        self.consumed = True
        content = request.content
        limit = self.limit
        total = 0
        try:
            while chunk := await content.readany():
                total += len(chunk)
                if limit and total > limit:
                    self.too_large = True
                    raise _BodyTooLargeError
                yield chunk
        except _BodyTooLargeError:
            raise
        except Exception:
            self.client_error = True
            raise


def _error(
    status: int,
    reason: str,
    message: str,
    backend: str | None = None,
    *,
    close: bool = False,
    extra: dict[str, str] | None = None,
) -> web.Response:
    body = json.dumps({"error": message, "status": status, "backend": backend}).encode()
    headers = {"Content-Type": "application/json", "X-RL-LB-Error": reason, **(extra or {})}
    response = web.Response(status=status, body=body, headers=headers)
    if close:
        response.force_close()
    return response


def _classify(error: BaseException) -> tuple[int, str, bool]:
    """(status, reason, retriable) for a failed exchange: only failures to connect or
    connections that broke are retriable (the request may be replayed if idempotent)."""
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return 504, "connect-timeout", True
    if isinstance(error, TimeoutError):
        return 504, "upstream-timeout", False
    if isinstance(error, aiohttp.ClientConnectorError):
        return 502, "connect-failed", True
    if isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return 502, "upstream-reset", True
    return 502, "upstream-error", False


class Forwarder:
    """The proxy's request handler (`aiohttp.web.Server(Forwarder(...))`)."""

    def __init__(
        self, config: ProxyConfig, monitor: Monitor, controller: Controller, stats: ProxyStats
    ) -> None:
        self.monitor = monitor
        self.controller = controller
        self.stats = stats
        self.max_body = config.max_body_bytes
        self.retries = config.retries
        self.preserve_host = config.preserve_host
        self.budget = RetryBudget(config.retry_budget, monitor.clock)
        self.retry_after = str(max(1, math.ceil(config.control_interval_s)))

    def fail(self, status: int, reason: str, message: str, **kwargs: Any) -> web.Response:
        self.stats.errors[reason] += 1
        return _error(status, reason, message, **kwargs)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        method = request.method
        if method == "CONNECT":
            return self.fail(
                405, "connect", "CONNECT is refused: rl-lb is a reverse proxy", close=True
            )
        target = request.raw_path
        if target[:1] != "/":
            own = _origin_form(target, request)
            if own is None:
                return self.fail(
                    400, "absolute-form", "requests for other hosts are refused", close=True
                )
            target = own
        length = request.content_length
        if self.max_body and length is not None and length > self.max_body:
            return self.fail(413, "body-too-large", f"body over {self.max_body} bytes", close=True)
        headers = self._upstream_headers(request)
        body = _Body(request, self.max_body) if request.body_exists else None
        self.budget.request()
        return await self._forward(request, method, target, headers, body)

    async def _forward(
        self,
        request: web.BaseRequest,
        method: str,
        target: str,
        headers: CIMultiDict[str],
        body: _Body | None,
    ) -> web.StreamResponse:
        monitor = self.monitor
        tried: list[Backend] = []
        backend = self._pick(tried)
        if backend is None:
            return self._unavailable()
        while True:
            started = monitor.begin(backend)
            try:
                upstream = await backend.session.request(
                    method, URL(backend.url + target, encoded=True), headers=headers, data=body
                )
            except BaseException as error:
                client_side = body is not None and (body.too_large or body.client_error)
                if client_side or not isinstance(error, Exception):
                    monitor.abandon(backend)
                    monitor.end(backend)
                    if body is None or not client_side:
                        raise
                    if body.too_large:
                        return self.fail(
                            413, "body-too-large", f"body over {self.max_body} bytes", close=True
                        )
                    return self.fail(400, "client-body", "the request body broke off", close=True)
                monitor.answered(backend, started, 0)
                monitor.end(backend)
                status, reason, retriable = _classify(error)
                log.debug("%s %s via %s failed: %r", method, target, backend.url, error)
                tried.append(backend)
                if (
                    retriable
                    and len(tried) <= self.retries
                    and method in IDEMPOTENT
                    and (body is None or not body.consumed)
                ):
                    next_backend = self._pick(tried)
                    if next_backend is not None and self.budget.try_retry():
                        self.stats.retries += 1
                        backend = next_backend
                        continue
                return self.fail(status, reason, f"{reason}: {error}", backend=backend.url)
            monitor.answered(backend, started, upstream.status)
            try:
                return await self._relay(request, upstream)
            finally:
                monitor.end(backend)

    def _pick(self, tried: list[Backend]) -> Backend | None:
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

    def _unavailable(self) -> web.Response:
        metrics = self.monitor.metrics
        busy = any(metrics.available[b.index] and not b.draining for b in self.monitor.backends)
        reason, message = (
            ("overloaded", "every live backend is at its in-flight limit")
            if busy
            else ("no-backend", "no live backend")
        )
        return self.fail(503, reason, message, extra={"Retry-After": self.retry_after})

    def _upstream_headers(self, request: web.BaseRequest) -> CIMultiDict[str]:
        incoming = request.headers
        drop = _NOT_FORWARDED
        if "Connection" in incoming:
            named = {t.strip().lower() for v in incoming.getall("Connection") for t in v.split(",")}
            drop = drop | named
        if not self.preserve_host:
            drop = drop | {"host"}
        headers: CIMultiDict[str] = CIMultiDict()
        for key, value in incoming.items():
            if key.lower() not in drop:
                headers.add(key, value)
        remote = request.remote or "unknown"
        chain = incoming.getall("X-Forwarded-For", ())
        headers["X-Forwarded-For"] = ", ".join((*chain, remote)) if chain else remote
        headers["X-Forwarded-Proto"] = request.scheme
        if request.host:
            headers["X-Forwarded-Host"] = request.host
        headers["Via"] = _via(incoming, request.version)
        return headers

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """Stream the backend's response; a break mid-body closes the client connection."""
        incoming = upstream.headers
        drop = HOP_BY_HOP
        if "Connection" in incoming:
            named = {t.strip().lower() for v in incoming.getall("Connection") for t in v.split(",")}
            drop = drop | named
        response = _Relayed(status=upstream.status, reason=upstream.reason)
        headers = response.headers
        for key, value in incoming.items():
            if key.lower() not in drop:
                headers.add(key, value)
        headers["Via"] = _via(incoming, upstream.version)
        try:
            await response.prepare(request)
            content = upstream.content
            while chunk := await content.readany():
                await response.write(chunk)
        except (aiohttp.ClientError, TimeoutError, ConnectionError) as error:
            upstream.close()
            if isinstance(error, aiohttp.ClientError | TimeoutError):
                self.stats.errors["upstream-broke"] += 1
                log.debug("response from %s broke off: %s", upstream.url, error)
            if request.transport is not None:
                request.transport.close()
            return response
        except BaseException:
            upstream.close()
            raise
        upstream.release()
        return response


class _Relayed(web.StreamResponse):
    """A streamed response whose head leaves with its first body chunk (or at the end).

    One write instead of two for every small response, which is most of them; the price is
    that a client sees the head only once the backend sends the first byte of the body.
    """

    _send_headers_immediately = False


def _via(headers: Any, version: Any) -> str:
    hop = f"{version.major}.{version.minor} rl-lb" if version is not None else "1.1 rl-lb"
    chain = headers.getall("Via", ())
    return ", ".join((*chain, hop)) if chain else hop


def _origin_form(target: str, request: web.BaseRequest) -> str | None:
    """The origin-form of an absolute-form target naming this very socket; None otherwise.

    The Host header cannot decide it (the client writes both), so the target must name the
    address and port the connection arrived on.
    """
    try:
        url = URL(target, encoded=True)
    except ValueError:
        return None
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if url.scheme != "http" or not sockname:
        return None
    if url.port != sockname[1] or url.host not in (sockname[0], "localhost"):
        return None
    return url.raw_path_qs or "/"


class LimitedServer(web.Server):
    """`web.Server` that turns away connections over `max_connections` with a 503."""

    def __init__(self, handler: Forwarder, max_connections: int, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.max_connections = max_connections
        self.refused = 0

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        if len(self._connections) >= self.max_connections:
            self.refused += 1
            transport.write(
                b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
                b"Content-Length: 0\r\nRetry-After: 1\r\nX-RL-LB-Error: max-connections\r\n\r\n"
            )
            transport.close()
            return
        super().connection_made(handler, transport)
