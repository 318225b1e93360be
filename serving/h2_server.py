"""The client side of HTTP/2: h2c with prior knowledge and h2 over TLS (ALPN), via the `h2` library.

`serving.http_connection.ClientConnection` hands a connection over when its first bytes are the
HTTP/2 preface (or its TLS client picked `h2`): from then on an `H2ClientConnection` owns the
transport, and every stream becomes an `serving.h2_stream.H2Stream`, balanced on its own.

Hostile input is bounded here, each case ending the connection with the GOAWAY code the RFCs
name while the other connections carry on:
- rapid reset (CVE-2023-44487): premature resets past a burst of `h2-max-concurrent-streams`
  plus `h2-max-resets` a second (a token bucket) → ENHANCE_YOUR_CALM. A reset is premature when
  the client resets a stream not yet answered, younger than `PREMATURE_S` (Envoy's lifetime)
  or, for a gRPC call, half its `grpc-timeout` (not under `PREMATURE_FLOOR_S`; both in
  `serving.h2_stream`). The attack resets streams as it opens them, escaping the stream limit.
  A grpcio client whose calls expire under load resets hundreds at once too, but those lived
  out their deadline; the calls that waited for their slots go out and are reset at once, one
  stream limit's worth per wave at most, which the burst absorbs (one already past its
  deadline reaches no backend: `H2Stream`);
- SETTINGS and PING floods: more than `_MAX_CONTROL_FRAMES` a second → ENHANCE_YOUR_CALM; and
  reading stops while the client does not read our acknowledgements;
- oversized header blocks: the HPACK decoder's header list limit (the HTTP/1.1 head limit,
  `8 × max-header-bytes`) → ENHANCE_YOUR_CALM (h2's DenialOfServiceError);
- CONTINUATION flood: h2 refuses a header block of more than 64 CONTINUATION frames →
  PROTOCOL_ERROR, so a block never holds more than 64 × 16 KiB;
- too many streams: SETTINGS_MAX_CONCURRENT_STREAMS = `h2-max-concurrent-streams`, a stream
  beyond it → PROTOCOL_ERROR;
- flow-control abuse: DATA past our window or a window overflow → FLOW_CONTROL_ERROR; a client
  that stops reading (window 0) stalls only its own streams, whose backend streams stop at
  their window because response bytes are acknowledged upstream only once passed on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter
from collections.abc import Iterator
from typing import cast

from h2.config import H2Configuration
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, TooManyStreamsError
from h2.settings import SettingCodes, Settings
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from serving.config import ProxyConfig
from serving.grpc_settings import GRPC_CODES
from serving.h2_connection import ProxyH2Connection
from serving.h2_http1 import Http1Pool
from serving.h2_output import ACK_BATCH, H2ClientOutput, streams_to_resume
from serving.h2_stream import H2Stream
from serving.h2_upstream import H2UpstreamPool, Headers, StreamPool
from serving.monitor import Backend
from serving.proxy import Forwarder

__all__ = ["H2ClientConnection", "H2Server"]

log = logging.getLogger("rl_lb.serving.h2")

_MAX_CONTROL_FRAMES = 100
"""SETTINGS or PING frames a client may send in one second (gRPC keepalive sends a few a minute)."""
_IDLE_S = 300.0
"""An HTTP/2 connection without a stream this long is closed (GOAWAY NO_ERROR)."""


class H2Server:
    """What the HTTP/2 connections of one listener share: limits, upstream pools, counters."""

    def __init__(
        self, config: ProxyConfig, forwarder: Forwarder, tls: ssl.SSLContext | None = None
    ) -> None:
        self.tls = tls
        """The client context of https:// backends spoken to in h2 (ALPN h2; None: defaults)."""
        self.forwarder = forwarder
        self.loop = asyncio.get_running_loop()
        self.config = config
        self.preserve_host = config.preserve_host
        self.error_codes = frozenset(config.grpc_error_codes)
        self.error_numbers = frozenset(GRPC_CODES[name] for name in config.grpc_error_codes)
        self.max_streams = config.h2_max_concurrent_streams
        self.max_resets = config.h2_max_resets
        self.reset_burst = float(self.max_resets + self.max_streams)
        """Premature resets a connection may send at once: a stream limit's worth of late calls."""
        self.max_header_list = 8 * config.max_header_bytes
        self.h2c = config.backend_protocol == "h2c"
        self.pools: dict[str, H2UpstreamPool] = {}
        self.http1_pools: dict[str, Http1Pool] = {}
        """`backend-protocol = http1`: each backend's HTTP/1.1 pool, offered to the streams."""
        self.streams_by_backend: Counter[str] = Counter()
        """gRPC streaming calls open per backend, apart from in-flight."""
        self.goaways: Counter[str] = Counter()
        """Connections we closed with a GOAWAY error code, by code name."""
        self.client_resets: Counter[str] = Counter()
        """Streams the clients reset: `premature` (counted toward `h2-max-resets`) or `late`."""
        self.connections: set[H2ClientConnection] = set()
        self.stopping = False

    def __call__(self, transport: asyncio.Transport) -> H2ClientConnection:
        """The handoff factory (`HttpServer.alpn_handoff['h2']`)."""
        return H2ClientConnection(self)

    def pool_for(self, backend: Backend) -> StreamPool:
        if not self.h2c:
            bridge = self.http1_pools.get(backend.url)
            if bridge is None:
                bridge = self.http1_pools[backend.url] = Http1Pool(backend.pool)
            return bridge
        pool = self.pools.get(backend.url)
        if pool is None:
            config = self.config
            pool = self.pools[backend.url] = H2UpstreamPool(
                backend.url,
                connections=config.h2_connections_per_backend,
                connect_timeout=config.connect_timeout_s,
                read_timeout=config.read_timeout_s,
                tls=self.tls,
            )
        return pool

    def streams_open(self, backend: Backend, delta: int) -> None:
        self.streams_by_backend[backend.url] += delta

    def answered(self, status: int, seconds: float) -> None:
        self.forwarder.stats.answered(status, seconds)

    @property
    def busy(self) -> bool:
        return any(c.live_streams() for c in self.connections)

    def sweep(self, now: float) -> None:
        for conn in list(self.connections):
            conn.sweep(now)
        for pool in self.pools.values():
            pool.sweep(now)
        present = {b.url for b in self.forwarder.monitor.backends}
        for url in [u for u, p in self.pools.items() if u not in present and not p.streams]:
            pool = self.pools.pop(url)
            self.loop.create_task(pool.close())
        for url in [u for u in self.http1_pools if u not in present]:
            del self.http1_pools[url]

    def stop(self) -> None:
        """No new streams: idle connections close now, busy ones once their streams are over."""
        self.stopping = True
        for conn in list(self.connections):
            if not conn.live_streams():
                conn.goaway(ErrorCodes.NO_ERROR)

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.goaway(ErrorCodes.NO_ERROR)

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self.pools.values()))

    def collect(self) -> Iterator[Metric]:
        """Prometheus families (added to `ProxyMetrics`)."""
        streams = GaugeMetricFamily(
            "rl_lb_backend_grpc_streams",
            "gRPC streaming calls open, apart from in_flight",
            labels=["backend"],
        )
        for backend in self.forwarder.monitor.backends:
            streams.add_metric([backend.url], self.streams_by_backend[backend.url])
        yield streams
        yield GaugeMetricFamily(
            "rl_lb_h2_connections", "HTTP/2 client connections open", value=len(self.connections)
        )
        goaways = CounterMetricFamily(
            "rl_lb_h2_goaways",
            "HTTP/2 client connections closed by the proxy for an error, by GOAWAY code",
            labels=["code"],
        )
        for code, count in sorted(self.goaways.items()):
            goaways.add_metric([code], count)
        yield goaways
        resets = CounterMetricFamily(
            "rl_lb_h2_client_resets",
            "HTTP/2 streams reset by the clients; premature ones count toward h2-max-resets",
            labels=["kind"],
        )
        for kind in ("premature", "late"):
            resets.add_metric([kind], self.client_resets[kind])
        yield resets


