"""WebSocket through the proxy: the `websockets` library on both ends, the proxy in between.

After the backend's 101 the proxy splices bytes; the tunnel is counted apart from in-flight
requests (`rl_lb_backend_tunnels`), and idle / maximum durations close it.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from serving_helpers import eventually, proxy_config
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidStatus

from serving.app import ProxyServer


class EchoBackend:
    """A `websockets` server: echoes every message (any size), and pushes `tick N` when asked."""

    def __init__(self) -> None:
        self.server: Server | None = None
        self.port = 0
        self.sessions = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> EchoBackend:
        self.server = await serve(self._session, "127.0.0.1", 0, max_size=None)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _session(self, ws: ServerConnection) -> None:
        self.sessions += 1
        async for message in ws:
            if message == "push":  # the backend speaks first, unasked
                await ws.send(f"tick {self.sessions}")
            else:
                await ws.send(message)


@pytest.fixture
async def echo() -> AsyncIterator[EchoBackend]:
    backend = await EchoBackend().start()
    try:
        yield backend
    finally:
        await backend.stop()


def _config(backend: EchoBackend, **changes: Any) -> Any:
    # a websockets server answers a plain GET /health with 426: no active checks here
    return proxy_config([], backends=(backend.url,), health_path=None, **changes)


async def _exchange_for(seconds: float, url: str, **options: Any) -> int:
    """Messages both ways for `seconds` (echoed and pushed); returns how many went round."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    count = 0
    async with connect(url, open_timeout=5, **options) as ws:
        while loop.time() < end:
            payload = f"m{count}-" + "x" * (count % 300)
            await ws.send(payload)
            assert await asyncio.wait_for(ws.recv(), 5) == payload
            await ws.send("push")
            assert (await asyncio.wait_for(ws.recv(), 5)).startswith("tick ")
            await ws.send(b"\x00\xff" * (count % 50 + 1))
            assert await asyncio.wait_for(ws.recv(), 5) == b"\x00\xff" * (count % 50 + 1)
            count += 1
            await asyncio.sleep(0.01)
    return count


def _gauge(text: str, name: str) -> float:
    match = re.search(rf"^rl_lb_backend_{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"no rl_lb_backend_{name} in /metrics"
    return float(match.group(1))


async def _metrics(client, proxy: ProxyServer) -> str:
    async with client.get(f"http://127.0.0.1:{proxy.admin_port}/metrics") as response:
        assert response.status == 200
        return str(await response.text())


async def test_a_websocket_echo_session_runs_through_the_proxy(echo: EchoBackend) -> None:
    async with ProxyServer(_config(echo)) as proxy:
        rounds = await _exchange_for(2.0, f"ws://127.0.0.1:{proxy.port}/chat")
        backend = proxy.monitor.backends[0]
        await eventually(lambda: backend.pool.tunnels == 0)
        assert proxy.forwarder.tunnels.opened == 1
        assert backend.outcomes[0] == 1  # the 101: one latency sample, class 1xx
    assert rounds > 10


@pytest.mark.slow
async def test_a_websocket_session_survives_a_minute_of_messages_both_ways(
    echo: EchoBackend,
) -> None:
    async with ProxyServer(_config(echo, tunnel_idle_timeout_s=5.0)) as proxy:
        rounds = await _exchange_for(60.0, f"ws://127.0.0.1:{proxy.port}/chat")
        assert proxy.forwarder.tunnels.opened == 1
    assert rounds > 300


async def test_an_open_tunnel_is_counted_apart_from_in_flight_requests(
    echo: EchoBackend, client
) -> None:
    async with ProxyServer(_config(echo)) as proxy:
        backend = proxy.monitor.backends[0]
        async with connect(f"ws://127.0.0.1:{proxy.port}/", open_timeout=5) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            text = await _metrics(client, proxy)
            in_flight, active = proxy.monitor.metrics.in_flight[0], backend.active
        assert (_gauge(text, "tunnels"), _gauge(text, "in_flight")) == (1.0, 0.0)
        assert (in_flight, active) == (0, 0)
        await eventually(lambda: backend.pool.tunnels == 0)
        assert _gauge(await _metrics(client, proxy), "tunnels") == 0.0


async def test_large_messages_cross_the_tunnel_intact_both_ways(echo: EchoBackend) -> None:
    """Several MiB each way: flow control pauses a side and resumes it, nothing is lost."""
    big = bytes(range(256)) * (16 * 1024)  # 4 MiB
    async with ProxyServer(_config(echo)) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/"
        async with connect(url, open_timeout=5, max_size=None) as ws:
            for _ in range(3):
                await ws.send(big)
                assert await asyncio.wait_for(ws.recv(), 30) == big


async def test_an_upgrade_that_is_not_allowed_is_not_tunnelled(echo: EchoBackend) -> None:
    async with ProxyServer(_config(echo, allowed_upgrades=("h2c",))) as proxy:
        with pytest.raises(InvalidStatus) as refused:
            await _exchange_for(0.1, f"ws://127.0.0.1:{proxy.port}/")
        assert proxy.forwarder.tunnels.opened == 0
    assert refused.value.response.status_code == 426  # the backend saw no Upgrade


async def test_an_idle_tunnel_is_closed(echo: EchoBackend) -> None:
    async with ProxyServer(_config(echo, tunnel_idle_timeout_s=0.3)) as proxy:
        async with connect(
            f"ws://127.0.0.1:{proxy.port}/", open_timeout=5, ping_interval=None
        ) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
        await eventually(lambda: proxy.monitor.backends[0].pool.tunnels == 0)


async def test_a_busy_tunnel_is_closed_at_its_maximum_duration(echo: EchoBackend) -> None:
    config = _config(echo, tunnel_max_duration_s=0.5, tunnel_idle_timeout_s=60.0)
    async with ProxyServer(config) as proxy:
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(
                _exchange_for(30.0, f"ws://127.0.0.1:{proxy.port}/", ping_interval=None), 20
            )
        assert proxy.forwarder.tunnels.opened == 1


async def test_websocket_over_the_tls_listener(echo: EchoBackend, tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "l.crt", tmp_path / "l.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with ProxyServer(_config(echo, tls_cert=str(cert), tls_key=str(key))) as proxy:
        rounds = await _exchange_for(1.0, f"wss://127.0.0.1:{proxy.port}/", ssl=context)
    assert rounds > 5


async def test_a_tunnel_counts_against_max_connections_until_it_closes(
    echo: EchoBackend, client
) -> None:
    async with ProxyServer(_config(echo, max_connections=1)) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/"
        async with connect(url, open_timeout=5) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            async with client.get(f"http://127.0.0.1:{proxy.port}/") as refused:
                assert refused.headers["X-RL-LB-Error"] == "max-connections"
        await eventually(lambda: not proxy._http or not proxy._http.connections)
        assert await _exchange_for(0.1, url) >= 1


async def test_stopping_the_proxy_closes_open_tunnels(echo: EchoBackend) -> None:
    proxy = ProxyServer(_config(echo, shutdown_timeout_s=1.0))
    await proxy.start()
    stopped = False
    try:
        async with connect(f"ws://127.0.0.1:{proxy.port}/", open_timeout=5) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await asyncio.wait_for(proxy.stop(), 10)
            stopped = True
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
    finally:
        if not stopped:
            await proxy.stop()
    assert proxy.monitor.backends[0].pool.tunnels == 0
