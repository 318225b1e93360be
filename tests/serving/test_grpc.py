"""gRPC through `rl-lb serve`: grpcio servers behind the proxy, a grpcio client in front.

The service is defined here with grpcio's generic handlers and bytes messages (no protoc). The
client's channel is one HTTP/2 connection (h2c with prior knowledge) to the proxy: the calls
must still spread across the backends call by call, and a backend answering UNAVAILABLE must be
held against it like an HTTP 503.
"""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import trustme
from grpc_helpers import CHAT, SERVER_STREAM, UNARY, GrpcBackend, as_bytes
from serving_helpers import eventually, proxy_config

from serving.app import ProxyServer
from serving.config import ProxyConfig


@pytest.fixture
def grpc_backends() -> Iterator[list[GrpcBackend]]:
    made = [GrpcBackend(f"g{i}") for i in range(3)]
    try:
        yield made
    finally:
        for backend in made:
            backend.stop()


def _config(urls: list[str], **changes: Any) -> ProxyConfig:
    """Round-robin over `urls` (gRPC backends: h2c, no HTTP health checks unless told)."""
    settings: dict[str, Any] = {"health_path": None, **changes}
    config = proxy_config([], backend_protocol="h2c", balancer="round-robin", **settings)
    return dataclasses.replace(config, backends=tuple(urls))


async def _proxy(urls: list[str], **changes: Any) -> ProxyServer:
    proxy = ProxyServer(_config(urls, **changes))
    await proxy.start()
    return proxy


@pytest.fixture
async def channel_to() -> AsyncIterator[Any]:
    """`channel_to(proxy)`: a grpcio aio channel to the proxy (insecure: h2c prior knowledge)."""
    channels: list[Any] = []

    def make(proxy: ProxyServer) -> Any:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}")
        channels.append(channel)
        return channel

    yield make
    for channel in channels:
        await channel.close()


def _error_rates(proxy: ProxyServer) -> dict[str, float]:
    """Each backend's error rate in the Monitor's window (what the policy and snapshot see)."""
    n = len(proxy.monitor.backends)
    snapshot = proxy.monitor.metrics.snapshot(np.full(n, 1.0 / n))
    return dict(zip(snapshot.names, map(float, snapshot.error_rate), strict=True))


def _unary(channel: Any) -> Any:
    return channel.unary_unary(UNARY, request_serializer=as_bytes, response_deserializer=as_bytes)


async def test_unary_calls_spread_per_call_over_one_connection(
    grpc_backends: list[GrpcBackend], channel_to: Any
) -> None:
    proxy = await _proxy([b.url for b in grpc_backends])
    try:
        call = _unary(channel_to(proxy))
        answers = [await call(b"hi%d" % i, timeout=5) for i in range(30)]
        names = Counter(a.split(b":")[0].decode() for a in answers)
        assert set(names) == {"g0", "g1", "g2"}
        assert all(count >= 5 for count in names.values()), names
        assert all(a.endswith(b":hi%d" % i) for i, a in enumerate(answers))
        assert proxy.h2 is not None
        assert len(proxy.h2.connections) == 1
        assert sum(b.active for b in proxy.monitor.backends) == 0
        assert list(_error_rates(proxy).values()) == [0.0, 0.0, 0.0]
        assert proxy.stats.responses["2xx"] == 30
    finally:
        await proxy.stop()


async def test_streaming_calls_count_apart_from_in_flight(
    grpc_backends: list[GrpcBackend], channel_to: Any
) -> None:
    proxy = await _proxy([b.url for b in grpc_backends])
    try:
        channel = channel_to(proxy)
        count = channel.unary_stream(
            SERVER_STREAM, request_serializer=as_bytes, response_deserializer=as_bytes
        )
        got = [m async for m in count(b"5", timeout=5)]
        assert len(got) == 5
        assert len({m.split(b":")[0] for m in got}) == 1
        chat = channel.stream_stream(
            CHAT, request_serializer=as_bytes, response_deserializer=as_bytes
        )
        call = chat(timeout=10)
        await call.write(b"one")
        first = await call.read()
        assert first.endswith(b":one")
        assert proxy.h2 is not None
        streams = proxy.h2.streams_by_backend
        # the open bidirectional call is a stream, not an exchange in flight
        await eventually(lambda: sum(streams.values()) == 1)
        assert sum(b.active for b in proxy.monitor.backends) == 0
        assert sum(proxy.monitor.metrics.in_flight) == 0
        await call.write(b"two")
        assert (await call.read()).endswith(b":two")
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
        await eventually(lambda: sum(streams.values()) == 0)
        metrics = proxy.prometheus.render().decode()
        assert "rl_lb_backend_grpc_streams" in metrics
    finally:
        await proxy.stop()


