"""`Simulator` (one scenario in simulated time) and `ControlLoop` (its control intervals).

The simulator wraps the numba kernel: it owns the arrays, grows them when the kernel runs out of
room, and turns a proxy's metrics into a `PoolSnapshot`. The control loop adds what the proxies'
control side does: every `control_interval_s` each proxy gets the snapshot taken `delay_s`
earlier (the figures a remote monitor would hand it) and installs new weights and a picker.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from envs import kernel
from envs.build import grow_state, make_spec, new_state
from envs.nb_metrics import BUCKETS, snapshot_columns
from envs.nb_pickers import PICKER_CODES, invalidate
from envs.nb_random import new_rng
from envs.nb_slow_start import scale as scale_for_slow_start
from rl_lb.errors import ConfigError
from rl_lb.scenarios import Scenario
from rl_lb.slow_start import RAMPS_ITSELF
from rl_lb.types import FloatArray, IntArray, PoolSnapshot

__all__ = ["ControlLoop", "Records", "Simulator"]

_MAX_INITIAL_ROOM = 1 << 22


class Records(NamedTuple):
    """Per-request arrays, in arrival order (copies)."""

    arrival_s: FloatArray
    proxy: IntArray
    backend: IntArray
    """Backend of the last attempt; -1 when no backend was available."""
    latency_s: FloatArray
    """What the client waited: answer time - arrival, the timeout, or 0 for instant failures."""
    outcome: IntArray
    """Index into `kernel.OUTCOMES`; `kernel.PENDING` (-1) if unresolved."""
    retries: IntArray


class Simulator:
    """The pool of `scenario` as P proxies see it; deterministic for a seed.

    The kernel and the up-front draws (MMPP phases, pauses) use separate streams spawned from
    `seed`, so the traffic does not depend on how many random numbers a picker consumed.
    """

    def __init__(
        self, scenario: Scenario, seed: int | np.random.SeedSequence, *, room: int | None = None
    ) -> None:
        sequence = (
            seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        )
        spec_seed, kernel_seed = sequence.spawn(2)
        self.scenario = scenario
        self.names = tuple(b.name for b in scenario.backends)
        self.spec = make_spec(scenario, np.random.default_rng(spec_seed))
        self._rng = new_rng(kernel_seed)
        expected = scenario.arrivals.rate * scenario.duration_s * 1.2 + 1024
        initial = room if room is not None else min(int(expected), _MAX_INITIAL_ROOM)
        self.state = new_state(self.spec, scenario, max(initial, 16))
        self._columns = np.empty((len(self.names), 7))
        self._counts = np.empty(BUCKETS, dtype=np.int64)
        kernel.start(self.spec, self.state, self._rng)

    @property
    def now(self) -> float:
        return float(self.state.clock[0])

    @property
    def proxies(self) -> int:
        return self.spec.proxies

    @property
    def requests(self) -> int:
        return int(self.state.counts[0])

    @property
    def resolved_count(self) -> int:
        return int(self.state.counts[1])

    def set_decision(self, proxy: int, weights: FloatArray, picker: str) -> None:
        """Install one proxy's weights and picker for the next requests.

        Backends in slow start get their weight scaled down here, at the decision's time, as the
        proxy's controller does (`envs.nb_slow_start`); the snapshot then shows the scaled weights.
        Not under `prequal`, which ramps by its probes (`rl_lb.slow_start.RAMPS_ITSELF`).
        """
        array = np.asarray(weights, dtype=np.float64)
        if array.shape != (len(self.names),) or not np.all(np.isfinite(array)) or (array < 0).any():
            raise ValueError(f"weights must be {len(self.names)} finite values >= 0, got {array}")
        if picker not in PICKER_CODES:
            raise ConfigError("picker", f"unknown picker {picker!r}", f"use {list(PICKER_CODES)}")
        sp, st = self.spec, self.state
        st.weights[proxy] = array
        if picker not in RAMPS_ITSELF:
            scale_for_slow_start(
                st.weights[proxy],
                st.ramp_since[proxy],
                self.now,
                sp.slow_start_window_s,
                sp.slow_start_aggression,
                sp.slow_start_min_percent,
            )
        st.picker[proxy] = PICKER_CODES[picker]
        invalidate(st.picks, proxy)

    def run_until(self, t: float) -> None:
        """Process every event before time t."""
        if t <= self.now:
            return
        while kernel.advance(self.spec, self.state, float(t), self._rng) == kernel.NEED_ROOM:
            self.state = grow_state(self.state)

    def snapshot(self, proxy: int) -> PoolSnapshot:
        """Proxy `proxy`'s view of the pool now, as `PoolMetrics.snapshot` would give it."""
        st, now = self.state, self.now
        snapshot_columns(st.m, proxy, now, self._columns, self._counts)
        c = self._columns
        return PoolSnapshot(
            taken_at=now,
            names=self.names,
            in_flight=st.inflight[proxy],
            ewma_s=c[:, 0],
            p50_s=c[:, 1],
            p95_s=c[:, 2],
            p99_s=c[:, 3],
            error_rate=c[:, 4],
            throughput_rps=c[:, 5],
            staleness_s=c[:, 6],
            healthy=st.healthy[proxy],
            ejected=st.ejected[proxy],
            weights=st.weights[proxy],
            window_s=self.scenario.control.metrics.window_s,
        )

    def resolved(self, start: int, stop: int) -> IntArray:
        """Ids of the requests resolved in positions [start, stop) of the resolution order."""
        return self.state.resolved[start:stop]

    def records(self) -> Records:
        st, n = self.state, self.requests
        return Records(  # the state's narrow integers widened (`build.REQUEST_DTYPES`)
            arrival_s=st.r_arrival[:n].copy(),
            proxy=st.r_proxy[:n].astype(np.int64),
            backend=st.r_backend[:n].astype(np.int64),
            latency_s=st.r_latency[:n].copy(),
            outcome=st.r_outcome[:n].astype(np.int64),
            retries=st.r_retries[:n].astype(np.int64),
        )


