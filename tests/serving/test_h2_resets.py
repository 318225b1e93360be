"""The rapid-reset guard (`h2-max-resets`) tells a flood from a client whose deadlines expire.

A grpcio client whose calls pass their deadline cancels each of them with RST_STREAM at once —
a hundred in the same instant when a slow backend makes a whole batch late, and then the calls
that waited for their streams, sent and reset at once. The first lived out their
`grpc-timeout`, the others are at most one stream limit's worth; the streams of a rapid reset
attack (CVE-2023-44487) are reset as soon as they are opened, without end. So the same proxy
(`h2-max-resets` 10, 100 streams) keeps the client's connection after 200 expired calls and
closes the attacker's, even when the attacker claims a short `grpc-timeout`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest
from grpc_helpers import SLOW, UNARY, GrpcBackend, as_bytes, call_headers
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from hyperframe.frame import Frame, GoAwayFrame
from serving_helpers import eventually, proxy_config

from serving.app import ProxyServer

MAX_RESETS = 10
MAX_STREAMS = 100
"""The default `h2-max-concurrent-streams`: the burst of premature resets allowed."""
CALLS = 200
"""Calls sent at once: `MAX_STREAMS` of them on the wire, reset when the deadline passes."""
FLOOD = 400
REQUEST = call_headers(SLOW)


@pytest.fixture
def backend() -> Iterator[GrpcBackend]:
    made = GrpcBackend("g0")
    yield made
    made.stop()


@pytest.fixture
async def proxy(backend: GrpcBackend) -> AsyncIterator[ProxyServer]:
    config = proxy_config(
        [],
        backend_protocol="h2c",
        health_path=None,
        h2_max_resets=MAX_RESETS,
        # the expired calls are the client's doing here: the backend is not ejected for them
        grpc_error_codes=("UNAVAILABLE", "INTERNAL"),
    )
    async with ProxyServer(dataclasses.replace(config, backends=(backend.url,))) as server:
        yield server


async def test_a_client_cancelling_expired_calls_keeps_its_connection(
    proxy: ProxyServer, backend: GrpcBackend
) -> None:
    h2 = proxy.h2
    assert h2 is not None
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}")
    try:
        unary = channel.unary_unary(
            UNARY, request_serializer=as_bytes, response_deserializer=as_bytes
        )
        slow = channel.unary_unary(
            SLOW, request_serializer=as_bytes, response_deserializer=as_bytes
        )
        assert await unary(b"first", timeout=5) == b"g0:first"
        (connection,) = h2.connections
        # 10 s of work each, 0.5 s allowed: every call expires, and the client resets them all
        calls = [slow(b"10", timeout=0.5) for _ in range(CALLS)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
        codes = {o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)}
        assert codes == {grpc.StatusCode.DEADLINE_EXCEEDED}
        assert len(outcomes) == CALLS
        # the streams that lived out their deadline are not premature (each counted once)
        await eventually(
            lambda: h2.client_resets["late"] >= MAX_STREAMS * 9 // 10,
            what=lambda: f"late resets >= {MAX_STREAMS * 9 // 10}: {dict(h2.client_resets)}",
        )
        assert h2.client_resets["premature"] + h2.client_resets["late"] <= CALLS
        assert dict(h2.goaways) == {}
        assert h2.connections == {connection}  # the same connection carries on
        assert await unary(b"after", timeout=5) == b"g0:after"
        await eventually(
            lambda: proxy.monitor.backends[0].active == 0,
            what=lambda: f"no request in flight: {proxy.monitor.backends[0].active} left",
        )
    finally:
        await channel.close()


async def _rapid_reset(proxy: ProxyServer, extra: list[tuple[bytes, bytes]]) -> int | None:
    """Open and at once reset `FLOOD` streams; the code of the proxy's GOAWAY (None: none)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    for _ in range(FLOOD):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, REQUEST + extra, end_stream=True)
        client.reset_stream(stream_id, ErrorCodes.CANCEL)
    writer.write(client.data_to_send())
    try:
        for _ in range(10_000):
            head = await asyncio.wait_for(reader.readexactly(9), 5)
            frame, length = Frame.parse_frame_header(memoryview(head))
            frame.parse_body(memoryview(await reader.readexactly(length)))
            if isinstance(frame, GoAwayFrame):
                return int(frame.error_code)
        return None
    except asyncio.IncompleteReadError:
        return None
    finally:
        writer.close()


@pytest.mark.parametrize("extra", [[], [(b"grpc-timeout", b"20m")]], ids=["plain", "20ms"])
async def test_a_rapid_reset_flood_still_gets_enhance_your_calm(
    proxy: ProxyServer, backend: GrpcBackend, extra: list[tuple[bytes, bytes]]
) -> None:
    """With or without a deadline: opened and reset at once is premature (half of 20 ms is
    under the 50 ms floor), and the flood ends past the burst, long before its end."""
    h2 = proxy.h2
    assert h2 is not None
    assert await _rapid_reset(proxy, extra) == ErrorCodes.ENHANCE_YOUR_CALM
    assert h2.goaways["ENHANCE_YOUR_CALM"] == 1
    premature = h2.client_resets["premature"]
    assert MAX_RESETS + MAX_STREAMS < premature < FLOOD  # the burst, then the GOAWAY
    assert h2.client_resets["late"] == 0
    await eventually(lambda: not h2.connections)
    await eventually(lambda: all(p.streams == 0 for p in h2.pools.values()))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}")
    try:
        unary = channel.unary_unary(
            UNARY, request_serializer=as_bytes, response_deserializer=as_bytes
        )
        assert await unary(b"after", timeout=5) == b"g0:after"  # others are still served
    finally:
        await channel.close()


async def test_a_call_arriving_past_its_deadline_never_reaches_a_backend(
    proxy: ProxyServer, backend: GrpcBackend
) -> None:
    """grpcio sends a call that waited for a stream past its deadline as `grpc-timeout: 1n`:
    the proxy answers DEADLINE_EXCEEDED itself, so resetting it costs nothing and is not
    premature, and a live deadline still reaches the backend."""
    h2 = proxy.h2
    assert h2 is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    message = b"0"
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    for timeout in (b"1n", b"1n", b"5S"):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, [*REQUEST, (b"grpc-timeout", timeout)])
        client.send_data(stream_id, body, end_stream=True)
    client.reset_stream(1, ErrorCodes.CANCEL)  # in the same write, as grpcio does
    writer.write(client.data_to_send())
    statuses: dict[int, bytes] = {}
    try:
        while len(statuses) < 2:
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, "the proxy closed the connection"
            for event in client.receive_data(data):
                headers = dict(getattr(event, "headers", None) or [])
                if b"grpc-status" in headers:
                    statuses[event.stream_id] = headers[b"grpc-status"]  # type: ignore[attr-defined]
            writer.write(client.data_to_send())
    finally:
        writer.close()
    assert statuses == {3: b"4", 5: b"0"}  # DEADLINE_EXCEEDED, then OK
    assert backend.calls["slow"] == 1
    assert proxy.forwarder.stats.errors["deadline"] == 2
    await eventually(lambda: not h2.connections)
    assert h2.client_resets == {"late": 1}
