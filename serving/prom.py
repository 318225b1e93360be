"""Prometheus exposition of one proxy worker, in its own `CollectorRegistry`.

The request path only bumps plain integers on `Backend` and `ProxyStats`; a scrape turns them
into metric families, so a scrape costs O(backends) and a request costs no prometheus-client
lock. The per-backend families, most of a large pool's exposition, are written as text directly
(`serving.prom_backends`); the rest goes through this registry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from rl_lb.balancers import FALLBACK_REASONS
from serving.controller import Controller
from serving.monitor import LATENCY_BUCKETS, Monitor
from serving.prom_backends import backend_exposition
from serving.proxy import ProxyStats
from serving.rollout import Rollout

__all__ = ["CONTENT_TYPE", "MODES", "Families", "ProxyMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MODES = ("primary", "fallback", "external")


class _PoolCollector(Collector):
    def __init__(
        self,
        monitor: Monitor,
        controller: Controller,
        stats: ProxyStats,
        rollout: Rollout | None = None,
    ) -> None:
        self.monitor = monitor
        self.controller = controller
        self.stats = stats
        self.rollout = rollout

    def collect(self) -> Iterator[Metric]:
        controller = self.controller
        mode = GaugeMetricFamily(
            "rl_lb_balancer_mode", "1 for the mode the balancer is in", labels=["mode"]
        )
        for name in MODES:
            mode.add_metric([name], float(controller.mode == name))
        yield mode
        fallbacks = CounterMetricFamily(
            "rl_lb_fallback_decisions",
            "Control intervals decided by the fallback, by reason",
            labels=["reason"],
        )
        for reason in sorted(set(FALLBACK_REASONS) | set(controller.fallback_counts)):
            fallbacks.add_metric([reason], controller.fallback_counts[reason])
        yield fallbacks
        yield CounterMetricFamily(
            "rl_lb_mode_changes", "Balancer mode or reason changes", value=controller.switches
        )
        changes = CounterMetricFamily(
            "rl_lb_mode_changes_to",
            "Balancer mode changes by what they changed to: a fallback reason, or primary",
            labels=["to"],
        )
        for to in sorted({*FALLBACK_REASONS, "primary", *controller.switch_counts}):
            changes.add_metric([to], controller.switch_counts[to])
        yield changes
        yield from _guard(controller.guard_state())
        yield from controller.prober.metrics()
        if self.rollout is not None:
            yield from self.rollout.metrics()
        yield CounterMetricFamily(
            "rl_lb_retries", "Requests retried on another backend", value=self.stats.retries
        )
        yield from _client_side(self.stats)
        errors = CounterMetricFamily(
            "rl_lb_proxy_errors", "Responses produced by the proxy itself", labels=["reason"]
        )
        for reason, count in sorted(self.stats.errors.items()):
            errors.add_metric([reason], count)
        yield errors


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    """Prometheus `le` buckets from per-bucket counts over `LATENCY_BUCKETS` (+Inf last)."""
    cumulative = 0
    buckets: list[tuple[str, float]] = []
    for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
        cumulative += count
        buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
    return buckets


CLIENT_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx", "broken")


def _client_side(stats: ProxyStats) -> Iterator[Metric]:
    """What clients got: the series SLOs and burn-rate alerts are written on (deploy/)."""
    responses = CounterMetricFamily(
        "rl_lb_requests",
        "Client exchanges by the status class the client got (broken: cut off mid-response)",
        labels=["code"],
    )
    for code in CLIENT_CLASSES:
        responses.add_metric([code], stats.responses[code])
    yield responses
    duration = HistogramMetricFamily(
        "rl_lb_request_duration_seconds",
        "Whole client exchanges: request head received to response complete",
    )
    duration.add_metric([], _cumulative(stats.duration_counts), stats.duration_sum)
    yield duration


def _guard(state: dict[str, Any] | None) -> Iterator[Metric]:
    """The outcome guard's statistic and hold (nothing for a balancer without one)."""
    if state is None:
        return
    for name, text, value in (
        ("evidence", "CUSUM statistic; a regression when it reaches the limit", state["evidence"]),
        ("evidence_limit", "The CUSUM limit", state["evidence_limit"]),
        ("holding", "1 while a regression holds the fallback", float(state["holding"])),
        ("hold_remaining_seconds", "Time until the policy serves again", state["returns_in_s"]),
    ):
        yield GaugeMetricFamily(f"rl_lb_outcome_guard_{name}", text, value=value or 0.0)
    yield CounterMetricFamily(
        "rl_lb_outcome_guard_holds_ended_early",
        "Regression holds ended because the fallback's traffic cost no less than the policy's did",
        value=state["holds_ended_early"],
    )


class ProxyMetrics:
    """The registry of one worker; `inference` is fed by the control loop."""

    def __init__(
        self,
        monitor: Monitor,
        controller: Controller,
        stats: ProxyStats,
        rollout: Rollout | None = None,
    ) -> None:
        self.monitor = monitor
        self.controller = controller
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_PoolCollector(monitor, controller, stats, rollout))
        self.inference = Histogram(
            "rl_lb_policy_inference_seconds",
            "Time of one balancer decision (policy forward pass included)",
            buckets=(1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0),
            registry=self.registry,
        )
        controller.on_inference = self.inference.observe

    def add(self, collect: Callable[[], Iterator[Metric]]) -> None:
        """Expose more families (a part of the proxy with its own counters, e.g. discovery)."""
        self.registry.register(Families(collect))

    def render(self) -> bytes:
        """The per-backend families (written directly: `serving.prom_backends`), then the rest."""
        backends = backend_exposition(self.monitor, self.controller.weights)
        return backends.encode() + generate_latest(self.registry)


class Families(Collector):
    """A collector of whatever `collect()` yields when the registry is scraped."""

    def __init__(self, collect: Callable[[], Iterator[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterator[Metric]:
        return self._collect()
