"""The control loop behind a live proxy: fallbacks and their reasons, policy swaps, external
weights, backends added and drained, config reloads."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import admin_json, eventually, proxy_config, write_model

from rl_lb.balancers import Balancer, GuardedBalancer
from rl_lb.pickers import make_picker
from rl_lb.types import FloatArray, PoolSnapshot
from serving.app import ProxyServer
from serving.config import load_config


class BadPolicy:
    """A policy that fails in one chosen way."""

    name = "bad"

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def weights(self, snapshot: PoolSnapshot) -> FloatArray:
        n = len(snapshot)
        if self.kind == "exception":
            raise RuntimeError("policy bug")
        return {
            "nan": np.full(n, math.nan),
            "negative": np.array([-1.0] + [1.0] * (n - 1)),
            "all-zero": np.zeros(n),
            "shape": np.ones(n + 1),
        }[self.kind]

    def reset(self) -> None:
        """Stateless."""


def _fallback_count(metrics: str, reason: str) -> float:
    prefix = f'rl_lb_fallback_decisions_total{{reason="{reason}"}} '
    line = next(line for line in metrics.splitlines() if line.startswith(prefix))
    return float(line.removeprefix(prefix))


@pytest.mark.parametrize("kind", ["exception", "nan", "negative", "all-zero", "shape", "missing"])
async def test_each_policy_failure_falls_back_with_its_reason(backends, client, kind) -> None:
    pool = await backends(2)
    async with ProxyServer(proxy_config(pool, health_path=None)) as proxy:
        primary = (
            None if kind == "missing" else Balancer("bad", BadPolicy(kind), make_picker("p2c"))
        )
        proxy.controller.balancer = GuardedBalancer(primary, name="bad")
        decided = proxy.controller.decisions
        await eventually(lambda: proxy.controller.decisions > decided + 1)
        _, state = await admin_json(client, proxy, "GET", "/admin/state")
        _, metrics = await admin_json(client, proxy, "GET", "/metrics")
        async with client.get(f"http://127.0.0.1:{proxy.port}/") as response:
            served = response.status
    assert (state["mode"], state["reason"]) == ("fallback", kind)
    assert state["fallback_counts"][kind] >= 1
    assert _fallback_count(metrics, kind) >= 1
    assert 'rl_lb_balancer_mode{mode="fallback"} 1.0' in metrics
    assert served == 200


async def test_a_model_that_cannot_load_starts_in_fallback(backends, client, tmp_path) -> None:
    """Only when the operator opts in; by default start-up refuses (test_admin_api_details)."""
    pool = await backends(1)
    missing = str(tmp_path / "missing")
    config = proxy_config(pool, balancer="learned", policy=missing, allow_fallback_start=True)
    async with ProxyServer(config) as proxy:
        _, state = await admin_json(client, proxy, "GET", "/admin/state")
        _, metrics = await admin_json(client, proxy, "GET", "/metrics")
        ready, _ = await admin_json(client, proxy, "GET", "/readyz")
    assert (state["mode"], state["reason"], state["loaded"]) == ("fallback", "load-failed", False)
    assert _fallback_count(metrics, "load-failed") >= 1
    assert ready == 200


async def test_stale_metrics_send_the_policy_to_its_fallback(backends, client, tmp_path) -> None:
    pool = await backends(2)
    model = write_model(tmp_path / "model")
    config = proxy_config(
        pool, balancer="learned", policy=str(model), metrics_delay_s=0.5, max_staleness_s=0.2
    )
    async with ProxyServer(config) as proxy:
        assert proxy.controller.mode == "primary"
        await eventually(lambda: proxy.controller.reason == "stale")
        _, state = await admin_json(client, proxy, "GET", "/admin/state")
        _, metrics = await admin_json(client, proxy, "GET", "/metrics")
    assert (state["mode"], state["version"]) == ("fallback", "test-1")
    assert _fallback_count(metrics, "stale") >= 1


async def test_a_policy_is_hot_swapped_and_a_bad_one_refused(backends, client, tmp_path) -> None:
    pool = await backends(2)
    good = write_model(tmp_path / "good", version="v7")
    corrupt = write_model(tmp_path / "corrupt")
    (corrupt / "policy.npz").write_bytes(b"not a zip file")
    async with ProxyServer(proxy_config(pool)) as proxy:
        swapped, body = await admin_json(
            client, proxy, "POST", "/admin/policy", {"path": str(good)}
        )
        refused, error = await admin_json(
            client, proxy, "POST", "/admin/policy", {"path": str(corrupt)}
        )
        missing, _ = await admin_json(
            client, proxy, "POST", "/admin/policy", {"path": str(tmp_path / "nope")}
        )
        _, state = await admin_json(client, proxy, "GET", "/admin/state")
        async with client.get(f"http://127.0.0.1:{proxy.port}/") as response:
            served = response.status
    assert swapped == 200
    assert body["version"] == "v7"
    assert refused == 400
    assert "corrupt model weights" in error["error"]
    assert missing == 400
    assert (state["policy"], state["version"], state["mode"]) == ("learned", "v7", "primary")
    assert served == 200


async def test_external_weights_steer_traffic_and_expire(backends, client) -> None:
    b0, b1 = await backends(2)
    async with ProxyServer(proxy_config([b0, b1], health_path=None)) as proxy:
        status, body = await admin_json(client, proxy, "POST", "/admin/weights", [0.0, 1.0])
        for _ in range(20):
            async with client.get(f"http://127.0.0.1:{proxy.port}/") as response:
                assert await response.text() == "b1"
        bad = {
            reason: await admin_json(client, proxy, "POST", "/admin/weights", weights)
            for reason, weights in (
                ("shape", [1.0]),
                ("negative", [-1.0, 2.0]),
                ("all-zero", [0.0, 0.0]),
            )
        }
        await eventually(lambda: proxy.controller.reason == "stale")  # not refreshed
        _, state = await admin_json(client, proxy, "GET", "/admin/state")
        cleared, _ = await admin_json(client, proxy, "DELETE", "/admin/weights")
        mode = proxy.controller.mode
    assert (status, body["mode"], body["weights"]) == (200, "external", [0.0, 1.0])
    for reason, (code, error) in bad.items():
        assert code == 400
        assert reason in error["error"]
    assert (state["mode"], state["external_weights"]) == ("fallback", [0.0, 1.0])
    assert (cleared, mode) == (200, "primary")


async def test_backends_are_added_and_drained_live(backends, client) -> None:
    b0, b1 = await backends(2)
    async with ProxyServer(proxy_config([b0], health_path=None)) as proxy:
        base = f"http://127.0.0.1:{proxy.port}"
        added, _ = await admin_json(client, proxy, "POST", "/admin/backends", {"url": b1.url})
        twice, _ = await admin_json(client, proxy, "POST", "/admin/backends", {"url": b1.url})
        slow = asyncio.create_task(client.get(f"{base}/sleep/0.5"))
        await eventually(lambda: b0.hits + b1.hits == 1)
        busy = b0 if b0.hits else b1
        other = b1 if busy is b0 else b0
        drained, _ = await admin_json(client, proxy, "DELETE", "/admin/backends", {"url": busy.url})
        during = [b.url for b in proxy.monitor.backends]
        for _ in range(10):
            async with client.get(f"{base}/") as response:
                assert await response.text() == other.name
        async with await slow as response:
            finished = response.status
        _, state = await admin_json(client, proxy, "GET", "/admin/state")
        unknown, _ = await admin_json(client, proxy, "DELETE", "/admin/backends", {"url": busy.url})
    assert (added, twice, drained, unknown) == (201, 400, 202, 404)
    assert busy.url in during  # kept while its request was open
    assert finished == 200
    assert [b["url"] for b in state["backends"]] == [other.url]


async def test_a_config_reload_changes_backends_and_balancer(backends, tmp_path: Path) -> None:
    b0, b1 = await backends(2)
    path = tmp_path / "proxy.toml"
    common = 'listen = "127.0.0.1:0"\nadmin = ""\nbalancer = "least-latency"\n'
    path.write_text(common + f'backend = ["{b0.url}"]\n')
    async with ProxyServer(load_config(str(path))) as proxy:
        path.write_text(
            f'listen = "127.0.0.1:0"\nadmin = ""\nbalancer = "jsq"\nbackend = ["{b1.url}"]'
        )
        assert await proxy.reload()
        urls = [b.url for b in proxy.monitor.backends]
        name = proxy.controller.balancer.name
        path.write_text("backend = [")  # broken: refused, nothing changes
        assert not await proxy.reload()
        path.write_text(common + f'backend = ["{b1.url}"]\npolicy = "x"\n')  # invalid combination
        assert not await proxy.reload()
        after = ([b.url for b in proxy.monitor.backends], proxy.controller.balancer.name)
    assert (urls, name) == ([b1.url], "jsq")
    assert after == ([b1.url], "jsq")


async def test_the_snapshot_endpoint_shows_what_the_policy_sees(backends, client) -> None:
    pool = await backends(3)
    config = proxy_config(pool, control={"metrics-window": 2.5, "ewma-tau": 4.0})
    async with ProxyServer(config) as proxy:
        assert proxy.monitor.metrics.ewma_tau_s == 4.0
        for _ in range(6):
            async with client.get(f"http://127.0.0.1:{proxy.port}/") as response:
                await response.read()
        decided = proxy.controller.decisions
        await eventually(lambda: proxy.controller.decisions > decided)
        status, snapshot = await admin_json(client, proxy, "GET", "/admin/snapshot")
    assert status == 200
    assert snapshot["window_s"] == 2.5
    assert snapshot["names"] == [b.url for b in pool]
    assert sum(snapshot["throughput_rps"]) > 0
    assert len(snapshot["observation"]) == len(pool)  # one row per backend, no padding
    assert len(snapshot["observation"][0]) == len(snapshot["feature_names"])
    assert [row[0] for row in snapshot["observation"]] == [1.0] * len(pool)
