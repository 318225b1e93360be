"""Live per-backend figures: in-flight, peak-EWMA latency and a sliding window of answers.

The equations here are a contract: the simulator's numba kernels (`envs/nb_metrics.py`) reproduce
them bit for bit, so a policy reads the same numbers in simulation and behind the proxy. That is
why the histogram (`rl_lb.histogram`, re-exported here) is module-level and importable.

State is stored struct-of-arrays: the request path touches one scalar per column, which is
several times cheaper in plain Python lists and `array.array`s than in numpy arrays. The
sub-window rings and histograms are flat `array.array`s (backend-major), so that `snapshot`,
called once per control interval, reads them as numpy arrays without a copy and computes every
backend at once, with no Python loop over histograms.

Besides the sub-windows, each backend keeps running window totals (histogram, answers, errors):
`record` adds to them, and a sub-window is subtracted once, when it leaves the window. A snapshot
then reads N × 256 counters instead of summing N × slots × 256 (at N = 1,000 that sum was most
of a 10 ms control decision). The sums are integers, so the quantiles are exactly those of the
summed sub-windows.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

import numpy as np

from rl_lb.availability import Availability
from rl_lb.control import MetricsSettings
from rl_lb.errors import ConfigError
from rl_lb.histogram import BUCKETS, GROWTH, LOWEST, bucket_index, bucket_value, window_quantiles
from rl_lb.types import BoolArray, Clock, FloatArray, IntArray, PoolSnapshot

__all__ = [
    "BUCKETS",
    "DEFAULT_ERROR_PENALTY_S",
    "DEFAULT_EWMA_TAU_S",
    "DEFAULT_WINDOW_S",
    "GROWTH",
    "LOWEST",
    "PoolMetrics",
    "bucket_index",
    "bucket_value",
]

DEFAULT_WINDOW_S = MetricsSettings().window_s
"""Sliding window of the quantiles, error rate and throughput (proxy and scenarios alike)."""
DEFAULT_EWMA_TAU_S = MetricsSettings().ewma_tau_s
"""Time constant of the peak-EWMA latency."""
DEFAULT_ERROR_PENALTY_S = MetricsSettings().error_penalty_s
"""The latency an error counts as in the peak-EWMA: a fast-failing backend must look slow."""

_NEVER = -(2**62)
"""Sub-window id of a ring entry that was never used: outside every window."""
_QUANTILES = (0.5, 0.95, 0.99)
_COUNT = "q"
"""`array` typecode of the rings and histograms: int64, numpy's `np.int64` without a copy."""


