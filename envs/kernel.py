"""The discrete-event loop of the simulator, in numba: one call advances to a given time.

Python only steps in at control-interval boundaries (snapshots, balancer decisions), so the per
request path — arrival, pick, queue, service, answer, metrics — never leaves compiled code.
Events are: arrivals (piecewise-constant Poisson rate or a trace), answers (service completions,
error answers and probe answers, in the min-heap of `envs.nb_heap`), client timeouts (one FIFO per
distinct timeout value, since deadlines = arrival + constant are then in order), health checks and
bulletin-board refreshes (periodic). `Spec` and `State` (envs/nb_state.py) hold the arrays.

Memory per request is what bounds the speed on a VM where fresh memory is slow: a request keeps
only its record (`State.r_*`, 33 bytes) for the episode; what it needs while live (queue and
timeout links, service accounting, Prequal's RIF) sits in a small ring of reused slots
(`State.l_*`), each slot counting the places that still hold its request (`l_refs`: its backend's
queue, the heap, its timeout FIFO). `advance` asks for room (`NEED_ROOM`, `build.grow_state`)
when the next request's slot is still held, the heap is nearly full or the records are.

The rules the proxy also runs are not written here but in their numba twins, each following its
reference in `rl_lb` (tests/test_twins.py lists the pairs): metrics (`envs.nb_metrics`), pickers
(`envs.nb_pickers`), health checks and ejection (`envs.nb_health`), the retry budget
(`envs.nb_retry_budget`), slow start (`envs.nb_slow_start`, applied in `Simulator.set_decision`),
Prequal's probe pool and latency estimate (`envs.nb_prequal`: probes are heap events one
`probe_rtt_s` after the request that sent them; a backend's RIF is its queue plus its service).
"""

from __future__ import annotations

import math

import numpy as np

from envs.jit import jit, jit_inline
from envs.nb_health import expire, on_check, on_health_check, on_result, set_avail
from envs.nb_heap import pop, push
from envs.nb_metrics import cost, record, restart_estimate
from envs.nb_pickers import PREQUAL, invalidate, pick
from envs.nb_prequal import add as add_probe_answer
from envs.nb_prequal import latency_estimate, record_latency, targets
from envs.nb_prequal import pick as prequal_pick
from envs.nb_random import exponential, normal, uniform
from envs.nb_retry_budget import count_request, try_retry
from envs.nb_slow_start import on_return as ramp_from
from envs.nb_state import Spec, State

__all__ = [
    "CONSTANT",
    "ERROR",
    "EXPONENTIAL",
    "HEAP_ROOM",
    "LOGNORMAL",
    "NEED_ROOM",
    "NO_BACKEND",
    "OK",
    "OUTCOMES",
    "PARETO",
    "PENDING",
    "REACHED",
    "REJECTED",
    "TIMEOUT",
    "advance",
    "start",
]

PENDING, OK, ERROR, TIMEOUT, REJECTED, NO_BACKEND = -1, 0, 1, 2, 3, 4
OUTCOMES: tuple[str, ...] = ("ok", "error", "timeout", "rejected", "no-backend")
REACHED, NEED_ROOM = 0, 1
_SERVICE, _ERROR_ANSWER, _PROBE, _HELD_PROBE = 0, 1, 2, 3
"""Heap event kinds; `_HELD_PROBE`: a probe answer a pause held, never held again (recomputing
where the answer stands from its time could land a rounding short of the pause's end)."""
HEAP_ROOM = 18
"""Heap slots one arrival may fill: its answer and up to 16 (+1) probes (`prequal-probes`)."""
EXPONENTIAL, LOGNORMAL, PARETO, CONSTANT = 0, 1, 2, 3


@jit
def _conditions(sp: Spec, b: int, t: float) -> tuple[float, float, float, bool]:
    """(slowdown, error probability, error latency, down) of backend b at time t."""
    slow, ok_prob, err_lat, down = 1.0, 1.0, 0.0, False
    for e in range(sp.ev_ptr[b], sp.ev_ptr[b + 1]):
        if not sp.ev_at[e] <= t < sp.ev_until[e]:
            continue
        factor = sp.ev_slow[e]
        if not math.isnan(sp.ev_slow_to[e]):
            frac = (t - sp.ev_at[e]) / (sp.ev_until[e] - sp.ev_at[e])
            factor += (sp.ev_slow_to[e] - factor) * frac
        slow *= factor
        if sp.ev_err[e] > 0.0:
            ok_prob *= 1.0 - sp.ev_err[e]
            err_lat = max(err_lat, sp.ev_err_lat[e])
        down = down or sp.ev_down[e]
    return slow, 1.0 - ok_prob, err_lat, down