async def test_unavailable_backend_is_penalised_like_a_503(channel_to: Any) -> None:
    good = [GrpcBackend("g0"), GrpcBackend("g1")]
    bad = GrpcBackend("bad", fail=True)
    try:
        proxy = await _proxy([good[0].url, bad.url, good[1].url], control_interval_s=60.0)
        try:
            call = _unary(channel_to(proxy))
            codes: Counter[Any] = Counter()
            details: set[str] = set()
            for i in range(30):
                try:
                    await call(b"%d" % i, timeout=5)
                    codes[grpc.StatusCode.OK] += 1
                except grpc.aio.AioRpcError as error:
                    codes[error.code()] += 1
                    details.add(error.details() or "")
            assert details == {"bad is down"}  # the backend's own status passes through
            assert codes[grpc.StatusCode.UNAVAILABLE] == bad.calls["unary"] >= 5
            rates = _error_rates(proxy)
            assert rates[bad.url] == 1.0
            assert rates[good[0].url] == rates[good[1].url] == 0.0
            index = next(b.index for b in proxy.monitor.backends if b.url == bad.url)
            assert proxy.monitor.detector.times_ejected[index] == 1  # after the failure streak
            assert not proxy.monitor.metrics.available[index]
            outcomes = next(b.outcomes for b in proxy.monitor.backends if b.url == bad.url)
            assert outcomes[4] == bad.calls["unary"]  # counted in the 5xx class
        finally:
            await proxy.stop()
    finally:
        for backend in [*good, bad]:
            backend.stop()


async def test_unreachable_backends_give_a_grpc_error(channel_to: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"  # bound, not listening: refused
        proxy = await _proxy([dead])
        try:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await _unary(channel_to(proxy))(b"x", timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "connect-failed" in (raised.value.details() or "")
            assert proxy.stats.errors["connect-failed"] == 1
        finally:
            await proxy.stop()


async def test_http1_clients_still_served_when_h2c_is_on(
    grpc_backends: list[GrpcBackend],
) -> None:
    """The preface check leaves HTTP/1.1 alone: a plain request is parsed as before."""
    proxy = await _proxy([b.url for b in grpc_backends])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"CONNECT x:1 HTTP/1.1\r\nHost: x\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), 5)
        assert status.startswith(b"HTTP/1.1 405")
        writer.close()
    finally:
        await proxy.stop()


async def test_grpc_health_checks_follow_the_health_service(
    grpc_backends: list[GrpcBackend],
) -> None:
    """health-protocol = grpc: grpc.health.v1.Health/Check, SERVING passes, NOT_SERVING fails."""
    config = _config([b.url for b in grpc_backends], health_path="/health", health_protocol="grpc")
    async with ProxyServer(config) as proxy:
        grpc_backends[1].set_serving(False)
        available = proxy.monitor.metrics.available
        await eventually(lambda: available == [True, False, True])
        assert "not SERVING" in (proxy.monitor.backends[1].failure or "")
        assert proxy.monitor.backends[0].failure is None
        grpc_backends[1].set_serving(True)
        await eventually(lambda: all(available))


async def test_h2_over_tls_to_verified_backends(channel_to: Any, tmp_path: Path) -> None:
    """https:// gRPC backends: h2 by ALPN, verified with backend-ca-file (health checks too);
    without the CA the certificate is refused and the call fails UNAVAILABLE."""
    ca = trustme.CA()
    backend = GrpcBackend("s0", tls=ca.issue_cert("127.0.0.1"))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    try:
        verified = _config(
            [backend.url],
            backend_ca_file=str(ca_file),
            health_path="/health",
            health_protocol="grpc",
        )
        async with ProxyServer(verified) as proxy:
            assert await _unary(channel_to(proxy))(b"tls", timeout=5) == b"s0:tls"
            backend.set_serving(False)  # a check must get through TLS to see this
            checked = proxy.monitor.backends[0]
            await eventually(lambda: "not SERVING" in (checked.failure or ""))
        async with ProxyServer(_config([backend.url])) as proxy:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await _unary(channel_to(proxy))(b"tls", timeout=5)
            assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "CERTIFICATE_VERIFY_FAILED" in (raised.value.details() or "")
    finally:
        backend.stop()
