"""The live benchmark: a scenario's emulated backends, the real proxy, open-loop load, measured.

Three processes, because two cores and one event loop do not stretch further: this one runs the
emulated backends and polls the proxy's admin API; `rl-lb serve` is a child (sharing the
backends' loop made the proxy's tail collapse at ~700 requests/s, see docs/sim2real.md); the load
generator is another child (`lab.bench_load`), so its latencies do not include anybody's
backlog but the system's. Everything started here is stopped on return, on error and on Ctrl-C.

A live run is summarised by `envs.episode.summarise`, from an `EpisodeResult` built out of the
load generator's records and the polled weights, so a live record and an `rl-lb evaluate` record
have the same keys computed by the same code.
"""

from __future__ import annotations

import asyncio
import math
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from envs import kernel
from envs.episode import EpisodeResult, run_episode, summarise
from lab.bench_load import LoadProcess
from lab.bench_protocols import backend_pool, check_protocol, protocol_flags
from lab.bench_proxy import free_ports, proxy_flags, running_proxies
from lab.bench_scenario import arrival_schedule
from lab.loadgen import CAUSES, MAX_REQUESTS, LoadResult
from rl_lb.balancers import Balancer, make_balancer
from rl_lb.errors import ConfigError, ModelError
from rl_lb.scenarios import Scenario, load_scenario, time_scaled
from serving.admin import read_state
from serving.controller import balancer_spec

__all__ = [
    "LEADS_S",
    "MAX_PROXIES",
    "REFRESH_S",
    "LiveRun",
    "StateCallback",
    "bench_scenario",
    "record_of",
    "run_live",
    "simulate",
]

LEADS_S = (3.0, 6.0, 12.0)
"""Seconds between starting the backends and second 0 of the load: the proxy and the load
generator start in between (the backends' events are shifted by as much). They take ~1.5 s on
2 idle cores; a start slower than the lead (a busy machine) is retried with the next one."""
START_MARGIN_S = 0.1
LOAD_SLACK_S = 30.0
"""How long after its last call's deadline the load generator may take to exit."""
REFRESH_S = 0.25
"""How often the admin API is polled for the live table and the weights over time."""
MAX_DURATION_S = 600.0
MIN_CONTROL_INTERVAL_S = 0.01
MAX_PROXIES = 8
"""Proxy replicas one live run starts (each an `rl-lb serve` process of ~80 MiB)."""

StateCallback = Callable[[float, dict[str, Any] | None], None]
"""Called with (seconds since second 0, the proxy's /admin/state or None) while a run goes."""


def bench_scenario(
    name_or_path: str | Path,
    seed: int,
    *,
    duration: float | None = None,
    time_scale: float | None = None,
    rate_scale: float = 1.0,
) -> Scenario:
    """The scenario drawn with `seed`, compressed to `duration` s (or by `time_scale`), scaled in
    rate: the one object both the simulator and the live run are given."""
    scenario = load_scenario(name_or_path).sample(np.random.default_rng(seed))
    if duration is not None and time_scale is not None:
        raise ConfigError("--duration/--time-scale", "give one of them", "they set the same thing")
    factor = (
        time_scale
        if time_scale is not None
        else (duration or scenario.duration_s) / scenario.duration_s
    )
    scaled = time_scaled(scenario, factor, rate_scale)
    if not 0 < scaled.duration_s <= MAX_DURATION_S:
        raise ConfigError(
            "--duration",
            f"a run would last {scaled.duration_s:g} s",
            f"keep it in (0, {MAX_DURATION_S:g}]",
        )
    if scaled.control_interval_s < MIN_CONTROL_INTERVAL_S:
        raise ConfigError(
            "--duration", f"a control interval of {scaled.control_interval_s:g} s", "run longer"
        )
    if scaled.metrics.proxies > MAX_PROXIES:
        raise ConfigError(
            scaled.name,
            f"{scaled.metrics.proxies} proxy replicas: the live benchmark runs at most "
            f"{MAX_PROXIES} on one machine",
            f"benchmark scenarios with metrics.proxies <= {MAX_PROXIES} live",
        )
    if scaled.metrics.picker_refresh_s > 0:
        raise ConfigError(
            scaled.name, "picker_refresh_s is a simulator-only setting", "set it to 0"
        )
    if scaled.arrivals.rate * scaled.duration_s > MAX_REQUESTS:
        raise ConfigError("--rate-scale", "too many requests for one run", "lower it or --duration")
    return scaled