@jit
def _last_pause(sp: Spec, b: int, t: float) -> int:
    """Index of backend b's last pause that starts at or before `t`, -1 if none does."""
    lo, hi = sp.pz_ptr[b], sp.pz_ptr[b + 1]
    if lo == hi or t < sp.pz_start[lo]:
        return -1
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if sp.pz_start[mid] <= t:
            lo = mid
        else:
            hi = mid
    return int(lo)


@jit
def _paused_before(sp: Spec, b: int, t: float) -> float:
    """Total pause time of backend b in [0, t]."""
    k = _last_pause(sp, b, t)
    if k < 0:
        return 0.0
    return float(sp.pz_cum[k] + min(t, sp.pz_end[k]) - sp.pz_start[k])


@jit
def _resumes_at(sp: Spec, b: int, t: float) -> float:
    """`t`, or the end of the pause of backend b that `t` falls in: a paused backend answers
    nothing, its Prequal probes included (as `lab.backends` and a real GC pause stall them)."""
    k = _last_pause(sp, b, t)
    if k < 0:
        return t
    return float(max(t, sp.pz_end[k]))


@jit
def _service_time(sp: Spec, b: int, rng: np.ndarray) -> float:
    kind = sp.svc_kind[b]
    if kind == EXPONENTIAL:
        return exponential(rng, sp.svc_mean[b])
    if kind == LOGNORMAL:
        return math.exp(sp.svc_b[b] + sp.svc_a[b] * normal(rng))
    if kind == PARETO:
        return float(sp.svc_b[b] * (1.0 - uniform(rng)) ** (-1.0 / sp.svc_a[b]))
    return float(sp.svc_mean[b])


@jit
def _slot(st: State, r: int) -> int:
    """Request r's slot in the live ring (`State.l_*`)."""
    return int(r & (st.l_refs.shape[0] - 1))


@jit
def _release(st: State, r: int) -> None:
    """One place that held request r (queue, heap, timeout FIFO) no longer does."""
    st.l_refs[_slot(st, r)] -= 1


@jit
def _start_service(sp: Spec, st: State, b: int, r: int, t: float, rng: np.ndarray) -> None:
    s = _slot(st, r)
    st.busy[b] += 1
    st.l_acct[s] = t
    st.l_refs[s] += 1
    push(st, t + _service_time(sp, b, rng) * _conditions(sp, b, t)[0], r, _SERVICE)


@jit
def _resolve(st: State, r: int, outcome: int, latency: float) -> None:
    st.r_outcome[r] = outcome
    st.r_latency[r] = latency
    st.resolved[st.counts[1]] = r
    st.counts[1] += 1


@jit
def _answer(sp: Spec, st: State, r: int, t: float, error: bool) -> None:
    """The proxy receives the answer of request r (if it has not timed out already)."""
    if st.r_outcome[r] != PENDING:
        return
    p, b = int(st.r_proxy[r]), int(st.r_backend[r])
    latency = t - st.r_arrival[r]
    st.inflight[p, b] -= 1
    record(st.m, p, b, latency, error, t)
    on_result(sp, st, p, b, error, t)
    _resolve(st, r, ERROR if error else OK, latency)


