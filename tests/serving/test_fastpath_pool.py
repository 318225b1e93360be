"""The upstream connection pool of the fast path: reuse, limits, failures, timeouts."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from serving_helpers import proxy_config

from serving.app import ProxyServer
from serving.upstream import UpstreamConnection, UpstreamPool

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class Recorder:
    """A `Listener` that keeps what it is told."""

    def __init__(self) -> None:
        self.conn: UpstreamConnection | None = None
        self.events: list[tuple[str, object]] = []
        self.connected = asyncio.Event()
        self.finished = asyncio.Event()

    def on_connected(self, conn: UpstreamConnection) -> None:
        self.conn = conn
        self.connected.set()

    def on_connect_failed(self, reason: str, message: str) -> None:
        self.events.append(("connect-failed", reason))
        self.finished.set()

    def on_head(self, status: int, reason: bytes, headers: object, version: str) -> None:
        self.events.append(("head", status))

    def on_body(self, data: bytes) -> None:
        self.events.append(("body", data))

    def on_end(self) -> None:
        self.events.append(("end", None))
        self.finished.set()

    def on_upstream_error(self, reason: str, message: str) -> None:
        self.events.append(("error", reason))
        self.finished.set()

    def on_upstream_paused(self, paused: bool) -> None:
        self.events.append(("paused", paused))

    def flush(self) -> None:
        """Nothing held back here."""


@pytest.fixture
async def raw_backend() -> AsyncIterator[tuple[int, list[asyncio.Transport], list[bytes]]]:
    """A backend answering `OK` to every request head unless the target is /hang; yields its
    port, its open transports and the requests it read."""
    transports: list[asyncio.Transport] = []
    seen: list[bytes] = []

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            transports.append(transport)  # type: ignore[arg-type]

        def data_received(self, data: bytes) -> None:
            seen.append(data)
            if b" /hang " not in data:
                self.transport.write(OK)  # type: ignore[attr-defined]

    server = await asyncio.get_running_loop().create_server(Answer, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], transports, seen
    server.close()
    for transport in transports:
        transport.close()


def make_pool(port: int, limit: int = 2, read_timeout: float = 5.0) -> UpstreamPool:
    return UpstreamPool(
        f"http://127.0.0.1:{port}", limit=limit, connect_timeout=1.0, read_timeout=read_timeout
    )


async def exchange(pool: UpstreamPool, target: bytes = b"/") -> Recorder:
    recorder = Recorder()
    conn = pool.acquire(recorder)
    if conn is None:
        await asyncio.wait_for(recorder.connected.wait(), 5)
    else:
        recorder.on_connected(conn)
    assert recorder.conn is not None
    head = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    recorder.conn.start(recorder, head, False, float("inf"))
    return recorder


async def test_a_released_connection_is_reused(raw_backend) -> None:
    port, transports, _ = raw_backend
    pool = make_pool(port)
    for _ in range(5):
        recorder = await exchange(pool)
        await asyncio.wait_for(recorder.finished.wait(), 5)
        assert recorder.events == [("head", 200), ("body", b"ok"), ("end", None)]
        assert recorder.conn is not None
        pool.release(recorder.conn, reusable=recorder.conn.keep_alive)
    assert pool.connects == 1
    assert len(transports) == 1
    await pool.close()


async def test_over_the_limit_an_exchange_waits_for_a_released_connection(raw_backend) -> None:
    port, _, _ = raw_backend
    pool = make_pool(port, limit=2)
    first, second, third = Recorder(), Recorder(), Recorder()
    for recorder in (first, second, third):
        assert pool.acquire(recorder) is None
    await asyncio.wait_for(asyncio.gather(first.connected.wait(), second.connected.wait()), 5)
    await asyncio.sleep(0.05)
    assert not third.connected.is_set()
    assert pool.open == 2
    assert first.conn is not None
    pool.release(first.conn, reusable=True)
    assert third.conn is first.conn
    assert pool.open == 2
    await pool.close()


async def test_a_refused_connection_is_reported_as_connect_failed() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens once it is closed
    pool = make_pool(port)
    recorder = Recorder()
    assert pool.acquire(recorder) is None
    await asyncio.wait_for(recorder.finished.wait(), 5)
    assert recorder.events == [("connect-failed", "connect-failed")]
    assert pool.open == 0
    await pool.close()


async def test_an_idle_connection_closed_by_the_backend_leaves_the_pool(raw_backend) -> None:
    port, transports, _ = raw_backend
    pool = make_pool(port)
    recorder = await exchange(pool)
    await asyncio.wait_for(recorder.finished.wait(), 5)
    assert recorder.conn is not None
    pool.release(recorder.conn, reusable=True)
    assert len(pool.idle) == 1
    transports[0].close()
    for _ in range(100):
        if not pool.idle:
            break
        await asyncio.sleep(0.01)
    assert pool.open == 0
    await pool.close()


async def test_the_sweep_times_out_a_silent_backend_and_ages_out_idle_ones(raw_backend) -> None:
    port, _, _ = raw_backend
    pool = make_pool(port, read_timeout=0.05)
    hung = await exchange(pool, b"/hang")
    fine = await exchange(pool)
    await asyncio.wait_for(fine.finished.wait(), 5)
    assert fine.conn is not None
    pool.release(fine.conn, reusable=True)
    await asyncio.sleep(0.1)
    now = asyncio.get_running_loop().time()
    pool.sweep(now)
    assert hung.events == [("error", "upstream-timeout")]
    assert len(pool.idle) == 1
    pool.sweep(now + 3600)
    assert not pool.idle
    await pool.close()


async def test_the_proxy_reuses_backend_connections(backends, client) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, health_path=None)) as proxy:
        for _ in range(20):
            async with client.get(f"http://127.0.0.1:{proxy.port}/") as response:
                assert response.status == 200
        connects = proxy.monitor.backends[0].pool.connects
    assert connects == 1


async def test_the_pool_limit_follows_max_in_flight(backends) -> None:
    pool = await backends(1)
    async with ProxyServer(proxy_config(pool, max_in_flight=3, health_path=None)) as proxy:
        upstream = proxy.monitor.backends[0].pool
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as fresh:
            url = f"http://127.0.0.1:{proxy.port}/sleep/0.2"
            statuses = [r.status for r in await asyncio.gather(*(fresh.get(url) for _ in range(8)))]
        assert upstream.limit == 5
        assert upstream.connects <= upstream.limit
    assert set(statuses) <= {200, 503}
    assert statuses.count(200) >= 3
