"""Prequal in the proxy (`serving.prequal_probe`): emulated backends answer probes, the answers
reach the picker's pool, and probe traffic is rate-limited and visible in /metrics and
/admin/state. The rule itself is tested in tests/test_prequal.py."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from envs.factory import pool_scenario
from lab.backends import EmulatedPool
from rl_lb.balancers import GuardedBalancer, make_balancer
from rl_lb.control import PROBE_PATH
from rl_lb.prequal import PrequalPicker
from rl_lb.scenarios import Event, ServiceDist
from serving.app import ProxyServer
from serving.config import ProxyConfig
from serving.prequal_probe import Prober, read_answer


def test_a_probe_answer_is_read_or_refused() -> None:
    assert read_answer(b'{"rif": 3, "latency_ms": 12.5}') == (3, 0.0125)
    for body in (
        b"ok",
        b"[1]",
        b'{"rif": -1, "latency_ms": 1}',
        b'{"rif": 1.5, "latency_ms": 1}',
        b'{"rif": true, "latency_ms": 1}',
        b'{"rif": 1, "latency_ms": "1"}',
        b'{"rif": 1, "latency_ms": NaN}',
        b'{"rif": 1}',
        b"\xff",
    ):
        assert read_answer(body) is None, body


LIVE = pool_scenario(
    3,
    load=0.2,
    duration_s=600.0,
    concurrency=2,
    service=ServiceDist("lognormal", 0.005, 0.5),
    timeout_s=2.0,
    events=[(0, Event(at_s=0.0, until_s=600.0, slowdown=40.0))],
    name="prequal-live",
)
"""Three emulated backends, the first 40x slower all along (200 ms against 5 ms). The backends,
the proxy and the client share one event loop, so every latency a probe reports carries that
loop's lag: at 8x, with two CPU burners beside the suite, the lag hid the difference and the
slow backend got as many requests as the fast ones."""


async def _through_proxy(**settings: Any) -> tuple[dict[str, Any], str, list[str], Any]:
    """300 requests (10 clients) through a prequal proxy: its state, /metrics, the backends,
    and one probe answered by the first backend directly."""
    async with EmulatedPool(LIVE, seed=3) as pool:
        config = ProxyConfig(
            backends=tuple(pool.urls),
            listen="127.0.0.1:0",
            admin="127.0.0.1:0",
            balancer="prequal",
            health_path=None,
            **settings,
        )
        async with ProxyServer(config) as proxy, aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{proxy.port}/"
            admin = f"http://127.0.0.1:{proxy.admin_port}"

            async def one() -> None:
                async with session.get(url) as response:
                    assert response.status == 200
                    await response.read()

            async def client() -> None:
                for _ in range(30):
                    await one()

            # Ten clients, each sending its next request when the last is answered: the slow
            # backend's requests stay in flight while the fast ones come and go, as under real
            # load. Batches of ten, each waiting for its slowest, picked ten at once from a pool
            # whose every answer said RIF 0: Prequal's RIF rule then shares them out evenly, and
            # on a loaded machine (CI, 2 cores) the slow backend got a third of the requests.
            await asyncio.gather(*(client() for _ in range(10)))
            async with session.get(f"{admin}/admin/state") as response:
                state = await response.json()
            async with session.get(f"{admin}/metrics") as response:
                metrics = await response.text()
            async with session.get(f"{pool.urls[0]}{PROBE_PATH}") as response:
                direct = await response.json()
    return state, metrics, list(pool.urls), direct


def _probes(metrics: str, url: str, result: str) -> float:
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "rl_lb_prequal_probes_total" and sample.labels == {
                "backend": url,
                "result": result,
            }:
                return float(sample.value)
    raise AssertionError(f"no rl_lb_prequal_probes for {url} {result}")


def _requests(metrics: str, url: str) -> float:
    return sum(
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "rl_lb_backend_requests_total" and s.labels["backend"] == url
    )


async def test_the_proxy_probes_emulated_backends_and_counts_the_probes() -> None:
    state, metrics, urls, direct = await _through_proxy()
    assert set(direct) == {"rif", "latency_ms"}
    assert direct["rif"] >= 0
    prequal = state["prequal"]
    assert prequal["probe_path"] == PROBE_PATH
    for url in urls:
        assert prequal["backends"][url]["answered_by"] == "backend"
        assert _probes(metrics, url, "answered") > 0
        assert _probes(metrics, url, "own-view") == 0
    slow, fast = _requests(metrics, urls[0]), [_requests(metrics, u) for u in urls[1:]]
    assert slow < sum(fast) / len(fast), (slow, fast)  # the 40x slower one gets less


def test_a_guarded_balancers_prequal_picker_is_counted_once() -> None:
    """`learned` serves the shipped policy with its `prequal` picker, guarded: the guarded
    balancer's own picker is its primary's, whose picks must count once, not twice."""
    balancer = make_balancer("learned")
    assert isinstance(balancer, GuardedBalancer)
    assert balancer.primary is not None
    picker = balancer.primary.picker
    assert isinstance(picker, PrequalPicker)
    assert balancer.picker is picker
    monitor = SimpleNamespace(clock=time.monotonic, backends=[])
    prober = Prober(ProxyConfig(backends=("http://127.0.0.1:9",)), monitor)  # type: ignore[arg-type]
    prober.attach(balancer)
    picker.picks, picker.blind_picks = 7, 2
    state = prober.state()
    assert state is not None
    assert (state["picks"], state["blind_picks"]) == (7, 2)


async def test_without_probe_answers_prequal_runs_on_the_proxys_own_view() -> None:
    state, metrics, urls, _ = await _through_proxy(prequal_probe_path="/not-a-probe")
    for url in urls:  # the emulated backends answer that path, but not with a probe answer
        assert state["prequal"]["backends"][url]["answered_by"] == "proxy's own view"
        assert _probes(metrics, url, "unsupported") >= 1
        assert _probes(metrics, url, "own-view") > 0
    assert sum(_requests(metrics, u) for u in urls) == 300


async def test_probing_is_rate_limited_per_backend_and_over_it_the_own_view_answers() -> None:
    """Over the budget a probe is answered from the proxy's own view, so the pool does not run
    dry and Prequal does not draw blind: skipped, live on fast-failure 10.6% of the picks were
    blind and sent the failing backend its share (1.3% of requests failed, 0.43% answered)."""
    rate = 2.0
    started = time.monotonic()
    state, metrics, urls, _ = await _through_proxy(prequal_probe_rate=rate)
    lived_s = time.monotonic() - started  # the proxy lived no longer than this
    for url in urls:
        sent = sum(_probes(metrics, url, r) for r in ("answered", "failed", "unsupported"))
        assert 1 <= sent <= rate + rate * lived_s, (sent, lived_s)  # a burst of 2, then 2/s
        assert _probes(metrics, url, "limited") > 0
    assert state["prequal"]["picks"] == 300
    assert state["prequal"]["blind_picks"] <= 15, state["prequal"]
    slow, fast = _requests(metrics, urls[0]), [_requests(metrics, u) for u in urls[1:]]
    assert slow < sum(fast) / len(fast), (slow, fast)
    counted = {
        s.labels["choice"]: s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == "rl_lb_prequal_picks_total"
    }
    blind = state["prequal"]["blind_picks"]
    assert counted == {"answers": 300 - blind, "blind": blind}
