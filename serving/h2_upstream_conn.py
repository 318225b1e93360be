"""An h2c connection to a backend and the streams on it (split from `serving.h2_upstream`,
which keeps the pool that opens these connections and the interfaces a client stream sees).

Each frame a stream queues is written once per event-loop turn with the others
(`serving.h2_output.CoalescedOutput`). Flow control is kept honest here: request bytes wait in
`UpstreamStream.pending` until the backend's window admits them, and response bytes return to
the backend's window only once the listener has passed them on (`UpstreamStream.ack`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, cast

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from serving.h2_connection import ProxyH2Connection
from serving.h2_output import CoalescedOutput, Headers, streams_to_resume

if TYPE_CHECKING:
    from serving.h2_upstream import H2UpstreamPool, StreamListener

__all__ = ["CONNECTION_WINDOW", "STREAM_WINDOW", "H2UpstreamConnection", "UpstreamStream"]

STREAM_WINDOW = 256 << 10
"""Receive window of each backend stream: response bytes held for one slow client at most
(returned to the backend only as the client takes them)."""
_ACK_BATCH = 16 << 10
"""Response bytes returned to a stream's window at once: well under any window (a batch larger
than the window would never fill, and the stream would stall)."""
CONNECTION_WINDOW = 16 << 20
"""Receive window of each backend connection, returned as soon as bytes arrive (the streams'
windows bound the memory), so a stalled stream never holds up the others on its connection."""


class UpstreamStream:
    """One request on an h2c connection: what still waits for the backend's window."""

    __slots__ = (
        "conn",
        "deadline",
        "ended",
        "idle_ok",
        "listener",
        "pending",
        "stream_id",
        "unacked",
    )

    def __init__(self, conn: H2UpstreamConnection, stream_id: int, listener: StreamListener):
        self.conn = conn
        self.stream_id = stream_id
        self.listener: StreamListener | None = listener
        self.pending: deque[bytes] = deque()
        self.ended = False
        """The request's end is queued (sent once `pending` is out)."""
        self.deadline = conn.pool.loop.time() + conn.pool.read_timeout
        """Until the response head (then moved by each read), 0: none."""
        self.idle_ok = False
        """After the head the stream may be quiet as long as it likes (a gRPC stream)."""
        self.unacked = 0
        """Response bytes passed on and not yet returned to the stream's window (batched)."""

    def send(self, data: bytes, end: bool) -> None:
        """Request body bytes (`end`: the last); they leave as the window admits them."""
        if data:
            self.pending.append(data)
        self.ended = self.ended or end
        self.conn.pump(self)
        self.conn.flush()

    def ack(self, size: int) -> None:
        """`size` response bytes were passed on: the backend may send that much more."""
        conn = self.conn
        self.unacked += size
        if self.unacked < _ACK_BATCH or self.stream_id not in conn.streams:
            return
        size, self.unacked = self.unacked, 0
        try:
            conn.h2.increment_flow_control_window(size, stream_id=self.stream_id)
        except ProtocolError:  # the stream closed meanwhile
            return
        conn.flush()

    def reset(self) -> None:
        """Give the stream up (the client left, a deadline passed)."""
        self.listener = None
        conn = self.conn
        if conn.streams.pop(self.stream_id, None) is not None:
            with contextlib.suppress(ProtocolError):
                conn.h2.reset_stream(self.stream_id, ErrorCodes.CANCEL)
            conn.flush()
            conn.pool.serve_waiting()


