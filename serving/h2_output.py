"""What leaves an HTTP/2 connection: frames coalesced into one socket write per event-loop turn.

A unary gRPC call through the proxy queues half a dozen frames on each side (HEADERS, DATA,
trailers, WINDOW_UPDATEs), each from a different callback. Writing each at once cost one
`transport.write` (one `send` system call) per frame — about half the proxy's CPU per call
(docs/benchmarks.md, "gRPC through the proxy"). Here a connection only marks itself dirty, and
one callback scheduled with `loop.call_soon` hands everything h2 queued meanwhile
(`data_to_send()` concatenates it) to the transport in one write. Closing paths write at once
(`flush_now`), so a GOAWAY is out before the transport closes.

`H2ClientOutput` adds what a client stream (`serving.h2_stream.H2Stream`) sends on its
connection: headers, data within the client's windows, trailers, resets, the proxy's own errors,
and the batched return of request bytes to the client's windows. `streams_to_resume` says which
streams, of either side's connections, a WINDOW_UPDATE lets send again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from hpack import NeverIndexedHeaderTuple

__all__ = [
    "ACK_BATCH",
    "HOP_BY_HOP",
    "MAX_WRITE_BUFFER",
    "CoalescedOutput",
    "H2ClientOutput",
    "Headers",
    "relayed",
    "streams_to_resume",
    "upstream_headers",
]

Headers = list[tuple[bytes, bytes]]
Stream = TypeVar("Stream")

MAX_WRITE_BUFFER = 4 << 20
"""Bytes waiting for a client that does not read, past which its connection is dropped."""
ACK_BATCH = 16 << 10
"""Request bytes returned to a client's windows at once. A stream's window (64 KiB) reopens as
its bytes go on to the backend, the connection's as soon as they arrive: the streams' windows
bound the memory, and a stream whose backend is slow never holds up the client's others."""
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
"""Connection-specific fields: never relayed (a request's `te: trailers` excepted)."""
_CREDENTIALS = frozenset({b"authorization", b"proxy-authorization"})
_UNINDEXED = _CREDENTIALS | {b"grpc-timeout"}
"""Request fields sent never-indexed (and cookies under 20 bytes): credentials stay out of the
HPACK tables; a deadline differs from call to call, so indexed each would evict a stable field
and lengthen every search of the encoder's table."""


def _as_sent(header: tuple[bytes, bytes], unindexed: frozenset[bytes]) -> tuple[bytes, bytes]:
    """One field as the proxy sends it: never indexed when its name is in `unindexed`, when it
    is a cookie under 20 bytes (h2's `_secure_headers` rule) or when it came so (RFC 7541
    §7.1.3); else a plain tuple, which h2 takes as it is (a `HeaderTuple` it rebuilds)."""
    name, value = header
    if name in unindexed or (name == b"cookie" and len(value) < 20):
        return NeverIndexedHeaderTuple(name, value)
    return header if type(header) is NeverIndexedHeaderTuple else (name, value)


