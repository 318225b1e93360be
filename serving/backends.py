"""Emulated backends: real HTTP servers on 127.0.0.1 that behave like a scenario's `[[backends]]`.

The simulator runs a scenario in simulated time; these servers run the same scenario in real time
so the real proxy can be tested and benchmarked against the very troubles the policy trained on.
Each backend has a concurrency limit with a FIFO queue (an asyncio semaphore wakes waiters in
order), draws service times from the scenario's distribution with its own seeded generator, and
follows its events on a timeline shared by the whole pool (`started_at`, stretched by
`time_scale`): slowdowns and ramps, error windows, downtime (the listening socket is closed and
open connections are reset, so connects are refused) and GC-like pauses that stall everything.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence
from types import TracebackType

import numpy as np
from aiohttp import web

from rl_lb.errors import ConfigError
from rl_lb.scenarios import BackendSpec, Event, Scenario, ServiceDist

__all__ = ["EmulatedBackend", "EmulatedPool", "describe", "draw_service_time"]

HOST = "127.0.0.1"


def draw_service_time(service: ServiceDist, rng: np.random.Generator) -> float:
    """One service time (s), parametrised like the simulator: every distribution has mean `mean_s`.

    Lognormal takes its sigma from the coefficient of variation; Pareto is the classical one
    (support from the scale x_m) with x_m chosen so that the mean is `mean_s`.
    """
    mean = service.mean_s
    if service.dist == "constant":
        return mean
    if service.dist == "exponential":
        return float(rng.exponential(mean))
    if service.dist == "lognormal":
        sigma2 = math.log1p(service.cv**2)
        return float(rng.lognormal(math.log(mean) - sigma2 / 2, math.sqrt(sigma2)))
    if service.dist == "pareto":
        alpha = service.shape
        return float(mean * (alpha - 1) / alpha * (1.0 + rng.pareto(alpha)))
    raise ValueError(f"unknown service distribution {service.dist!r}")


def _slowdown(event: Event, position_s: float) -> float:
    if event.slowdown_to is None:
        return event.slowdown
    span = event.until_s - event.at_s
    progress = min(max((position_s - event.at_s) / span, 0.0), 1.0) if span > 0 else 1.0
    return event.slowdown + (event.slowdown_to - event.slowdown) * progress


class EmulatedBackend:
    """One emulated server; `EmulatedPool` starts it, runs its timeline and stops it."""

    def __init__(
        self,
        spec: BackendSpec,
        rng: np.random.Generator,
        pause_rng: np.random.Generator,
        port: int,
        clock_origin: list[float],
        time_scale: float,
    ) -> None:
        self.spec = spec
        self.port = port
        self.in_flight = 0
        """Requests admitted (queued or in service), for tests and displays."""
        self._rng = rng
        self._pause_rng = pause_rng
        self._origin = clock_origin
        self._scale = time_scale
        self._slots = asyncio.Semaphore(spec.concurrency)
        self._waiting = 0
        self._web = web.Server(self._handle, access_log=None)
        self._listener: asyncio.Server | None = None
        self._paused_total = 0.0
        self._pause_began: float | None = None
        self._resumed = asyncio.Event()
        self._resumed.set()

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def up(self) -> bool:
        return self._listener is not None

    def position(self, now: float) -> float:
        """Seconds on the scenario's timeline at monotonic time `now`."""
        return (now - self._origin[0]) / self._scale

    def active_event(self, now: float) -> Event | None:
        position = self.position(now)
        for event in self.spec.events:
            if event.at_s <= position < event.until_s:
                return event
        return None

    async def open(self) -> None:
        """Listen (again) on this backend's port; the first call fixes an ephemeral port."""
        loop = asyncio.get_running_loop()
        try:
            self._listener = await loop.create_server(self._web, HOST, self.port)
        except OSError as error:
            raise ConfigError(
                f"port {self.port}",
                f"cannot listen for backend {self.name}: {error.strerror}",
                "pick another --base-port or free the port",
            ) from error
        self.port = self._listener.sockets[0].getsockname()[1]

    async def close(self) -> None:
        """Refuse new connections and reset open ones, like a crashed host."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        for connection in list(self._web.connections):
            transport = connection.transport
            if transport is not None:
                transport.abort()

    async def shutdown(self) -> None:
        await self.close()
        await self._web.shutdown(timeout=1.0)

    async def run_timeline(self) -> None:
        """Open and close the listening socket at the down windows' edges (scenario order)."""
        loop_start = self._origin[0]
        for event in sorted((e for e in self.spec.events if e.down), key=lambda e: e.at_s):
            await self._sleep_until(loop_start + event.at_s * self._scale)
            await self.close()
            await self._sleep_until(loop_start + event.until_s * self._scale)
            await self.open()

    async def run_pauses(self) -> None:
        """Freeze the whole server for `duration_s`, every `every_s` on average (exponential)."""
        pauses = self.spec.pauses
        if pauses is None:
            return
        while True:
            await asyncio.sleep(float(self._pause_rng.exponential(pauses.every_s)))
            self._pause_began = time.monotonic()
            self._resumed.clear()
            try:
                await asyncio.sleep(pauses.duration_s)
            finally:
                self._paused_total += time.monotonic() - self._pause_began
                self._pause_began = None
                self._resumed.set()

    @staticmethod
    async def _sleep_until(deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _paused_clock(self, now: float) -> float:
        """Total paused seconds up to `now` (grows only while a pause is on)."""
        ongoing = now - self._pause_began if self._pause_began is not None else 0.0
        return self._paused_total + ongoing

    async def _work(self, seconds: float) -> None:
        """Spend `seconds` of unpaused time: a pause that starts mid-request delays its end."""
        start = time.monotonic()
        paused_at_start = self._paused_clock(start)
        while True:
            await self._resumed.wait()
            now = time.monotonic()
            done = (now - start) - (self._paused_clock(now) - paused_at_start)
            if done >= seconds:
                return
            await asyncio.sleep(seconds - done)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        await self._resumed.wait()
        if request.path == "/health":
            return web.Response(text="ok\n")
        await request.read()
        event = self.active_event(time.monotonic())
        if event is not None and event.error_rate > 0 and self._rng.random() < event.error_rate:
            await self._work(event.error_latency_s)
            return web.Response(status=503, text="injected error\n")
        if self._waiting >= self.spec.queue_limit:
            return web.Response(status=503, text="queue full\n")
        self.in_flight += 1
        try:
            self._waiting += 1
            try:
                await self._slots.acquire()
            finally:
                self._waiting -= 1
            try:
                now = time.monotonic()
                event = self.active_event(now)
                factor = _slowdown(event, self.position(now)) if event is not None else 1.0
                await self._work(draw_service_time(self.spec.service, self._rng) * factor)
            finally:
                self._slots.release()
        finally:
            self.in_flight -= 1
        return web.Response(text=f"{request.method} {self.name}\n")


class EmulatedPool:
    """Every backend of a scenario, listening on 127.0.0.1, on one shared timeline.

    `async with EmulatedPool(scenario, seed=1) as pool:` then send requests to `pool.urls`;
    `pool.started_at` (time.monotonic) is second 0 of the scenario, so a load generator's records
    can be lined up with the events. `time_scale` > 1 stretches the event timeline (a scenario
    second lasts `time_scale` real seconds); service times and pauses stay in real seconds.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        seed: int = 0,
        time_scale: float = 1.0,
        base_port: int = 0,
    ) -> None:
        if not time_scale > 0 or not math.isfinite(time_scale):
            raise ConfigError("--time-scale", f"must be a positive number, got {time_scale}")
        if base_port and not 1024 <= base_port <= 65535 - len(scenario.backends):
            raise ConfigError("--base-port", f"{base_port} is out of range", "use 1024-65000")
        self.scenario = scenario
        self.time_scale = time_scale
        self._origin = [0.0]
        streams = np.random.SeedSequence(seed).spawn(len(scenario.backends))
        backends = []
        for i, (spec, stream) in enumerate(zip(scenario.backends, streams, strict=True)):
            requests, pauses = (np.random.default_rng(s) for s in stream.spawn(2))
            port = base_port + i if base_port else 0
            backends.append(EmulatedBackend(spec, requests, pauses, port, self._origin, time_scale))
        self.backends: tuple[EmulatedBackend, ...] = tuple(backends)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def urls(self) -> list[str]:
        return [backend.url for backend in self.backends]

    @property
    def names(self) -> list[str]:
        return [backend.name for backend in self.backends]

    @property
    def started_at(self) -> float:
        return self._origin[0]

    async def start(self) -> None:
        try:
            for backend in self.backends:
                await backend.open()
        except BaseException:
            await self.stop()
            raise
        self._origin[0] = time.monotonic()
        for backend in self.backends:
            self._tasks.append(asyncio.create_task(backend.run_timeline()))
            self._tasks.append(asyncio.create_task(backend.run_pauses()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await asyncio.gather(*(backend.shutdown() for backend in self.backends))

    async def __aenter__(self) -> EmulatedPool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def describe(pool: EmulatedPool) -> Sequence[str]:
    """One line per backend for the CLI: name, URL and what it emulates."""
    lines = []
    for backend in pool.backends:
        spec = backend.spec
        lines.append(
            f"{spec.name:<12} {backend.url}  c={spec.concurrency} "
            f"{spec.service.dist} mean={spec.service.mean_s * 1e3:.1f}ms "
            f"events={len(spec.events)}{' pauses' if spec.pauses else ''}"
        )
    return lines