@jit_inline
def _arrive(sp: Spec, st: State, t: float, rng: np.ndarray) -> None:
    r = st.counts[0]
    st.counts[0] += 1
    s = _slot(st, r)  # free: `advance` made sure of it
    st.l_id[s] = r
    p = 0 if sp.proxies == 1 else int(uniform(rng) * sp.proxies)
    st.r_arrival[r], st.r_proxy[r], st.r_backend[r] = t, p, -1
    st.r_outcome[r], st.r_retries[r] = PENDING, 0
    count_request(st.budget, p, t, sp.budget_window_s)
    load = st.inflight[p] if sp.refresh_s <= 0.0 else st.board[p]
    tried = st.tried
    tried[:] = -1
    for attempt in range(sp.max_retries + 1):
        if st.picker[p] == PREQUAL:
            b = prequal_pick(
                st.pq, p, st.weights[p], st.avail[p], st.inflight[p], st.m.window_errors[p], t, rng
            )
            if attempt == 0:
                _send_probes(st, p, t, rng)
        else:
            b = pick(
                st.picker[p],
                st.weights[p],
                st.avail[p],
                load,
                st.rr[p],
                st.m,
                p,
                t,
                st.board_cost[p],
                sp.refresh_s > 0.0,
                st.picks,
                rng,
            )
        if b < 0:
            _resolve(st, r, NO_BACKEND if attempt == 0 else ERROR, 0.0)
            break
        if attempt > 0:  # as the proxy: the next backend is picked, then the budget asked
            if not try_retry(
                st.budget, p, t, sp.retry_budget, sp.budget_window_s, sp.min_retries_per_s
            ):
                _resolve(st, r, ERROR, 0.0)
                break
            st.r_retries[r] += 1
        st.r_backend[r] = b
        _, err_prob, err_lat, down = _conditions(sp, b, t)
        if down:
            record(st.m, p, b, 0.0, True, t)
            on_result(sp, st, p, b, True, t)
            if attempt < sp.max_retries:
                tried[attempt] = b
                st.avail[p, b] = False
                invalidate(st.picks, p)
                continue
            _resolve(st, r, ERROR, 0.0)
            break
        if err_prob > 0.0 and uniform(rng) < err_prob:
            st.inflight[p, b] += 1
            st.l_rif[s] = st.busy[b] + st.q_len[b]
            st.l_refs[s] += 1
            push(st, t + err_lat, r, _ERROR_ANSWER)
        elif st.busy[b] >= sp.concurrency[b] and st.q_len[b] >= sp.queue_limit[b]:
            record(st.m, p, b, 0.0, True, t)
            on_result(sp, st, p, b, True, t)
            _resolve(st, r, REJECTED, 0.0)
            break
        else:
            st.inflight[p, b] += 1
            st.l_rif[s] = st.busy[b] + st.q_len[b]
            if st.busy[b] < sp.concurrency[b]:
                _start_service(sp, st, b, r, t, rng)
            else:
                st.l_qnext[s] = -1
                st.l_refs[s] += 1
                if st.q_len[b] == 0:
                    st.q_head[b] = r
                else:
                    st.l_qnext[_slot(st, st.q_tail[b])] = r
                st.q_tail[b] = r
                st.q_len[b] += 1
        g = sp.tgroup[b]
        st.l_tnext[s] = -1
        st.l_refs[s] += 1
        if st.tg_head[g] < 0:
            st.tg_head[g] = r
        else:
            st.l_tnext[_slot(st, st.tg_tail[g])] = r
        st.tg_tail[g] = r
        break
    for b in tried:
        if b >= 0:
            set_avail(st, p, b)


@jit
def _send_probes(st: State, p: int, t: float, rng: np.ndarray) -> None:
    """Prequal's probes for one request of proxy p: answers arrive one round trip later, as
    `p × backends + b` events (`_probe_answer`), for later requests."""
    count = targets(st.pq, st.weights[p], st.avail[p], st.inflight[p], rng)
    n = st.busy.shape[0]
    for k in range(count):
        push(st, t + st.pq.probe_rtt_s, p * n + st.pq.order[k], _PROBE)


@jit
def _probe_answer(sp: Spec, st: State, key: int, t: float, held: bool) -> None:
    """A probe answer reaches its proxy: the backend's true RIF and latency estimate now (none
    from a down backend). A probe that reached a paused backend is answered when the pause
    ends, half a round trip later, or never if that is after `max_age_s` from its sending (the
    proxy's probe timeout, serving.prequal_probe): during a pause nothing completes, so an
    answer then would show a latency from before it and invite the requests the pause stalls.
    `held`: this is that later answer."""
    n = st.busy.shape[0]
    p, b = key // n, key % n
    if not held:
        half_rtt = 0.5 * st.pq.probe_rtt_s
        reached = t - half_rtt
        resumed = _resumes_at(sp, b, reached)
        if resumed > reached:
            if resumed - reached + st.pq.probe_rtt_s <= st.pq.max_age_s:
                push(st, resumed + half_rtt, key, _HELD_PROBE)
            return
    if _conditions(sp, b, t)[3]:
        return
    rif = st.busy[b] + st.q_len[b]
    estimate = latency_estimate(st.pq, b, rif, t)
    add_probe_answer(st.pq, p, b, rif, estimate, t, st.inflight[p, b])


@jit
def _next_arrival(sp: Spec, st: State, t: float, rng: np.ndarray) -> float:
    if sp.use_trace:
        i = st.counts[3]
        if i >= sp.trace.shape[0]:
            return np.inf
        st.counts[3] += 1
        return float(sp.trace[i])
    s = st.counts[3]
    while s < sp.seg_rate.shape[0]:
        rate = sp.seg_rate[s]
        if rate > 0.0:
            candidate = t + exponential(rng, 1.0 / rate)
            if candidate < sp.seg_t[s + 1]:
                return candidate
        t = sp.seg_t[s + 1]
        s += 1
        st.counts[3] = s
    return np.inf


@jit
def _health_checks(sp: Spec, st: State, t: float, rng: np.ndarray) -> None:
    """Ejections that ran out end, then every proxy checks every backend (`envs.nb_health`).

    A check is a request: it fails on a down backend and with the backend's error probability.
    A backend back in a proxy's rotation (unavailable before the round, available after it)
    returns as behind the proxy (`serving.monitor`): its latency estimate restarts from its
    peers' median (`nb_metrics.restart_estimate`) and its weight ramps (`envs.nb_slow_start`).
    """
    n = st.busy.shape[0]
    for p in range(sp.proxies):
        for b in range(n):
            st.avail_before[p, b] = st.avail[p, b]
        expire(st, p, t)
    for b in range(n):
        _, err_prob, _, down = _conditions(sp, b, t)
        for p in range(sp.proxies):
            passed = not down and (err_prob <= 0.0 or uniform(rng) >= err_prob)
            on_check(sp, st, p, b, passed)
            on_health_check(st, p, b, passed, t)
    for p in range(sp.proxies):
        for b in range(n):
            if st.avail[p, b] and not st.avail_before[p, b]:
                restart_estimate(st.m, p, b, st.avail_before[p], t)
                ramp_from(st.ramp_since, p, b, t, sp.slow_start_window_s)