def relayed(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """A backend's response head or trailers as passed on: no hop-by-hop field, and each field
    as `upstream_headers` sends a request's (credentials never indexed, the rest plain tuples)."""
    return [_as_sent(header, _CREDENTIALS) for header in headers if header[0] not in HOP_BY_HOP]


def upstream_headers(
    request: Iterable[tuple[bytes, bytes]], peer: str, authority: bytes | None, prefix: bytes
) -> Headers:
    """A client's request head as a backend gets it: its `:authority` (None: the client's, with
    `preserve-host`), `:path` under its prefix, `:scheme` http, no hop-by-hop field but
    `te: trailers`, the client's address last in `x-forwarded-for`.

    The connections skip h2's outbound normalisation (`normalize_outbound_headers`): its
    lower-case names, trimmed values and dropped connection fields h2 enforced on receipt
    already, and its `_secure_headers` rule is applied here: credentials and cookies under 20
    bytes go never-indexed, out of the HPACK tables. A field received never-indexed stays so
    (RFC 7541 §7.1.3); the others go as plain tuples, which h2 takes as they are (a
    `HeaderTuple` it rebuilds, in Python)."""
    out: Headers = []
    rest: Headers = []
    forwarded = [peer.encode()]
    for header in request:
        name, value = header
        if name == b":authority":
            out.append((name, value if authority is None else authority))
        elif name == b":path":
            out.append((name, prefix + value))
        elif name == b":scheme":
            out.append((name, b"http"))
        elif name[:1] == b":":
            out.append((name, value))
        elif name == b"x-forwarded-for":
            forwarded.insert(0, value)
        elif name not in HOP_BY_HOP or (name == b"te" and value == b"trailers"):
            rest.append(_as_sent(header, _UNINDEXED))
    rest.append((b"x-forwarded-for", b", ".join(forwarded)))
    return out + rest


def streams_to_resume(
    streams: Mapping[int, Stream], stream_id: int | None, waiting: Callable[[Stream], bool]
) -> list[Stream]:
    """The streams a WINDOW_UPDATE on `stream_id` lets send again: that stream, or every stream
    of the connection for the connection's window (`stream_id` 0), of those `waiting` to send.
    A list, so that sending may open or close streams meanwhile."""
    if stream_id:
        stream = streams.get(stream_id)
        return [stream] if stream is not None and waiting(stream) else []
    return [stream for stream in streams.values() if waiting(stream)]


class CoalescedOutput:
    """An h2 connection's outgoing bytes, written once per event-loop turn."""

    def __init__(self, h2: H2Connection, loop: asyncio.AbstractEventLoop) -> None:
        self.h2 = h2
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.flush_due = False
        """A `flush_now` is scheduled: frames queued until it runs leave with it."""

    def flush(self) -> None:
        """Have what h2 queued written before the loop waits for the sockets again."""
        if self.flush_due or self.transport is None:
            return
        self.flush_due = True
        self.loop.call_soon(self.flush_now)

    def flush_now(self) -> None:
        """Write what h2 queued, now (the scheduled flush, and closing paths)."""
        self.flush_due = False
        transport = self.transport
        if transport is None:
            return
        data = self.h2.data_to_send()
        if data:
            transport.write(data)
            self.wrote(transport)

    def wrote(self, transport: asyncio.Transport) -> None:
        """Called after each write (a subclass may check the transport's buffer)."""


class H2ClientOutput(CoalescedOutput):
    """The frames a client connection's streams send, and the client's windows reopened."""

    def __init__(
        self, h2: H2Connection, loop: asyncio.AbstractEventLoop, goaways: Counter[str]
    ) -> None:
        super().__init__(h2, loop)
        self.goaways = goaways
        """The listener's count of connections dropped, by reason (`write-buffer` here)."""
        self.unacked: dict[int, int] = {}
        """Per stream: request bytes passed on and not yet returned to its window."""

    def wrote(self, transport: asyncio.Transport) -> None:
        if transport.get_write_buffer_size() > MAX_WRITE_BUFFER:
            self.goaways["write-buffer"] += 1
            transport.abort()

    def ack(self, stream_id: int, size: int) -> None:
        """`size` request bytes of the stream went on: its window reopens (batched)."""
        if size <= 0 or self.transport is None:
            return
        held = self.unacked.get(stream_id, 0) + size
        if held < ACK_BATCH:
            self.unacked[stream_id] = held
            return
        self.unacked.pop(stream_id, None)
        try:
            self.h2.increment_flow_control_window(held, stream_id=stream_id)
        except ProtocolError:  # the stream closed meanwhile
            return
        self.flush()

    def send_headers(self, stream_id: int, headers: Headers, end: bool) -> None:
        try:
            self.h2.send_headers(stream_id, headers, end_stream=end)
        except ProtocolError:
            return
        self.flush()

    def send_data(self, stream_id: int, out: deque[tuple[bytes, int]]) -> int:
        """Send from `out` what the client's windows admit; returns the bytes sent."""
        h2, sent = self.h2, 0
        try:
            while out:
                window = min(h2.local_flow_control_window(stream_id), h2.max_outbound_frame_size)
                if window <= 0:
                    break
                data, size = out.popleft()
                if size > window:
                    out.appendleft((data[window:], size - window))
                    data, size = data[:window], window
                h2.send_data(stream_id, data)
                sent += size
        except ProtocolError:  # the client closed the stream meanwhile
            out.clear()
        self.flush()
        return sent

    def end_stream(self, stream_id: int, trailers: Headers | None) -> None:
        try:
            if trailers:
                self.h2.send_headers(stream_id, trailers, end_stream=True)
            else:
                self.h2.end_stream(stream_id)
        except ProtocolError:
            pass
        self.flush()

    def reset_stream(self, stream_id: int, code: ErrorCodes) -> None:
        with contextlib.suppress(ProtocolError):
            self.h2.reset_stream(stream_id, code)
        self.flush()

    def send_error(self, stream_id: int, status: int, reason: str, message: str) -> None:
        body = message.encode() + b"\n"
        headers = [
            (b":status", str(status).encode()),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"x-rl-lb-error", reason.encode()),
        ]
        try:
            self.h2.send_headers(stream_id, headers)
            self.h2.send_data(stream_id, body, end_stream=True)  # far under any window
        except ProtocolError:
            pass
        self.flush()