class ControlLoop:
    """Steps a simulator one control interval at a time, with delayed snapshots.

    Interval k runs from T_k = k × control_interval_s to T_{k+1} (the last one ends at
    duration_s). Before it, each proxy decides on the snapshot taken at T_k - delay_s (the one
    taken at 0 while that is negative).
    """

    def __init__(self, sim: Simulator) -> None:
        scenario = sim.scenario
        self.sim = sim
        self.interval_s = scenario.control_interval_s
        self.delay_s = scenario.metrics.delay_s
        self.duration_s = scenario.duration_s
        self.intervals = max(1, math.ceil(self.duration_s / self.interval_s - 1e-9))
        self.k = 0
        self._initial = [sim.snapshot(p) for p in range(sim.proxies)]
        self._captured: dict[int, list[PoolSnapshot]] = {}
        self._next_capture = 1

    def time_of(self, k: int) -> float:
        return min(k * self.interval_s, self.duration_s)

    @property
    def done(self) -> bool:
        return self.k >= self.intervals

    def visible(self) -> list[PoolSnapshot]:
        """One snapshot per proxy: what each decides on before interval k."""
        return self._captured.get(self.k, self._initial)

    def step(self) -> tuple[int, int]:
        """Run interval k; returns the range of resolution positions it produced."""
        first = self.sim.resolved_count
        end = self.time_of(self.k + 1)
        self._captured.pop(self.k, None)
        while self._next_capture <= self.intervals:
            at = self.time_of(self._next_capture) - self.delay_s
            if at > end + 1e-12:
                break
            if at > 0:
                self.sim.run_until(at)
                self._captured[self._next_capture] = [
                    self.sim.snapshot(p) for p in range(self.sim.proxies)
                ]
            self._next_capture += 1
        self.sim.run_until(end)
        self.k += 1
        return first, self.sim.resolved_count
