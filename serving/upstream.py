"""The backend side of the request path: keep-alive connection pools and response parsing.

An `UpstreamPool` per backend keeps idle HTTP/1.1 connections (last in, first out, so the warm
ones are reused and the cold ones age out) up to a limit, and opens new ones in a task only when
none is idle; the common case, a reused connection, takes no task, no future and no timer. A
`UpstreamConnection` parses responses with llhttp (`httptools`) and hands the events to the
`Exchange` that holds it (see `serving.exchange`); timeouts are checked by the pool's `sweep`,
called a few times a second, rather than by one timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from typing import Protocol, cast
from urllib.parse import urlsplit

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

__all__ = ["Listener", "UpstreamConnection", "UpstreamPool"]

log = logging.getLogger("rl_lb.serving.upstream")

IDLE_TIMEOUT_S = 15.0
"""An idle pooled connection older than this is closed (under the usual backend keep-alive)."""
Headers = list[tuple[bytes, bytes]]


class Listener(Protocol):
    """What an exchange receives from its upstream connection (implemented by `Exchange`)."""

    def on_connected(self, conn: UpstreamConnection) -> None: ...
    def on_connect_failed(self, reason: str, message: str) -> None: ...
    def on_head(self, status: int, reason: bytes, headers: Headers, version: str) -> None: ...
    def on_body(self, data: bytes) -> None: ...
    def on_end(self) -> None: ...
    def on_upstream_error(self, reason: str, message: str) -> None: ...
    def on_upstream_paused(self, paused: bool) -> None: ...
    def flush(self) -> None: ...
    def on_upgrade(self, rest: bytes) -> bool:
        """After a 101: take the connection over as a tunnel (False: refuse it)."""
        ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend; `listener` is the exchange using it (or None)."""

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.listener: Listener | None = None
        self.parser = HttpResponseParser(self)
        self.headers: Headers = []
        self.reason = b""
        self.head_only = False
        """The request was HEAD: the response ends with its head whatever it declares."""
        self.headed = False
        self.eof_body = False
        """The body runs until the connection closes (no length, not chunked)."""
        self.done = False
        self.keep_alive = False
        self.deadline = 0.0
        """When the exchange times out (loop time): the read timeout, moved on by every read,
        capped by the total timeout; 0 while idle."""
        self.total_deadline = 0.0
        self.idle_since = 0.0
        self.paused = False
        self.switching = False
        """The response is a 101: the bytes after its head belong to the upgraded protocol."""

    # -- the exchange's side ----------------------------------------------------------------

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def start(
        self, listener: Listener, head: bytes, head_only: bool, total_deadline: float
    ) -> None:
        """Send a request head; the response events go to `listener`."""
        self.listener = listener
        self.head_only = head_only
        self.headed = self.done = self.eof_body = False
        self.total_deadline = total_deadline
        self.touch()
        assert self.transport is not None
        self.transport.write(head)

    def touch(self) -> None:
        """Data moved: the read timeout starts again."""
        self.deadline = min(self.pool.loop.time() + self.pool.read_timeout, self.total_deadline)

    def timed_out(self) -> None:
        self.abort("upstream-timeout", "the backend did not answer in time")

    def pause_reading(self, paused: bool) -> None:
        """The client cannot take more for now (or can again)."""
        transport = self.transport
        if transport is not None and not transport.is_closing() and paused != self.paused:
            self.paused = paused
            if paused:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def close(self) -> None:
        self.listener = None
        if self.transport is not None:
            self.transport.close()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        listener = self.listener
        if listener is None:  # an idle connection must stay silent: drop it
            self.pool.discard(self)
            return
        self.touch()
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            if not (self.switching and listener.on_upgrade(data[upgrade.args[0] :])):
                self.abort("upstream-error", "the backend switched protocols")
            return
        except HttpParserCallbackError:
            log.exception("relaying a response failed")  # a bug of ours: never hang on it
            self.abort("upstream-error", "internal error")
            return
        except HttpParserError as error:
            self.abort("upstream-error", f"invalid response: {error}")
            return
        listener = self.listener
        if listener is not None:
            listener.flush()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        listener = self.listener
        if listener is not None and not self.done:
            if self.eof_body and self.headed:
                self.done = True
                self.keep_alive = False
                listener.on_end()
            else:
                reason = "backend closed the connection"
                self.abort("upstream-reset", f"{reason}: {exc}" if exc else reason)
        self.pool.discard(self)

    def pause_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_paused(True)

    def resume_writing(self) -> None:
        if self.listener is not None:
            self.listener.on_upstream_paused(False)

    def abort(self, reason: str, message: str) -> None:
        """Close the connection and tell the exchange why."""
        listener, self.listener = self.listener, None
        self.done = True
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()
        if listener is not None:
            listener.on_upstream_error(reason, message)

    # -- llhttp callbacks -------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason = reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers, self.headers = self.headers, []
        if 100 <= status < 200 and status != 101:
            return  # interim (103 Early Hints...): not relayed, the final answer follows
        self.headed = True
        self.switching = status == 101
        self.keep_alive = self.parser.should_keep_alive()
        if not (self.head_only or status in (204, 304)):
            self.eof_body = _eof_delimited(headers)
        listener = self.listener
        if listener is not None:
            listener.on_head(status, self.reason, headers, self.parser.get_http_version())
            if self.head_only and self.listener is listener:
                # llhttp waits for the body the head declares: it never comes, so a fresh
                # parser takes the next response on this connection.
                self.parser = HttpResponseParser(self)
                self._finish()

    def on_body(self, data: bytes) -> None:
        if self.listener is not None and not self.done:
            self.listener.on_body(data)

    def on_message_complete(self) -> None:
        if self.headed and not self.done and not self.switching:
            self._finish()

    def _finish(self) -> None:
        self.done = True
        self.deadline = 0.0
        listener = self.listener
        if listener is not None:
            listener.on_end()


