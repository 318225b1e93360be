"""`ProxyServer`: the proxy, its monitor, control loop and admin API wired into one object.

Tests, the demo and the live benchmark embed it in-process (`async with ProxyServer(config)`,
port 0 for an ephemeral port); `rl-lb serve` runs it under `run`, which adds the signals
(SIGTERM/SIGINT: graceful stop; SIGHUP: reload the config file and the TLS certificate) and
uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import ssl
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from aiohttp import web

from rl_lb.errors import ConfigError
from serving.admin import AdminTarget, make_admin_app
from serving.config import ProxyConfig, check_admin
from serving.controller import Controller, balancer_spec, build_balancer
from serving.discovery import discovery_for, follow
from serving.grpc_health import GrpcHealth
from serving.h2_connection import quiet_hpack_logging
from serving.h2_server import H2Server
from serving.http_server import HttpServer
from serving.monitor import Monitor
from serving.prom import ProxyMetrics
from serving.proxy import Forwarder, ProxyStats
from serving.registry import ModelRef
from serving.reload import reload_config
from serving.rollout import Rollout, first_version, followed_alias
from serving.tls import HTTP1, ListenerTls, backend_context
from serving.upstream import UpstreamPool
from serving.workers import Peers

__all__ = ["ProxyServer", "bind_error", "run"]

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
        self.h2: H2Server | None = None
        """HTTP/2 clients (h2c, and h2 over TLS): served with `http2` or backend-protocol h2c."""
        self._admin_runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self.tls: ListenerTls | None = None
        self._backend_tls: ssl.SSLContext | None = None
        """The one client context of the https:// backends when a TLS setting is given (built
        with the first pool); None: each pool verifies with the system's CAs."""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.config
        check_admin(config)
        self.monitor = Monitor(config, self._pool)
        self._h2_tls: ssl.SSLContext | None = None
        if config.backend_ca_file or config.backend_sni or config.backend_client_cert:
            self._h2_tls = backend_context(  # https:// backends spoken to in h2 (and gRPC checks)
                config.backend_ca_file,
                config.backend_sni,
                config.backend_client_cert,
                config.backend_client_key,
            )
            self._h2_tls.set_alpn_protocols(["h2"])
        self.grpc_health = GrpcHealth(config.connect_timeout_s, self._h2_tls)
        if config.health_protocol == "grpc":
            self.monitor.grpc_health = self.grpc_health.check
        if config.record:
            from serving.recorder import Recorder  # pyarrow only when recording

            self.monitor.recorder = Recorder(
                config.record,
                worker=self.worker,
                workers=config.workers,
                sample=config.record_sample,
                file_size=config.record_file_size,
                max_bytes=config.record_max_bytes,
            )
        for url in config.backends:
            self.monitor.add(url)
        self._discovered: set[str] = set()
        self.discovery = discovery_for(config, self._follow_discovery)
        if self.discovery is not None:
            await self.discovery.refresh_all()  # the first set before the first decision
            self._follow_discovery()
        spec = balancer_spec(config.balancer, config.policy)
        followed = followed_alias(config)
        version = await first_version(followed) if followed else None
        if followed is not None and version is not None:
            spec = balancer_spec(config.balancer, ModelRef(followed.name, version).uri)
        balancer = build_balancer(
            spec,
            config.max_staleness_s,
            strict=not config.allow_fallback_start,
            outcome_guard=config.control.outcome_guard,
        )
        self.controller = Controller(config, self.monitor, balancer)
        self.rollout = Rollout(config, self.controller, followed, version) if followed else None
        self.prometheus = ProxyMetrics(self.monitor, self.controller, self.stats, self.rollout)
        if self.discovery is not None:
            self.prometheus.add(self.discovery.metrics)
        self.monitor.on_pool_change = self.controller.decide
        self.controller.decide()

        self.forwarder = Forwarder(config, self.monitor, self.controller, self.stats)
        if config.tls_cert and config.tls_key:
            alpn = ("h2", HTTP1) if config.serves_http2 else (HTTP1,)
            self.tls = ListenerTls(config.tls_cert, config.tls_key, alpn)
        self._http = HttpServer(
            self.forwarder,
            self.stats.errors,
            max_connections=config.max_connections,
            max_header_bytes=config.max_header_bytes,
            header_timeout=config.header_timeout_s,
            on_answered=self.stats.answered,
        )
        if config.serves_http2:
            self.h2 = H2Server(config, self.forwarder, self._h2_tls)
            self._http.alpn_handoff["h2"] = self.h2
            self.prometheus.add(self.h2.collect)
        host, port = config.listen_address
        loop = asyncio.get_running_loop()
        admin = config.admin_address
        try:
            with bind_error("listen", config.listen):
                self._server = await loop.create_server(
                    self._http,
                    host,
                    port,
                    reuse_port=config.workers > 1 or None,
                    backlog=1024,
                    ssl=self.tls.context if self.tls is not None else None,
                )
            self.port = self._server.sockets[0].getsockname()[1]
            self.peers = Peers.from_environment(self.worker, config.workers, config.admin_token)
            if admin is not None and (self.worker == 0 or self.peers is not None):
                self._admin_runner = web.AppRunner(
                    make_admin_app(self._admin_target()), access_log=None
                )
                await self._admin_runner.setup()
                if self.worker == 0:
                    with bind_error("admin", str(config.admin)):
                        await web.TCPSite(self._admin_runner, *admin).start()
                else:  # worker 0 reaches this one's admin API on loopback (serving/workers.py)
                    await web.TCPSite(self._admin_runner, "127.0.0.1", 0).start()
                self.admin_port = self._admin_runner.addresses[0][1]
                if self.peers is not None:
                    self.peers.register(self.admin_port)
        except ConfigError:
            await self.stop()  # what did bind is released: the caller may try another port
            raise

        self._tasks.append(asyncio.create_task(self.controller.run()))
        self._tasks.append(asyncio.create_task(self._sweep()))
        if self.rollout is not None:
            self._tasks.append(asyncio.create_task(self.rollout.run()))
        if self.discovery is not None:
            self.discovery.start()
        if config.health_path:
            self._tasks.append(asyncio.create_task(self.monitor.run_health_checks()))
        count = len(self.monitor.backends)
        log.info(
            "worker %d: proxy on %s:%d, %d backend%s, balancer %s (%s%s)%s",
            self.worker,
            host,
            self.port,
            count,
            "" if count == 1 else "s",
            balancer.name,
            self.controller.mode,
            f": {self.controller.reason}" if self.controller.reason else "",
            f", admin API on {admin[0]}:{self.admin_port}" if admin and self.admin_port else "",
        )

    async def stop(self) -> None:
        """Stop accepting, let open exchanges finish (up to `shutdown_timeout_s`), close pools."""
        self._stopping = True
        if self._server is not None and self._http is not None:
            self._server.close()
            self.forwarder.stopping = True
            self._http.stop()
            if self.h2 is not None:
                self.h2.stop()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.shutdown_timeout_s
            while (self._http.busy or (self.h2 is not None and self.h2.busy)) and (
                loop.time() < deadline
            ):
                await asyncio.sleep(0.02)
            self._http.close_all()
            if self.h2 is not None:
                self.h2.close_all()
                await self.h2.close()
            self.forwarder.tunnels.close_all()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.discovery is not None:
            await self.discovery.close()
        await self.controller.prober.close()
        await self.monitor.close()
        await self.grpc_health.close()
        if self.monitor.recorder is not None:
            await asyncio.to_thread(self.monitor.recorder.close)

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
            self.forwarder.tunnels.sweep(now)
            if self.h2 is not None:
                self.h2.sweep(now)
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
            metrics_token=self.config.metrics_token,
            monitor=self.monitor,
            controller=self.controller,
            render_metrics=self.prometheus.render,
            is_ready=lambda: self.ready,
            worker=self.worker,
            rollout_state=self.rollout.state if self.rollout is not None else lambda: None,
            discovery=self.discovery,
            peers=self.peers,
        )

    def _follow_discovery(self) -> None:
        """A discovery source changed: add what is new, drain what is gone (not the static)."""
        assert self.discovery is not None
        self._discovered = follow(
            self.discovery, self.monitor, self.config.backends, self._discovered
        )

    def _pool(self, url: str) -> UpstreamPool:
        """The connection pool of one backend."""
        config = self.config
        if self._backend_tls is None and (
            config.backend_ca_file or config.backend_sni or config.backend_client_cert
        ):
            self._backend_tls = backend_context(
                config.backend_ca_file,
                config.backend_sni,
                config.backend_client_cert,
                config.backend_client_key,
            )
        return UpstreamPool(
            url,
            limit=config.max_in_flight + 2,
            connect_timeout=config.connect_timeout_s,
            read_timeout=config.read_timeout_s,
            tls=self._backend_tls,
        )

    # -- reload -----------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the TLS certificate and the config file (`serving.reload`); False: the config
        file was not re-read or was refused, and the old config stays."""
        config = await reload_config(
            self.config, self.flags, self.tls, self.controller, self.monitor, self.discovery
        )
        if config is None:
            return False
        self.config = config
        return True


@contextlib.contextmanager
def bind_error(key: str, address: str) -> Iterator[None]:
    """A socket that cannot be bound becomes one line naming the setting and the address."""
    try:
        yield
    except OSError as error:
        taken = error.errno == errno.EADDRINUSE
        raise ConfigError(
            f"--{key} {address}",
            "address already in use" if taken else f"cannot listen there: {error.strerror}",
            f"stop what uses it or pick another port with --{key} HOST:PORT"
            + (" ('' for none)" if key == "admin" else ""),
        ) from None


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
    quiet_hpack_logging()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(config, flags or {}, worker, forward))
