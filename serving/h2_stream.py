"""One HTTP/2 client stream (one gRPC call) through the balancer: picked, forwarded, counted.

Each stream is one request for the balancer, exactly as an HTTP/1.1 request: `Monitor.begin`
when a backend is picked, `answered` with the latency, `end` when it is over. Plain HTTP/2 is
timed to the response head like HTTP/1.1. A gRPC call's outcome is in its trailers, so a unary
call is timed to the trailers, and a `grpc-status` in `grpc-error-codes` counts like a 5xx.

A streaming call (the client still sending when the response head comes, or a second response
message) would distort in-flight counts and latencies the simulator and the policy know nothing
of: at that point it is answered (latency to the head), leaves in-flight, and is counted in its
own gauge (`rl_lb_backend_grpc_streams`), like a WebSocket tunnel; its final status still
reaches the outlier detector.

A gRPC call the proxy cannot complete gets a gRPC answer (HTTP 200, `grpc-status`,
`grpc-message`); it is retried on another backend only when nothing of it reached a backend
(no connection, or the backend refused the stream unprocessed).
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes

from serving.grpc_call import MessageCounter, grpc_status, is_grpc, proxy_status, read_grpc_timeout
from serving.h2_output import relayed, upstream_headers
from serving.h2_upstream import Headers, StreamHandle
from serving.monitor import Backend

if TYPE_CHECKING:
    from serving.h2_server import H2ClientConnection

__all__ = ["PREMATURE_FLOOR_S", "PREMATURE_S", "H2Stream"]

PREMATURE_S = 1.0
"""A stream reset younger than this, before its answer began, counts toward `h2-max-resets`."""
PREMATURE_FLOOR_S = 0.05
"""The shortest a gRPC call's `grpc-timeout` makes that age: a tiny timeout excuses no flood."""


