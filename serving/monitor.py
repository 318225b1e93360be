"""The live state of the pool: who is up, who is busy, how fast each backend answers.

`Monitor` owns the core trackers (`PoolMetrics`, `OutlierDetector`, `HealthChecker`) and keeps
them in step as backends come and go. Requests hold a `Backend` object rather than an index,
because removing a backend shifts the indices of the later ones; the monitor renumbers the
objects, and only removes a backend once its last exchange is over (drain).

The picker reads `view`, whose `available` list adds two proxy-only reasons to skip a backend on
top of health and ejection: it is draining, or it has `max_in_flight` exchanges open (the
circuit breaker). Those do not go into the snapshot: they are not facts about the backend.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import aiohttp

from rl_lb.availability import Availability
from rl_lb.errors import ConfigError
from rl_lb.health import HealthChecker, OutlierDetector
from rl_lb.metrics import PoolMetrics
from rl_lb.slow_start import SlowStart
from rl_lb.types import Clock
from serving.backend import LATENCY_BUCKETS, STATUS_CLASSES, Backend  # re-exported
from serving.config import ProxyConfig, normalise_backend
from serving.failure_reasons import describe_failure, describe_status
from serving.upstream import UpstreamPool

if TYPE_CHECKING:  # pyarrow is imported only when recording is on
    from serving.recorder import Recorder

__all__ = [
    "HEALTH_CHECK_BURST",
    "LATENCY_BUCKETS",
    "STATUS_CLASSES",
    "Backend",
    "Monitor",
    "PoolView",
]

log = logging.getLogger("rl_lb.serving.monitor")

HEALTH_CHECK_BURST = 50
"""Health checks sent at the same moment at most; larger pools are checked in spread groups."""


class PoolView:
    """`LoadView` for the picker: the metrics' own lists plus a proxy-side availability list."""

    def __init__(self, metrics: PoolMetrics) -> None:
        self.in_flight = metrics.in_flight
        self.available: list[bool] = Availability()  # the picker sees its changes in O(1)
        self.cost = metrics.cost
        self.error_rate = metrics.error_rate


PoolFactory = Callable[[str], UpstreamPool]


