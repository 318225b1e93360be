"""Hostile HTTP/2 input: each attack ends its connection with the right GOAWAY, within bounded
frames and state, while another client's connection keeps being served.

The attacker is the `h2` library as a raw client; frames it would refuse to send itself (past a
window, past the stream limit, endless CONTINUATION) are built with `hyperframe` and `hpack`.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from grpc_helpers import BLOBS, SLOW, UNARY, GrpcBackend, as_bytes, call_headers
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from hpack import Decoder, Encoder
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from serving_helpers import eventually, proxy_config

from serving.app import ProxyServer

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST = call_headers(UNARY)


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
        health_protocol="grpc",  # grpc.health.v1 checks run all along the attacks
        h2_max_resets=50,
        h2_max_concurrent_streams=8,
        max_header_bytes=4096,
    )
    config = type(config)(**{**config.__dict__, "backends": (backend.url,)})
    async with ProxyServer(config) as server:
        yield server


@pytest.fixture
async def bystander(proxy: ProxyServer) -> AsyncIterator[Any]:
    """A well-behaved gRPC client connected before the attack: its calls must keep working."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}")
    call = channel.unary_unary(UNARY, request_serializer=as_bytes, response_deserializer=as_bytes)
    assert await call(b"before", timeout=5) == b"g0:before"
    yield call
    await channel.close()


class Attacker:
    """A raw HTTP/2 connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.encoder = Encoder()

    @classmethod
    async def connect(cls, proxy: ProxyServer) -> Attacker:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(PREFACE + SettingsFrame(0).serialize())
        return cls(reader, writer)

    def send(self, *frames: Frame) -> None:
        self.writer.write(b"".join(f.serialize() for f in frames))

    def headers(
        self, stream_id: int, *, end_stream: bool = True, end_headers: bool = True
    ) -> Frame:
        flags = {"END_HEADERS"} if end_headers else set()
        if end_stream:
            flags.add("END_STREAM")
        return HeadersFrame(stream_id, self.encoder.encode(REQUEST), flags=flags)

    async def goaway(self, max_frames: int = 10_000) -> tuple[int | None, int]:
        """Read the proxy's frames until its GOAWAY: (its error code or None at EOF, frames)."""
        for count in range(max_frames):
            try:
                head = await asyncio.wait_for(self.reader.readexactly(9), 5)
            except asyncio.IncompleteReadError:
                return None, count
            frame, length = Frame.parse_frame_header(memoryview(head))
            frame.parse_body(memoryview(await self.reader.readexactly(length)))
            if isinstance(frame, GoAwayFrame):
                return frame.error_code, count
        raise AssertionError("no GOAWAY")

    async def closed(self) -> bool:
        """The proxy closed the connection after its GOAWAY."""
        try:
            rest: bytes | None = await asyncio.wait_for(self.reader.read(), 5)
        except ConnectionError:
            rest = None
        finally:
            self.writer.close()
        return rest is None or isinstance(rest, bytes)


async def _still_serving(proxy: ProxyServer, bystander: Any) -> None:
    assert await bystander(b"after", timeout=5) == b"g0:after"
    assert proxy.h2 is not None
    h2 = proxy.h2
    await eventually(lambda: len(h2.connections) == 1)  # the attacker's is gone
    await eventually(lambda: all(p.streams == 0 for p in h2.pools.values()))