def _eof_delimited(headers: Headers) -> bool:
    for name, value in headers:
        lower = name.lower()
        if lower == b"content-length" or (
            lower == b"transfer-encoding" and value.lower().rstrip().endswith(b"chunked")
        ):
            return False
    return True


class UpstreamPool:
    """Keep-alive connections to one backend, at most `limit` open at a time."""

    def __init__(
        self,
        url: str,
        *,
        limit: int,
        connect_timeout: float,
        read_timeout: float,
        loop: asyncio.AbstractEventLoop | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        """`tls`: the context of an https:// backend (`serving.tls.backend_context`); the
        system's CAs when None."""
        parts = urlsplit(url)
        self.host = parts.hostname or ""
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.netloc = parts.netloc.encode("latin-1")
        """The backend's own Host value."""
        self.prefix = parts.path.encode("latin-1")
        """A path prefix of the backend URL, put before every request target."""
        https = parts.scheme == "https"
        self.ssl = (tls or ssl.create_default_context()) if https else None
        self.limit = limit
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.loop = loop or asyncio.get_running_loop()
        self.idle: deque[UpstreamConnection] = deque()
        self.busy: set[UpstreamConnection] = set()
        self.opening = 0
        self.waiters: deque[Listener] = deque()
        self.closed = False
        self.connects = 0
        """Connections opened so far (the tests read it to see reuse)."""
        self.tunnels = 0
        """Connections handed over to tunnels (`serving.tunnel`), still open."""
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def open(self) -> int:
        return len(self.idle) + len(self.busy) + self.opening

    def acquire(self, listener: Listener) -> UpstreamConnection | None:
        """An idle connection at once, or None: `listener.on_connected` (or `on_connect_failed`)
        is called later, once a connection is opened or another one is released."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                self.busy.add(conn)
                return conn
        if self.closed:
            listener.on_connect_failed("connect-failed", "the backend left the pool")
        elif self.open < self.limit:
            self._open(listener)
        else:
            self.waiters.append(listener)
        return None

    def cancel(self, listener: Listener) -> None:
        """The exchange no longer waits for a connection."""
        with contextlib.suppress(ValueError):
            self.waiters.remove(listener)

    def release(self, conn: UpstreamConnection, reusable: bool) -> None:
        """Return a connection after an exchange; one that is not reusable is closed."""
        self.busy.discard(conn)
        conn.listener = None
        conn.deadline = 0.0
        conn.pause_reading(False)  # an idle connection must see the backend close it
        if not reusable or self.closed or conn.transport is None or conn.transport.is_closing():
            conn.close()
        elif self.waiters:
            self.busy.add(conn)
            self.waiters.popleft().on_connected(conn)
            return
        else:
            conn.idle_since = self.loop.time()
            self.idle.append(conn)
            return
        if self.waiters and self.open < self.limit:
            self._open(self.waiters.popleft())

    def hand_over(self, conn: UpstreamConnection) -> asyncio.Transport | None:
        """The connection leaves the pool for a tunnel (counted in `tunnels` until
        `tunnel_closed`); a waiting exchange may open another one."""
        self.busy.discard(conn)
        conn.listener = None
        conn.deadline = 0.0
        transport, conn.transport = conn.transport, None
        if transport is not None:
            self.tunnels += 1
        if self.waiters and self.open < self.limit and not self.closed:
            self._open(self.waiters.popleft())
        return transport

    def tunnel_closed(self) -> None:
        self.tunnels -= 1

    def discard(self, conn: UpstreamConnection) -> None:
        """A connection closed (by either side): forget it."""
        self.busy.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)
        conn.close()
        if self.waiters and self.open < self.limit and not self.closed:
            self._open(self.waiters.popleft())

    def _open(self, listener: Listener) -> None:
        self.opening += 1
        task = self.loop.create_task(self._connect(listener))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, listener: Listener) -> None:
        conn: UpstreamConnection | None = None
        reason, message = "connect-failed", "the backend left the pool"
        try:
            _, conn = await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: UpstreamConnection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl,
                    server_hostname=self.host if self.ssl else None,
                ),
                self.connect_timeout,
            )
        except TimeoutError:
            reason = "connect-timeout"
            message = f"no connection within {self.connect_timeout:g} s"
        except (OSError, ssl.SSLError) as error:
            message = f"cannot connect: {error}"
        finally:
            self.opening -= 1
            if conn is None:
                listener.on_connect_failed(reason, message)
        if conn is None:
            return
        self.connects += 1
        self.busy.add(conn)
        try:
            listener.on_connected(conn)
        except Exception:
            log.exception("starting an exchange failed")  # a bug of ours: never hang on it
            conn.abort("upstream-error", "internal error")

    def sweep(self, now: float) -> None:
        """Time out stalled exchanges and close idle connections past `IDLE_TIMEOUT_S`."""
        for conn in [c for c in self.busy if 0.0 < c.deadline < now]:
            conn.timed_out()
        while self.idle and now - self.idle[0].idle_since > IDLE_TIMEOUT_S:
            self.idle.popleft().close()

    async def close(self) -> None:
        """Close every connection; exchanges still waiting are told the backend left."""
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        while self.idle:
            self.idle.pop().close()
        for conn in list(self.busy):
            conn.abort("upstream-reset", "the proxy closed the connection")
        while self.waiters:
            self.waiters.popleft().on_connect_failed("connect-failed", "the backend left the pool")