class Monitor:
    """Trackers, backends and the active health checks of one proxy worker."""

    def __init__(
        self,
        config: ProxyConfig,
        pool_factory: PoolFactory,
        clock: Clock = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self._new_pool = pool_factory
        self._health_session: aiohttp.ClientSession | None = None
        """Health checks use their own small aiohttp client (off the request path)."""
        control = config.control
        self.metrics = PoolMetrics(
            [],
            clock,
            window_s=control.metrics.window_s,
            ewma_tau_s=control.metrics.ewma_tau_s,
            error_penalty_s=control.metrics.error_penalty_s,
        )
        self.detector = OutlierDetector(0, control.ejection)
        self.checker = HealthChecker(0, control.health)
        self.slow_start = SlowStart(0, control.slow_start)
        """When each backend returned; the controller scales the weights it decides with it."""
        self._serving = False
        """Set by the first `tick` (the first decision): backends added before it are the pool
        the proxy starts with, which does not ramp."""
        self.backends: list[Backend] = []
        self.view = PoolView(self.metrics)
        self.on_pool_change: Callable[[], object] = lambda: None
        """Called after backends are added or removed (the controller re-decides at once)."""
        self._decision_due = False  # a call of on_pool_change is scheduled: no other needed
        self._closing: set[asyncio.Task[None]] = set()
        self._max_in_flight = config.max_in_flight
        self.recorder: Recorder | None = None
        """Set by `rl-lb serve --record DIR` (serving/recorder.py): sees every exchange."""
        self.grpc_health: Callable[[str, float], Awaitable[str | None]] | None = None
        """`health-protocol = grpc`: (url, timeout) → why the gRPC check failed, None if it
        passed (serving/grpc_health.py); None: the HTTP check below."""

    # -- membership -------------------------------------------------------------------------

    def find(self, url: str) -> Backend | None:
        url = normalise_backend(url, "url")
        return next((b for b in self.backends if b.url == url), None)

    def add(self, url: str) -> Backend:
        url = normalise_backend(url, "url")
        existing = self.find(url)
        if existing is not None and not existing.draining:
            raise ConfigError("url", f"{url} is in the pool already")
        if existing is not None:
            raise ConfigError("url", f"{url} is still draining", "add it again once it is gone")
        index = self.metrics.add_backend(url)
        self.detector.add_backend()
        self.checker.add_backend()
        self.slow_start.add_backend(None)
        if self._serving:
            self._returned(index, list(self.metrics.available))
        self.view.available.append(True)
        backend = Backend(url, index, self._new_pool(url))
        self.backends.append(backend)
        log.info("backend %s added", url)
        self._changed()
        return backend

    def drain(self, url: str) -> Backend:
        """Stop picking the backend; it leaves the pool once its open exchanges are over."""
        backend = self.find(url)
        if backend is None:
            raise ConfigError("url", f"{url} is not in the pool")
        if not backend.draining:
            backend.draining = True
            self.metrics.set_health(backend.index, False)
            self._refresh(backend)
            log.info("backend %s draining (%d open)", backend.url, backend.active)
            if backend.active == 0:
                self._remove(backend)
        return backend

    def _remove(self, backend: Backend) -> None:
        i = backend.index
        self.metrics.remove_backend(i)
        self.detector.remove_backend(i)
        self.checker.remove_backend(i)
        self.slow_start.remove_backend(i)
        del self.view.available[i]
        del self.backends[i]
        for later in self.backends[i:]:
            later.index -= 1
        backend.index = -1
        task = asyncio.get_running_loop().create_task(backend.pool.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        log.info("backend %s removed", backend.url)
        self._changed()

    def _changed(self) -> None:
        """Tell the controller once per burst of changes (a reload adds and drains many), as
        soon as it is over: a decision per change held the loop for 18–30 s when a reload
        replaced 100 of 1,000 backends. Meanwhile pickers go uniform over the new pool."""
        if self._decision_due:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): decide now
            self._tell_controller()
            return
        self._decision_due = True
        loop.call_soon(self._tell_controller)

    def _tell_controller(self) -> None:
        """A failure there must not fail the request that ended a drain."""
        self._decision_due = False
        try:
            self.on_pool_change()
        except Exception:
            log.exception("re-deciding the weights after a pool change failed")

    def _refresh(self, backend: Backend) -> None:
        i = backend.index
        self.view.available[i] = (
            self.metrics.available[i]
            and not backend.draining
            and backend.active < self._max_in_flight
        )

    # -- the request path -------------------------------------------------------------------

    def begin(self, backend: Backend) -> float:
        """An exchange opens: in-flight up, circuit breaker armed; returns its start time."""
        backend.active += 1
        if backend.active >= self._max_in_flight:
            self.view.available[backend.index] = False
        started = self.metrics.start(backend.index)
        if self.recorder is not None:
            self.recorder.dispatched(started, backend.active)
        return started

    def answered(
        self, backend: Backend, started: float, status: int, *, judged: bool = True
    ) -> None:
        """Response headers (status > 0) or a failure (status 0) came back.

        `judged=False` leaves the outlier detector's verdict to `judge`, once the body is over:
        a backend that sends a fine head and then breaks off must count as failing.
        """
        failed = status == 0 or status >= 500
        latency = self.metrics.finish(backend.index, started, error=failed)
        outcome = min(status // 100, 6) - 1 if status else 5
        backend.observe(latency, outcome)
        if self.recorder is not None:
            self.recorder.answered(started, backend.url, latency, outcome)
        if judged:
            self.judge(backend, failed)

    def judge(self, backend: Backend, failed: bool) -> None:
        """The outcome of an exchange for the outlier detector (ejection on a failure streak)."""
        i = backend.index
        if i < 0:
            return
        if self.detector.on_result(i, failed, self.clock()):
            self.metrics.set_ejected(i, True)
            self._refresh(backend)
            log.warning(
                "backend %s ejected after %d consecutive failures (ejection #%d)",
                backend.url,
                self.detector.settings.consecutive_failures,
                self.detector.times_ejected[i],
            )

    def abandon(self, backend: Backend) -> None:
        """The exchange ended for the client's reasons (it left, its body was too large):
        in-flight comes down, but nothing is recorded against the backend."""
        self.metrics.in_flight[backend.index] -= 1

    def end(self, backend: Backend) -> None:
        """The exchange is over (response relayed, or given up)."""
        backend.active -= 1
        if backend.draining:
            if backend.active == 0:
                self._remove(backend)
        elif backend.active == self._max_in_flight - 1:
            self._refresh(backend)

    # -- periodic work ----------------------------------------------------------------------

    def tick(self) -> None:
        """End the ejections that have run out (called every control interval)."""
        self._serving = True
        peers = list(self.metrics.available)
        for i in self.detector.expire(self.clock()):
            self.metrics.set_ejected(i, False)
            self._refresh(self.backends[i])
            log.info("backend %s back from ejection", self.backends[i].url)
            if self.metrics.available[i]:
                self._returned(i, peers)

    def _returned(self, i: int, peers: list[bool]) -> None:
        """Backend i is back in rotation (or new): no starving, then slow start.

        Its latency estimate restarts from the median of its `peers` (the backends available
        before it came back) instead of decaying from its outage's error penalty, and its
        weight ramps up over the slow-start window. The simulator runs the same rules
        (`envs.kernel._health_checks`).
        """
        now = self.clock()
        self.metrics.restart_estimate(i, now, peers)
        self.slow_start.on_return(i, now)

    async def run_health_checks(self) -> None:
        """Check every backend each health-check interval until cancelled.

        Up to `HEALTH_CHECK_BURST` checks go out together; a larger pool is checked in that
        many groups spread evenly over the interval, so 1,000 backends do not cost 1,000
        connections (and 1,000 answers on the event loop) in the same millisecond.
        """
        assert self.config.health_path is not None
        while True:
            started = self.clock()
            backends = [b for b in list(self.backends) if not b.draining]
            groups = math.ceil(len(backends) / HEALTH_CHECK_BURST)
            gap = self.config.control.health.interval_s / max(groups, 1)
            checks = [
                self._check_after(b, (k // HEALTH_CHECK_BURST) * gap)
                for k, b in enumerate(backends)
            ]
            for outcome in await asyncio.gather(*checks, return_exceptions=True):
                if isinstance(outcome, Exception):
                    log.error("health check failed to run: %r", outcome)
            elapsed = self.clock() - started
            await asyncio.sleep(max(self.config.control.health.interval_s - elapsed, 0.0))

    async def _check_after(self, backend: Backend, delay_s: float) -> bool:
        if delay_s > 0:
            await asyncio.sleep(delay_s)
            if backend.index < 0 or backend.draining:
                return True  # left the pool while it waited its turn
        return await self.check(backend)

    async def check(self, backend: Backend) -> bool:
        """One active check: `GET {health_path}`, 2xx within the timeout passes."""
        if self.grpc_health is not None:
            timeout_s = self.config.control.health.timeout_s
            return self._record_check(backend, await self.grpc_health(backend.url, timeout_s))
        assert self.config.health_path is not None
        timeout = aiohttp.ClientTimeout(total=self.config.control.health.timeout_s)
        if self._health_session is None:
            self._health_session = aiohttp.ClientSession(
                auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(), trust_env=False
            )
        failure: str | None = None
        try:
            async with self._health_session.get(
                backend.url + self.config.health_path,
                timeout=timeout,
                allow_redirects=False,
                ssl=backend.pool.ssl or True,  # the CAs the proxy forwards with (SSL_CERT_FILE)
            ) as response:
                await response.read()
                if not 200 <= response.status < 300:
                    failure = describe_status(response.status)
        except (aiohttp.ClientError, TimeoutError) as error:
            failure = describe_failure(error, self.config.control.health.timeout_s)
        except RuntimeError:  # the session closed under it (shutting down)
            failure = "the proxy is shutting down"
        return self._record_check(backend, failure)

    def _record_check(self, backend: Backend, failure: str | None) -> bool:
        if backend.index >= 0 and not backend.draining:
            backend.failure = failure
            self._apply_check(backend, failure is None)
        return failure is None

    def _apply_check(self, backend: Backend, passed: bool) -> None:
        i = backend.index
        peers = list(self.metrics.available)
        if self.checker.on_check(i, passed):
            self.metrics.set_health(i, passed)
            if passed:
                log.warning("backend %s healthy", backend.url)
            else:
                log.warning("backend %s unhealthy: %s", backend.url, backend.failure)
        if self.detector.on_health_check(i, passed, self.clock()):
            self.metrics.set_ejected(i, False)
            log.info("backend %s un-ejected by a passing health check", backend.url)
        if self.metrics.available[i] and not peers[i]:
            self._returned(i, peers)
        self._refresh(backend)

    async def close(self) -> None:
        """Close every connection pool."""
        await asyncio.gather(*(b.pool.close() for b in self.backends), *self._closing)
        if self._health_session is not None:
            await self._health_session.close()
