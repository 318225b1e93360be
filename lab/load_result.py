"""What one load run measured: every request's record, the summary figures, and the verdict.

Kept apart from the generator (`lab.loadgen`) so that the live benchmark and its reports can read
results without the sending machinery.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from rl_lb.types import FloatArray

__all__ = [
    "CAUSES",
    "ERROR_CAUSES",
    "RATE_SHORTFALL",
    "LoadResult",
    "failure_verdict",
    "format_summary",
]

CAUSES: tuple[str, ...] = ("ok", "4xx", "5xx", "timeout", "connect", "io")
"""Outcome of a request; index = the code stored in `LoadResult.cause`."""
ERROR_CAUSES: tuple[str, ...] = CAUSES[1:]
_OK, _4XX, _5XX, _TIMEOUT, _CONNECT, _IO = range(len(CAUSES))
RATE_SHORTFALL = 0.9
"""A run that sent under this share of its target rate did not reach it (the generator fell
behind: too little CPU, or too few connections for the latency)."""


@dataclass(frozen=True, eq=False)
class LoadResult:
    """One run: the per-request records and the summary figures derived from them.

    Latencies run from the intended send time; failures (timeouts, refused connections, 4xx/5xx)
    count at the time they took to fail, as in the monitor's window quantiles.
    """

    url: str
    rate: float
    duration_s: float
    process: str
    started_at: float
    """time.monotonic() of second 0 of the schedule (compare with `EmulatedPool.started_at`)."""
    sent_s: FloatArray
    """Intended send time of each request, seconds from `started_at`."""
    latency_s: FloatArray
    lag_s: FloatArray
    """How late the generator dispatched each request (already inside `latency_s`)."""
    status: npt.NDArray[np.int16]
    """HTTP status, 0 when no answer came."""
    cause: npt.NDArray[np.int8]
    """Index into `CAUSES`."""
    span_s: float
    """From second 0 to the last dispatch, at least `duration_s`: the achieved rate's divisor."""

    @property
    def requests(self) -> int:
        return len(self.sent_s)

    @property
    def failed(self) -> npt.NDArray[np.bool_]:
        failed: npt.NDArray[np.bool_] = self.cause != _OK
        return failed

    @property
    def errors(self) -> dict[str, int]:
        counts = np.bincount(self.cause, minlength=len(CAUSES))
        return {name: int(counts[i + 1]) for i, name in enumerate(ERROR_CAUSES)}

    @property
    def error_count(self) -> int:
        return int(self.failed.sum())

    @property
    def achieved_rate(self) -> float:
        return self.requests / self.span_s

    def quantile_ms(self, q: float) -> float:
        """Exact quantile (numpy's linear interpolation) of all latencies, in ms; NaN if none."""
        if self.requests == 0:
            return math.nan
        return float(np.quantile(self.latency_s, q)) * 1e3

    def effective_quantile_ms(self, q: float, timeout_s: float) -> float:
        """Quantile where every failed request counts as at least `timeout_s` (effective p99)."""
        if self.requests == 0:
            return math.nan
        punished = np.where(self.failed, np.maximum(self.latency_s, timeout_s), self.latency_s)
        return float(np.quantile(punished, q)) * 1e3

    def summary(self) -> dict[str, Any]:
        """The JSON figures (`--json`); NaN (no requests) becomes null."""
        lat = self.latency_s
        figures: dict[str, Any] = {
            "url": self.url,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "process": self.process,
            "requests": self.requests,
            "errors": self.errors,
            "mean_ms": float(lat.mean()) * 1e3 if self.requests else math.nan,
            "p50_ms": self.quantile_ms(0.5),
            "p90_ms": self.quantile_ms(0.9),
            "p99_ms": self.quantile_ms(0.99),
            "p999_ms": self.quantile_ms(0.999),
            "max_ms": float(lat.max()) * 1e3 if self.requests else math.nan,
            "achieved_rate": self.achieved_rate,
            "lag_ms": float(self.lag_s.mean()) * 1e3 if self.requests else math.nan,
            "max_lag_ms": float(self.lag_s.max()) * 1e3 if self.requests else math.nan,
        }
        return {
            k: None if isinstance(v, float) and math.isnan(v) else v for k, v in figures.items()
        }

    def records(self) -> list[dict[str, Any]]:
        """Per-request rows (send time s, latency ms, status, cause) for plots over time."""
        return [
            {"sent_s": s, "latency_ms": lat * 1e3, "status": int(st), "cause": CAUSES[c]}
            for s, lat, st, c in zip(
                self.sent_s.tolist(), self.latency_s.tolist(), self.status, self.cause, strict=True
            )
        ]


def failure_verdict(result: LoadResult, *, tolerate_errors: bool = False) -> str | None:
    """Why this run must not count as a success (the CLI exits 1), or None.

    Every request failing is a failure whatever `tolerate_errors` says (nothing was measured but
    the failures); any error fails the run unless tolerated; so does a send rate under
    `RATE_SHORTFALL` of the target, since latencies measured below the asked load say nothing
    about that load.
    """
    if result.requests == 0:
        return None
    if result.error_count == result.requests:
        return f"every one of the {result.requests} requests failed"
    if result.error_count and not tolerate_errors:
        return (
            f"{result.error_count} of {result.requests} requests failed "
            "(--tolerate-errors accepts that)"
        )
    if result.duration_s < RATE_SHORTFALL * result.span_s:  # sending took too long
        return (
            f"sent {result.achieved_rate:.1f}/s, under {RATE_SHORTFALL:.0%} of the target "
            f"{result.rate:g}/s (the generator fell behind: more --connections or a lower rate)"
        )
    return None


def format_summary(result: LoadResult) -> Sequence[str]:
    """Human-readable lines for the CLI."""
    s = result.summary()

    def ms(key: str) -> str:
        value = s[key]
        return "-" if value is None else f"{value:.2f}"

    errors = ", ".join(f"{k} {v}" for k, v in s["errors"].items() if v) or "none"
    # Short lines: each fits an 80-column terminal with four-digit latencies.
    return [
        f"{s['requests']} requests to {s['url']} in {s['duration_s']:g} s",
        f"rate /s: sent {s['achieved_rate']:.1f}, asked {s['rate']:g} ({s['process']})",
        f"latency ms: p50 {ms('p50_ms')}  p90 {ms('p90_ms')}  p99 {ms('p99_ms')}  "
        f"p99.9 {ms('p999_ms')}  max {ms('max_ms')}",
        f"mean latency {ms('mean_ms')} ms; generator lag ms: mean {ms('lag_ms')}  "
        f"max {ms('max_lag_ms')}",
        f"errors: {errors}",
    ]
