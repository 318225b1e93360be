"""One backend as requests see it: its URL, connection pool, open exchanges and counters.

Kept apart from serving/monitor.py (the trackers, membership and health checks of the whole
pool) because a request holds a `Backend` rather than an index (indices shift when a backend
leaves), so the exchange, HTTP/2 and metrics modules need this object and its counters' layout,
not the monitor's machinery.
"""

from __future__ import annotations

from bisect import bisect_left

from serving.upstream import UpstreamPool

__all__ = ["LATENCY_BUCKETS", "STATUS_CLASSES", "Backend"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds (s) of the exported latency histogram; a last bucket takes the rest."""
STATUS_CLASSES: tuple[str, ...] = ("1xx", "2xx", "3xx", "4xx", "5xx", "error")
"""Exported request outcomes; "error" is a connection failure or a timeout (no status)."""


class Backend:
    """One upstream: its URL, its connection pool, and counters for the exported metrics."""

    __slots__ = (
        "active",
        "draining",
        "failure",
        "index",
        "latency_counts",
        "latency_sum",
        "outcomes",
        "pool",
        "url",
    )

    def __init__(self, url: str, index: int, pool: UpstreamPool) -> None:
        self.url = url
        self.index = index
        """Position in the trackers' lists; -1 once removed."""
        self.pool = pool
        self.active = 0
        """Exchanges open (request sent, response not fully relayed yet)."""
        self.draining = False
        self.failure: str | None = None
        """Why the last health check failed (DNS, refused, timeout, TLS, status); None once one
        passes. `/admin/state` shows it and the log gives it when the backend turns unhealthy."""
        self.outcomes = [0] * len(STATUS_CLASSES)
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe(self, latency_s: float, outcome: int) -> None:
        self.outcomes[outcome] += 1
        self.latency_counts[bisect_left(LATENCY_BUCKETS, latency_s)] += 1
        self.latency_sum += latency_s
