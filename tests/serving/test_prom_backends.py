"""The per-backend families written directly (serving/prom_backends.py) are byte for byte what
prometheus_client writes for the same families, and the proxy's /metrics keeps every family."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from rl_lb.balancers import make_balancer
from serving.config import ProxyConfig
from serving.controller import Controller
from serving.monitor import LATENCY_BUCKETS, STATUS_CLASSES, Monitor
from serving.prom import Families, ProxyMetrics
from serving.prom_backends import BACKEND_GAUGES, backend_exposition, label_value
from serving.proxy import ProxyStats
from serving.upstream import UpstreamPool


def _generic(monitor: Monitor, weights: dict[str, float]) -> bytes:
    """The same families through prometheus_client's generic writer (the reference)."""

    def families() -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "rl_lb_backend_requests",
            "Exchanges by outcome (status class, or error: no response)",
            labels=["backend", "code"],
        )
        latency = HistogramMetricFamily(
            "rl_lb_backend_latency_seconds", "Time to response headers", labels=["backend"]
        )
        gauges = {
            name: GaugeMetricFamily(f"rl_lb_backend_{name}", text, labels=["backend"])
            for name, text in BACKEND_GAUGES
        }
        bounds = [*(repr(b) for b in LATENCY_BUCKETS), "+Inf"]
        for b in monitor.backends:
            for code, count in zip(STATUS_CLASSES, b.outcomes, strict=True):
                requests.add_metric([b.url, code], count)
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, b.latency_counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            latency.add_metric([b.url], buckets, b.latency_sum)
            gauges["in_flight"].add_metric([b.url], monitor.metrics.in_flight[b.index])
            gauges["tunnels"].add_metric([b.url], b.pool.tunnels)
            gauges["weight"].add_metric([b.url], weights.get(b.url, 0.0))
            gauges["healthy"].add_metric([b.url], float(monitor.metrics.healthy[b.index]))
            gauges["ejected"].add_metric([b.url], float(monitor.metrics.ejected[b.index]))
        yield requests
        yield latency
        yield from gauges.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(families))
    return generate_latest(registry)


def _monitor(n: int) -> Monitor:
    urls = [f"http://127.0.0.1:{9101 + i}" for i in range(n)]
    config = ProxyConfig(backends=tuple(urls), balancer="least-latency")
    monitor = Monitor(
        config, lambda url: UpstreamPool(url, limit=4, connect_timeout=1.0, read_timeout=1.0)
    )
    for url in urls:
        monitor.add(url)
    return monitor


async def test_the_direct_text_is_what_prometheus_client_writes() -> None:
    monitor = _monitor(5)
    for k, b in enumerate(monitor.backends):
        for j in range(40 * k + 3):  # latencies from 0.7 ms to ~10 s, every outcome
            b.observe(0.0007 * (j + 1) ** 1.7, j % len(STATUS_CLASSES))
    monitor.metrics.in_flight[2] = 7
    weights = {b.url: 1 / (b.index + 3) for b in monitor.backends[:4]}  # the last has none
    assert backend_exposition(monitor, weights).encode() == _generic(monitor, weights)


def test_label_values_are_escaped_as_prometheus_client_escapes_them() -> None:
    odd = 'a\\b"c\nd'
    family = GaugeMetricFamily("x", "h", labels=["backend"])
    family.add_metric([odd], 1.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Families(lambda: iter([family])))
    assert f'x{{backend="{label_value(odd)}"}} 1.0' in generate_latest(registry).decode()


async def test_the_proxy_exposes_backend_and_pool_families_once_each() -> None:
    monitor = _monitor(3)
    controller = Controller(monitor.config, monitor, make_balancer("least-latency"))
    controller.decide()
    text = ProxyMetrics(monitor, controller, ProxyStats()).render().decode()
    gauges = [f"rl_lb_backend_{short}" for short, _ in BACKEND_GAUGES]
    for name in ["rl_lb_backend_requests_total", "rl_lb_backend_latency_seconds", *gauges]:
        assert text.count(f"# TYPE {name} ") == 1, name
    assert text.count("# TYPE rl_lb_balancer_mode gauge") == 1
    assert text.count('rl_lb_backend_weight{backend="http://127.0.0.1:9102"}') == 1


async def test_merged_workers_parse_back_to_every_sample_with_its_worker_label() -> None:
    """The text-level merge of worker 0 (serving/prom_merge.py), read back by prometheus_client's
    own parser: every family once, every worker's every sample there with `worker` added."""
    from prometheus_client.parser import text_string_to_metric_families

    from serving.prom_merge import merge_expositions

    texts = {}
    for worker, n in ((0, 3), (1, 2)):
        monitor = _monitor(n)
        for b in monitor.backends:
            b.observe(0.01 * (b.index + 1), 1)
        controller = Controller(monitor.config, monitor, make_balancer("least-latency"))
        controller.decide()
        texts[worker] = ProxyMetrics(monitor, controller, ProxyStats()).render()
    merged = list(
        text_string_to_metric_families(merge_expositions(texts, {0: True, 1: False}).decode())
    )
    names = [family.name for family in merged]
    assert len(names) == len(set(names))
    got = {(s.name, tuple(sorted(s.labels.items())), s.value) for f in merged for s in f.samples}
    for worker, text in texts.items():
        for family in text_string_to_metric_families(text.decode()):
            for s in family.samples:
                labels = tuple(sorted({**s.labels, "worker": str(worker)}.items()))
                assert (s.name, labels, s.value) in got, (s.name, labels)
    assert ("rl_lb_worker_up", (("worker", "1"),), 0.0) in got
