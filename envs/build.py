"""From a concrete `Scenario` to the kernel's arrays: `make_spec`, `new_state`, `grow_state`.

Everything random that does not depend on the balancer (MMPP phase path, GC pause timeline) is
drawn here, up front, from the simulator's own generator: so two balancers run with the same seed
face the same traffic phases and the same pauses.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from envs import kernel
from envs.nb_metrics import MetricsState, new_metrics
from envs.nb_pickers import PICKER_CODES, new_tables
from envs.nb_prequal import new_prequal
from envs.nb_retry_budget import new_budget
from envs.nb_state import Spec, State
from rl_lb.errors import ScenarioError
from rl_lb.scenarios import Arrivals, BackendSpec, Scenario
from rl_lb.slow_start import NOT_RAMPING

__all__ = [
    "SLOTS",
    "grow_state",
    "make_spec",
    "new_state",
]

SLOTS = 10
"""The `PoolMetrics` default the proxy runs with (tests/test_sim_metrics.py checks they agree)."""
_KINDS = {
    "exponential": kernel.EXPONENTIAL,
    "lognormal": kernel.LOGNORMAL,
    "pareto": kernel.PARETO,
    "constant": kernel.CONSTANT,
}


def _service_params(b: BackendSpec) -> tuple[int, float, float, float]:
    s = b.service
    if s.dist == "lognormal":
        sigma2 = math.log1p(s.cv**2)
        return _KINDS[s.dist], s.mean_s, math.sqrt(sigma2), math.log(s.mean_s) - sigma2 / 2
    if s.dist == "pareto":
        return _KINDS[s.dist], s.mean_s, s.shape, s.mean_s * (s.shape - 1) / s.shape
    return _KINDS[s.dist], s.mean_s, 0.0, 0.0


def _segments(
    a: Arrivals, duration: float, rng: np.random.Generator
) -> tuple[list[float], list[float]]:
    """Piecewise-constant arrival rate: boundaries (last = end of arrivals) and rates."""
    if a.process == "mmpp":
        dwell = np.asarray(a.mmpp_dwell_s, dtype=np.float64)
        phase = int(rng.choice(len(dwell), p=dwell / dwell.sum()))
        bounds, rates, t = [0.0], [], 0.0
        while t < duration:
            rates.append(a.mmpp_rates[phase])
            t = min(t + rng.exponential(dwell[phase]), duration)
            bounds.append(t)
            phase = (phase + 1) % len(dwell)
        return bounds, rates
    bounds, rates = [0.0], [a.rate]
    for step in sorted(a.profile, key=lambda s: s.at_s):
        if 0.0 < step.at_s < duration:
            bounds.append(step.at_s)
            rates.append(step.rate)
        elif step.at_s <= 0.0:
            rates[0] = step.rate
    bounds.append(duration)
    return bounds, rates


def _pauses(
    backends: tuple[BackendSpec, ...], horizon: float, rng: np.random.Generator
) -> tuple[list[int], list[float], list[float], list[float]]:
    ptr, start, end, cum = [0], [], [], []
    for b in backends:
        total, t = 0.0, 0.0
        if b.pauses is not None:
            while True:
                t += rng.exponential(b.pauses.every_s)
                if t >= horizon:
                    break
                start.append(t)
                end.append(t + b.pauses.duration_s)
                cum.append(total)
                total += b.pauses.duration_s
                t += b.pauses.duration_s
        ptr.append(len(start))
    return ptr, start, end, cum


def make_spec(scenario: Scenario, rng: np.random.Generator) -> Spec:
    backends = scenario.backends
    if not backends:
        raise ScenarioError(scenario.name, "no backends", "add at least one [[backends]] table")
    timeouts = sorted({b.timeout_s for b in backends})
    events = [(i, e) for i, b in enumerate(backends) for e in b.events]
    ev_ptr = np.searchsorted([i for i, _ in events], np.arange(len(backends) + 1))
    service = [_service_params(b) for b in backends]
    bounds, rates = _segments(scenario.arrivals, scenario.duration_s, rng)
    horizon = scenario.duration_s + min(scenario.timeout_s, scenario.duration_s) + 1.0
    pz_ptr, pz_start, pz_end, pz_cum = _pauses(backends, horizon, rng)
    ejection, retries = scenario.control.ejection, scenario.control.retries
    health = scenario.control.health
    refresh = scenario.metrics.picker_refresh_s
    f64 = np.float64
    return Spec(
        concurrency=np.array([b.concurrency for b in backends], dtype=np.int64),
        queue_limit=np.array([b.queue_limit for b in backends], dtype=np.int64),
        timeout=np.array([b.timeout_s for b in backends], dtype=f64),
        tgroup=np.array([timeouts.index(b.timeout_s) for b in backends], dtype=np.int64),
        group_timeout=np.array(timeouts, dtype=f64),
        svc_kind=np.array([s[0] for s in service], dtype=np.int64),
        svc_mean=np.array([s[1] for s in service], dtype=f64),
        svc_a=np.array([s[2] for s in service], dtype=f64),
        svc_b=np.array([s[3] for s in service], dtype=f64),
        ev_ptr=ev_ptr.astype(np.int64),
        ev_at=np.array([e.at_s for _, e in events], dtype=f64),
        ev_until=np.array([e.until_s for _, e in events], dtype=f64),
        ev_slow=np.array([e.slowdown for _, e in events], dtype=f64),
        ev_slow_to=np.array(
            [math.nan if e.slowdown_to is None else e.slowdown_to for _, e in events], dtype=f64
        ),
        ev_err=np.array([e.error_rate for _, e in events], dtype=f64),
        ev_err_lat=np.array([e.error_latency_s for _, e in events], dtype=f64),
        ev_down=np.array([e.down for _, e in events], dtype=np.bool_),
        pz_ptr=np.array(pz_ptr, dtype=np.int64),
        pz_start=np.array(pz_start, dtype=f64),
        pz_end=np.array(pz_end, dtype=f64),
        pz_cum=np.array(pz_cum, dtype=f64),
        seg_t=np.array(bounds, dtype=f64),
        seg_rate=np.array(rates, dtype=f64),
        trace=np.array(sorted(scenario.arrivals.trace), dtype=f64),
        use_trace=scenario.arrivals.process == "trace",
        proxies=int(scenario.metrics.proxies),
        hc_interval=float(health.interval_s),
        healthy_threshold=int(health.healthy_threshold),
        unhealthy_threshold=int(health.unhealthy_threshold),
        consecutive_failures=ejection.consecutive_failures,
        eject_base_s=ejection.base_ejection_s,
        eject_max_s=ejection.max_ejection_s,
        max_ejection_percent=ejection.max_ejection_percent,
        refresh_s=float(refresh),
        max_retries=retries.retries,
        retry_budget=retries.budget,
        budget_window_s=retries.budget_window_s,
        min_retries_per_s=retries.min_retries_per_s,
        slow_start_window_s=scenario.control.slow_start.window_s,
        slow_start_aggression=scenario.control.slow_start.aggression,
        slow_start_min_percent=scenario.control.slow_start.min_weight_percent,
    )


REQUEST_DTYPES: dict[str, Any] = {
    "r_arrival": np.float64,
    "r_proxy": np.int32,
    "r_backend": np.int32,
    "r_latency": np.float64,
    "r_outcome": np.int8,
    "r_retries": np.int32,
    "resolved": np.int32,
}
"""The per-request arrays (one entry per request of the episode) and their types: request ids
are int32, so an episode holds at most 2**31 - 1 requests (`_check_room`)."""
_LIVE_DTYPES: dict[str, Any] = {
    "l_id": np.int64,
    "l_refs": np.int64,
    "l_qnext": np.int64,
    "l_tnext": np.int64,
    "l_acct": np.float64,
    "l_rif": np.int64,
}
_HEAP_DTYPES: dict[str, Any] = {"h_t": np.float64, "h_r": np.int64, "h_kind": np.int64}
_FIRST_RING = 1024
"""Slots of a fresh live ring and heap (powers of two, fewer if the state is given room for
fewer requests); both double when full."""
_MAX_REQUESTS = 2**31 - 1


def _check_room(capacity: int) -> int:
    if capacity > _MAX_REQUESTS:
        raise ScenarioError(
            "requests",
            f"an episode would need room for {capacity:,} requests, more than {_MAX_REQUESTS:,}",
            "shorten the scenario's duration or lower its arrival rate",
        )
    return capacity


def _zeros(dtypes: dict[str, Any], size: int) -> dict[str, np.ndarray]:
    return {name: np.zeros(size, dtype=dtype) for name, dtype in dtypes.items()}


def _grown(state: State, dtypes: dict[str, Any], size: int, used: int) -> dict[str, np.ndarray]:
    """Fresh arrays of `size` for the fields in `dtypes`, their first `used` entries copied."""
    fresh = _zeros(dtypes, size)
    for name, array in fresh.items():
        array[:used] = getattr(state, name)[:used]
    return fresh


def new_state(spec: Spec, scenario: Scenario, capacity: int) -> State:
    """Fresh state at t = 0: every backend healthy, uniform weights, p2c; `kernel.start` then
    draws the first arrival."""
    n, proxies = len(spec.concurrency), spec.proxies
    pn = (proxies, n)
    ring = min(_FIRST_RING, 1 << max(capacity - 1, 1).bit_length())
    metrics: MetricsState = new_metrics(
        proxies,
        n,
        window_s=scenario.control.metrics.window_s,
        slots=SLOTS,
        ewma_tau_s=scenario.control.metrics.ewma_tau_s,
        error_penalty_s=scenario.control.metrics.error_penalty_s,
    )
    return State(
        m=metrics,
        busy=np.zeros(n, dtype=np.int64),
        q_head=np.full(n, -1, dtype=np.int64),
        q_tail=np.full(n, -1, dtype=np.int64),
        q_len=np.zeros(n, dtype=np.int64),
        tg_head=np.full(len(spec.group_timeout), -1, dtype=np.int64),
        tg_tail=np.full(len(spec.group_timeout), -1, dtype=np.int64),
        **_zeros(REQUEST_DTYPES, _check_room(capacity)),
        **_zeros(_LIVE_DTYPES, ring),
        **_zeros(_HEAP_DTYPES, ring),
        counts=np.zeros(4, dtype=np.int64),
        clock=np.array([0.0, np.inf, 0.0, spec.refresh_s if spec.refresh_s > 0 else np.inf]),
        inflight=np.zeros(pn, dtype=np.int64),
        board=np.zeros(pn, dtype=np.int64),
        board_cost=np.zeros(pn),
        weights=np.full(pn, 1.0 / n),
        picker=np.full(proxies, PICKER_CODES["p2c"], dtype=np.int64),
        rr=np.zeros(pn),
        healthy=np.ones(pn, dtype=np.bool_),
        ejected=np.zeros(pn, dtype=np.bool_),
        avail=np.ones(pn, dtype=np.bool_),
        eject_until=np.full(pn, -np.inf),
        eject_count=np.zeros(pn, dtype=np.int64),
        consec=np.zeros(pn, dtype=np.int64),
        hc_streak=np.zeros(pn, dtype=np.int64),
        budget=new_budget(proxies),
        tried=np.full(spec.max_retries + 1, -1, dtype=np.int64),
        ramp_since=np.full(pn, NOT_RAMPING),  # the pool at t = 0 does not ramp
        avail_before=np.ones(pn, dtype=np.bool_),
        pq=new_prequal(proxies, n, scenario.control.prequal),
        picks=new_tables(proxies, n),
    )


def grow_state(state: State) -> State:
    """The same state with the room the kernel asked for (`kernel.NEED_ROOM`): more request
    slots, a larger heap, or a larger live ring (each doubled, as often as needed)."""
    columns: dict[str, Any] = {}
    requests, heap_size = int(state.counts[0]), int(state.counts[2])
    if requests >= len(state.r_arrival):
        size = _check_room(2 * len(state.r_arrival))
        columns |= _grown(state, REQUEST_DTYPES, size, requests)
    if heap_size + kernel.HEAP_ROOM >= len(state.h_t):
        size = 2 * len(state.h_t)
        while heap_size + kernel.HEAP_ROOM >= size:
            size *= 2
        columns |= _grown(state, _HEAP_DTYPES, size, heap_size)
    ring = len(state.l_refs)
    if state.l_refs[requests & (ring - 1)] != 0:
        live = np.flatnonzero(state.l_refs)
        ids = state.l_id[live]
        size = 2 * ring
        # Two live ids share a slot of the larger ring only if they did in the smaller one.
        while (requests & (size - 1)) in set((ids & (size - 1)).tolist()):
            size *= 2
        ring_columns = _zeros(_LIVE_DTYPES, size)
        for name, array in ring_columns.items():
            array[ids & (size - 1)] = getattr(state, name)[live]
        columns |= ring_columns
    return state._replace(**columns)