@jit
def _next_timeout(sp: Spec, st: State) -> tuple[float, int]:
    best, best_g = np.inf, -1
    for g in range(st.tg_head.shape[0]):
        r = st.tg_head[g]
        while r >= 0 and st.r_outcome[r] != PENDING:
            nxt = st.l_tnext[_slot(st, r)]
            _release(st, r)
            r = nxt
        st.tg_head[g] = r
        if r >= 0 and st.r_arrival[r] + sp.group_timeout[g] < best:
            best, best_g = st.r_arrival[r] + sp.group_timeout[g], g
    return best, best_g


@jit
def start(sp: Spec, st: State, rng: np.ndarray) -> None:
    """Draw the first arrival of a fresh state."""
    st.clock[1] = _next_arrival(sp, st, 0.0, rng)


@jit
def advance(sp: Spec, st: State, t_end: float, rng: np.ndarray) -> int:
    """Run events until `t_end` (exclusive); NEED_ROOM before an arrival that has no room: the
    request records are full, the heap nearly so, or the next request's ring slot is held."""
    room = st.r_arrival.shape[0]
    heap_room = st.h_t.shape[0]
    while True:
        t_answer = st.h_t[0] if st.counts[2] > 0 else np.inf
        t_timeout, g = _next_timeout(sp, st)
        t_arrival, t_check, t_board = st.clock[1], st.clock[2], st.clock[3]
        t = min(t_answer, t_timeout, t_arrival, t_check, t_board)
        if t >= t_end:
            st.clock[0] = t_end
            return REACHED
        st.clock[0] = t
        if t_answer == t:
            r, kind = st.h_r[0], st.h_kind[0]
            pop(st)
            if kind >= _PROBE:  # _PROBE or _HELD_PROBE
                _probe_answer(sp, st, r, t, kind == _HELD_PROBE)
                continue
            b, s = int(st.r_backend[r]), _slot(st, r)
            if kind == _ERROR_ANSWER:
                # Priced at the error penalty, as the peak-EWMA prices it: a backend that fails
                # fast must not answer Prequal's probes as the fastest (rl_lb.prequal).
                record_latency(st.pq, b, st.l_rif[s], st.m.penalty, True, t)
                _answer(sp, st, r, t, True)
                st.l_refs[s] -= 1
                continue
            extra = _paused_before(sp, b, t) - _paused_before(sp, b, st.l_acct[s])
            if extra > 0.0:
                st.l_acct[s] = t
                push(st, t + extra, r, _SERVICE)
                continue
            st.busy[b] -= 1
            record_latency(st.pq, b, st.l_rif[s], t - st.r_arrival[r], False, t)
            if st.q_len[b] > 0:
                nxt = st.q_head[b]
                st.q_head[b] = st.l_qnext[_slot(st, nxt)]
                st.q_len[b] -= 1
                _release(st, nxt)
                _start_service(sp, st, b, nxt, t, rng)
            _answer(sp, st, r, t, False)
            st.l_refs[s] -= 1
        elif t_timeout == t:
            r = st.tg_head[g]
            st.tg_head[g] = st.l_tnext[_slot(st, r)]
            _release(st, r)
            p, b = int(st.r_proxy[r]), int(st.r_backend[r])
            st.inflight[p, b] -= 1
            record(st.m, p, b, sp.group_timeout[g], True, t)
            on_result(sp, st, p, b, True, t)
            _resolve(st, r, TIMEOUT, sp.group_timeout[g])
        elif t_check == t:
            _health_checks(sp, st, t, rng)
            st.clock[2] = t + sp.hc_interval
        elif t_board == t:
            for p in range(sp.proxies):
                for b in range(st.busy.shape[0]):
                    st.board[p, b] = st.inflight[p, b]
                    st.board_cost[p, b] = cost(st.m, p, b, t)
            st.clock[3] = t + sp.refresh_s
        else:
            if (
                st.counts[0] >= room
                or st.counts[2] + HEAP_ROOM >= heap_room
                or st.l_refs[_slot(st, st.counts[0])] != 0
            ):
                return NEED_ROOM
            _arrive(sp, st, t, rng)
            st.clock[1] = _next_arrival(sp, st, t, rng)
