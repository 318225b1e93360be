"""`rl-lb demo`: the learned balancer against the baselines, live, on one machine.

It starts a scenario's emulated backends, the real proxy in front of them and the open-loop load
generator, shows what the proxy's admin API reports while the load runs, then repeats the same
load (same scenario draw, same seeds, fresh backends) with least-latency and round-robin and
compares the three. The scenario's timeline is compressed into each run (`time_scale`) so every
event of the file happens during the demo; service times stay real.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from rich.console import Console, Group
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from lab.backends import EmulatedPool
from lab.loadgen import LoadResult, run_load
from rl_lb.scenarios import Scenario
from serving.admin import read_state

__all__ = ["BALANCERS", "DemoRow", "logs_through", "run_demo"]

BALANCERS = ("learned", "least-latency", "round-robin")
REFRESH_S = 0.5
MAX_DEMO_RATE = 1500.0
"""Backends, proxy and load generator share one process: above this the demo measures itself."""


@dataclass(frozen=True)
class DemoRow:
    """One balancer's run, as the final table shows it."""

    balancer: str
    mode: str
    """What the proxy's controller reported last ("primary" / "fallback: reason")."""
    result: LoadResult
    timeout_s: float

    @property
    def effective_p99_ms(self) -> float:
        return self.result.effective_quantile_ms(0.99, self.timeout_s)


@contextlib.contextmanager
def logs_through(console: Console) -> Iterator[None]:
    """While inside, log records are printed by `console`: a Live display on it puts them above.

    With no handler configured, Python writes warnings (a backend ejected, a mode change) bare
    to stderr, into the middle of the live table.
    """
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


def _ms(seconds: Any) -> str:
    return "-" if seconds is None or not math.isfinite(seconds) else f"{seconds * 1e3:.1f}"


def live_table(
    balancer: str,
    state: dict[str, Any] | None,
    elapsed: float,
    total: float,
    names: dict[str, str],
) -> Group:
    """Per backend: weight, in-flight, p99, health; then the controller's mode and reason.

    `names` maps the proxy's backend URLs to the scenario's names, which say what each one is.
    """
    table = Table(title=f"balancer {balancer}: {elapsed:.0f}/{total:.0f} s", title_justify="left")
    for column in ("backend", "weight", "in-flight", "p99 ms", "health"):
        table.add_column(column, justify="left" if column in ("backend", "health") else "right")
    if state is None:
        return Group(table, Text("waiting for the proxy's first snapshot"))
    for row in state["backends"]:
        health = "ejected" if row["ejected"] else "healthy" if row["healthy"] else "unhealthy"
        style = "" if health == "healthy" else "red"
        table.add_row(
            names.get(row["url"], row["url"]),
            f"{row['weight']:.3f}",
            str(row["in_flight"]),
            _ms(row["p99_s"]),
            Text(health, style=style),
        )
    reason = f" ({state['reason']})" if state.get("reason") else ""
    return Group(table, Text(f"mode: {state['mode']}{reason}"))


def comparison_table(rows: list[DemoRow]) -> Table:
    table = Table(title="same load, three balancers", title_justify="left")
    for column in ("balancer", "mode", "requests", "errors", "p50 ms", "p99 ms", "eff.p99"):
        table.add_column(column, justify="left" if column in ("balancer", "mode") else "right")
    for row in rows:
        r = row.result
        table.add_row(
            row.balancer,
            row.mode,
            str(r.requests),
            str(r.error_count),
            f"{r.quantile_ms(0.5):.1f}",
            f"{r.quantile_ms(0.99):.1f}",
            f"{row.effective_p99_ms:.1f}",
        )
    return table


async def _one_run(
    scenario: Scenario,
    balancer: str,
    rate: float,
    duration: float,
    seed: int,
    live: Live,
) -> DemoRow:
    from serving.app import ProxyServer
    from serving.config import ProxyConfig

    time_scale = duration / scenario.duration_s
    async with EmulatedPool(scenario, seed=seed, time_scale=time_scale) as pool:
        config = ProxyConfig(
            backends=tuple(pool.urls),
            listen="127.0.0.1:0",
            admin="127.0.0.1:0",
            balancer=balancer,
            control_interval_s=scenario.control_interval_s,
            control=scenario.control,
            read_timeout_s=scenario.timeout_s,
        )
        names = dict(zip(pool.urls, pool.names, strict=True))
        async with ProxyServer(config) as proxy, aiohttp.ClientSession() as admin:
            state_url = f"http://127.0.0.1:{proxy.admin_port}/admin/state"
            load = asyncio.create_task(
                run_load(
                    f"http://127.0.0.1:{proxy.port}/",
                    rate,
                    duration,
                    timeout=2 * scenario.timeout_s,
                    seed=seed,
                )
            )
            started, state = time.monotonic(), None
            try:
                while not load.done():
                    state = await read_state(admin, state_url) or state
                    elapsed = time.monotonic() - started
                    live.update(live_table(balancer, state, elapsed, duration, names))
                    await asyncio.wait({load}, timeout=REFRESH_S)
            finally:
                if not load.done():
                    load.cancel()
                    await asyncio.gather(load, return_exceptions=True)
            result = load.result()
            state = await read_state(admin, state_url) or state
    mode = "?" if state is None else state["mode"]
    if state is not None and state.get("reason"):
        mode += f" ({state['reason']})"
    return DemoRow(balancer, mode, result, scenario.timeout_s)


async def run_demo(
    scenario: Scenario,
    *,
    duration: float = 20.0,
    rate_scale: float = 0.25,
    seed: int = 0,
    console: Console | None = None,
) -> list[DemoRow]:
    """Run the three balancers one after the other on the same load; the rows in that order.

    The rate is the scenario's base arrival rate times `rate_scale` (its profile and phases are
    not replayed), capped at `MAX_DEMO_RATE`. Everything started here is stopped on return and
    on cancellation (Ctrl-C).
    """
    console = console or Console()
    rate = scenario.arrivals.rate * rate_scale
    if rate > MAX_DEMO_RATE:
        console.print(f"rate {rate:.0f}/s capped at {MAX_DEMO_RATE:.0f}/s (lower --rate-scale)")
        rate = MAX_DEMO_RATE
    console.print(
        f"scenario {scenario.name}: {len(scenario.backends)} backends, "
        f"{rate:.0f} requests/s for {duration:g} s per balancer"
    )
    rows: list[DemoRow] = []
    with logs_through(console):
        for balancer in BALANCERS:
            with Live(live_table(balancer, None, 0.0, duration, {}), console=console) as live:
                rows.append(await _one_run(scenario, balancer, rate, duration, seed, live))
            if not console.is_terminal:
                console.line()  # rich ends a Live display's last line on a terminal only
    console.print()
    console.print(comparison_table(rows))
    return rows
