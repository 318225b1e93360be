"""`UpstreamConnection`: one keep-alive HTTP/1.1 connection to a backend, parsed by llhttp.

It sends an exchange's request head and body and hands the response's events (head, body
chunks, end, failure, a switch of protocols) to the `Listener` that holds it, the `Exchange`
(serving/exchange.py). Kept apart from the pool that owns the connections (`UpstreamPool`,
serving/upstream.py): this is the parsing of one response, that is the reuse, limits and
timeouts of many; `ConnectionPool` names what a connection asks of its pool, so this module does
not import that one back.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol, cast

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpResponseParser,
)

__all__ = ["ConnectionPool", "Headers", "Listener", "UpstreamConnection"]

log = logging.getLogger("rl_lb.serving.upstream")
"""The logger the proxy's log settings know for the backend side (`serving.upstream`'s)."""

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


class ConnectionPool(Protocol):
    """What a connection, and whoever holds it (an exchange, a tunnel), asks of the pool that
    owns it (`UpstreamPool`, serving/upstream.py)."""

    loop: asyncio.AbstractEventLoop
    read_timeout: float

    def release(self, conn: UpstreamConnection, reusable: bool) -> None: ...
    def discard(self, conn: UpstreamConnection) -> None: ...
    def hand_over(self, conn: UpstreamConnection) -> asyncio.Transport | None: ...
    def tunnel_closed(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to a backend; `listener` is the exchange using it (or None)."""

    def __init__(self, pool: ConnectionPool) -> None:
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
