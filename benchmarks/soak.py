"""Soak: `rl-lb serve` under steady open-loop load for minutes, one backend restarting regularly.

The proxy runs as its own process (`rl-lb serve`) so that its resident memory is its own; the
emulated backends (a scenario from the library, `steady` by default) and the open-loop load
generator share this process. First a short closed-loop burst measures what the whole set-up can
carry, then the load runs at `--load` (70%) of that, or at `--rate`. Every `--restart-every`
seconds the next backend goes down for `--down` seconds (its connections reset, its port
refusing) and comes back on the same port.

    .venv/bin/python benchmarks/soak.py                      # 5 minutes, a restart every 30 s
    .venv/bin/python benchmarks/soak.py --duration 30 --restart-every 10

Checks (exit status 1 if one fails): every request sent was answered with an HTTP status, at most
`--max-error-rate` of the answers were errors, and the proxy's resident memory grew by less than
`--max-rss-growth` from the end of the warm-up (the first `--warmup` seconds fill pools, caches
and the metrics windows, which is not growth) to the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import numpy as np
import psutil
from _harness import RL_LB, process

from lab.backends import EmulatedPool
from lab.loadgen import CAUSES, run_load
from lab.runtime import load_scenario_sample

UNANSWERED = ("timeout", "connect", "io")
"""Load generator outcomes with no HTTP status."""


@dataclass
class SoakResult:
    duration_s: float
    restart_every_s: float
    capacity_rps: float | None
    rate: float
    sent: int
    answered: int
    errors: dict[str, int]
    proxy_errors: dict[str, int]
    retries: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    restarts: int
    rss_start_mb: float
    rss_end_mb: float
    rss_peak_mb: float
    failed_checks: list[str] = field(default_factory=list)

    @property
    def rss_growth(self) -> float:
        return self.rss_end_mb / self.rss_start_mb - 1.0

    def lines(self) -> list[str]:
        errors = ", ".join(f"{k} {v}" for k, v in self.errors.items() if v) or "none"
        proxy = ", ".join(f"{k} {v}" for k, v in sorted(self.proxy_errors.items())) or "none"
        capacity = f"{self.capacity_rps:.0f} req/s" if self.capacity_rps else "not measured"
        return [
            f"soak: {self.duration_s:g} s at {self.rate:.0f} req/s (capacity {capacity}), "
            f"a backend restarted every {self.restart_every_s:g} s ({self.restarts} restarts)",
            f"requests: sent {self.sent}, answered {self.answered}",
            f"errors by cause: {errors}",
            f"proxy's own answers by reason: {proxy}; retries {self.retries}",
            f"latency ms: p50 {self.p50_ms:.2f}  p99 {self.p99_ms:.2f}  max {self.max_ms:.2f}",
            f"proxy RSS MiB: start {self.rss_start_mb:.1f}  end {self.rss_end_mb:.1f}  "
            f"peak {self.rss_peak_mb:.1f}  growth {100 * self.rss_growth:+.1f}%",
            "checks: "
            + ("all passed" if not self.failed_checks else "; ".join(self.failed_checks)),
        ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve(backends: list[str], port: int, admin: int, balancer: str) -> Iterator[psutil.Process]:
    """`rl-lb serve` until the block ends (SIGTERM, then SIGKILL after 10 s)."""
    command = [RL_LB, "serve", "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"]
    command += ["--balancer", balancer, "--health-interval", "1", "--log-level", "warning"]
    for url in backends:
        command += ["--backend", url]
    with process(command) as proc:
        yield psutil.Process(proc.pid)


async def wait_ready(session: aiohttp.ClientSession, admin: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"http://127.0.0.1:{admin}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"the proxy was not ready within {timeout:g} s")


async def measure_capacity(url: str, seconds: float, connections: int) -> float:
    """Closed loop: `connections` clients each sending the next request on the last answer."""
    done = 0
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                async with session.get(url) as response:
                    await response.read()
                    done += response.status == 200

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(connections)))
    return done / (time.monotonic() - started)


async def restarts(pool: EmulatedPool, every: float, down: float, counter: list[int]) -> None:
    """Take the backends down in turn, each for `down` s, one every `every` s."""
    k = 0
    while True:
        await asyncio.sleep(every - down)
        backend = pool.backends[k % len(pool.backends)]
        await backend.close()
        await asyncio.sleep(down)
        await backend.open()
        counter[0] += 1
        k += 1


async def sample_rss(process: psutil.Process, samples: list[tuple[float, float]]) -> None:
    while True:
        samples.append((time.monotonic(), process.memory_info().rss / 2**20))
        await asyncio.sleep(0.5)


def proxy_counters(metrics: str) -> tuple[dict[str, int], int]:
    errors = {
        m.group(1): int(float(m.group(2)))
        for m in re.finditer(r'^rl_lb_proxy_errors_total\{reason="([^"]+)"\} (\S+)$', metrics, re.M)
    }
    retries = re.search(r"^rl_lb_retries_total (\S+)$", metrics, re.M)
    return errors, int(float(retries.group(1))) if retries else 0


async def soak(args: argparse.Namespace) -> SoakResult:
    scenario = load_scenario_sample(args.scenario, args.seed)
    port, admin = free_port(), free_port()
    url = f"http://127.0.0.1:{port}/soak"
    async with (
        EmulatedPool(scenario, seed=args.seed) as pool,
        aiohttp.ClientSession() as session,
    ):
        with serve(pool.urls, port, admin, args.balancer) as proxy:
            await wait_ready(session, admin)
            capacity = None
            rate = args.rate
            if rate is None:
                capacity = await measure_capacity(url, args.burst, args.connections)
                rate = args.load * capacity
            samples: list[tuple[float, float]] = []
            restarted = [0]
            started = time.monotonic()
            side = [
                asyncio.create_task(sample_rss(proxy, samples)),
                asyncio.create_task(restarts(pool, args.restart_every, args.down, restarted)),
            ]
            try:
                load = await run_load(
                    url,
                    rate,
                    args.duration,
                    connections=args.connections,
                    timeout=args.timeout,
                    seed=args.seed,
                )
            finally:
                for task in side:
                    task.cancel()
                await asyncio.gather(*side, return_exceptions=True)
            async with session.get(f"http://127.0.0.1:{admin}/metrics") as response:
                proxy_errors, retries = proxy_counters(await response.text())
            samples.append((time.monotonic(), proxy.memory_info().rss / 2**20))
    warm = started + args.warmup
    rss_start = next((mb for t, mb in samples if t >= warm), samples[-1][1])
    errors = load.errors
    latency = load.latency_s * 1e3
    result = SoakResult(
        duration_s=args.duration,
        restart_every_s=args.restart_every,
        capacity_rps=capacity,
        rate=rate,
        sent=load.requests,
        answered=load.requests - sum(errors[c] for c in UNANSWERED),
        errors=errors,
        proxy_errors=proxy_errors,
        retries=retries,
        p50_ms=float(np.quantile(latency, 0.5)),
        p99_ms=float(np.quantile(latency, 0.99)),
        max_ms=float(latency.max()),
        restarts=restarted[0],
        rss_start_mb=rss_start,
        rss_end_mb=samples[-1][1],
        rss_peak_mb=max(mb for _, mb in samples),
    )
    check(result, args)
    return result


def check(result: SoakResult, args: argparse.Namespace) -> None:
    failed = result.failed_checks
    if result.answered != result.sent:
        failed.append(f"{result.sent - result.answered} of {result.sent} requests unanswered")
    error_count = sum(result.errors.values())
    if error_count > args.max_error_rate * result.sent:
        failed.append(f"{error_count} errors, over {args.max_error_rate:.2%} of the requests")
    if not result.rss_growth < args.max_rss_growth:
        failed.append(f"RSS grew {result.rss_growth:.1%} (limit {args.max_rss_growth:.0%})")
    if result.restarts < math.floor(args.duration / args.restart_every):
        failed.append(f"only {result.restarts} restarts happened")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load")
    parser.add_argument("--restart-every", type=float, default=30.0, help="seconds")
    parser.add_argument("--down", type=float, default=1.0, help="seconds a restart lasts")
    parser.add_argument("--rate", type=float, help="requests/s (default: --load x capacity)")
    parser.add_argument("--load", type=float, default=0.7, help="share of measured capacity")
    parser.add_argument("--burst", type=float, default=5.0, help="capacity burst, seconds")
    parser.add_argument("--warmup", type=float, help="seconds before the RSS baseline")
    parser.add_argument("--scenario", default="steady", help="backends: a library scenario")
    parser.add_argument("--balancer", default="least-latency")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=5.0, help="per request, seconds")
    parser.add_argument("--max-error-rate", type=float, default=0.001)
    parser.add_argument("--max-rss-growth", type=float, default=0.10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if not 0 < args.down < args.restart_every:
        parser.error("--down must be shorter than --restart-every")
    if args.warmup is None:
        args.warmup = min(max(3.0, args.duration / 10), 30.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = asyncio.run(soak(args))
    for line in result.lines():
        print(line, flush=True)
    if args.json is not None:
        figures = {**asdict(result), "rss_growth": result.rss_growth, "causes": list(CAUSES)}
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 1 if result.failed_checks else 0


if __name__ == "__main__":
    raise SystemExit(main())