class H2Stream:
    """A client stream and its attempt(s) on backends (a `StreamListener` of h2_upstream)."""

    def __init__(self, conn: H2ClientConnection, stream_id: int, headers: Headers) -> None:
        self.conn = conn
        self.server = conn.server
        self.stream_id = stream_id
        self.request = headers
        method, content_type, timeout = b"GET", None, None
        for name, value in headers:
            if name == b":method":
                method = value
            elif name == b"content-type":
                content_type = value
            elif name == b"grpc-timeout":
                timeout = value
        self.method = method
        self.grpc = is_grpc(content_type)
        now = self.server.loop.time()
        self.received_at = now
        self.deadline = now + read_grpc_timeout(timeout) if self.grpc else math.inf
        self.backend: Backend | None = None
        self.tried: list[Backend] = []
        self.up: StreamHandle | None = None
        self.started = 0.0
        self.held: deque[bytes] = deque()
        """Request body that came before a backend stream was open."""
        self.client_ended = False
        self.end_in_headers = False
        """The backend stream was opened with the request's end (no body)."""
        self.body_started = False
        self.headed = False
        self.streaming = False
        self.status = 0
        self.out: deque[tuple[bytes, int]] = deque()
        """Response bytes (and their flow-controlled length) waiting for the client's window."""
        self.trailers: Headers | None = None
        self.out_ended = False
        self.done = False
        """The balancer's side is settled (counted); the relay to the client may go on."""
        self.closed = False
        self.messages = MessageCounter() if self.grpc else None

    # -- attempts ---------------------------------------------------------------------------

    def start(self) -> None:
        if self.method == b"CONNECT":
            self.done = True  # nothing for the balancer to count
            self._fail(
                405, "connect", "CONNECT is refused: rl-lb is a reverse proxy", "UNIMPLEMENTED"
            )
            return
        if self.deadline <= self.server.loop.time():
            # grpcio sends a call that waited for a free stream past its deadline with
            # `grpc-timeout: 1n` (and resets it at once): no backend could answer it in time
            self.expired()
            return
        self.server.forwarder.budget.request()
        self._attempt(self.server.forwarder.pick(()))

    def _attempt(self, backend: Backend | None) -> None:
        forwarder = self.server.forwarder
        if backend is None:
            busy = any(
                forwarder.monitor.metrics.available[b.index] and not b.draining
                for b in forwarder.monitor.backends
            )
            reason = "overloaded" if busy else "no-backend"
            self.done = True
            self._fail(
                503,
                reason,
                "no live backend" if not busy else "every live backend is at its in-flight limit",
                "UNAVAILABLE",
            )
            return
        self.backend = backend
        self.started = forwarder.monitor.begin(backend)
        pool = self.server.pool_for(backend)
        authority = None if self.server.preserve_host else pool.authority
        headers = upstream_headers(self.request, self.conn.peer, authority, pool.prefix)
        self.end_in_headers = self.client_ended and not self.held
        pool.open(self, headers, self.end_in_headers)

    def on_stream_open(self, stream: StreamHandle) -> None:
        if self.closed:
            stream.reset()
            return
        self.up = stream
        stream.idle_ok = self.grpc
        if self.grpc and not self.client_ended:
            stream.deadline = 0.0  # a client-streaming call: the backend may wait for the end
        held, self.held = self.held, deque()
        end = self.client_ended and not self.end_in_headers  # it ended while the stream opened
        if held:
            self.body_started = True
            last = held.pop()
            for chunk in held:
                stream.send(chunk, False)
            stream.send(last, end)  # the end rides on the last bytes
        elif end:
            stream.send(b"", True)

    def on_connect_failed(self, reason: str, message: str) -> None:
        self._attempt_failed(reason, message, retriable=True)

    def _attempt_failed(self, reason: str, message: str, retriable: bool) -> None:
        if self.done or self.backend is None:
            return
        monitor = self.server.forwarder.monitor
        backend = self.backend
        monitor.answered(backend, self.started, 0)
        monitor.end(backend)
        self.up = None
        self.tried.append(backend)
        forwarder = self.server.forwarder
        if (
            retriable
            and not self.body_started
            and len(self.tried) <= forwarder.retries
            and not self.closed
        ):
            nxt = forwarder.pick(self.tried)
            if nxt is not None and forwarder.budget.try_retry():
                forwarder.stats.retries += 1
                self._attempt(nxt)
                return
        self.done = True
        timeout = reason in ("upstream-timeout", "connect-timeout")
        code = "DEADLINE_EXCEEDED" if timeout else "UNAVAILABLE"
        self._fail(504 if timeout else 502, reason, f"{reason}: {message}", code)

    # -- the request body (from the client) --------------------------------------------------

    def on_client_data(self, data: bytes, flow: int, end: bool) -> None:
        """Request body bytes; `end`: the request ends with them (they go on in one DATA frame
        with END_STREAM, not a DATA frame and an empty one)."""
        padding = flow - len(data)
        if padding:
            self.conn.ack(self.stream_id, padding)
        up = self.up
        if up is None:
            if self.done or self.closed:
                self.conn.ack(self.stream_id, len(data))  # nobody wants it: dropped
            else:
                self.held.append(data)  # bounded by the stream's window: acknowledged later
            if end:
                self.on_client_end()
            return
        self.body_started = True
        up.send(data, end)
        if end:
            self.client_ended = True
            self._await_answer(up)

    def on_body_sent(self, size: int) -> None:
        self.conn.ack(self.stream_id, size)

    def on_client_end(self) -> None:
        self.client_ended = True
        up = self.up
        if up is not None:
            up.send(b"", True)
            self._await_answer(up)

    def _await_answer(self, up: StreamHandle) -> None:
        """The request is all sent: the read timeout runs from here."""
        if not self.headed and not up.deadline:
            up.deadline = self.server.loop.time() + self.server.config.read_timeout_s

    def on_client_gone(self) -> None:
        """The client reset the stream or left: the backend stream is given up."""
        if self.closed:
            return
        self.closed = True
        self.out.clear()
        if self.up is not None:
            self.up.reset()
            self.up = None
        elif self.backend is not None and not self.done:
            self.server.pool_for(self.backend).cancel(self)
        if not self.done:
            self._settle(failed=False, by_client=True)
        self.server.answered(self.status, self.server.loop.time() - self.received_at)

    def reset_is_premature(self, now: float) -> bool:
        """Whether the client's reset is of the rapid-reset kind (`serving.h2_server`)."""
        if self.headed or self.closed:
            return False  # answered, or being answered: the client read what it asked for
        allowed = self.deadline - self.received_at  # the call's grpc-timeout, inf without one
        young = min(PREMATURE_S, max(PREMATURE_FLOOR_S, allowed / 2))
        return now - self.received_at < young

    def expired(self) -> None:
        """The gRPC deadline passed (`grpc-timeout`): the call ends with DEADLINE_EXCEEDED."""
        if self.up is not None:
            self.up.reset()
            self.up = None
        if not self.done:
            self._settle(failed="DEADLINE_EXCEEDED" in self.server.error_codes, by_client=False)
        self.deadline = math.inf
        self._fail(504, "deadline", "the call's grpc-timeout passed", "DEADLINE_EXCEEDED")

    # -- the response (from the backend) ----------------------------------------------------

    def on_response(self, status: int, headers: Headers, end: bool) -> None:
        if self.closed:
            return
        self.headed = True
        self.status = status
        monitor = self.server.forwarder.monitor
        assert self.backend is not None
        if not self.grpc:
            monitor.answered(self.backend, self.started, status, judged=False)
        elif not end and not self.client_ended:
            self._go_streaming()
        headers = relayed(headers)
        self.conn.send_headers(self.stream_id, headers, end)
        if end:
            code = grpc_status(headers) if self.grpc else None
            self._ended(code)

    def on_response_data(self, data: bytes, flow: int) -> None:
        if self.closed:
            if self.up is not None:
                self.up.ack(flow)
            return
        if self.messages is not None and not self.streaming and self.messages.feed(data) > 1:
            self._go_streaming()
        padding = flow - len(data)
        if padding and self.up is not None:
            self.up.ack(padding)
        self.out.append((data, len(data)))
        self.pump()

    def on_trailers(self, headers: Headers) -> None:
        self.trailers = relayed(headers)

    def on_response_end(self) -> None:
        code = grpc_status(self.trailers or ()) if self.grpc else None
        self.out_ended = True
        self._ended(code)
        self.pump()

    def on_upstream_error(self, reason: str, message: str, refused: bool) -> None:
        self.up = None
        if self.done or self.closed:
            return
        if not self.headed and reason == "upstream-timeout" and not self.client_ended:
            # the backend was waiting for the rest of the request: the client is the slow one
            self._settle(failed=False, by_client=True)
            message = "the request body did not arrive in time"
            self._fail(408, "client-timeout", message, "DEADLINE_EXCEEDED")
            return
        if not self.headed:
            self._attempt_failed(reason, message, retriable=refused)
            return
        self.server.forwarder.stats.errors["upstream-broke"] += 1
        self._settle(failed=True, by_client=False)
        if self.grpc:
            self.out.clear()
            self.trailers = proxy_status("UNAVAILABLE", f"the backend broke off: {message}")[2:]
            self.out_ended = True
            self.pump()
        else:
            self.conn.reset_stream(self.stream_id, ErrorCodes.INTERNAL_ERROR)
            self.closed = True
            self.server.answered(0, self.server.loop.time() - self.received_at)

    def _ended(self, code: int | None) -> None:
        if self.done:
            return
        failed = self.status >= 500
        if code is not None:
            failed = code in self.server.error_numbers
        self._settle(failed=failed, by_client=False)

    # -- counting -------------------------------------------------------------------------

    def _go_streaming(self) -> None:
        """A long-lived call: answered now, out of in-flight, into the streams gauge."""
        if self.streaming or self.done or self.backend is None:
            return
        self.streaming = True
        monitor = self.server.forwarder.monitor
        monitor.answered(self.backend, self.started, 200, judged=False)
        monitor.end(self.backend)
        self.server.streams_open(self.backend, +1)

    def _settle(self, *, failed: bool, by_client: bool) -> None:
        """The balancer's side of the call is over."""
        self.done = True
        backend = self.backend
        if backend is None:
            return
        monitor = self.server.forwarder.monitor
        if self.streaming:
            self.server.streams_open(backend, -1)
            if not by_client:
                monitor.judge(backend, failed)
        elif by_client and not self.headed:
            monitor.abandon(backend)
            monitor.end(backend)
        elif self.grpc and not by_client:
            monitor.answered(backend, self.started, 503 if failed else 200)
            monitor.end(backend)
        else:
            if self.grpc and not self.headed:
                monitor.answered(backend, self.started, self.status, judged=False)
            monitor.judge(backend, failed and not by_client)
            monitor.end(backend)

    # -- relaying to the client -------------------------------------------------------------

    def has_output(self) -> bool:
        """Response bytes or its end wait for the client's window."""
        return bool(self.out) or self.out_ended

    def pump(self) -> None:
        """Send what waits as far as the client's window allows; then the trailers or end."""
        if self.closed:
            return
        sent = self.conn.send_data(self.stream_id, self.out)
        if sent and self.up is not None:
            self.up.ack(sent)
        if not self.out and self.out_ended:
            self.closed = True
            self.up = None  # the backend stream is over: no cycle left for the collector
            self.conn.end_stream(self.stream_id, self.trailers)
            self.server.answered(self.status or 200, self.server.loop.time() - self.received_at)
            if self.client_ended and self.done:
                self.conn.forget(self.stream_id)  # over both ways: nothing more to route to it

    def _fail(self, status: int, reason: str, message: str, code: str) -> None:
        """An answer of the proxy's own (gRPC-shaped for a gRPC call)."""
        if self.closed:
            return
        self.server.forwarder.stats.errors[reason] += 1
        self.closed = True
        if self.backend is not None:
            message = f"{message} ({self.backend.url})"
        if self.headed and self.grpc:
            self.conn.end_stream(self.stream_id, proxy_status(code, message)[2:])
        elif self.headed:
            self.conn.reset_stream(self.stream_id, ErrorCodes.INTERNAL_ERROR)
        elif self.grpc:
            self.conn.send_headers(self.stream_id, proxy_status(code, message), True)
        else:
            self.conn.send_error(self.stream_id, status, reason, message)
        self.server.answered(
            200 if self.grpc else status, self.server.loop.time() - self.received_at
        )