async def test_rapid_reset_gets_enhance_your_calm(proxy: ProxyServer, bystander: Any) -> None:
    """CVE-2023-44487: streams opened and reset at once, faster than `h2-max-resets` a second."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    for _ in range(200):
        stream_id = client.get_next_available_stream_id()
        client.send_headers(stream_id, REQUEST, end_stream=True)
        client.reset_stream(stream_id, ErrorCodes.CANCEL)
    writer.write(client.data_to_send())
    attacker = Attacker(reader, writer)
    code, _ = await attacker.goaway()
    assert code == ErrorCodes.ENHANCE_YOUR_CALM
    assert await attacker.closed()
    assert proxy.h2 is not None
    assert proxy.h2.goaways["ENHANCE_YOUR_CALM"] == 1
    await _still_serving(proxy, bystander)


async def test_continuation_flood_is_refused(proxy: ProxyServer, bystander: Any) -> None:
    attacker = await Attacker.connect(proxy)
    opening = attacker.headers(1, end_headers=False)
    flood = [ContinuationFrame(1, b"\x00" * 16) for _ in range(1000)]  # no END_HEADERS ever
    attacker.send(opening, *flood)
    code, _ = await attacker.goaway()
    assert code == ErrorCodes.PROTOCOL_ERROR
    assert await attacker.closed()
    await _still_serving(proxy, bystander)


@pytest.mark.parametrize("kind", ["settings", "ping"])
async def test_control_frame_floods_get_enhance_your_calm(
    proxy: ProxyServer, bystander: Any, kind: str
) -> None:
    attacker = await Attacker.connect(proxy)
    if kind == "settings":
        attacker.send(*(SettingsFrame(0, {SettingsFrame.ENABLE_PUSH: 0}) for _ in range(500)))
    else:
        attacker.send(*(PingFrame(0, b"%08d" % i) for i in range(500)))
    code, frames = await attacker.goaway()
    assert code == ErrorCodes.ENHANCE_YOUR_CALM
    assert frames < 200  # acknowledged up to the limit, not all 500
    assert await attacker.closed()
    await _still_serving(proxy, bystander)


async def test_oversized_header_block_gets_enhance_your_calm(
    proxy: ProxyServer, bystander: Any
) -> None:
    """The header list limit is the HTTP/1.1 head limit: 8 × max-header-bytes (32 KiB here)."""
    attacker = await Attacker.connect(proxy)
    block = attacker.encoder.encode([*REQUEST, (b"x-big", b"a" * 40_000)])
    chunks = [block[i : i + 16_000] for i in range(0, len(block), 16_000)]
    frames: list[Frame] = [HeadersFrame(1, chunks[0], flags={"END_STREAM"})]
    frames += [ContinuationFrame(1, c) for c in chunks[1:-1]]
    frames.append(ContinuationFrame(1, chunks[-1], flags={"END_HEADERS"}))
    attacker.send(*frames)
    code, _ = await attacker.goaway()
    assert code == ErrorCodes.ENHANCE_YOUR_CALM
    assert await attacker.closed()
    await _still_serving(proxy, bystander)


async def test_streams_beyond_the_limit_close_the_connection(
    proxy: ProxyServer, bystander: Any, backend: GrpcBackend
) -> None:
    """SETTINGS_MAX_CONCURRENT_STREAMS is 8 here; a ninth open stream is a protocol error."""
    attacker = await Attacker.connect(proxy)
    attacker.send(*(attacker.headers(1 + 2 * i, end_stream=False) for i in range(9)))
    code, _ = await attacker.goaway()
    assert code == ErrorCodes.PROTOCOL_ERROR
    assert await attacker.closed()
    await _still_serving(proxy, bystander)
    assert proxy.h2 is not None
    assert proxy.monitor.backends[0].active == 0  # the abandoned calls left in-flight


@pytest.mark.parametrize("kind", ["data-past-window", "window-overflow"])
async def test_flow_control_abuse_gets_flow_control_error(
    proxy: ProxyServer, bystander: Any, kind: str
) -> None:
    attacker = await Attacker.connect(proxy)
    if kind == "data-past-window":  # 5 × 16 KiB on a stream whose window is 64 KiB
        frames = [attacker.headers(1, end_stream=False)]
        frames += [DataFrame(1, b"\x00" * 16_384) for _ in range(5)]
        attacker.send(*frames)
    else:
        attacker.send(WindowUpdateFrame(0, 2**31 - 1), WindowUpdateFrame(0, 2**31 - 1))
    code, _ = await attacker.goaway()
    assert code == ErrorCodes.FLOW_CONTROL_ERROR
    assert await attacker.closed()
    await _still_serving(proxy, bystander)


async def test_grpc_timeout_is_honoured(proxy: ProxyServer, backend: GrpcBackend) -> None:
    """A call whose grpc-timeout passes gets DEADLINE_EXCEEDED from the proxy, gRPC-shaped."""
    attacker = await Attacker.connect(proxy)
    request = [(b":path", SLOW.encode()) if n == b":path" else (n, v) for n, v in REQUEST] + [
        (b"grpc-timeout", b"200m")
    ]
    message = b"5"  # the backend would answer after 5 s
    body = b"\x00" + len(message).to_bytes(4, "big") + message
    attacker.send(
        HeadersFrame(1, attacker.encoder.encode(request), flags={"END_HEADERS"}),
        DataFrame(1, body, flags={"END_STREAM"}),
    )
    got: list[tuple[bytes, bytes]] = []
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not any(n == b"grpc-status" for n, _ in got):
        head = await asyncio.wait_for(attacker.reader.readexactly(9), 5)
        frame, length = Frame.parse_frame_header(memoryview(head))
        frame.parse_body(memoryview(await attacker.reader.readexactly(length)))
        if isinstance(frame, HeadersFrame):
            got += [(bytes(n), bytes(v)) for n, v in Decoder().decode(frame.data, raw=True)]
    assert loop.time() - started < 4.0  # not the backend's 5 s answer
    headers = dict(got)
    assert headers[b":status"] == b"200"
    assert headers[b"grpc-status"] == b"4"
    attacker.writer.close()  # DEADLINE_EXCEEDED: from the backend (grpc-timeout is forwarded)
    # or from the proxy's own deadline, whichever comes first


async def test_a_client_that_stops_reading_holds_up_no_one(backend: GrpcBackend) -> None:
    """One backend connection carries every stream here: a stream whose client reads nothing
    fills only its own window (256 KiB held in the proxy at most), the others go on."""
    config = proxy_config([], backend_protocol="h2c", h2_connections_per_backend=1)
    config = dataclasses.replace(config, backends=(backend.url,), health_path=None)
    async with ProxyServer(config) as proxy:
        attacker = await Attacker.connect(proxy)
        request = [(b":path", BLOBS.encode()) if n == b":path" else (n, v) for n, v in REQUEST]
        message = b"200"  # 200 × 64 KiB = 12.5 MiB, far over every window
        attacker.send(
            HeadersFrame(1, attacker.encoder.encode(request), flags={"END_HEADERS"}),
            DataFrame(1, b"\x00" + len(message).to_bytes(4, "big") + message, flags={"END_STREAM"}),
        )
        assert proxy.h2 is not None
        h2 = proxy.h2
        await eventually(lambda: any(c.streams for c in h2.connections))
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}")
        call = channel.unary_unary(
            UNARY, request_serializer=as_bytes, response_deserializer=as_bytes
        )
        try:
            for i in range(20):
                assert await call(b"%d" % i, timeout=5) == b"g0:%d" % i
        finally:
            await channel.close()
        stalled = next(s for c in h2.connections for s in c.streams.values() if not s.closed)
        held = sum(len(data) for data, _ in stalled.out)
        assert 0 < held <= 256 << 10  # what the backend could send past the client's 64 KiB
        assert backend.calls["blobs-sent"] < 200  # the backend was held back too
        attacker.writer.close()
