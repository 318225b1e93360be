"""`ProxyServer`: the proxy, its monitor, control loop and admin API wired into one object.

Tests, the demo and the live benchmark embed it in-process (`async with ProxyServer(config)`,
port 0 for an ephemeral port); `rl-lb serve` runs it under `run`, which adds the signals
(SIGTERM/SIGINT: graceful stop; SIGHUP: reload the config file) and uvloop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import signal
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from aiohttp import web

from rl_lb.errors import RlLbError
from serving.admin import AdminTarget, make_admin_app
from serving.config import ProxyConfig, check_admin, load_config, restart_only_changes
from serving.controller import Controller, balancer_spec, build_balancer
from serving.http_server import HttpServer
from serving.monitor import Monitor
from serving.prom import ProxyMetrics
from serving.proxy import Forwarder, ProxyStats
from serving.upstream import UpstreamPool

__all__ = ["ProxyServer", "run"]

log = logging.getLogger("rl_lb.serving")

_SWEEP_MAX_S = 0.25
"""Deadlines (request heads, backend reads) are checked at least this often, and at least eight
times per shortest timeout: one periodic check instead of a timer per request."""


class ProxyServer:
    """One proxy worker. `start()` returns once it accepts connections; `stop()` is graceful.

    Only worker 0 serves the admin API (each worker has its own metrics and control loop; see
    docs/proxy.md). `flags` are the command-line overrides to re-apply on a config reload.
    """

    def __init__(
        self, config: ProxyConfig, *, worker: int = 0, flags: Mapping[str, Any] | None = None
    ) -> None:
        self.config = config
        self.worker = worker
        self.flags = dict(flags or {})
        self.port = 0
        self.admin_port: int | None = None
        self.stats = ProxyStats()
        self._server: asyncio.Server | None = None
        self._http: HttpServer | None = None
        self._admin_runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        check_admin(config)
        self.monitor = Monitor(config, self._pool)
        for url in config.backends:
            self.monitor.add(url)
        spec = balancer_spec(config.balancer, config.policy)
        balancer = build_balancer(spec, config.max_staleness_s, strict=False)
        self.controller = Controller(config, self.monitor, balancer)
        self.prometheus = ProxyMetrics(self.monitor, self.controller, self.stats)
        self.monitor.on_pool_change = self.controller.decide
        self.controller.decide()

        self.forwarder = Forwarder(config, self.monitor, self.controller, self.stats)
        self._http = HttpServer(
            self.forwarder,
            self.stats.errors,
            max_connections=config.max_connections,
            max_header_bytes=config.max_header_bytes,
            header_timeout=config.header_timeout_s,
        )
        host, port = config.listen_address
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._http, host, port, reuse_port=config.workers > 1 or None, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]

        admin = config.admin_address
        if admin is not None and self.worker == 0:
            self._admin_runner = web.AppRunner(
                make_admin_app(self._admin_target()), access_log=None
            )
            await self._admin_runner.setup()
            await web.TCPSite(self._admin_runner, *admin).start()
            self.admin_port = self._admin_runner.addresses[0][1]

        self._tasks.append(asyncio.create_task(self.controller.run()))
        self._tasks.append(asyncio.create_task(self._sweep()))
        if config.health_path:
            self._tasks.append(asyncio.create_task(self.monitor.run_health_checks()))
        log.info(
            "worker %d: proxy on %s:%d, %d backends, balancer %s (%s%s)",
            self.worker,
            host,
            self.port,
            len(self.monitor.backends),
            balancer.name,
            self.controller.mode,
            f": {self.controller.reason}" if self.controller.reason else "",
        )

    async def stop(self) -> None:
        """Stop accepting, let open exchanges finish (up to `shutdown_timeout_s`), close pools."""
        self._stopping = True
        if self._server is not None and self._http is not None:
            self._server.close()
            self.forwarder.stopping = True
            self._http.stop()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.shutdown_timeout_s
            while self._http.busy and loop.time() < deadline:
                await asyncio.sleep(0.02)
            self._http.close_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        await self.monitor.close()

    async def _sweep(self) -> None:
        """Close what is past its deadline: slow request heads, stalled backends, idle pools."""
        config = self.config
        timeouts = [config.header_timeout_s, config.read_timeout_s, config.connect_timeout_s]
        if config.total_timeout_s:
            timeouts.append(config.total_timeout_s)
        period = min(_SWEEP_MAX_S, min(timeouts) / 8)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(period)
            now = loop.time()
            assert self._http is not None
            self._http.sweep(now)
            for backend in self.monitor.backends:
                backend.pool.sweep(now)

    async def __aenter__(self) -> ProxyServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def ready(self) -> bool:
        """A decision is made, a backend is live and the proxy is not shutting down."""
        return (
            not self._stopping
            and self.controller.decisions > 0
            and any(self.monitor.metrics.available)
        )

    def _admin_target(self) -> AdminTarget:
        """What the admin API may see and change of this worker (the token is the start-up one:
        a reload does not change it)."""
        return AdminTarget(
            token=self.config.admin_token,
            monitor=self.monitor,
            controller=self.controller,
            render_metrics=self.prometheus.render,
            is_ready=lambda: self.ready,
            worker=self.worker,
        )

    def _pool(self, url: str) -> UpstreamPool:
        """The connection pool of one backend."""
        config = self.config
        return UpstreamPool(
            url,
            limit=config.max_in_flight + 2,
            connect_timeout=config.connect_timeout_s,
            read_timeout=config.read_timeout_s,
        )

    # -- reload -----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the config file: backends added/drained, balancer swapped; else nothing.

        Settings that need new sockets or pools (addresses, timeouts, limits) are reported and
        left as they are until a restart.
        """
        path = self.config.config_path
        if path is None:
            log.warning("reload: no config file to re-read (started without --config)")
            return False
        try:
            new = load_config(path, self.flags)
        except RlLbError as error:
            log.error("reload refused, the old config stays: %s", error)
            return False
        old = self.config
        spec, new_spec = (
            balancer_spec(old.balancer, old.policy),
            balancer_spec(new.balancer, new.policy),
        )
        if new_spec != spec:
            try:
                await self.controller.swap_balancer(new_spec)
            except RlLbError as error:
                log.error("reload: balancer %s refused, the old one stays: %s", new_spec, error)
                new = dataclasses.replace(new, balancer=old.balancer, policy=old.policy)
        for url in new.backends:
            if self.monitor.find(url) is None:
                self.monitor.add(url)
        for url in old.backends:
            if url not in new.backends and self.monitor.find(url) is not None:
                self.monitor.drain(url)
        self.config, ignored = restart_only_changes(old, new)
        if ignored:
            log.warning("reload: %s change only at restart", ", ".join(ignored))
        log.info("reloaded %s", path)
        return True


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


async def _serve(
    config: ProxyConfig, flags: Mapping[str, Any], worker: int, forward: Callable[[int], None]
) -> None:
    server = ProxyServer(config, worker=worker, flags=flags)
    await server.start()
    # What start-up allocated (modules, the policy) lives as long as the process: out of the
    # collector's sight, a full collection no longer walks it, which keeps GC pauses short.
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[bool]] = set()

    def on_stop(signum: int) -> None:
        log.info("worker %d: %s, finishing open requests", worker, signal.Signals(signum).name)
        forward(signum)
        stop.set()

    def on_hup() -> None:
        forward(signal.SIGHUP)
        task = loop.create_task(server.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_stop, signum)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    await stop.wait()
    await server.stop()


def run(
    config: ProxyConfig,
    flags: Mapping[str, Any] | None = None,
    worker: int = 0,
    forward: Callable[[int], None] = lambda signum: None,
) -> None:
    """Serve until SIGTERM/SIGINT (uvloop when installed); `forward` passes signals on to the
    other workers."""
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(config, flags or {}, worker, forward))
