"""`ClientConnection`: one HTTP/1.1 client connection, parsed by llhttp (`httptools`).

llhttp in its strict mode refuses the request-smuggling shapes (Content-Length with
Transfer-Encoding, duplicate Content-Length, invalid chunked framing, bare LF); this module adds
the per-request limits (head size, header count) and the plumbing: a complete head goes to the
server's handler (`Forwarder`) at once, and the body follows chunk by chunk to the request's
`sink` once the handler attaches it (until then, and for pipelined requests, it is held back
with reading paused, so memory stays bounded). What the connections of a listening socket share
(the handler, max connections, the head deadline and its sweep) is `serving.http_server`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol, cast

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser

from serving.http_message import Headers, Request, error_response

__all__ = ["ClientConnection", "ConnectionHost"]

log = logging.getLogger("rl_lb.serving.http")

LINGER_S = 2.0
"""How long an unread request body (after a 413, say) is read and dropped before closing."""
MAX_HEADERS = 100
"""More header lines than this in one request head is refused (aiohttp allows 128, Go 1 MB)."""
BUFFER_HIGH = 1 << 16
"""Request body held back (no sink yet) above which the client is not read from."""
_PAUSE_BUFFER, _PAUSE_PIPELINE, _PAUSE_SINK = 1, 2, 4
_REFUSED = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n"
    b"Content-Length: 0\r\nRetry-After: 1\r\nX-RL-LB-Error: max-connections\r\n\r\n"
)


class _HeadTooLargeError(Exception):
    pass


class ConnectionHost(Protocol):
    """What a connection uses of the listening socket's shared state: `HttpServer`
    (serving/http_server.py), which makes the connections and so imports this module; this one
    names what it needs instead of importing that one back."""

    handler: Callable[[ClientConnection, Request], None]
    errors: Counter[str]
    max_connections: int
    max_header_bytes: int
    max_head_bytes: int
    header_timeout: float
    on_answered: Callable[[int, float], None] | None
    loop: asyncio.AbstractEventLoop
    connections: set[ClientConnection]
    stopping: bool
    alpn_handoff: dict[str, Callable[[asyncio.Transport], asyncio.Protocol]]

    def answered(self, request: Request) -> None: ...


class ClientConnection(asyncio.Protocol):
    """One client connection; `queue[0]` is the request being answered, later ones pipelined."""

    def __init__(self, server: ConnectionHost) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = HttpRequestParser(self)
        self.queue: deque[Request] = deque()
        self.parsing: Request | None = None
        self.url = b""
        self.headers: Headers = []
        self.head_bytes = 0
        self.deadline = 0.0
        self.peer = "unknown"
        self.sockname: tuple[str, int] | None = None
        self.paused = 0
        self.write_paused = False
        self.lingering = False
        self.no_more = False
        """No further request is read (an Upgrade, a bad pipelined head, the client's EOF)."""
        self.upgraded = b""
        """Bytes the client sent after an Upgrade request's head (for the tunnel)."""
        self.alpn: str | None = None
        """The ALPN protocol the TLS client picked (None: cleartext, or no ALPN)."""
        self.fresh = True
        """No byte read yet: the first ones may be the HTTP/2 preface (h2c, prior knowledge)."""

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        server = self.server
        tls = transport.get_extra_info("ssl_object")
        if tls is not None:
            self.alpn = tls.selected_alpn_protocol()
            handoff = server.alpn_handoff.get(self.alpn or "")
            if handoff is not None:
                protocol = handoff(transport)
                transport.set_protocol(protocol)
                protocol.connection_made(transport)
                return
        if len(server.connections) >= server.max_connections or server.stopping:
            server.errors["max-connections"] += 1
            transport.write(_REFUSED)
            transport.close()
            return
        self.transport = transport
        server.connections.add(self)
        self.deadline = server.loop.time() + server.header_timeout
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "unknown"
        sockname = transport.get_extra_info("sockname")
        self.sockname = (str(sockname[0]), int(sockname[1])) if sockname else None

    def data_received(self, data: bytes) -> None:
        if self.lingering or self.no_more:
            return
        if self.fresh:
            self.fresh = False
            if data[:4] == b"PRI " and self._to_h2(data):
                return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as upgrade:
            self.no_more = True  # CONNECT (refused already) or an Upgrade: its bytes wait
            self.upgraded = data[upgrade.args[0] :]
            self._pause(_PAUSE_PIPELINE, True)
        except HttpParserCallbackError as error:
            if isinstance(error.__context__, _HeadTooLargeError):
                self._refuse(400, "header-too-large", "request head too large")
            else:  # a bug of ours: log it, and never leave the client hanging
                log.exception("handling a request failed", exc_info=error.__context__)
                self.abort()
        except HttpParserError as error:
            self._bad_request(f"invalid request: {error}")

    def eof_received(self) -> bool:
        if self.lingering or not self.queue:
            self.close()
        elif not self.queue[-1].complete:
            self._bad_request("the request body broke off")
        else:
            self.no_more = True
        return True  # keep the write side open for the response under way

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.connections.discard(self)
        queue, self.queue = self.queue, deque()
        if queue and queue[0].sink is not None:
            queue[0].sink.on_request_error("the client went away")

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.queue and self.queue[0].sink is not None:
            self.queue[0].sink.on_client_paused(True)

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.queue and self.queue[0].sink is not None:
            self.queue[0].sink.on_client_paused(False)

    def _to_h2(self, data: bytes) -> bool:
        """The client speaks HTTP/2 with prior knowledge: its connection goes to the HTTP/2
        handler (`alpn_handoff['h2']`, registered when HTTP/2 is served)."""
        handoff = self.server.alpn_handoff.get("h2")
        transport = self.transport
        if handoff is None or transport is None:
            return False
        self.transport = None
        self.server.connections.discard(self)
        protocol = handoff(transport)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(data)
        return True

    # -- llhttp callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self.head_bytes += len(url)
        if len(self.url) > self.server.max_header_bytes:
            raise _HeadTooLargeError

    def on_header(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value)
        self.head_bytes += size + 4
        server = self.server
        if (
            size > server.max_header_bytes
            or self.head_bytes > server.max_head_bytes
            or len(self.headers) >= MAX_HEADERS
        ):
            raise _HeadTooLargeError
        self.headers.append((name.lower(), name, value))

    def on_headers_complete(self) -> None:
        if self.lingering or self.no_more:
            return
        parser = self.parser
        version = parser.get_http_version()
        if version not in ("1.1", "1.0"):
            self._refuse(400, "bad-request", f"HTTP/{version} is not served")
            return
        request = Request(parser.get_method(), self.url, version, self.headers)
        request.received_at = self.server.loop.time()
        request.keep_alive = parser.should_keep_alive()
        connection: set[bytes] = set()
        hosts = 0
        for lower, _, value in self.headers:
            if lower == b"content-length":
                request.length = int(value)
            elif lower == b"transfer-encoding":
                request.chunked = True  # llhttp refuses any that does not end in chunked
            elif lower == b"host":
                request.host = value
                hosts += 1
            elif lower == b"expect":
                request.expect_continue = value.strip().lower() == b"100-continue"
            elif lower == b"connection":
                connection.update(t.strip().lower() for t in value.split(b","))
            elif lower == b"upgrade":
                request.upgrade = value
        if hosts > 1 or (hosts == 0 and version == "1.1"):
            self._refuse(400, "bad-request", "HTTP/1.1 needs exactly one Host header")
            return
        request.connection = frozenset(connection)
        if b"upgrade" not in connection:
            request.upgrade = None
        self.parsing = request
        self.queue.append(request)
        self.deadline = 0.0
        if len(self.queue) == 1:
            self.server.handler(self, request)
        else:
            self._pause(_PAUSE_PIPELINE, True)

    def on_body(self, data: bytes) -> None:
        request = self.parsing
        if request is None:
            return
        if request.attached and request.sink is not None:
            request.sink.on_request_body(data)
        else:
            request.buffered.append(data)
            if sum(map(len, request.buffered)) > BUFFER_HIGH:
                self._pause(_PAUSE_BUFFER, True)

    def on_message_complete(self) -> None:
        request = self.parsing
        if request is None:
            return
        request.complete = True
        if request.attached and request.sink is not None:
            request.sink.on_request_end()

    # -- the handler's side -----------------------------------------------------------------

    def attach(self, request: Request) -> None:
        """Start delivering the body (what was held back first) to `request.sink`."""
        request.attached = True
        sink = request.sink
        assert sink is not None
        buffered, request.buffered = request.buffered, []
        for chunk in buffered:
            sink.on_request_body(chunk)
        if request.complete and request.has_body:
            sink.on_request_end()
        self._pause(_PAUSE_BUFFER, False)

    def detach(self, request: Request) -> None:
        """Hold the body back again (a retry waits for its connection)."""
        request.attached = False

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.lingering:
            self.transport.write(data)

    def pause_reading(self, paused: bool) -> None:
        """The sink cannot take more body for now (its backend's buffer is full)."""
        self._pause(_PAUSE_SINK, paused)

    def respond(self, response: bytes, *, keep_alive: bool = True) -> None:
        """Answer the current request at once (an error made by the proxy)."""
        if self.queue:
            self.queue[0].status = int(response[9:12])
        self.write(response)
        self.finish(keep_alive)

    def finish(self, keep_alive: bool) -> None:
        """The response to `queue[0]` is complete; go on with the next request or close."""
        if not self.queue:
            return
        request = self.queue.popleft()
        request.sink = None
        self.server.answered(request)
        if not request.complete:
            self._linger()  # its body was not read: this connection cannot carry another
            return
        if not (keep_alive and request.keep_alive) or self.server.stopping or self.no_more:
            self.close()
            return
        self._pause(_PAUSE_SINK, False)
        if self.queue:
            self._pause(_PAUSE_PIPELINE, False)
            self.server.handler(self, self.queue[0])
        else:
            self.parsing = None
            self.deadline = self.server.loop.time() + self.server.header_timeout

    def hand_over(self) -> asyncio.Transport | None:
        """The connection leaves HTTP (a tunnel takes its transport). It stays in
        `server.connections`, counted against max-connections, until the tunnel calls
        `tunnel_closed`."""
        transport, self.transport = self.transport, None
        if self.queue:
            self.queue[0].status = 101
            self.server.answered(self.queue[0])
        self.queue.clear()
        self.parsing = None
        self.deadline = 0.0
        return transport

    def tunnel_closed(self) -> None:
        self.server.connections.discard(self)

    def abort(self) -> None:
        """Break the connection off (a response that cannot be completed)."""
        if self.queue:
            self.queue[0].status = 0
            self.server.answered(self.queue[0])
        self.queue.clear()
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- internals --------------------------------------------------------------------------

    def _pause(self, reason: int, paused: bool) -> None:
        before = self.paused
        self.paused = before | reason if paused else before & ~reason
        transport = self.transport
        if transport is None or bool(before) == bool(self.paused) or transport.is_closing():
            return
        if self.paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _bad_request(self, message: str) -> None:
        queue = self.queue
        if not queue:
            self._refuse(400, "bad-request", message)
        elif not queue[0].complete and queue[0].sink is not None:
            self.parsing = None
            queue[0].sink.on_request_error(message)  # its body is broken
        else:
            self.no_more = True  # a later request is: close once the current one is answered

    def _refuse(self, status: int, reason: str, message: str) -> None:
        """Answer a request that cannot be parsed or handed on, and close."""
        self.server.errors[reason] += 1
        if self.server.on_answered is not None:
            self.server.on_answered(status, 0.0)  # a client exchange too, over at once
        self.queue.clear()
        self.parsing = None
        self.write(error_response(status, reason, message, close=True))
        self._linger()

    def _linger(self) -> None:
        """Close once the client has read the answer: stop sending, drop what still comes."""
        transport = self.transport
        if transport is None or self.lingering:
            return
        self.lingering = True
        self.queue.clear()
        self.deadline = self.server.loop.time() + LINGER_S
        self._pause(_PAUSE_BUFFER | _PAUSE_PIPELINE | _PAUSE_SINK, False)
        if transport.can_write_eof():
            transport.write_eof()
        else:
            transport.close()
