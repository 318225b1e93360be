"""Helpers of the reliability tests: backend processes, an open-loop driver that keeps every
answer, a raw HTTP/1.1 exchange over a socket, and the proxy settings the tests start from."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from rl_lb.control import ControlSpec
from serving.config import ProxyConfig

BACKEND_SCRIPT = Path(__file__).with_name("rel_backend.py")
PROXY_ERROR_STATUSES = frozenset({502, 503, 504})
SLACK_S = 3.0
"""What a loaded machine (2 cores shared with other test runs) may add to one timed step: a
process start, the event loop running late, a scheduling stall. Every time bound in these tests
is the configured intervals that govern the step plus this, never a figure timed on a quiet
machine; a check that passes returns as soon as it holds, so the slack costs nothing then."""


class ProcBackend:
    """A `rel_backend.py` process: signals go to it by pid, and `restart` reuses its port."""

    def __init__(self, mode: str = "ok", name: str = "b") -> None:
        self.mode = mode
        self.name = name
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> ProcBackend:
        command = [sys.executable, str(BACKEND_SCRIPT), "--mode", self.mode, "--name", self.name]
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        assert self.process.stdout is not None
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, self.process.stdout.readline), 20)
        assert line.startswith(b"PORT "), f"backend {self.name} did not start: {line!r}"
        self.port = int(line.split()[1])
        return self

    def signal(self, signum: signal.Signals) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signum)

    async def kill(self) -> None:
        """SIGKILL and reap, like a crashed host: the port refuses connections afterwards."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            await asyncio.get_running_loop().run_in_executor(None, self.process.wait)
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    async def restart(self) -> ProcBackend:
        await self.kill()
        return await self.start()

    async def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGKILL late
        await self.kill()

    async def hits(self, client: aiohttp.ClientSession) -> int:
        async with client.get(f"{self.url}/_hits") as response:
            return int(json.loads(await response.text())["hits"])


class CountingBackend:
    """An in-process backend that counts only the requests it received *whole* (head and body),
    which is what "nothing reached the backend" means for a request the proxy cut off."""

    def __init__(self, name: str = "b") -> None:
        self.name = name
        self.complete = 0
        self.heads = 0
        self.port = 0
        self._runner: web.ServerRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CountingBackend:
        self._runner = web.ServerRunner(
            web.Server(self.handle, access_log=None), shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/health":
            return web.Response(text="ok")
        self.heads += 1
        body = await request.read()
        self.complete += 1
        answer = {
            "backend": self.name,
            "method": request.method,
            "path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_bytes": len(body),
        }
        return web.json_response(answer, headers={"X-Backend": self.name})


def proxy_settings(
    backends: list[str], *, control: Mapping[str, float] | None = None, **changes: Any
) -> ProxyConfig:
    """Ephemeral ports, a fast control loop and fast health checks, least-latency; `control`
    changes shared settings by key (`{"base-ejection": 2.0}`)."""
    shared = {"health-interval": 0.2, "health-timeout": 0.3, **(control or {})}
    settings: dict[str, Any] = {
        "backends": tuple(backends),
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "balancer": "least-latency",
        "control_interval_s": 0.1,
        "control": ControlSpec.from_flags(shared),
        "connect_timeout_s": 0.5,
        "read_timeout_s": 1.0,
        "shutdown_timeout_s": 2.0,
    }
    settings.update(changes)
    return ProxyConfig(**settings)


def leave_rotation_bound_s(config: ProxyConfig) -> float:
    """Longest a dead or hung backend stays in rotation through the health checks alone: the
    wait for the next check, then `unhealthy_threshold` failing checks of up to interval +
    timeout each."""
    health = config.control.health
    per_check = health.interval_s + health.timeout_s
    return health.interval_s + health.unhealthy_threshold * per_check + SLACK_S


def rejoin_rotation_bound_s(config: ProxyConfig) -> float:
    """Longest a recovered backend stays out once it answers again: the wait for the next
    check, then `healthy_threshold` passing ones."""
    health = config.control.health
    per_check = health.interval_s + health.timeout_s
    return health.interval_s + health.healthy_threshold * per_check + SLACK_S


def decisions_bound_s(config: ProxyConfig, decisions: int) -> float:
    """Longest the controller takes to make `decisions` more decisions."""
    return decisions * config.control_interval_s + SLACK_S


@dataclass(frozen=True)
class Outcome:
    """One request's answer: an HTTP status (0: none came) with the proxy's reason, if any."""

    sent_at: float
    answered_at: float = 0.0
    """When the answer (or the failure) came back, by the same clock as `sent_at`."""
    status: int = 0
    reason: str = ""
    """The X-RL-LB-Error header: set only on answers the proxy made itself."""
    body: bytes = b""
    retry_after: str = ""
    failure: str = ""
    """Why no (whole) answer came: the client exception's class name."""


@dataclass
class Run:
    """Every request of one open-loop run, in send order."""

    outcomes: list[Outcome] = field(default_factory=list)
    scheduled: int = 0

    def statuses(self) -> Counter[int]:
        return Counter(o.status for o in self.outcomes)

    def reasons(self) -> Counter[tuple[int, str]]:
        return Counter((o.status, o.reason) for o in self.outcomes if o.status != 200)

    def unanswered(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == 0]

    def check_every_request_answered(self) -> None:
        """Sent = answered, and each answer the proxy made itself says why, in both places."""
        assert len(self.outcomes) == self.scheduled
        assert not self.unanswered(), Counter(o.failure for o in self.unanswered())
        for outcome in self.outcomes:
            if outcome.reason:
                assert outcome.status in PROXY_ERROR_STATUSES | {400, 405, 413}
                body = json.loads(outcome.body)
                assert body["status"] == outcome.status
                assert body["error"]


async def open_loop(
    url: str,
    rate: float,
    duration: float,
    *,
    timeout: float = 10.0,
    connections: int = 64,
    stop: asyncio.Event | None = None,
) -> Run:
    """GET `url` at a constant `rate` for `duration` s whatever the answers, keeping each one.

    With `stop`, sending ends when it is set (`duration` is then only a cap): a test whose
    fault and recovery take longer on a loaded machine keeps its load running until it has
    seen them. `lab.loadgen.run_load` keeps statuses only; these tests also need the proxy's
    reason header and body, so this is the same open-loop schedule with fuller records.
    """
    run = Run(scheduled=int(rate * duration))
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=timeout), auto_decompress=False
    ) as session:

        async def one(sent_at: float) -> Outcome:
            try:
                async with session.get(url) as response:
                    body = await response.read()
                    headers = response.headers
                    reason, retry_after = (
                        headers.get(h, "") for h in ("X-RL-LB-Error", "Retry-After")
                    )
                    answered_at = time.monotonic()
                    return Outcome(sent_at, answered_at, response.status, reason, body, retry_after)
            except (aiohttp.ClientError, TimeoutError) as error:
                return Outcome(sent_at, time.monotonic(), failure=type(error).__name__)

        start = loop.time()
        tasks = []
        for k in range(run.scheduled):
            due = start + k / rate
            await asyncio.sleep(max(due - loop.time(), 0.0))
            if stop is not None and stop.is_set():
                break
            tasks.append(asyncio.create_task(one(time.monotonic())))
        run.scheduled = len(tasks)
        run.outcomes = list(await asyncio.gather(*tasks))
    return run


