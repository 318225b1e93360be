"""Emulated backends: real HTTP servers on 127.0.0.1 that behave like a scenario's `[[backends]]`.

The simulator runs a scenario in simulated time; these servers run the same scenario in real time
so the real proxy can be tested and benchmarked against the very troubles the policy trained on.
Each backend has a concurrency limit with a FIFO queue, draws service times from the scenario's
distribution with its own seeded generator, and follows its events on a timeline shared by the
whole pool (`started_at`, stretched by `time_scale`): slowdowns and ramps, error windows, downtime
(the listening socket is closed and open connections are reset, so connects are refused) and
GC-like pauses that stall everything.

The queue runs in computed time (`FifoServers`): when a request is admitted, its start and end
are worked out from the slots' scheduled end times, and the handler only sleeps until its end.
A queue handed from one asyncio task to the next (a semaphore) would instead hold each slot for
the service time plus however long the busy event loop takes to wake the next waiter and to fire
the timer: a burst of 60 jobs of 5 ms on one slot took 341–345 ms instead of 300, an overhead
that on single-slot backends with few-ms jobs (the `park` scenario) raises the utilisation over
the scenario's.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import math
import time
from collections import deque
from collections.abc import Sequence
from types import TracebackType

import numpy as np
from aiohttp import web

from rl_lb.control import PROBE_PATH
from rl_lb.errors import ConfigError
from rl_lb.metrics import DEFAULT_ERROR_PENALTY_S
from rl_lb.prequal_answer import LatencyByRif
from rl_lb.scenarios import BackendSpec, Event, Scenario, ServiceDist

__all__ = [
    "EmulatedBackend",
    "EmulatedPool",
    "FifoServers",
    "PauseSchedule",
    "describe",
    "draw_service_time",
]

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


class FifoServers:
    """`concurrency` servers in front of one FIFO queue, scheduled when a request is admitted.

    First come, first served makes every request's start the later of its arrival and the
    earliest end among the slots, so it is known on arrival, and starts never decrease; the
    queue length at any time is the number of admitted requests not yet started.
    """

    def __init__(self, concurrency: int) -> None:
        self._free_at = [-math.inf] * concurrency
        self._starts: deque[float] = deque()

    def waiting(self, now: float) -> int:
        """Requests admitted before `now` that have not started by `now`."""
        while self._starts and self._starts[0] <= now:
            self._starts.popleft()
        return len(self._starts)

    def start(self, now: float) -> float:
        """Admit a request arriving at `now`: when its service starts; `occupy` must follow."""
        start = max(now, self._free_at[0])
        self._starts.append(start)
        return start

    def occupy(self, end: float) -> None:
        """The slot that the last admitted request took stays busy until `end`."""
        heapq.heapreplace(self._free_at, end)


class PauseSchedule:
    """GC-like pauses of one backend: `duration_s` long, `every_s` apart on average (exponential
    gaps from `origin`), drawn in advance so that a request's end is known when it is admitted."""

    def __init__(
        self, duration_s: float, every_s: float, rng: np.random.Generator, origin: float
    ) -> None:
        self._duration = duration_s
        self._every = every_s
        self._rng = rng
        self._begins: list[float] = []
        self._ends: list[float] = []
        self._last_end = origin

    def _pause_after(self, t: float) -> int:
        """Index of the first pause that ends after `t` (drawn if need be)."""
        while self._last_end <= t or not self._ends:
            begin = self._last_end + float(self._rng.exponential(self._every))
            self._begins.append(begin)
            self._last_end = begin + self._duration
            self._ends.append(self._last_end)
        return bisect.bisect_right(self._ends, t)

    def resume_time(self, t: float) -> float:
        """`t`, or the end of the pause `t` falls in."""
        k = self._pause_after(t)
        return self._ends[k] if self._begins[k] <= t else t

    def work_end(self, start: float, work: float) -> float:
        """When `work` seconds of unpaused time, begun at `start`, are done."""
        t = self.resume_time(start)
        while True:
            k = self._pause_after(t)
            if t + work <= self._begins[k]:
                return t + work
            work -= self._begins[k] - t
            t = self._ends[k]


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
        error_penalty_s: float = DEFAULT_ERROR_PENALTY_S,
    ) -> None:
        self.spec = spec
        self.error_penalty_s = error_penalty_s
        """What a failed request counts for in `latency`, as in the simulator (rl_lb.prequal)."""
        self.port = port
        self.in_flight = 0
        """Requests admitted (queued or in service): the RIF a Prequal probe is answered with."""
        self.latency = LatencyByRif()
        """Latency by the RIF a request found, for Prequal probes (`PROBE_PATH`)."""
        self._rng = rng
        self._pause_rng = pause_rng
        self._origin = clock_origin
        self._scale = time_scale
        self._servers = FifoServers(spec.concurrency)
        self._pauses: PauseSchedule | None = None
        self._web = web.Server(self._handle, access_log=None)
        self._listener: asyncio.Server | None = None

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

    def begin(self) -> None:
        """Second 0 of the timeline has been set: draw this backend's pauses from there."""
        pauses = self.spec.pauses
        if pauses is not None:
            self._pauses = PauseSchedule(
                pauses.duration_s, pauses.every_s, self._pause_rng, self._origin[0]
            )

    @staticmethod
    async def _sleep_until(deadline: float) -> None:
        delay = deadline - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    def _work_end(self, start: float, work: float) -> float:
        """When `work` seconds begun at `start` are done: a pause in between delays the end."""
        return self._pauses.work_end(start, work) if self._pauses else start + work

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._pauses is not None:
            await self._sleep_until(self._pauses.resume_time(time.monotonic()))
        if request.path == "/health":
            return web.Response(text="ok\n")
        if request.path == PROBE_PATH:
            rif = self.in_flight
            estimate = self.latency.estimate(rif, time.monotonic())
            answer = {"rif": rif, "latency_ms": estimate * 1000.0}
            return web.json_response(answer)
        await request.read()
        now = time.monotonic()
        event = self.active_event(now)
        if event is not None and event.error_rate > 0 and self._rng.random() < event.error_rate:
            rif = self.in_flight
            await self._sleep_until(self._work_end(now, event.error_latency_s))
            self.latency.record(rif, self.error_penalty_s, failed=True, now=time.monotonic())
            return web.Response(status=503, text="injected error\n")
        if self._servers.waiting(now) >= self.spec.queue_limit:
            return web.Response(status=503, text="queue full\n")
        start = self._servers.start(now)
        event = self.active_event(start)
        factor = _slowdown(event, self.position(start)) if event is not None else 1.0
        end = self._work_end(start, draw_service_time(self.spec.service, self._rng) * factor)
        self._servers.occupy(end)
        rif = self.in_flight
        self.in_flight += 1
        try:
            await self._sleep_until(end)
        finally:
            self.in_flight -= 1
        ended = time.monotonic()
        self.latency.record(rif, ended - now, failed=False, now=ended)
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
        penalty = scenario.control.metrics.error_penalty_s
        for i, (spec, stream) in enumerate(zip(scenario.backends, streams, strict=True)):
            requests, pauses = (np.random.default_rng(s) for s in stream.spawn(2))
            port = base_port + i if base_port else 0
            backends.append(
                EmulatedBackend(spec, requests, pauses, port, self._origin, time_scale, penalty)
            )
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
            backend.begin()
            self._tasks.append(asyncio.create_task(backend.run_timeline()))

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


def next_commands(pool: EmulatedPool, time_scale: float = 1.0) -> list[str]:
    """Ready-to-paste commands for the other terminals: a proxy in front of these backends, and
    load at the scenario's own arrival rate for as long as its timeline runs."""
    from serving.config import ProxyConfig

    scenario = pool.scenario
    backends = " ".join(f"--backend {url}" for url in pool.urls)
    rate = max(round(scenario.arrivals.rate), 1)
    duration = max(round(scenario.duration_s * time_scale), 1)
    return [
        "next, in other terminals:",
        f"  rl-lb serve {backends}",
        f"  rl-lb loadgen http://{ProxyConfig.listen}/ --rate {rate} --duration {duration}",
    ]
