"""Helpers of the proxy tests: a tiny aiohttp backend, test settings, admin calls.

The backend streams in both directions (it never holds a whole body), so that a test of the
proxy's memory use measures the proxy and not its own fixture.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web

from rl_lb.control import ControlSpec
from rl_lb.features import FeatureEncoder
from rl_lb.policies.learned import FORMAT, FORMAT_VERSION, HEADER_FILE, POOLING, WEIGHTS_FILE
from serving.app import ProxyServer
from serving.config import ProxyConfig

CHUNK = 1 << 16


class TestBackend:
    """`/echo` (request as JSON), `/upload` (size and sha256 of the body), `/bytes/N`,
    `/status/N`, `/sleep/S`, `/hang`, `/health` (status settable), anything else: 200 with the
    name, or `fail_status` when set."""

    __test__ = False

    def __init__(self, name: str = "b", host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        """Any loopback address: several backends may share a port, as pods behind one name."""
        self.health_status = 200
        self.fail_status = 0
        self.hits = 0
        self.hang_started = asyncio.Event()
        self.release = asyncio.Event()
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self, port: int = 0) -> TestBackend:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            self.release.set()
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path == "/health":
            return web.Response(status=self.health_status, text="health")
        self.hits += 1
        if path == "/echo":
            body = await request.read()
            return web.json_response(
                {
                    "backend": self.name,
                    "method": request.method,
                    "path_qs": request.raw_path,
                    "headers": [[k, v] for k, v in request.headers.items()],
                    "body": body.decode("latin-1"),
                },
                headers={"X-Backend": self.name, "Connection": "keep-alive, X-Hop", "X-Hop": "1"},
            )
        if path == "/upload":
            digest, size = hashlib.sha256(), 0
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
            return web.json_response({"bytes": size, "sha256": digest.hexdigest()})
        if path.startswith("/bytes/"):
            return await self._stream(request, int(path.rsplit("/", 1)[1]))
        if path.startswith("/status/"):
            return web.Response(status=int(path.rsplit("/", 1)[1]), text="status")
        if path.startswith("/sleep/"):
            await request.read()
            await asyncio.sleep(float(path.rsplit("/", 1)[1]))
            return web.Response(text=self.name)
        if path == "/hang":
            self.hang_started.set()
            await self.release.wait()
            return web.Response(text="released")
        if self.fail_status:
            return web.Response(status=self.fail_status, text="failing")
        return web.Response(text=self.name, headers={"X-Backend": self.name})

    async def _stream(self, request: web.Request, size: int) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = size
        await response.prepare(request)
        block = b"x" * CHUNK
        sent = size if request.method == "HEAD" else 0
        while sent < size:
            part = block[: min(CHUNK, size - sent)]
            await response.write(part)
            sent += len(part)
        await response.write_eof()
        return response


def proxy_config(
    pool: list[TestBackend], *, control: Mapping[str, float] | None = None, **changes: Any
) -> ProxyConfig:
    """Test settings: ephemeral ports, a fast control loop, least-latency unless told.

    `control` changes shared settings by key (`{"health-interval": 0.1}`); `changes` are
    `ProxyConfig` fields.
    """
    shared = {"health-interval": 0.2, "health-timeout": 0.5, **(control or {})}
    settings: dict[str, Any] = {
        "backends": tuple(b.url for b in pool),
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "balancer": "least-latency",
        "control_interval_s": 0.1,
        "control": ControlSpec.from_flags(shared),
        "connect_timeout_s": 1.0,
        "read_timeout_s": 5.0,
        "shutdown_timeout_s": 5.0,
    }
    settings.update(changes)
    return ProxyConfig(**settings)


async def admin_json(
    client: aiohttp.ClientSession,
    proxy: ProxyServer,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with client.request(
        method,
        f"http://127.0.0.1:{proxy.admin_port}{path}",
        data=None if body is None else json.dumps(body),
        headers=headers,
    ) as response:
        text = await response.text()
        return response.status, json.loads(text) if text.startswith(("{", "[")) else text


async def eventually(
    check: Callable[[], bool], timeout: float = 5.0, what: str | Callable[[], str] = ""
) -> None:
    """Wait until `check()` holds (polling), failing the test after `timeout` seconds; `what`
    (or what it returns then) names the condition in the failure, so a test with several says
    which one did not hold and with what state."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"condition not met in time{f': {said}' if said else ''}")
        await asyncio.sleep(0.02)


def write_model(directory: Path, *, version: str = "test-1", seed: int = 0) -> Path:
    """A small valid learned-policy model (header + weights) in the format of
    `rl_lb.policies.learned`, written with numpy so that the proxy tests need no torch."""
    encoder = FeatureEncoder()
    hidden = 8
    rng = np.random.default_rng(seed)

    def normal(*shape: int) -> np.ndarray:
        return (rng.normal(size=shape) * 0.3).astype(np.float32)

    arrays = {
        "phi.0.weight": normal(len(encoder.names), hidden),
        "phi.0.bias": normal(hidden),
        "rho.0.weight": normal(2 * hidden, hidden),  # [slot, pooled mean]
        "rho.0.bias": normal(hidden),
        "head.weight": normal(hidden),
    }
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "layout": encoder.layout(),
        "architecture": {"slot_net": [hidden], "head_net": [hidden], "pool": list(POOLING)},
        "activation": "tanh",
        "version": version,
    }
    directory.mkdir(parents=True, exist_ok=True)
    (directory / HEADER_FILE).write_text(json.dumps(header), encoding="utf-8")
    np.savez(directory / WEIGHTS_FILE, **arrays)
    return directory
