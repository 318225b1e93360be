"""What the proxy puts on the wire when it relays an HTTP/2 stream, header by header and frame by
frame: the representation choices that keep the per-call CPU down must not change what a backend
or a client receives, and must keep credentials out of the HPACK tables.

The end-to-end test puts a raw `h2` backend (it records what arrives) behind `rl-lb serve` and
sends gRPC-shaped calls with a raw `h2` client: each call's `grpc-timeout` differs, as a real
client's does.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from grpc_helpers import UNARY, call_headers
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, RequestReceived, StreamEnded, TrailersReceived
from hpack import HeaderTuple, NeverIndexedHeaderTuple
from serving_helpers import proxy_config

from serving.app import ProxyServer
from serving.h2_output import relayed, upstream_headers

CALLS = 30
BODY = b"\x00\x00\x00\x00\x05hello"
"""One gRPC message (uncompressed, 5 bytes)."""


def test_upstream_headers_rewrite_the_request_for_the_backend() -> None:
    request = [
        HeaderTuple(b":method", b"POST"),
        HeaderTuple(b":scheme", b"https"),
        HeaderTuple(b":authority", b"front.example"),
        HeaderTuple(b":path", b"/svc/Call"),
        HeaderTuple(b"content-type", b"application/grpc"),
        HeaderTuple(b"te", b"trailers"),
        HeaderTuple(b"grpc-timeout", b"4999876u"),
        HeaderTuple(b"authorization", b"Bearer secret"),
        HeaderTuple(b"cookie", b"a=1"),
        HeaderTuple(b"cookie", b"session=" + b"x" * 40),
        NeverIndexedHeaderTuple(b"x-private", b"kept never-indexed"),
        HeaderTuple(b"x-forwarded-for", b"10.0.0.1"),
        HeaderTuple(b"connection", b"close"),
    ]
    out = upstream_headers(request, "10.0.0.2", b"backend:50051", b"/prefix")
    assert out == [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"backend:50051"),
        (b":path", b"/prefix/svc/Call"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        (b"grpc-timeout", b"4999876u"),
        (b"authorization", b"Bearer secret"),
        (b"cookie", b"a=1"),
        (b"cookie", b"session=" + b"x" * 40),
        (b"x-private", b"kept never-indexed"),
        (b"x-forwarded-for", b"10.0.0.1, 10.0.0.2"),
    ]
    never = {h[0] for h in out if isinstance(h, NeverIndexedHeaderTuple)}
    assert never == {b"grpc-timeout", b"authorization", b"cookie", b"x-private"}
    long_cookie = [h for h in out if h[0] == b"cookie"][1]
    assert not isinstance(long_cookie, HeaderTuple)  # plain: h2 rebuilds HeaderTuples in Python
    preserved = upstream_headers(request, "10.0.0.2", None, b"")
    assert (b":authority", b"front.example") in preserved
    assert (b":path", b"/svc/Call") in preserved
    gzip = upstream_headers([(b":method", b"GET"), (b"te", b"gzip")], "p", None, b"")
    assert gzip == [(b":method", b"GET"), (b"x-forwarded-for", b"p")]


def test_relayed_drops_hop_by_hop_fields_and_marks_credentials() -> None:
    head = [
        HeaderTuple(b":status", b"200"),
        HeaderTuple(b"content-type", b"application/grpc"),
        HeaderTuple(b"te", b"trailers"),
        HeaderTuple(b"keep-alive", b"timeout=5"),
        HeaderTuple(b"proxy-authorization", b"Basic abc"),
        NeverIndexedHeaderTuple(b"x-token", b"t"),
    ]
    out = relayed(head)
    assert out == [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"proxy-authorization", b"Basic abc"),
        (b"x-token", b"t"),
    ]
    assert [isinstance(h, NeverIndexedHeaderTuple) for h in out] == [False, False, True, True]
    assert not any(isinstance(h, HeaderTuple) for h in out[:2])  # plain tuples


@dataclass
class Recorder:
    """A raw h2c backend: what each request brought, answered as a unary gRPC call."""

    heads: list[list[tuple[bytes, bytes]]] = field(default_factory=list)
    data_frames: list[tuple[bytes, bool]] = field(default_factory=list)
    """(bytes, whether END_STREAM came with them) of each DATA frame received."""
    table_entries: list[int] = field(default_factory=list)
    """The size of the backend's HPACK decoding table after each request head."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h2 = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        h2.initiate_connection()
        writer.write(h2.data_to_send())
        while data := await reader.read(65536):
            for event in h2.receive_data(data):
                if isinstance(event, RequestReceived):
                    self.heads.append(list(event.headers or []))
                    self.table_entries.append(len(h2.decoder.header_table.dynamic_entries))
                elif isinstance(event, DataReceived):
                    ended = event.stream_ended is not None
                    self.data_frames.append((event.data or b"", ended))
                    h2.acknowledge_received_data(
                        event.flow_controlled_length or 0, event.stream_id or 0
                    )
                elif isinstance(event, StreamEnded):
                    sid = event.stream_id or 0
                    h2.send_headers(
                        sid, [(b":status", b"200"), (b"content-type", b"application/grpc")]
                    )
                    h2.send_data(sid, b"\x00\x00\x00\x00\x02ok")
                    h2.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
            writer.write(h2.data_to_send())
        writer.close()


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[Recorder, int]]:
    made = Recorder()
    server = await asyncio.start_server(made.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield made, port
    server.close()


async def _calls(port: int) -> list[dict[bytes, bytes]]:
    """CALLS unary calls one after the other on one connection; each answer's trailers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    h2.initiate_connection()
    trailers: list[dict[bytes, bytes]] = []
    for i in range(CALLS):
        sid = h2.get_next_available_stream_id()
        headers = [
            *call_headers(UNARY),
            (b"grpc-timeout", b"%du" % (4_999_000 + i)),
            (b"authorization", b"Bearer token-%d" % i),
        ]
        h2.send_headers(sid, headers)
        h2.send_data(sid, BODY, end_stream=True)
        writer.write(h2.data_to_send())
        ended = False
        while not ended:
            data = await asyncio.wait_for(reader.read(65536), 10.0)
            assert data, "the proxy closed the connection"
            for event in h2.receive_data(data):
                if isinstance(event, TrailersReceived):
                    trailers.append(dict(event.headers or []))
                elif isinstance(event, DataReceived):
                    h2.acknowledge_received_data(event.flow_controlled_length or 0, sid)
                elif isinstance(event, StreamEnded) and event.stream_id == sid:
                    ended = True
            writer.write(h2.data_to_send())
    writer.close()
    return trailers


async def test_backend_gets_each_call_in_two_frames_and_a_stable_hpack_table(
    recorder: tuple[Recorder, int],
) -> None:
    backend, port = recorder
    config = proxy_config([], backend_protocol="h2c", health_path=None)
    config = dataclasses.replace(config, backends=(f"http://127.0.0.1:{port}",))
    async with ProxyServer(config) as proxy:
        trailers = await _calls(proxy.port)
    assert trailers == [{b"grpc-status": b"0"}] * CALLS
    # the request's end rides on its DATA frame: no empty DATA frame after it
    assert backend.data_frames == [(BODY, True)] * CALLS
    for i, head in enumerate(backend.heads):
        fields = {name: (value, type(h)) for h in head for name, value in [h]}
        assert fields[b"grpc-timeout"] == (b"%du" % (4_999_000 + i), NeverIndexedHeaderTuple)
        assert fields[b"authorization"] == (b"Bearer token-%d" % i, NeverIndexedHeaderTuple)
        assert fields[b"x-forwarded-for"][0] == b"127.0.0.1"
        assert fields[b":path"][0] == b"/test.Echo/Unary"
    # the stable fields are indexed once; the deadlines, all different, never enter the table
    assert len(set(backend.table_entries)) == 1
    assert backend.table_entries[0] < 10
