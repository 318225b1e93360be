"""What a Prequal probe is answered with: a backend's `LatencyByRif`, or the proxy's own view.

The backend side of `rl_lb.prequal` (its docstring says why the estimate is scaled and how
failures are priced); shared by the emulated backends (`lab.backends`), the proxy's own-view
answers (`serving.prequal_probe`, `PrequalPicker` without a prober) and, with these constants,
the simulator's twin (`envs.nb_prequal`).
"""

from __future__ import annotations

import math

__all__ = [
    "FAILURE_WINDOW_S",
    "LATENCY_NEIGHBOURS",
    "LATENCY_RING",
    "LatencyByRif",
    "own_view_answer",
]

LATENCY_RING = 32
"""Recent (RIF at arrival, latency) pairs a backend keeps for its latency estimate."""
LATENCY_NEIGHBOURS = 7
"""How many of them, the nearest in RIF to the current one, the median is taken over."""
FAILURE_WINDOW_S = 10.0
"""How long a failed request in the ring adds its price to the estimate (Envoy's outlier
detection judges success rates over the same 10 s): a backend shunned for a failure is tried
again once it is that old, instead of being starved by it for good."""


def own_view_answer(
    in_flight: int, cost_s: float, error_rate: float = 0.0, penalty_s: float = 0.0
) -> tuple[int, float]:
    """A probe answered from the proxy's own view: (RIF, its peak-EWMA cost × (RIF + 1) plus
    its error rate × the error penalty). Scaled as `p2c-latency` weighs it: unscaled, a busy
    one-worker server answered as fast as an idle four-worker one and drew the queue. Priced
    as a backend prices its failures (`LatencyByRif`): scaled alone, a backend that fails fast
    holds few requests and looked best (docs/proxy.md, "Prequal probes")."""
    return in_flight, cost_s * (in_flight + 1) + error_rate * penalty_s


class LatencyByRif:
    """A backend's latency estimate: the median latency of its recent requests that arrived at
    about its current RIF, plus the price of its recent failures. 0 before its first answer, so
    a new backend looks attractive."""

    def __init__(self) -> None:
        self._rif: list[int] = []
        self._latency: list[float] = []
        self._failed_at: list[float] = []
        """When each entry's request failed; -inf for one that did not."""
        self._next = 0

    def record(self, rif_at_arrival: int, latency_s: float, *, failed: bool, now: float) -> None:
        """One answered request: the RIF it found on arrival (itself not counted), its latency
        (the error penalty for a failed one), whether it failed, and when it ended (the clock
        `estimate` is given)."""
        failed_at = now if failed else -math.inf
        if len(self._rif) < LATENCY_RING:
            self._rif.append(rif_at_arrival)
            self._latency.append(latency_s)
            self._failed_at.append(failed_at)
        else:
            self._rif[self._next] = rif_at_arrival
            self._latency[self._next] = latency_s
            self._failed_at[self._next] = failed_at
        self._next = (self._next + 1) % LATENCY_RING

    def estimate(self, rif: int, now: float) -> float:
        """The median of the nearest in RIF, each scaled to `rif` (a queue's latency grows with
        the requests ahead of it), plus `failure_price`."""
        return self._median(rif) + self.failure_price(now)

    def failure_price(self, now: float) -> float:
        """The failures of the last `FAILURE_WINDOW_S` in the ring, each at its price (the
        error penalty it was recorded at), spread over the ring: the failed share × the
        penalty. The median alone ignored a backend failing fast under half its requests (23%
        on the fastest tier of held-out world 0142, 3 seeds: 2.85% of Prequal's requests and
        1.45% of the learned policy's failed, every effective p99 at the 2 s timeout;
        least-latency, whose peak-EWMA prices each failure, 0.18%)."""
        count = len(self._rif)
        total = 0.0
        for latency, failed_at in zip(self._latency, self._failed_at, strict=True):
            if now - failed_at <= FAILURE_WINDOW_S:
                total += latency
        return total / count if count else 0.0

    def _median(self, rif: int) -> float:
        count = len(self._rif)
        if count == 0:
            return 0.0
        newest_first = [(self._next - 1 - k) % LATENCY_RING for k in range(count)]
        nearest = sorted(newest_first, key=lambda i: abs(self._rif[i] - rif))
        chosen = sorted(
            self._latency[i] * (rif + 1.0) / (self._rif[i] + 1.0)
            for i in nearest[:LATENCY_NEIGHBOURS]
        )
        middle = len(chosen) // 2
        if len(chosen) % 2:
            return chosen[middle]
        return (chosen[middle - 1] + chosen[middle]) / 2.0
