"""The outcome guard through the real proxy: a deliberately bad policy (all weight on the slowest
backend) is switched off for a regression and let back later, and operators see both in
`/admin/state`, `/metrics` and the log."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from rollout_fixtures import SLOWEST, SlowBackend, Traffic, slow_first_pool, write_directional_model
from serving_helpers import admin_json, eventually, proxy_config

from serving.app import ProxyServer

GUARD = {
    "metrics-window": 2.0,
    "outcome-guard-min-answers": 3,
    "outcome-guard-backoff": 1.0,
    "outcome-guard-max-backoff": 2.0,
}
"""A short window and hold, so that a switch and a return both happen within seconds."""


@pytest.fixture
async def pool() -> AsyncIterator[Callable[[int], Awaitable[list[SlowBackend]]]]:
    """`await pool(n)`: n backends, the first one slow, the others fast."""
    async for make in slow_first_pool():
        yield make


def metric(text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus exposition."""
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    assert match is not None, f"{name}{labels} not exported"
    return float(match[1])


async def test_a_bad_policy_is_switched_off_and_let_back_visibly(
    pool, client, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="rl_lb")
    backends = await pool(3)
    model = write_directional_model(tmp_path / "slowest", SLOWEST, "slowest-1")
    config = proxy_config(
        backends, balancer="learned", policy=str(model), health_path=None, control=GUARD
    )
    async with ProxyServer(config) as proxy:
        traffic = Traffic(client, [f"http://127.0.0.1:{proxy.port}/"], workers=6)
        try:
            controller = proxy.controller
            await eventually(lambda: controller.reason == "regression", timeout=15)
            _, state = await admin_json(client, proxy, "GET", "/admin/state")
            guard = state["outcome_guard"]
            if state["reason"] == "regression":  # the hold may end between the two reads
                assert state["mode"] == "fallback"
                assert guard["holding"] is True
                assert 0 < guard["returns_in_s"] <= GUARD["outcome-guard-max-backoff"]
            assert guard["evidence_limit"] == pytest.approx(0.5)
            assert guard["threshold"] == pytest.approx(2.5)
            assert state["mode_changes_to"]["regression"] >= 1

            # The hold ends: the policy serves again (and, still bad, is switched off again).
            await eventually(lambda: controller.switch_counts["primary"] >= 1, timeout=15)
            _, state = await admin_json(client, proxy, "GET", "/admin/state")
            assert state["mode_changes_to"]["primary"] >= 1
            _, metrics = await admin_json(client, proxy, "GET", "/metrics")
        finally:
            await traffic.stop()
    assert metric(metrics, "rl_lb_mode_changes_to_total", '{to="regression"}') >= 1
    assert metric(metrics, "rl_lb_mode_changes_to_total", '{to="primary"}') >= 1
    assert metric(metrics, "rl_lb_fallback_decisions_total", '{reason="regression"}') >= 1
    assert metric(metrics, "rl_lb_outcome_guard_evidence_limit") == pytest.approx(0.5)
    assert metric(metrics, "rl_lb_outcome_guard_holding") in (0.0, 1.0)
    assert metric(metrics, "rl_lb_outcome_guard_holds_ended_early_total") >= 0.0
    logged = [r.getMessage() for r in caplog.records if r.name == "rl_lb.serving.controller"]
    switched = [m for m in logged if m.startswith("balancer mode fallback (regression)")]
    assert switched
    assert "policy/fallback cost" in switched[0]
    assert "back to the policy in" in switched[0]
    assert any(m.startswith("balancer mode primary (was fallback (regression))") for m in logged)
    assert traffic.sent > 100
    assert traffic.failed == 0
