"""The backend side of HTTP/2 streams: h2c connections to a backend, calls multiplexed on them.

gRPC backends speak HTTP/2 only, and a gRPC client's calls share one long-lived connection; the
proxy balances each call (stream) on its own, so each backend gets a small, fixed number of h2c
connections (`h2-connections-per-backend`) and every stream picked for it goes on the least
busy one. The frames are the `h2` library's; this module only moves its events to the
`StreamListener` of each stream (`serving.h2_stream.H2Stream`) and keeps flow control honest:
request bytes wait until the backend's window admits them, and response bytes are only
acknowledged to the backend once the listener has passed them on, so a slow client slows its
backend stream down instead of filling the proxy's memory. The connections and their streams are
in `serving.h2_upstream_conn`; this module keeps the interfaces and the pool that opens them.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from typing import Protocol
from urllib.parse import urlsplit

from serving.h2_output import Headers
from serving.h2_upstream_conn import H2UpstreamConnection, UpstreamStream

__all__ = [
    "H2UpstreamPool",
    "Headers",
    "StreamHandle",
    "StreamListener",
    "StreamPool",
    "UpstreamStream",
]

log = logging.getLogger("rl_lb.serving.h2_upstream")


class StreamListener(Protocol):
    """What a stream's events go to (implemented by `serving.h2_server.H2Stream`)."""

    def on_stream_open(self, stream: StreamHandle) -> None: ...
    def on_connect_failed(self, reason: str, message: str) -> None: ...
    def on_response(self, status: int, headers: Headers, end: bool) -> None: ...
    def on_response_data(self, data: bytes, flow: int) -> None: ...
    def on_trailers(self, headers: Headers) -> None: ...
    def on_response_end(self) -> None: ...
    def on_body_sent(self, size: int) -> None: ...
    def on_upstream_error(self, reason: str, message: str, refused: bool) -> None:
        """The stream failed; `refused`: the backend says it did not process it (retriable)."""
        ...


class StreamHandle(Protocol):
    """What a client stream holds of its backend leg (`UpstreamStream`, or an HTTP/1.1
    exchange in `serving.h2_http1`)."""

    deadline: float
    idle_ok: bool

    def send(self, data: bytes, end: bool) -> None: ...
    def ack(self, size: int) -> None: ...
    def reset(self) -> None: ...


class StreamPool(Protocol):
    """Where a client stream's backend leg comes from (`H2UpstreamPool`, `Http1Pool`)."""

    authority: bytes
    prefix: bytes

    def open(self, listener: StreamListener, headers: Headers, end: bool) -> None: ...
    def cancel(self, listener: StreamListener) -> None: ...


class H2UpstreamPool:
    """The h2c connections to one backend and the streams waiting for room on them."""

    def __init__(
        self,
        url: str,
        *,
        connections: int,
        connect_timeout: float,
        read_timeout: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        self.url = url
        self.host = parts.hostname or "localhost"
        https = parts.scheme == "https"
        self.port = parts.port or (443 if https else 80)
        self.ssl = (tls or _h2_context()) if https else None
        """https:// backends: h2 over TLS (ALPN h2), verified like every https backend."""
        self.authority = parts.netloc.encode()
        self.prefix = parts.path.rstrip("/").encode()
        self.limit = connections
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.loop = asyncio.get_running_loop()
        self.conns: list[H2UpstreamConnection] = []
        self.connecting = 0
        self.waiting: deque[tuple[StreamListener, Headers, bool]] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False

    def open(self, listener: StreamListener, headers: Headers, end: bool) -> None:
        """Start a stream (now, or once a connection has room); events go to `listener`."""
        conn = self._roomiest()
        if conn is not None and not self.waiting:
            conn.open_stream(listener, headers, end)
            return
        self.waiting.append((listener, headers, end))
        below_limit = len(self.conns) + self.connecting < self.limit
        all_gone = not self.connecting and not any(c.usable for c in self.conns)
        if below_limit or all_gone:  # (a connection after a GOAWAY drains, uncounted)
            self._connect()
        else:
            self.serve_waiting()  # full connections: the streams wait for one to end

    def cancel(self, listener: StreamListener) -> None:
        """The stream is no longer wanted before it opened."""
        self.waiting = deque(w for w in self.waiting if w[0] is not listener)

    def _roomiest(self) -> H2UpstreamConnection | None:
        best: H2UpstreamConnection | None = None
        for conn in self.conns:
            if conn.capacity > 0 and (best is None or len(conn.streams) < len(best.streams)):
                best = conn
        return best

    def serve_waiting(self) -> None:
        while self.waiting:
            conn = self._roomiest()
            if conn is None:
                return
            listener, headers, end = self.waiting.popleft()
            conn.open_stream(listener, headers, end)

    def _connect(self) -> None:
        if self.closed:
            return
        self.connecting += 1
        task = self.loop.create_task(self._open_connection())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open_connection(self) -> None:
        failure: tuple[str, str] | None = None
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: H2UpstreamConnection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                self.connect_timeout,
            )
            tls = conn.transport.get_extra_info("ssl_object") if conn.transport else None
            if tls is not None and tls.selected_alpn_protocol() != "h2":
                conn.close()
                failure = ("connect-failed", "the backend does not offer h2 over TLS (ALPN)")
        except TimeoutError:
            failure = ("connect-timeout", f"no connection within {self.connect_timeout:g} s")
        except OSError as error:  # ssl.SSLError too (an unverifiable certificate)
            failure = ("connect-failed", error.strerror or str(error))
        finally:
            self.connecting -= 1
        if failure is not None:
            if not self.conns and not self.connecting:
                waiting, self.waiting = self.waiting, deque()
                for listener, _, _ in waiting:
                    listener.on_connect_failed(*failure)
            return
        if self.closed:
            conn.close()
            return
        self.conns.append(conn)
        self.serve_waiting()

    def forget(self, conn: H2UpstreamConnection) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        if self.waiting and not self.connecting and not self._roomiest():
            self._connect()

    def sweep(self, now: float) -> None:
        for conn in list(self.conns):
            conn.sweep(now)

    @property
    def streams(self) -> int:
        return sum(len(c.streams) for c in self.conns)

    async def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.conns):
            conn.close()
        waiting, self.waiting = self.waiting, deque()
        for listener, _, _ in waiting:
            listener.on_connect_failed("connect-failed", "the proxy is shutting down")


def _h2_context() -> ssl.SSLContext:
    """Verified TLS with the system's CAs, offering only h2 (when no TLS setting is given)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2"])
    return context
