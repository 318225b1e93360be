"""The demo runs the three balancers end to end and leaves nothing running behind it."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import psutil
from rich.console import Console

from lab.demo import BALANCERS, run_demo
from rl_lb.scenarios import load_scenario


def listening_ports() -> set[int]:
    connections = psutil.Process().net_connections(kind="tcp")
    return {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}


async def test_short_demo_compares_three_balancers_and_cleans_up() -> None:
    scenario = load_scenario("slow-backend").sample(np.random.default_rng(0))
    before_ports = listening_ports()
    before_tasks = asyncio.all_tasks()
    out = io.StringIO()
    rows = await run_demo(
        scenario, duration=1.5, rate_scale=0.05, console=Console(file=out, width=120)
    )
    assert [row.balancer for row in rows] == list(BALANCERS)
    counts = {row.result.requests for row in rows}
    assert len(counts) == 1  # the same schedule for every balancer
    assert counts.pop() > 30
    for row in rows:
        assert row.result.error_count < row.result.requests
        assert row.effective_p99_ms >= row.result.quantile_ms(0.99)
    text = out.getvalue()
    assert "same load, three balancers" in text
    assert "slow" in text  # backends are shown by their scenario names
    assert asyncio.all_tasks() == before_tasks
    assert listening_ports() == before_ports