class H2UpstreamConnection(CoalescedOutput, asyncio.Protocol):
    """One h2c connection to a backend (its frames leave coalesced: `serving.h2_output`)."""

    def __init__(self, pool: H2UpstreamPool) -> None:
        # request headers were validated on receipt from the client (H2ClientConnection) or are
        # the proxy's own (health probes): validating them again per call cost ~4% of the CPU,
        # normalising them (already lower-case, trimmed, without connection fields) ~3%; the
        # request keeps credentials out of the HPACK tables itself (`h2_output.upstream_headers`)
        config = H2Configuration(
            client_side=True,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            normalize_inbound_headers=False,  # it joins `cookie` fields: a request's, not ours
        )
        super().__init__(ProxyH2Connection(config), pool.loop)
        self.pool = pool
        self.streams: dict[int, UpstreamStream] = {}
        self.usable = True
        """False after a GOAWAY or once closing: no new stream goes here."""
        self.returned = 0
        """Bytes received and not yet returned to the connection's window (batched)."""
        self.max_streams = self.h2.remote_settings.max_concurrent_streams
        """The backend's MAX_CONCURRENT_STREAMS, read again when its SETTINGS change."""

    @property
    def capacity(self) -> int:
        """Streams this connection may still open (the backend's MAX_CONCURRENT_STREAMS)."""
        if not self.usable or self.transport is None:
            return 0
        return self.max_streams - len(self.streams)

    def open_stream(self, listener: StreamListener, headers: Headers, end: bool) -> None:
        stream_id = self.h2.get_next_available_stream_id()
        stream = UpstreamStream(self, stream_id, listener)
        self.streams[stream_id] = stream
        self.h2.send_headers(stream_id, headers, end_stream=end)
        stream.ended = end
        self.flush()
        listener.on_stream_open(stream)

    def pump(self, stream: UpstreamStream) -> None:
        """Send what the stream holds as far as the windows allow."""
        h2, sid = self.h2, stream.stream_id
        if sid not in self.streams:
            stream.pending.clear()
            return
        pending = stream.pending
        try:
            while pending:
                window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if window <= 0:
                    return
                chunk = pending.popleft()
                if len(chunk) > window:
                    pending.appendleft(chunk[window:])
                    chunk = chunk[:window]
                last = stream.ended and not pending  # the end rides on the last bytes' frame
                h2.send_data(sid, chunk, end_stream=last)
                if last:
                    stream.ended = False
                if stream.listener is not None:
                    stream.listener.on_body_sent(len(chunk))
            if stream.ended:
                stream.ended = False
                h2.end_stream(sid)
        except ProtocolError:  # the backend closed the stream meanwhile
            pending.clear()

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        # values given here are the ones the first SETTINGS frame carries (h2 sends the current
        # ones: changes made by assignment would wait for an acknowledgement)
        self.h2.local_settings = Settings(
            client=True,
            initial_values={
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.ENABLE_PUSH: 0,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as error:
            self._fail_all("upstream-reset", f"HTTP/2 protocol error from the backend: {error}")
            self.close()
            return
        for event in events:
            self._event(event)
        self.flush()

    def _event(self, event: object) -> None:
        if isinstance(event, DataReceived):
            flow = event.flow_controlled_length or 0
            self.returned += flow
            if self.returned >= CONNECTION_WINDOW // 4:
                self.h2.increment_flow_control_window(self.returned)
                self.returned = 0
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None and stream.listener is not None:
                if stream.deadline:
                    stream.deadline = self.pool.loop.time() + self.pool.read_timeout
                stream.listener.on_response_data(event.data or b"", flow)
        elif isinstance(event, ResponseReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None and stream.listener is not None:
                headers = list(event.headers or [])
                status = _status(headers)
                if 100 <= status < 200:
                    return  # an interim response: the real one follows
                stream.deadline = (
                    0.0 if stream.idle_ok else self.pool.loop.time() + self.pool.read_timeout
                )
                stream.listener.on_response(status, headers, event.stream_ended is not None)
        elif isinstance(event, TrailersReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None and stream.listener is not None:
                stream.listener.on_trailers(list(event.headers or []))
        elif isinstance(event, StreamEnded):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None and stream.listener is not None:
                listener, stream.listener = stream.listener, None  # no cycle left to collect
                listener.on_response_end()
            self.pool.serve_waiting()
        elif isinstance(event, StreamReset):
            stream = self.streams.pop(event.stream_id or 0, None)
            if stream is not None and stream.listener is not None:
                refused = event.error_code == ErrorCodes.REFUSED_STREAM
                message = f"the backend reset the stream ({_code_name(event.error_code)})"
                stream.listener.on_upstream_error("upstream-reset", message, refused)
            self.pool.serve_waiting()
        elif isinstance(event, WindowUpdated):
            for stream in streams_to_resume(self.streams, event.stream_id, _has_request_left):
                self.pump(stream)
        elif isinstance(event, RemoteSettingsChanged):
            self.max_streams = self.h2.remote_settings.max_concurrent_streams
            self.pool.serve_waiting()
        elif isinstance(event, ConnectionTerminated):
            self.usable = False
            last = event.last_stream_id or 0
            for sid in [s for s in self.streams if s > last]:
                stream = self.streams.pop(sid)
                if stream.listener is not None:
                    message = "the backend is going away (GOAWAY) and did not take the stream"
                    stream.listener.on_upstream_error("upstream-reset", message, True)
            if not self.streams:
                self.close()
            self.pool.serve_waiting()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.usable = False
        self._fail_all("upstream-reset", "the backend closed the HTTP/2 connection")
        self.pool.forget(self)

    def _fail_all(self, reason: str, message: str) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            if stream.listener is not None:
                stream.listener.on_upstream_error(reason, message, False)

    def sweep(self, now: float) -> None:
        for stream in [s for s in self.streams.values() if 0.0 < s.deadline < now]:
            listener = stream.listener
            stream.reset()
            if listener is not None:
                listener.on_upstream_error(
                    "upstream-timeout", "the backend did not answer in time", False
                )

    def close(self) -> None:
        self.usable = False
        if self.transport is not None:
            try:
                self.h2.close_connection()
                self.flush_now()
            except ProtocolError:
                pass
            self.transport.close()


def _has_request_left(stream: UpstreamStream) -> bool:
    """Request bytes or its end wait for the backend's window."""
    return bool(stream.pending) or stream.ended


def _status(headers: Headers) -> int:
    for name, value in headers:
        if name == b":status":
            return int(value) if value.isdigit() else 0
    return 0


def _code_name(code: object) -> str:
    return code.name if isinstance(code, ErrorCodes) else str(code)
