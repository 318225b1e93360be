"""The simulator's arrays: `Spec` (what the scenario fixed) and `State` (what changes).

Plain named tuples of numpy arrays, so numba compiles the kernels once for every scenario and
Python can read any figure between two kernel calls without a copy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from envs.nb_metrics import MetricsState
from envs.nb_pickers import PickTables
from envs.nb_prequal import PrequalState
from envs.nb_retry_budget import BudgetState
from rl_lb.types import FloatArray, IntArray

__all__ = ["Spec", "State"]


class Spec(NamedTuple):
    """Everything the scenario fixed, as arrays (per backend unless said)."""

    concurrency: IntArray
    queue_limit: IntArray
    timeout: FloatArray
    tgroup: IntArray
    """Index of the backend's timeout value in `group_timeout`."""
    group_timeout: FloatArray
    svc_kind: IntArray
    svc_mean: FloatArray
    svc_a: FloatArray
    """lognormal sigma, pareto alpha."""
    svc_b: FloatArray
    """lognormal mu, pareto scale."""
    ev_ptr: IntArray
    """Events of backend b are ev_ptr[b]:ev_ptr[b+1] in the ev_* arrays."""
    ev_at: FloatArray
    ev_until: FloatArray
    ev_slow: FloatArray
    ev_slow_to: FloatArray
    """NaN for a constant slowdown."""
    ev_err: FloatArray
    ev_err_lat: FloatArray
    ev_down: np.ndarray
    pz_ptr: IntArray
    pz_start: FloatArray
    pz_end: FloatArray
    pz_cum: FloatArray
    """Pause time of the same backend before each pause (prefix sums)."""
    seg_t: FloatArray
    """Rate segment boundaries; the last one is the end of arrivals."""
    seg_rate: FloatArray
    trace: FloatArray
    use_trace: bool
    proxies: int
    hc_interval: float
    healthy_threshold: int
    unhealthy_threshold: int
    consecutive_failures: int
    eject_base_s: float
    eject_max_s: float
    max_ejection_percent: float
    refresh_s: float
    max_retries: int
    retry_budget: float
    """Share of the requests retries may add (`rl_lb.control.RetrySettings`, as the rest)."""
    budget_window_s: float
    min_retries_per_s: float
    slow_start_window_s: float
    """`rl_lb.control.SlowStartSettings`, as the rest (`envs.nb_slow_start`)."""
    slow_start_aggression: float
    slow_start_min_percent: float


class State(NamedTuple):
    """Everything that changes; request-sized arrays grow (see `Simulator._make_room`)."""

    m: MetricsState
    busy: IntArray
    q_head: IntArray
    q_tail: IntArray
    q_len: IntArray
    tg_head: IntArray
    tg_tail: IntArray
    r_arrival: FloatArray
    """Per request (its id, in arrival order), kept for the episode's records: arrival time,
    proxy, backend (of the last attempt), latency, outcome (`kernel.OUTCOMES`, or PENDING),
    retries. Narrow types (`build.REQUEST_DTYPES`): a request costs 33 bytes of memory touched
    for the first time, which is most of the simulator's time where fresh memory is slow."""
    r_proxy: IntArray
    r_backend: IntArray
    r_latency: FloatArray
    r_outcome: IntArray
    r_retries: IntArray
    resolved: IntArray
    """Request ids in the order they were resolved (answered, failed or timed out)."""
    l_id: IntArray
    """The live ring: what a request needs only while it is live (queued, in service or awaited
    by the heap, or in its timeout FIFO), in slot `id & (len - 1)`, reused by later requests.
    `l_id` is the request in the slot, `l_refs` how many of those places hold it (0: free)."""
    l_refs: IntArray
    l_qnext: IntArray
    """Next request id in the backend's queue."""
    l_tnext: IntArray
    """Next request id in the timeout FIFO."""
    l_acct: FloatArray
    """Time the request's service was last accounted for (pauses)."""
    l_rif: IntArray
    """Requests in flight at its backend when the request arrived there (Prequal's estimate)."""
    h_t: FloatArray
    h_r: IntArray
    h_kind: IntArray
    counts: IntArray
    """[requests, resolved, heap size, trace or rate-segment index]."""
    clock: FloatArray
    """[now, next arrival, next health check, next board refresh]."""
    inflight: IntArray
    board: IntArray
    board_cost: FloatArray
    weights: FloatArray
    picker: IntArray
    rr: FloatArray
    healthy: np.ndarray
    ejected: np.ndarray
    avail: np.ndarray
    eject_until: FloatArray
    eject_count: IntArray
    consec: IntArray
    hc_streak: IntArray
    """Consecutive check results that disagree with the current healthy flag."""
    budget: BudgetState
    """Every proxy's retry budget (`envs.nb_retry_budget`)."""
    tried: IntArray
    """Scratch: backends a request already failed to connect to (excluded from its retries)."""
    ramp_since: FloatArray
    """[proxy, backend] time the backend returned to that proxy's rotation (`nb_slow_start`)."""
    avail_before: np.ndarray
    """Scratch [proxy, backend]: `avail` before a round of health checks (who returned in it)."""
    pq: PrequalState
    """Every proxy's Prequal probe pool, every backend's latency ring (`envs.nb_prequal`)."""
    picks: PickTables
    """Every proxy's weighted-draw table; whatever changes `weights` or `avail` invalidates it."""