def record_of(result: EpisodeResult) -> dict[str, Any]:
    """One `rl-lb evaluate` record (`envs.evaluate.RECORD_KEYS`)."""
    return {
        "scenario": result.scenario,
        "balancer": result.balancer,
        "seed": result.seed,
        **summarise(result),
    }


def _sim_balancer(name: str, seed: int) -> Balancer | str:
    """The name itself (evaluate's seeding), or, for a learned model that does not load, the
    fallback the proxy serves in that case, so both sides run the same thing."""
    try:
        make_balancer(name)
    except ModelError:
        return make_balancer(name, rng=random.Random(seed), on_load_error="fallback")
    return name


def simulate(
    scenario: Scenario, balancer: str, seed: int, policy: str | None = None
) -> EpisodeResult:
    """The simulator's episode of `scenario`, named like the live run (`policy` is the model of
    the `learned` balancer, as `rl-lb serve --policy` takes it)."""
    spec = balancer_spec(balancer, policy)
    result = run_episode(scenario, _sim_balancer(spec, seed), seed)
    return replace(result, balancer=balancer)


class _LateStart(Exception):  # noqa: N818 (a condition, not a bug)
    """The proxy or the load generator was not ready when the load had to start."""


@dataclass(frozen=True, eq=False)
class LiveRun:
    episode: EpisodeResult
    load: LoadResult
    states: tuple[dict[str, Any], ...]
    """The polled /admin/state documents, in order."""

    @property
    def record(self) -> dict[str, Any]:
        return record_of(self.episode)


def _outcomes(load: LoadResult) -> np.ndarray:
    """Load-generator causes as simulator outcomes (only ok versus failed enters the summary)."""
    timed_out = (load.cause == CAUSES.index("timeout")) | (load.status == 504)
    outcome = np.where(load.failed, kernel.ERROR, kernel.OK)
    return np.where(timed_out, kernel.TIMEOUT, outcome).astype(np.int64)


def _episode(
    scenario: Scenario,
    balancer: str,
    seed: int,
    load: LoadResult,
    polls: Sequence[tuple[float, dict[str, Any]]],
    urls: Sequence[str],
    targets: np.ndarray,
) -> EpisodeResult:
    n = load.requests
    weights = [
        [next((b["weight"] for b in state["backends"] if b["url"] == u), math.nan) for u in urls]
        for _, state in polls
    ]
    modes = tuple(s["mode"] + (f": {s['reason']}" if s.get("reason") else "") for _, s in polls)
    return EpisodeResult(
        scenario=scenario.name,
        balancer=balancer,
        seed=seed,
        backend_names=tuple(b.name for b in scenario.backends),
        timeout_s=scenario.timeout_s,
        arrival_s=load.sent_s,
        proxy=targets.astype(np.int64),
        backend=np.full(n, -1, dtype=np.int64),
        latency_s=load.latency_s,
        outcome=_outcomes(load),
        retries=np.zeros(n, dtype=np.int64),
        interval_start_s=np.array([t for t, _ in polls]),
        weights=np.array(weights, dtype=np.float64).reshape(len(polls), len(urls)),
        modes=modes,
    )


def _shifted(scenario: Scenario, lead: float) -> Scenario:
    """The backends' timeline starts `lead` s before the load's second 0."""
    return replace(
        scenario,
        backends=tuple(
            replace(
                b,
                events=tuple(
                    replace(e, at_s=e.at_s + lead, until_s=e.until_s + lead) for e in b.events
                ),
            )
            for b in scenario.backends
        ),
    )


