"""Fixtures of the guard-visibility and rollout tests: policies with a known behaviour, a pool
with one slow backend, and closed-loop traffic.

A one-unit set network whose score is `sign × tanh(3 tanh(3 (ewma_rel − 1))) / 2`: a backend
whose peak-EWMA latency is well over e× the pool's median scores `sign / 2`, the others `−sign /
2`, a 55:1 weight ratio. With `sign = +1` the policy puts nearly all the weight on the slow
backends (a deliberately bad policy); with `sign = −1` it starves them and spreads the traffic
evenly over the rest (a good policy where a few backends are much slower). Written
with numpy in the format of `rl_lb.policies.learned`, so the proxy tests need no torch; served
with the weighted-random picker, so the weights are what the requests get.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import numpy as np
from aiohttp import web
from net_fixtures import started_by_the_test
from serving_helpers import TestBackend

from rl_lb.features import FeatureEncoder
from rl_lb.policies.learned import FORMAT, FORMAT_VERSION, HEADER_FILE, POOLING, WEIGHTS_FILE

SLOWEST = 1.0
FASTEST = -1.0
SLOW_S = 0.08
"""The slow backend's answer time; the others answer at once."""


def write_directional_model(directory: Path, sign: float, version: str) -> Path:
    """A policy that favours the slow (`SLOWEST`) or the fast (`FASTEST`) backends."""
    encoder = FeatureEncoder()
    phi = np.zeros((len(encoder.names), 1), dtype=np.float32)
    phi[encoder.names.index("ewma_rel"), 0] = 3.0
    rho = np.zeros((1 + len(POOLING), 1), dtype=np.float32)
    rho[0, 0] = 3.0  # the slot's own unit only, not what is pooled over the slots
    arrays = {
        "phi.0.weight": phi,
        "phi.0.bias": np.full(1, -3.0, dtype=np.float32),
        "rho.0.weight": rho,
        "rho.0.bias": np.zeros(1, dtype=np.float32),
        "head.weight": np.array([sign / 2], dtype=np.float32),
    }
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layout": encoder.layout(),
        "architecture": {"slot_net": [1], "head_net": [1], "pool": list(POOLING)},
        "activation": "tanh",
        "picker": "random",
        "version": version,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / HEADER_FILE).write_text(json.dumps(header), encoding="utf-8")
    np.savez(directory / WEIGHTS_FILE, **arrays)
    return directory


class SlowBackend(TestBackend):
    """Answers every request after `delay_s` (health checks at once)."""

    __test__ = False

    def __init__(self, name: str, delay_s: float) -> None:
        super().__init__(name)
        self.delay_s = delay_s

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path != "/health" and self.delay_s:
            await asyncio.sleep(self.delay_s)
        return await super().handle(request)


async def slow_first_pool() -> AsyncIterator[Callable[[int], Awaitable[list[SlowBackend]]]]:
    """A fixture body: `await make(n)` starts n backends, the very first one slow (`SLOW_S`)."""

    async def start(name: str) -> SlowBackend:
        return await SlowBackend(name, SLOW_S if name == "s0" else 0.0).start()

    async for make in started_by_the_test(start, "s"):
        yield make


class Traffic:
    """Closed-loop clients sending GET / to each of `urls` until stopped (bounded count)."""

    def __init__(
        self, client: aiohttp.ClientSession, urls: list[str], workers: int = 4, limit: int = 4000
    ) -> None:
        self.client = client
        self.sent = self.failed = 0
        self._stop = asyncio.Event()
        self._tasks = [
            asyncio.create_task(self._worker(url, limit)) for url in urls for _ in range(workers)
        ]

    async def _worker(self, url: str, limit: int) -> None:
        for _ in range(limit):
            if self._stop.is_set():
                return
            try:
                async with self.client.get(url) as response:
                    await response.read()
                    self.failed += response.status != 200
            except aiohttp.ClientError:
                self.failed += 1
            self.sent += 1

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
