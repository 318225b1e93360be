"""The per-backend metric families of /metrics, written straight as exposition text.

At 1,000 backends these families are 27,000 samples. prometheus_client's generic writer builds
a sample tuple per value, then sorts and escapes every label of every sample: 1 to 2.6 s of one
scrape on a busy 2-core machine, all of it on the worker's event loop, so each scrape stalled
the proxy that long. Here each backend's label text is escaped once per scrape and every line is
one f-string; the output is byte-for-byte what prometheus_client writes for the same families
(tests/serving/test_prom_backends.py compares the two).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from prometheus_client import utils as prometheus_utils

from serving.monitor import LATENCY_BUCKETS, STATUS_CLASSES, Monitor

__all__ = ["BACKEND_GAUGES", "backend_exposition", "label_value"]

REQUESTS = ("rl_lb_backend_requests", "Exchanges by outcome (status class, or error: no response)")
LATENCY = ("rl_lb_backend_latency_seconds", "Time to response headers")
BACKEND_GAUGES = (
    ("in_flight", "Requests sent and not answered yet"),
    ("tunnels", "Upgraded connections (WebSocket) open, apart from in_flight"),
    ("weight", "Weight of the current control interval"),
    ("healthy", "1 when the active health checks pass"),
    ("ejected", "1 while ejected by the outlier detector"),
)
"""(name after `rl_lb_backend_`, help) of the per-backend gauges, in exposition order."""

go_string: Callable[[float], str] = prometheus_utils.floatToGoString
"""prometheus_client's number format (untyped upstream): values print exactly as it prints them."""

_LE = tuple(
    f'le="{"+Inf" if bound == float("inf") else repr(bound)}"'
    for bound in (*LATENCY_BUCKETS, float("inf"))
)


def label_value(value: str) -> str:
    """A label value escaped as the text format wants it (backslash, newline, double quote)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _header(name: str, help_text: str, kind: str) -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


def backend_exposition(monitor: Monitor, weights: Mapping[str, float]) -> str:
    """Requests by outcome, the latency histogram and the five gauges of every backend."""
    backends = monitor.backends
    metrics = monitor.metrics
    labels = [f'backend="{label_value(b.url)}"' for b in backends]
    out: list[str] = []
    name, help_text = REQUESTS
    out.append(_header(f"{name}_total", help_text, "counter"))
    for b, label in zip(backends, labels, strict=True):
        for code, count in zip(STATUS_CLASSES, b.outcomes, strict=True):
            out.append(f'{name}_total{{{label},code="{code}"}} {go_string(count)}\n')
    name, help_text = LATENCY
    out.append(_header(name, help_text, "histogram"))
    for b, label in zip(backends, labels, strict=True):
        cumulative = 0
        for le, count in zip(_LE, b.latency_counts, strict=True):
            cumulative += count
            out.append(f"{name}_bucket{{{label},{le}}} {go_string(cumulative)}\n")
        out.append(f"{name}_count{{{label}}} {go_string(cumulative)}\n")
        out.append(f"{name}_sum{{{label}}} {go_string(b.latency_sum)}\n")
    columns: dict[str, list[float]] = {
        "in_flight": [float(metrics.in_flight[b.index]) for b in backends],
        "tunnels": [float(b.pool.tunnels) for b in backends],
        "weight": [weights.get(b.url, 0.0) for b in backends],
        "healthy": [float(metrics.healthy[b.index]) for b in backends],
        "ejected": [float(metrics.ejected[b.index]) for b in backends],
    }
    for short, help_text in BACKEND_GAUGES:
        name = f"rl_lb_backend_{short}"
        out.append(_header(name, help_text, "gauge"))
        for label, value in zip(labels, columns[short], strict=True):
            out.append(f"{name}{{{label}}} {go_string(value)}\n")
    return "".join(out)
