"""The demo runs the three balancers end to end and leaves nothing running behind it."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import aiohttp
import numpy as np
import psutil
import pytest
from rich.console import Console

import lab.demo
from lab.demo import BALANCERS, run_demo
from rl_lb.policies.learned import HEADER_FILE, SHIPPED_DIR
from rl_lb.scenarios import load_scenario


def listening_ports() -> set[int]:
    connections = psutil.Process().net_connections(kind="tcp")
    return {c.laddr.port for c in connections if c.status == psutil.CONN_LISTEN}


async def test_short_demo_compares_three_balancers_and_cleans_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    states: list[dict[str, Any]] = []
    read_state = lab.demo.read_state

    async def keep_state(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
        """The demo's own reads of /admin/state, kept for the checks below."""
        state = await read_state(session, url)
        if state is not None:
            states.append(state)
        return state

    monkeypatch.setattr(lab.demo, "read_state", keep_state)
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
    # `learned` was the shipped policy itself, never its least-latency fallback: otherwise the
    # demo compares least-latency with itself.
    assert rows[0].mode == "primary"
    learned = [s for s in states if s["balancer"] == "learned"]
    assert learned, "the demo never read the learned proxy's state"
    shipped_version = json.loads((SHIPPED_DIR / HEADER_FILE).read_text())["version"]
    for state in learned:
        assert (state["mode"], state["reason"]) == ("primary", "")
        assert state["fallback_counts"] == {}
        assert (state["loaded"], state["version"]) == (True, shipped_version)
    assert learned[-1]["decisions"] >= 1
    text = out.getvalue()
    assert "same load, three balancers" in text
    assert "slow" in text  # backends are shown by their scenario names
    assert asyncio.all_tasks() == before_tasks
    assert listening_ports() == before_ports