class H2ClientConnection(H2ClientOutput, asyncio.Protocol):
    """One HTTP/2 client connection (what its streams send: `serving.h2_output`)."""

    def __init__(self, server: H2Server) -> None:
        # Response headers from an h2 backend were validated on receipt (H2UpstreamConnection),
        # so checking and normalising them again on the way out is skipped (`relayed` keeps
        # credentials out of the HPACK tables); an HTTP/1.1 backend's go through both.
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_inbound_headers=True,
            validate_outbound_headers=not server.h2c,
            normalize_outbound_headers=not server.h2c,
        )
        super().__init__(ProxyH2Connection(config), server.loop, server.goaways)
        self.server = server
        self.streams: dict[int, H2Stream] = {}
        self.peer = "unknown"
        self.window_start = 0.0
        self.control_frames = 0
        self.reset_tokens = server.reset_burst
        """Premature resets the client may still send (refilled at `h2-max-resets` a second)."""
        self.tokens_at = 0.0
        self.active = 0.0
        self.returned = 0
        """Request bytes received and not yet returned to the connection's window."""

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        server = self.server
        server.connections.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else "unknown"
        self.active = self.window_start = self.tokens_at = server.loop.time()
        h2 = self.h2
        # given as initial values, the first SETTINGS frame carries them (by assignment they
        # would wait for an acknowledgement that was never asked for)
        h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: server.max_streams,
                SettingCodes.MAX_HEADER_LIST_SIZE: server.max_header_list,
            },
        )
        h2.decoder.max_header_list_size = server.max_header_list  # before the client's ack
        h2.initiate_connection()
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as error:
            code = error.error_code
            if not isinstance(code, ErrorCodes):
                code = ErrorCodes.PROTOCOL_ERROR
            # a stream past MAX_CONCURRENT_STREAMS is refused by h2 itself: the limit is one of
            # the initial values (connection_made), in force before the client's acknowledgement
            level = logging.WARNING if isinstance(error, TooManyStreamsError) else logging.INFO
            log.log(level, "HTTP/2 client %s: %s (GOAWAY %s)", self.peer, error, code.name)
            self.goaway(code)
            return
        now = self.server.loop.time()
        self.active = now
        if now - self.window_start >= 1.0:
            self.window_start, self.control_frames = now, 0
        for event in events:
            self._event(event)
            if self.transport is None:
                return
        self.flush()

    def _event(self, event: object) -> None:
        if isinstance(event, RequestReceived):
            sid = event.stream_id or 0
            if self.server.stopping:
                self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
                return
            new = H2Stream(self, sid, list(cast(Headers, event.headers or [])))
            self.streams[sid] = new
            new.client_ended = event.stream_ended is not None  # no body: its StreamEnded follows
            new.start()
        elif isinstance(event, DataReceived):
            flow = event.flow_controlled_length or 0
            self.returned += flow  # the connection's window reopens at once: see ACK_BATCH
            if self.returned >= ACK_BATCH:
                self.h2.increment_flow_control_window(self.returned)
                self.returned = 0
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.on_client_data(event.data or b"", flow, event.stream_ended is not None)
        elif isinstance(event, StreamEnded):  # after the RequestReceived or DataReceived
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None and not stream.client_ended:
                stream.on_client_end()
        elif isinstance(event, TrailersReceived):
            pass  # request trailers are not forwarded (gRPC clients send none); END_STREAM follows
        elif isinstance(event, StreamReset):
            sid = event.stream_id or 0
            stream = self.streams.get(sid)
            if stream is None:
                return  # refused or long over: it cost the proxy nothing
            now = self.server.loop.time()
            premature = stream.reset_is_premature(now)
            self.server.client_resets["premature" if premature else "late"] += 1
            if premature and not self._take_reset_token(now):
                log.warning("HTTP/2 client %s: rapid reset (GOAWAY ENHANCE_YOUR_CALM)", self.peer)
                self.goaway(ErrorCodes.ENHANCE_YOUR_CALM)
                return
            del self.streams[sid]
            stream.on_client_gone()
        elif isinstance(event, PingReceived | RemoteSettingsChanged):
            self.control_frames += 1
            if self.control_frames > _MAX_CONTROL_FRAMES:
                log.warning(
                    "HTTP/2 client %s: SETTINGS/PING flood (GOAWAY ENHANCE_YOUR_CALM)", self.peer
                )
                self.goaway(ErrorCodes.ENHANCE_YOUR_CALM)
        elif isinstance(event, WindowUpdated):
            for stream in streams_to_resume(self.streams, event.stream_id, H2Stream.has_output):
                stream.pump()
        elif isinstance(event, ConnectionTerminated):
            self._forget_streams()
            if self.transport is not None:
                self.transport.close()

    def _take_reset_token(self, now: float) -> bool:
        """Charge one premature reset to the client's bucket; False once it is empty."""
        server = self.server
        refill = (now - self.tokens_at) * server.max_resets
        self.reset_tokens = min(server.reset_burst, self.reset_tokens + refill)
        self.tokens_at = now
        if self.reset_tokens < 1.0:
            return False
        self.reset_tokens -= 1.0
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.server.connections.discard(self)
        self._forget_streams()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()  # no more acks to queue for a client that does not read

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def forget(self, stream_id: int) -> None:
        """A stream over both ways leaves at once (not at the next sweep): a WINDOW_UPDATE for
        the connection walks the streams left, and a finished one has nothing to send."""
        self.streams.pop(stream_id, None)
        self.unacked.pop(stream_id, None)

    def _forget_streams(self) -> None:
        streams, self.streams = self.streams, {}
        for stream in streams.values():
            stream.on_client_gone()

    # -- lifecycle ------------------------------------------------------------------------

    def live_streams(self) -> int:
        return sum(1 for s in self.streams.values() if not s.closed)

    def sweep(self, now: float) -> None:
        for sid in [sid for sid, s in self.streams.items() if s.closed and s.done]:
            del self.streams[sid]
            self.unacked.pop(sid, None)
        for stream in [s for s in self.streams.values() if s.deadline < now and not s.closed]:
            stream.expired()
        if self.streams:
            self.active = now
        elif self.server.stopping or now - self.active > _IDLE_S:
            self.goaway(ErrorCodes.NO_ERROR)

    def goaway(self, code: ErrorCodes) -> None:
        """Close the connection with a GOAWAY carrying `code`; its streams are given up."""
        transport = self.transport
        if transport is None:
            return
        if code != ErrorCodes.NO_ERROR:
            self.server.goaways[code.name] += 1
            # what the bad frames made h2 queue (their acks) is not sent: only the GOAWAY
            self.h2.clear_outbound_data_buffer()
        with contextlib.suppress(ProtocolError):
            self.h2.close_connection(error_code=code)
        self.flush_now()
        self.transport = None
        self._forget_streams()
        transport.close()