async def _run_one(
    scenario: Scenario,
    balancer: str,
    seed: int,
    policy: str | None,
    workdir: Path,
    on_state: StateCallback,
    lead: float,
    protocol: str = "http1",
) -> LiveRun:
    schedule = arrival_schedule(scenario, seed)
    # Each request goes to a proxy replica drawn uniformly, as in the simulator.
    replicas = scenario.metrics.proxies
    targets = np.random.default_rng([seed, 1]).integers(replicas, size=len(schedule))
    flags = proxy_flags(scenario, balancer, policy) + protocol_flags(protocol, balancer)
    polls: list[tuple[float, dict[str, Any]]] = []
    ports = free_ports(replicas)
    async with backend_pool(protocol, _shifted(scenario, lead), seed) as pool:
        start_at = pool.started_at + lead
        # The children start side by side: interpreters take a second or two each.
        load = LoadProcess(
            [f"http://127.0.0.1:{port}/" for port in ports],
            schedule,
            2 * scenario.timeout_s + 1.0,
            workdir,
            targets,
            protocol,
        )
        try:
            async with running_proxies(pool.urls, flags, workdir, ports) as proxies:
                await asyncio.to_thread(load.wait_ready)
                if time.monotonic() > start_at - START_MARGIN_S:
                    raise _LateStart
                load.begin(start_at)
                async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(total=REFRESH_S * 4)
                ) as admin:
                    # Bounded: a child that hangs (say in grpcio's shutdown) after its last
                    # call's deadline is stopped, with an error, rather than waited for.
                    give_up = start_at + scenario.duration_s + 2 * scenario.timeout_s
                    give_up += LOAD_SLACK_S
                    while not load.done():
                        if time.monotonic() > give_up:
                            raise RuntimeError(
                                f"the load generator was still running {LOAD_SLACK_S:.0f} s "
                                "after its last call's deadline: stopped (see its stderr in "
                                f"{workdir})"
                            )
                        # Proxy 0's view, as the simulator records proxy 0's decisions.
                        state = await read_state(admin, f"{proxies[0].admin_url}/state")
                        elapsed = time.monotonic() - start_at
                        if state is not None and 0 <= elapsed <= scenario.duration_s:
                            polls.append((elapsed, state))
                        on_state(elapsed, state)
                        await asyncio.sleep(REFRESH_S)
                result = await asyncio.to_thread(load.result)
        finally:
            load.stop()
    episode = _episode(scenario, balancer, seed, result, polls, pool.urls, targets)
    return LiveRun(episode, result, tuple(s for _, s in polls))


async def run_live(
    scenario: Scenario,
    balancers: Sequence[str],
    seed: int,
    *,
    policy: str | None = None,
    protocol: str = "http1",
    on_start: Callable[[str], None] = lambda balancer: None,
    on_state: StateCallback = lambda elapsed, state: None,
) -> list[LiveRun]:
    """Each balancer in turn on fresh backends, a fresh proxy and the same load schedule."""
    check_protocol(protocol)
    for name in balancers:
        make_balancer(name, on_load_error="fallback")  # an unknown name fails before anything runs
        protocol_flags(protocol, name)  # as does a balancer the protocol cannot serve
    runs = []
    with tempfile.TemporaryDirectory(prefix="rl-lb-bench-") as tmp:
        for balancer in balancers:
            on_start(balancer)
            runs.append(
                await _run_patiently(
                    scenario, balancer, seed, policy, Path(tmp), on_state, protocol
                )
            )
    return runs


async def _run_patiently(
    scenario: Scenario,
    balancer: str,
    seed: int,
    policy: str | None,
    tmp: Path,
    on_state: StateCallback,
    protocol: str = "http1",
) -> LiveRun:
    """One run, started again from scratch with a longer lead when the children were late."""
    for lead in LEADS_S:
        workdir = Path(tempfile.mkdtemp(dir=tmp))
        try:
            return await _run_one(
                scenario, balancer, seed, policy, workdir, on_state, lead, protocol
            )
        except _LateStart:
            continue
    raise ConfigError(
        "bench", f"proxy and load generator took over {LEADS_S[-1]:g} s to start", "free the CPU"
    )