@dataclass(frozen=True)
class RawAnswer:
    """What came back on a raw connection: the first response (if any) and whether the proxy
    closed the connection afterwards."""

    status: int | None
    headers: dict[str, str]
    body: bytes
    closed: bool


async def raw_exchange(
    port: int, payload: bytes, timeout: float = 5.0, close_wait: float = SLACK_S
) -> RawAnswer:
    """Send bytes as they are, read one response (Content-Length or close-delimited), then wait
    up to `close_wait` s to see whether the proxy closes the connection; fails the test if no
    answer comes within `timeout`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.IncompleteReadError as closed_early:
            head = closed_early.partial
        if not head.endswith(b"\r\n\r\n"):
            assert head == b"", f"a broken response head: {head!r}"
            return RawAnswer(None, {}, b"", closed=True)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length")
        if length is not None:
            body = await asyncio.wait_for(reader.readexactly(int(length)), timeout)
            try:
                closed = await asyncio.wait_for(reader.read(1), close_wait) == b""
            except TimeoutError:
                closed = False
        else:
            body = await asyncio.wait_for(reader.read(), timeout)
            closed = True
        return RawAnswer(int(status_line.split()[1]), headers, body, closed)
    finally:
        writer.close()


async def normal_request(client: aiohttp.ClientSession, port: int) -> tuple[int, str]:
    """A well-formed GET through the proxy: (status, backend name)."""
    async with client.get(f"http://127.0.0.1:{port}/ping") as response:
        await response.read()
        return response.status, response.headers.get("X-Backend", "")


async def eventually(
    check: Any, timeout: float = 5.0, interval: float = 0.02, what: str = "condition"
) -> None:
    """Poll `check()` (sync or async) until it holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(interval)


class Background:
    """`async with Background(coro) as task:` runs `coro` beside the test and cancels it if the
    test leaves early, so a failing assertion never leaves a load generator running."""

    def __init__(self, coro: Any) -> None:
        self._coro = coro
        self.task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> asyncio.Task[Any]:
        self.task = asyncio.create_task(self._coro)
        return self.task

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.task is not None
        if not self.task.done():
            self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
