"""HTTP/2 client streams to HTTP/1.1 backends (`backend-protocol = http1`, the default).

A client may speak HTTP/2 to the proxy while the backends speak HTTP/1.1: each stream then
borrows a keep-alive connection of the backend's `UpstreamPool`, exactly like an HTTP/1.1
request, and `Http1Leg` translates between the two (`serving.h2_stream.H2Stream` sees the same
events as from an h2c backend). Flow control: the response is read from the backend only while
less than `_HIGH` bytes of it wait for the client's window, and request bytes are acknowledged
to the client only while the backend's socket takes them.
"""

from __future__ import annotations

import math

from serving.h2_upstream import Headers, StreamListener
from serving.http_message import HOP_BY_HOP
from serving.upstream import UpstreamConnection, UpstreamPool

__all__ = ["Http1Leg", "Http1Pool"]

_HIGH = 1 << 20
"""Response bytes waiting for the client above which the backend is no longer read."""
_IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE", b"TRACE"})


class Http1Pool:
    """A backend's HTTP/1.1 connection pool, offered to HTTP/2 streams (a `StreamPool`)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.authority = pool.netloc
        self.prefix = pool.prefix.rstrip(b"/")
        self.legs: dict[int, Http1Leg] = {}

    def open(self, listener: StreamListener, headers: Headers, end: bool) -> None:
        leg = Http1Leg(self, listener, headers, end)
        self.legs[id(listener)] = leg
        conn = self.pool.acquire(leg)
        if conn is not None:
            leg.on_connected(conn)

    def cancel(self, listener: StreamListener) -> None:
        leg = self.legs.pop(id(listener), None)
        if leg is not None:
            self.pool.cancel(leg)

    @property
    def streams(self) -> int:
        return len(self.legs)


class Http1Leg:
    """One HTTP/2 stream's exchange on an HTTP/1.1 connection: an `upstream.Listener` to the
    connection, a `StreamHandle` to the stream."""

    def __init__(
        self, owner: Http1Pool, listener: StreamListener, headers: Headers, end: bool
    ) -> None:
        self.owner = owner
        self.key = id(listener)
        self.listener: StreamListener | None = listener
        self.headers = headers
        self.ended = end
        self.up: UpstreamConnection | None = None
        self.chunked = False
        self.waiting = 0
        """Response bytes handed to the stream and not yet acknowledged (taken by the client)."""
        self.write_paused = False
        self.unacked = 0
        """Request bytes sent while the backend's socket was full: acknowledged once it drains."""
        self.deadline = 0.0  # the HTTP/1.1 connection keeps its own (read and total timeouts)
        self.idle_ok = False

    # -- upstream.Listener ----------------------------------------------------------------

    def on_connected(self, conn: UpstreamConnection) -> None:
        listener = self.listener
        if listener is None:
            self.owner.pool.release(conn, reusable=True)
            return
        self.up = conn
        method, head = self._head()
        conn.start(self, head, method == b"HEAD", math.inf)
        listener.on_stream_open(self)

    def _head(self) -> tuple[bytes, bytes]:
        method, path, authority = b"GET", b"/", self.owner.authority
        lines: list[bytes] = []
        length = False
        for name, value in self.headers:
            if name == b":method":
                method = value
            elif name == b":path":
                path = value
            elif name == b":authority":
                authority = value
            elif name[:1] != b":" and name not in HOP_BY_HOP and name != b"host":
                length = length or name == b"content-length"
                lines += (name, b": ", value, b"\r\n")
        if not self.ended and not length:
            self.chunked = True
            lines.append(b"transfer-encoding: chunked\r\n")
        elif self.ended and not length and method in (b"POST", b"PUT", b"PATCH"):
            lines.append(b"content-length: 0\r\n")
        start = b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (method, path, authority)
        return method, start + b"".join(lines) + b"\r\n"

    def on_connect_failed(self, reason: str, message: str) -> None:
        self.owner.legs.pop(self.key, None)
        if self.listener is not None:
            self.listener.on_connect_failed(reason, message)

    def on_head(self, status: int, reason: bytes, headers: Headers, version: str) -> None:
        drop = HOP_BY_HOP
        for name, value in headers:
            if name.lower() == b"connection":  # and the headers it names
                drop = drop | {t.strip().lower() for t in value.split(b",")}
        out: Headers = [(b":status", b"%d" % status)]
        out += [(name.lower(), value) for name, value in headers if name.lower() not in drop]
        if self.listener is not None:
            self.listener.on_response(status, out, False)

    def on_body(self, data: bytes) -> None:
        if self.listener is None or not data:
            return
        self.waiting += len(data)
        if self.waiting > _HIGH and self.up is not None:
            self.up.pause_reading(True)
        self.listener.on_response_data(data, len(data))

    def on_end(self) -> None:
        self._release(reusable=True)
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.on_response_end()

    def on_upstream_error(self, reason: str, message: str) -> None:
        self._release(reusable=False)
        listener, self.listener = self.listener, None
        if listener is not None:
            method = next((v for n, v in self.headers if n == b":method"), b"GET")
            refused = reason == "upstream-reset" and method in _IDEMPOTENT
            listener.on_upstream_error(reason, message, refused)

    def on_upstream_paused(self, paused: bool) -> None:
        self.write_paused = paused
        if not paused and self.unacked and self.listener is not None:
            unacked, self.unacked = self.unacked, 0
            self.listener.on_body_sent(unacked)

    def flush(self) -> None:
        pass

    def on_upgrade(self, rest: bytes) -> bool:
        return False  # HTTP/2 has no Upgrade

    # -- StreamHandle ---------------------------------------------------------------------

    def send(self, data: bytes, end: bool) -> None:
        up = self.up
        if up is None or up.transport is None:
            return
        if data:
            up.send(b"%x\r\n%b\r\n" % (len(data), data) if self.chunked else data)
            up.touch()
            if self.write_paused:
                self.unacked += len(data)
            elif self.listener is not None:
                self.listener.on_body_sent(len(data))
        if end and self.chunked:
            self.chunked = False
            up.send(b"0\r\n\r\n")

    def ack(self, size: int) -> None:
        self.waiting -= size
        if self.waiting <= _HIGH // 2 and self.up is not None:
            self.up.pause_reading(False)

    def reset(self) -> None:
        """The client gave the stream up."""
        self.listener = None
        self._release(reusable=False)

    def _release(self, reusable: bool) -> None:
        self.owner.legs.pop(self.key, None)
        up, self.up = self.up, None
        if up is not None:
            up.pool.release(up, reusable=reusable and up.keep_alive and up.done)
        elif reusable is False:
            self.owner.pool.cancel(self)
