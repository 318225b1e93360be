"""The proxy in front of 100 and 1,000 backends (issue 15): one process on loopback.

One asyncio server per port, all in this test's event loop, each a minimal HTTP/1.1 keep-alive
responder (an aiohttp application per port would cost more than the proxy under test). The
proxy serves the learned policy (a small numpy model: weights near uniform, so every backend
should be reached) and must stay in primary mode, reach every backend and list all of them.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import pytest
from serving_helpers import admin_json, eventually, proxy_config, write_model

from serving.app import ProxyServer
from serving.monitor import HEALTH_CHECK_BURST

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"


class Responder(asyncio.Protocol):
    """Answers every request on a connection with 200 "ok", counting the non-health ones."""

    def __init__(self, hits: list[int], index: int) -> None:
        self.hits, self.index = hits, index
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:  # the proxy sends GETs: no body
            head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
            if not head.startswith(b"GET /health"):
                self.hits[self.index] += 1
            assert self.transport is not None
            self.transport.write(RESPONSE)


async def serve_many(n: int) -> tuple[list[asyncio.Server], list[str], list[int]]:
    loop = asyncio.get_running_loop()
    hits = [0] * n
    servers = [
        await loop.create_server(lambda i=i: Responder(hits, i), "127.0.0.1", 0) for i in range(n)
    ]
    urls = [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    return servers, urls, hits


async def load(client: aiohttp.ClientSession, url: str, requests: int, workers: int) -> int:
    """`requests` GETs over `workers` concurrent loops; returns how many were answered 200."""
    answered = 0

    async def worker(count: int) -> None:
        nonlocal answered
        for _ in range(count):
            async with client.get(url) as response:
                await response.read()
                answered += response.status == 200

    share, extra = divmod(requests, workers)
    await asyncio.gather(*(worker(share + (k < extra)) for k in range(workers)))
    return answered


@pytest.mark.parametrize(("n", "requests"), [(100, 3_000), (1000, 12_000)])
async def test_the_learned_policy_serves_a_large_pool(
    client: aiohttp.ClientSession, tmp_path: Path, n: int, requests: int
) -> None:
    servers, urls, hits = await serve_many(n)
    model = write_model(tmp_path / "model", version="large-1")
    config = proxy_config(
        [],
        backends=tuple(urls),
        balancer=f"learned:{model}+p2c",
        # The responders share this event loop with the proxy and the client: a latency here
        # measures the loop's queue, not a backend, so the outcome guard is told to tolerate
        # a 50x gap (it would otherwise judge the loop's noise a regression of the policy).
        control={"health-interval": 10.0, "health-timeout": 9.0, "outcome-guard-threshold": 50},
        control_interval_s=0.2,
    )
    try:
        async with ProxyServer(config) as proxy:
            assert proxy.controller.mode == "primary"
            answered = await load(client, f"http://127.0.0.1:{proxy.port}/", requests, 20)
            await eventually(lambda: proxy.controller.snapshot is not None, timeout=10.0)
            status, state = await admin_json(client, proxy, "GET", "/admin/state")
            _, snapshot = await admin_json(client, proxy, "GET", "/admin/snapshot")
    finally:
        for server in servers:
            server.close()
    # one event loop runs the client, the proxy and every backend: a handful of requests may
    # meet the proxy's read timeout while the machine is busy; every other one is answered
    assert answered >= 0.995 * requests
    assert status == 200
    assert (state["mode"], state["reason"]) == ("primary", "")
    assert sorted(b["url"] for b in state["backends"]) == sorted(urls)
    assert all(b["healthy"] for b in state["backends"])
    assert len(snapshot["observation"]) == n  # one row per backend, no 16-backend cap
    assert min(hits) > 0, f"{hits.count(0)} of {n} backends got no request"
    assert sum(hits) >= answered


async def test_health_checks_of_a_large_pool_are_spread_over_the_interval(
    client: aiohttp.ClientSession,
) -> None:
    """Checks go out in groups of HEALTH_CHECK_BURST, one group per interval/groups: never
    more at once than a group, and every backend is checked within the interval."""
    n = 4 * HEALTH_CHECK_BURST
    loop = asyncio.get_running_loop()
    times: list[float] = []

    class Recorder(Responder):
        def data_received(self, data: bytes) -> None:
            if data.startswith(b"GET /health"):
                times.append(loop.time())
            super().data_received(data)

    hits = [0] * n
    servers = [
        await loop.create_server(lambda i=i: Recorder(hits, i), "127.0.0.1", 0) for i in range(n)
    ]
    urls = tuple(f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers)
    config = proxy_config([], backends=urls, control={"health-interval": 1.0})
    try:
        async with ProxyServer(config):
            await eventually(lambda: len(times) >= n, timeout=10.0)
    finally:
        for server in servers:
            server.close()
    first = sorted(times)[:n]
    start = first[0]
    # group k starts k × 0.25 s after the first: at most one group within any 0.1 s
    in_first_tenth = sum(t - start < 0.1 for t in first)
    assert in_first_tenth <= HEALTH_CHECK_BURST
    assert first[-1] - start > 0.5  # the last group waited for its turn
