"""The backend side of the request path: keep-alive connection pools and response parsing.

An `UpstreamPool` per backend keeps idle HTTP/1.1 connections (last in, first out, so the warm
ones are reused and the cold ones age out) up to a limit, and opens new ones in a task only when
none is idle; the common case, a reused connection, takes no task, no future and no timer. An
`UpstreamConnection` (serving/upstream_conn.py) parses responses with llhttp (`httptools`) and
hands the events to the `Exchange` that holds it (see `serving.exchange`); timeouts are checked
by the pool's `sweep`, called a few times a second, rather than by one timer per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import deque
from urllib.parse import urlsplit

from serving.upstream_conn import Listener, UpstreamConnection  # re-exported: older importers

__all__ = ["Listener", "UpstreamConnection", "UpstreamPool"]

log = logging.getLogger("rl_lb.serving.upstream")

IDLE_TIMEOUT_S = 15.0
"""An idle pooled connection older than this is closed (under the usual backend keep-alive)."""


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