class PoolMetrics:
    """Per-backend trackers of one pool; implements `rl_lb.types.LoadView`.

    Times passed to `record` must not decrease for a backend, nor the clock between snapshots
    (the proxy's monotonic clock and the simulator's event order guarantee both): the EWMA and
    the sub-window ring assume it, and a snapshot drops expired sub-windows from the running
    totals for good.
    `remove_backend` shifts the indices of the later backends down, so callers must not finish a
    request on a removed backend under its old index.
    """

    def __init__(
        self,
        names: Sequence[str],
        clock: Clock,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        slots: int = 10,
        ewma_tau_s: float = DEFAULT_EWMA_TAU_S,
        error_penalty_s: float = DEFAULT_ERROR_PENALTY_S,
    ) -> None:
        for label, value in (
            ("window_s", window_s),
            ("ewma_tau_s", ewma_tau_s),
            ("error_penalty_s", error_penalty_s),
        ):
            if not (value > 0 and math.isfinite(value)):
                raise ConfigError("metrics", f"{label} = {value}", "use a positive number")
        if slots < 1:
            raise ConfigError("metrics", f"slots = {slots}", "use at least 1 sub-window")
        self._clock = clock
        self.window_s = float(window_s)
        self.slots = int(slots)
        self.slot_len = self.window_s / self.slots
        self.ewma_tau_s = float(ewma_tau_s)
        self.error_penalty_s = float(error_penalty_s)

        self.names: list[str] = []
        self.in_flight: list[int] = []
        self.healthy: list[bool] = []
        self.ejected: list[bool] = []
        self.available: list[bool] = Availability()  # an `Availability`: pickers check it in O(1)
        self._est: list[float] = []
        self._stamp: list[float] = []
        self._has: list[bool] = []
        self._last: list[float] = []
        self._created: list[float] = []
        # Backend i's sub-window j is entry i × slots + j; its histogram starts at that × BUCKETS.
        self._slot_id = array(_COUNT)
        self._hist = array(_COUNT)
        self._answers = array(_COUNT)
        self._errors = array(_COUNT)
        # Running totals of the sub-windows whose `_counted` entry is 1 (backend i's histogram
        # starts at i × BUCKETS): a sub-window counts from its first record until it expires.
        self._counted = array(_COUNT)
        self._window_hist = array(_COUNT)
        self._window_answers = array(_COUNT)
        self._window_errors = array(_COUNT)
        self._running: IntArray = np.empty(0, dtype=np.int64)
        self._blank_histogram = array(_COUNT, bytes(8 * BUCKETS))
        for name in names:
            self.add_backend(name)

    def __len__(self) -> int:
        return len(self.names)

    def add_backend(self, name: str) -> int:
        """Track a new backend (healthy, not ejected, no history); returns its index."""
        if name in self.names:
            raise ConfigError("metrics", f"backend {name!r} is listed twice", "use unique names")
        self.names.append(name)
        self.in_flight.append(0)
        self.healthy.append(True)
        self.ejected.append(False)
        self.available.append(True)
        self._est.append(0.0)
        self._stamp.append(0.0)
        self._has.append(False)
        self._last.append(-math.inf)
        self._created.append(self._clock())
        self._slot_id.extend(array(_COUNT, [_NEVER]) * self.slots)
        self._hist.extend(self._blank_histogram * self.slots)
        self._answers.extend(array(_COUNT, [0]) * self.slots)
        self._errors.extend(array(_COUNT, [0]) * self.slots)
        self._counted.extend(array(_COUNT, [0]) * self.slots)
        self._window_hist.extend(self._blank_histogram)
        self._window_answers.append(0)
        self._window_errors.append(0)
        return len(self.names) - 1

    def remove_backend(self, i: int) -> None:
        """Forget backend i; the lists are edited in place so views held by pickers stay valid."""
        for column in (
            self.names,
            self.in_flight,
            self.healthy,
            self.ejected,
            self.available,
            self._est,
            self._stamp,
            self._has,
            self._last,
            self._created,
        ):
            del column[i]
        ring = slice(i * self.slots, (i + 1) * self.slots)
        for flat in (self._slot_id, self._answers, self._errors, self._counted):
            del flat[ring]
        del self._hist[ring.start * BUCKETS : ring.stop * BUCKETS]
        del self._window_hist[i * BUCKETS : (i + 1) * BUCKETS]
        del self._window_answers[i]
        del self._window_errors[i]

    def set_health(self, i: int, healthy: bool) -> None:
        self.healthy[i] = healthy
        self.available[i] = healthy and not self.ejected[i]

    def set_ejected(self, i: int, ejected: bool) -> None:
        self.ejected[i] = ejected
        self.available[i] = self.healthy[i] and not ejected

    def start(self, i: int) -> float:
        """A request sent to backend i; returns its start time for `finish`."""
        self.in_flight[i] += 1
        return self._clock()

    def finish(self, i: int, started_at: float, *, error: bool) -> float:
        """The answer to a request begun with `start`; returns its latency."""
        self.in_flight[i] -= 1
        now = self._clock()
        latency = now - started_at
        self.record(i, latency, error, now)
        return latency

    def record(self, i: int, latency_s: float, error: bool, now: float | None = None) -> None:
        """An answer from backend i completed at `now` (default: the clock), in-flight untouched.

        The peak-EWMA sees an error as `error_penalty_s` so that a fast-failing backend looks
        slow; the histogram keeps the real latency so quantiles describe what clients waited.
        """
        t = self._clock() if now is None else now
        x = self.error_penalty_s if error else latency_s
        est = self._est
        if not self._has[i]:
            est[i] = x
            self._has[i] = True
        elif x > est[i]:
            est[i] = x
        else:
            w = math.exp(-(t - self._stamp[i]) / self.ewma_tau_s)
            est[i] = est[i] * w + x * (1.0 - w)
        self._stamp[i] = t
        self._last[i] = t

        s = math.floor(t / self.slot_len)
        j = i * self.slots + s % self.slots
        if self._slot_id[j] != s:
            if self._counted[j]:
                self._forget_sub_window(i, j)
            self._slot_id[j] = s
            self._hist[j * BUCKETS : (j + 1) * BUCKETS] = self._blank_histogram
            self._answers[j] = 0
            self._errors[j] = 0
            self._counted[j] = 1
        k = bucket_index(latency_s)
        self._hist[j * BUCKETS + k] += 1
        self._answers[j] += 1
        if error:
            self._errors[j] += 1
        if self._counted[j]:  # else a snapshot already found this sub-window out of the window
            self._window_hist[i * BUCKETS + k] += 1
            self._window_answers[i] += 1
            self._window_errors[i] += error

    def _forget_sub_window(self, i: int, j: int) -> None:
        """Subtract backend i's sub-window j (flat ring index) from its running window totals."""
        window = np.frombuffer(self._window_hist, dtype=np.int64)[i * BUCKETS : (i + 1) * BUCKETS]
        window -= np.frombuffer(self._hist, dtype=np.int64)[j * BUCKETS : (j + 1) * BUCKETS]
        del window  # no numpy view may outlive the call: the arrays behind it may resize
        self._window_answers[i] -= self._answers[j]
        self._window_errors[i] -= self._errors[j]
        self._counted[j] = 0

    def cost(self, index: int) -> float:
        """Peak-EWMA latency decayed to now; 0 if the backend never answered, so it gets probed."""
        if not self._has[index]:
            return 0.0
        return self._est[index] * math.exp(-(self._clock() - self._stamp[index]) / self.ewma_tau_s)

    def error_rate(self, index: int) -> float:
        """Failed share of backend `index`'s answers in the window (0 without answers); its
        sub-windows expire at snapshots, so it may hold up to one control interval more."""
        answers = self._window_answers[index]
        return self._window_errors[index] / answers if answers > 0 else 0.0

    def restart_estimate(self, index: int, now: float, peers: Sequence[bool]) -> None:
        """Backend `index` is back (or new): its peak-EWMA restarts from a neutral value.

        Kept as it was, the error penalty of its outage would decay for about a minute while a
        least-latency picker (or a policy's latency features) starved it. The neutral value is
        the median of the costs at `now` of the `peers` (the backends available before it
        returned) that have one; without any, it has no history again (cost 0: it gets probed).
        The window's quantiles and error rate are left alone: they describe what clients got.
        """
        costs = sorted(
            self._est[j] * math.exp(-(now - self._stamp[j]) / self.ewma_tau_s)
            for j in range(len(self.names))
            if j != index and peers[j] and self._has[j]
        )
        if not costs:
            self._has[index] = False
            return
        half = len(costs) // 2
        median = costs[half] if len(costs) % 2 else 0.5 * (costs[half - 1] + costs[half])
        self._est[index] = median
        self._stamp[index] = now
        self._has[index] = True

    def snapshot(self, weights: FloatArray) -> PoolSnapshot:
        """Every backend's figures now; `weights` is the array applied during the interval."""
        now = self._clock()
        current = math.floor(now / self.slot_len)
        first = current - self.slots + 1
        ewma = np.array(
            [
                est * math.exp(-(now - stamp) / self.ewma_tau_s) if has else math.nan
                for est, stamp, has in zip(self._est, self._stamp, self._has, strict=True)
            ],
            dtype=np.float64,
        )
        self._expire(first)
        answers, errors, running = self._window_running(current)
        before = np.cumsum(answers) - answers
        p50, p95, p99 = (window_quantiles(running, answers, before, q) for q in _QUANTILES)
        with np.errstate(invalid="ignore", divide="ignore"):
            error_rate = np.where(answers > 0, errors / answers, 0.0)
        created = np.array(self._created, dtype=np.float64)
        span = np.maximum(now - np.maximum(created, first * self.slot_len), 1e-9)
        throughput = answers / span
        staleness = now - np.array(self._last, dtype=np.float64)
        return PoolSnapshot(
            taken_at=now,
            names=tuple(self.names),
            in_flight=np.array(self.in_flight, dtype=np.int64),
            ewma_s=ewma,
            p50_s=p50,
            p95_s=p95,
            p99_s=p99,
            error_rate=error_rate,
            throughput_rps=throughput,
            staleness_s=staleness,
            healthy=np.array(self.healthy, dtype=np.bool_),
            ejected=np.array(self.ejected, dtype=np.bool_),
            weights=weights,
            window_s=self.window_s,
        )

    def _expire(self, first: int) -> None:
        """Subtract from the running totals every counted sub-window older than `first` (the
        window's oldest sub-window id): time only moves forward, so it never counts again."""
        n = len(self.names)
        ids = np.frombuffer(self._slot_id, dtype=np.int64).reshape(n, self.slots)
        counted = np.frombuffer(self._counted, dtype=np.int64).reshape(n, self.slots)
        expired = (counted != 0) & (ids < first)
        if expired.any():
            window = np.frombuffer(self._window_hist, dtype=np.int64).reshape(n, BUCKETS)
            answers = np.frombuffer(self._window_answers, dtype=np.int64)
            errors = np.frombuffer(self._window_errors, dtype=np.int64)
            self._subtract(expired, window, answers, errors)
            counted[expired] = 0
            del window, answers, errors
        # the numpy views end here: the arrays behind them may grow or shrink again
        del ids, counted

    def _window_running(self, current: int) -> tuple[IntArray, IntArray, IntArray]:
        """The window's answers, errors and the cumulative sum of its histograms end to end
        (into a scratch array reused while N stays: a fresh 2 MB array at N = 1,000 cost more in
        page faults than the sum). Sub-windows recorded ahead of `current` (a `record` whose
        `now` is later than the clock) are in the running totals but left out here."""
        n = len(self.names)
        answers = np.array(self._window_answers, dtype=np.int64)
        errors = np.array(self._window_errors, dtype=np.int64)
        window = np.frombuffer(self._window_hist, dtype=np.int64).reshape(n, BUCKETS)
        ids = np.frombuffer(self._slot_id, dtype=np.int64).reshape(n, self.slots)
        counted = np.frombuffer(self._counted, dtype=np.int64).reshape(n, self.slots)
        ahead = (counted != 0) & (ids > current)
        if ahead.any():
            window = window.copy()
            self._subtract(ahead, window, answers, errors)
        if self._running.size != n * BUCKETS:
            self._running = np.empty(n * BUCKETS, dtype=np.int64)
        np.cumsum(window, axis=None, out=self._running)
        del ids, counted, window
        return answers, errors, self._running

    def _subtract(
        self, chosen: BoolArray, window: IntArray, answers: IntArray, errors: IntArray
    ) -> None:
        """Subtract the sub-windows chosen[backend, slot] from the per-backend totals given.

        One ring slot at a time, so each backend appears at most once per fancy-indexed
        subtraction (numpy's `-=` with repeated indices would subtract only once)."""
        n = len(self.names)
        hist = np.frombuffer(self._hist, dtype=np.int64).reshape(n, self.slots, BUCKETS)
        slot_answers = np.frombuffer(self._answers, dtype=np.int64).reshape(n, self.slots)
        slot_errors = np.frombuffer(self._errors, dtype=np.int64).reshape(n, self.slots)
        for slot in range(self.slots):
            rows = np.flatnonzero(chosen[:, slot])
            if rows.size:
                window[rows] -= hist[rows, slot]
                answers[rows] -= slot_answers[rows, slot]
                errors[rows] -= slot_errors[rows, slot]
        del hist, slot_answers, slot_errors
