"""The proxy under benchmark, as an `rl-lb serve` child process configured from a scenario.

Measured on the 2-core benchmark machine (docs/sim2real.md): with the proxy in the same process
as the emulated backends, the two share one event loop and the proxy's p99 overhead grew with the
backends' timer load; in a process of its own it competes only for CPU. So the benchmark starts
the real command, exactly as an operator would, on free loopback ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from rl_lb.control import ControlSpec
from rl_lb.errors import ConfigError
from rl_lb.scenarios import Scenario

__all__ = [
    "ProxyProcess",
    "control_flags",
    "free_port",
    "free_ports",
    "proxy_flags",
    "running_proxies",
]

HOST = "127.0.0.1"
READY_TIMEOUT_S = 20.0
STOP_GRACE_S = 5.0
RL_LB = [sys.executable, "-m", "rl_lb.cli"]


def free_port() -> int:
    """A loopback port nobody listens on now (the caller binds it soon after)."""
    return free_ports(1)[0]


def free_ports(count: int, avoid: Sequence[int] = ()) -> list[int]:
    """`count` distinct loopback ports nobody listens on now, none of them in `avoid` (ports
    already handed out and not yet bound). Why: the kernel may hand a port it just gave a
    closed probe out again, so ports drawn one at a time can collide (a proxy and its admin
    API once drew the same one); the probes here stay bound until all are drawn."""
    probes: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probes.append(probe)
            probe.bind((HOST, 0))
            port = int(probe.getsockname()[1])
            if port not in avoid:
                ports.append(port)
        return ports
    finally:
        for probe in probes:
            probe.close()


def control_flags(control: ControlSpec) -> list[str]:
    """`rl-lb serve` flags for every shared setting (`ControlSpec.flags()`): the child runs the
    spec it is given, never its own defaults."""
    return [item for key, value in control.flags().items() for item in (f"--{key}", repr(value))]


def proxy_flags(scenario: Scenario, balancer: str, policy: str | None) -> list[str]:
    """`rl-lb serve` flags that make the proxy run the scenario's control side: its shared
    settings (`scenario.control`, time-scaled with the scenario by `time_scaled`), its control
    interval, metrics delay and timeout."""
    name, _, path = balancer.partition(":")
    flags = ["--balancer", name if name == "learned" else balancer]
    if name == "learned" and (path or policy):
        flags += ["--policy", path or str(policy)]
    return [
        *flags,
        *control_flags(scenario.control),
        "--control-interval", repr(scenario.control_interval_s),
        "--metrics-delay", repr(scenario.metrics.delay_s),
        "--read-timeout", repr(scenario.timeout_s),
        "--shutdown-timeout", "1",
        "--log-level", "warning",
    ]  # fmt: skip


@dataclass
class ProxyProcess:
    """A running `rl-lb serve`: its ports and the process; `stop()` is SIGTERM then SIGKILL."""

    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}/admin"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def failure(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.is_file() else ""


async def _wait_ready(proxy: ProxyProcess) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proxy.process.poll() is not None:
                raise ConfigError("rl-lb serve", f"exited at start: {proxy.failure()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"{proxy.admin_url.removesuffix('/admin')}/readyz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise ConfigError("rl-lb serve", f"not ready after {READY_TIMEOUT_S:g} s: {proxy.failure()}")


@contextlib.asynccontextmanager
async def running_proxies(
    backends: Sequence[str], flags: Sequence[str], workdir: Path, ports: Sequence[int]
) -> AsyncIterator[list[ProxyProcess]]:
    """Start one `rl-lb serve` per port in front of `backends` (side by side: an interpreter
    takes a second or so to start), wait until all are ready, always stop them all."""
    proxies: list[ProxyProcess] = []
    admin_ports = free_ports(len(ports), avoid=ports)
    try:
        for port, admin_port in zip(ports, admin_ports, strict=True):
            log = workdir / f"proxy-{port}.log"
            command: list[Any] = [*RL_LB, "serve", "--listen", f"{HOST}:{port}"]
            command += ["--admin", f"{HOST}:{admin_port}", *flags]
            for url in backends:
                command += ["--backend", url]
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=sink, stderr=sink
                )
            proxies.append(ProxyProcess(process, port, admin_port, log))
        await asyncio.gather(*(_wait_ready(proxy) for proxy in proxies))
        yield proxies
    finally:
        for proxy in proxies:
            proxy.stop()
