"""Numba twin of `rl_lb.prequal`: the probe pool, the hot-cold choice and the latency estimate.

The same rules as the Python reference, slot for slot: answers replace the backend's entry, else
fill the first free slot, else the oldest; stale answers are dropped before a choice; ties go to
the lowest slot; the draws are consumed in the same order (one for a random pick, one for a
fractional probe count, one per probe target). tests/test_prequal.py replays one stream of events
and draws into both and compares every choice.

Kernels cannot allocate (envs/jit.py), so the scratch arrays live in `PrequalState`, and θ (the
nearest-rank quantile of the RIF history) is found by bisection over the values instead of a sort.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from envs.jit import jit
from envs.nb_random import uniform
from rl_lb.control import PrequalSettings
from rl_lb.prequal import (
    BUSY_PROBE_WEIGHT,
    FAILURE_WINDOW_S,
    LATENCY_NEIGHBOURS,
    LATENCY_RING,
    REFUGE_LATENCY_RATIO,
    REUSE_DELTA,
    RIF_HISTORY,
    WEIGHTED_LATENCY_BAND,
)
from rl_lb.types import FloatArray, IntArray

__all__ = [
    "TWIN_OF",
    "PrequalState",
    "add",
    "failure_price",
    "latency_estimate",
    "new_prequal",
    "pick",
    "record_latency",
    "targets",
    "threshold",
]

TWIN_OF = "rl_lb.prequal"


class PrequalState(NamedTuple):
    """Every proxy's probe pool (rows of the `(proxies, pool_size)` arrays) and every backend's
    latency ring, with the settings as scalars."""

    probes: float
    max_age_s: float
    removals: int
    q_rif: float
    max_reuse: int
    probe_rtt_s: float
    slot_backend: IntArray
    """-1 for a free slot."""
    slot_rif: IntArray
    slot_latency: FloatArray
    slot_at: FloatArray
    slot_local: IntArray
    """The proxy's own requests in flight to the slot's backend when the answer arrived."""
    slot_uses: IntArray
    history: IntArray
    """(proxies, RIF_HISTORY): the RIFs of the last answers."""
    meta: IntArray
    """Per proxy: [history count, next history slot, 1 if the next removal is the worst]."""
    ring_rif: IntArray
    """(backends, LATENCY_RING): RIF found by each recent request on arrival."""
    ring_latency: FloatArray
    ring_failed_at: FloatArray
    """When each entry's request failed; -inf for one that did not."""
    ring_meta: IntArray
    """Per backend: [count, next slot]."""
    taken: np.ndarray
    """Scratch (LATENCY_RING): ring entries already among the nearest."""
    nearest: FloatArray
    """Scratch (LATENCY_NEIGHBOURS): their latencies, sorted."""
    candidate: np.ndarray
    """Scratch (backends): the backends a pick may choose."""
    order: IntArray
    """Scratch (backends): candidates; after `targets`, the probe targets first."""


def new_prequal(proxies: int, backends: int, settings: PrequalSettings) -> PrequalState:
    size = settings.pool_size
    return PrequalState(
        probes=float(settings.probes),
        max_age_s=float(settings.max_age_s),
        removals=int(settings.removals),
        q_rif=float(settings.q_rif),
        max_reuse=int(settings.max_reuse),
        probe_rtt_s=float(settings.probe_rtt_s),
        slot_backend=np.full((proxies, size), -1, dtype=np.int64),
        slot_rif=np.zeros((proxies, size), dtype=np.int64),
        slot_latency=np.zeros((proxies, size)),
        slot_at=np.zeros((proxies, size)),
        slot_local=np.zeros((proxies, size), dtype=np.int64),
        slot_uses=np.zeros((proxies, size), dtype=np.int64),
        history=np.zeros((proxies, RIF_HISTORY), dtype=np.int64),
        meta=np.zeros((proxies, 3), dtype=np.int64),
        ring_rif=np.zeros((backends, LATENCY_RING), dtype=np.int64),
        ring_latency=np.zeros((backends, LATENCY_RING)),
        ring_failed_at=np.full((backends, LATENCY_RING), -np.inf),
        ring_meta=np.zeros((backends, 2), dtype=np.int64),
        taken=np.zeros(LATENCY_RING, dtype=np.bool_),
        nearest=np.zeros(LATENCY_NEIGHBOURS),
        candidate=np.zeros(backends, dtype=np.bool_),
        order=np.zeros(backends, dtype=np.int64),
    )


@jit
def record_latency(
    pq: PrequalState, b: int, rif_at_arrival: int, latency_s: float, failed: bool, now: float
) -> None:
    """`LatencyByRif.record` of backend b."""
    k = pq.ring_meta[b, 1]
    pq.ring_rif[b, k] = rif_at_arrival
    pq.ring_latency[b, k] = latency_s
    pq.ring_failed_at[b, k] = now if failed else -np.inf
    pq.ring_meta[b, 0] = min(pq.ring_meta[b, 0] + 1, LATENCY_RING)
    pq.ring_meta[b, 1] = (k + 1) % LATENCY_RING


@jit
def latency_estimate(pq: PrequalState, b: int, rif: int, now: float) -> float:
    """`LatencyByRif.estimate` of backend b: the median of the nearest in RIF (newer on ties)
    plus the price of its recent failures."""
    return _median(pq, b, rif) + failure_price(pq, b, now)


@jit
def failure_price(pq: PrequalState, b: int, now: float) -> float:
    """`LatencyByRif.failure_price` of backend b."""
    count = pq.ring_meta[b, 0]
    total = 0.0
    for k in range(count):
        if now - pq.ring_failed_at[b, k] <= FAILURE_WINDOW_S:
            total += pq.ring_latency[b, k]
    return float(total / count) if count else 0.0


@jit
def _median(pq: PrequalState, b: int, rif: int) -> float:
    """The median of the `LATENCY_NEIGHBOURS` nearest in RIF, newer on ties, scaled to `rif`."""
    count = pq.ring_meta[b, 0]
    if count == 0:
        return 0.0
    newest = pq.ring_meta[b, 1] - 1
    pq.taken[:] = False
    chosen = min(count, LATENCY_NEIGHBOURS)
    for c in range(chosen):
        best, best_distance = -1, 0
        for k in range(count):
            i = (newest - k) % LATENCY_RING
            distance = abs(pq.ring_rif[b, i] - rif)
            if not pq.taken[i] and (best < 0 or distance < best_distance):
                best, best_distance = i, distance
        pq.taken[best] = True
        value = pq.ring_latency[b, best] * (rif + 1.0) / (pq.ring_rif[b, best] + 1.0)
        j = c  # insertion into the sorted prefix
        while j > 0 and pq.nearest[j - 1] > value:
            pq.nearest[j] = pq.nearest[j - 1]
            j -= 1
        pq.nearest[j] = value
    middle = chosen // 2
    if chosen % 2:
        return float(pq.nearest[middle])
    return float((pq.nearest[middle - 1] + pq.nearest[middle]) / 2.0)


@jit
def threshold(pq: PrequalState, p: int) -> float:
    """θ of proxy p: the ⌈q·k⌉-th smallest of its k history values (bisection); inf if none."""
    count = pq.meta[p, 0]
    if count == 0:
        return np.inf
    rank = max(math.ceil(pq.q_rif * count) - 1, 0)
    low, high = pq.history[p, 0], pq.history[p, 0]
    for k in range(count):
        low = min(low, pq.history[p, k])
        high = max(high, pq.history[p, k])
    while low < high:  # the smallest v with more than `rank` values <= v
        mid = (low + high) >> 1
        below = 0
        for k in range(count):
            if pq.history[p, k] <= mid:
                below += 1
        if below > rank:
            high = mid
        else:
            low = mid + 1
    return float(low)


@jit
def _oldest(pq: PrequalState, p: int) -> int:
    best = -1
    for s in range(pq.slot_backend.shape[1]):
        if pq.slot_backend[p, s] >= 0 and (best < 0 or pq.slot_at[p, s] < pq.slot_at[p, best]):
            best = s
    return best


@jit
def add(
    pq: PrequalState, p: int, b: int, rif: int, latency_s: float, now: float, local: int
) -> None:
    """`ProbePool.add`: one probe answer of backend b reaches proxy p, which has `local` requests
    in flight to b."""
    k = pq.meta[p, 1]
    pq.history[p, k] = rif
    pq.meta[p, 0] = min(pq.meta[p, 0] + 1, RIF_HISTORY)
    pq.meta[p, 1] = (k + 1) % RIF_HISTORY
    size = pq.slot_backend.shape[1]
    slot = -1
    for s in range(size):
        if pq.slot_backend[p, s] == b:
            slot = s
            break
    if slot < 0:
        for s in range(size):
            if pq.slot_backend[p, s] < 0:
                slot = s
                break
    if slot < 0:
        slot = _oldest(pq, p)
    pq.slot_backend[p, slot] = b
    pq.slot_rif[p, slot] = rif
    pq.slot_latency[p, slot] = latency_s
    pq.slot_at[p, slot] = now
    pq.slot_local[p, slot] = local
    pq.slot_uses[p, slot] = 0


@jit
def _reuse_budget(pq: PrequalState, backends: int) -> int:
    """`rl_lb.prequal.reuse_budget`."""
    n = max(backends, 1)
    m = min(pq.slot_backend.shape[1], n)
    denominator = (1.0 - m / n) * pq.probes - pq.removals
    if denominator <= 0.0:
        return pq.max_reuse
    budget = max(1.0, 1.0 + REUSE_DELTA / denominator)
    return int(min(pq.max_reuse, math.ceil(budget)))


@jit
def _rif_now(pq: PrequalState, p: int, s: int, load: IntArray) -> int:
    """`ProbePool.rif_now` of slot s of proxy p."""
    return int(max(pq.slot_rif[p, s] + load[pq.slot_backend[p, s]] - pq.slot_local[p, s], 0))


@jit
def _latency_now(pq: PrequalState, p: int, s: int, rif_now: int) -> float:
    """`ProbePool.latency_now` of slot s of proxy p."""
    return float(pq.slot_latency[p, s] * (rif_now + 1.0) / (pq.slot_rif[p, s] + 1.0))


@jit
def _choose(
    pq: PrequalState,
    p: int,
    now: float,
    w: FloatArray,
    count: int,
    equal: bool,
    load: IntArray,
    errors: IntArray,
) -> int:
    """`ProbePool.choose` over the `count` candidates in `pq.candidate` and `pq.order`, with
    their weights' `relative_shares` unless `equal`, the answers read as they stand now by
    `load` (proxy p's requests in flight per backend), `errors` its failures per backend in
    the metrics window (`LoadView.error_rate` > 0); -1 with < 2 usable answers."""
    size = pq.slot_backend.shape[1]
    usable = 0
    for s in range(size):
        b = pq.slot_backend[p, s]
        if b >= 0 and now - pq.slot_at[p, s] > pq.max_age_s:
            pq.slot_backend[p, s] = -1
        elif b >= 0 and pq.candidate[b]:
            usable += 1
    if usable < 2:
        return -1
    theta = threshold(pq, p)
    total = 0.0  # as `accumulate` sums them: in backend order
    if not equal:
        for k in range(count):
            total += w[pq.order[k]]
    bar = -1.0  # REFUGE_LATENCY_RATIO x the fastest hot answer's latency; -1: none hot
    if not equal:
        for s in range(size):
            b = pq.slot_backend[p, s]
            if b < 0 or not pq.candidate[b]:
                continue
            rif = _rif_now(pq, p, s, load)
            if rif > theta * _share_of(pq, b, w, count, equal, total):
                latency = REFUGE_LATENCY_RATIO * _latency_now(pq, p, s, rif)
                if bar < 0.0 or latency < bar:
                    bar = latency
    cold, hot = -1, -1
    cold_latency, hot_load = 0.0, 0.0
    for s in range(size):
        b = pq.slot_backend[p, s]
        if b < 0 or not pq.candidate[b]:
            continue
        share = _share_of(pq, b, w, count, equal, total)
        rif = _rif_now(pq, p, s, load)
        if rif <= theta * share:
            latency = _latency_now(pq, p, s, rif)
            if _no_refuge(b, latency, bar, errors):
                continue
            if cold < 0 or latency < cold_latency:
                cold, cold_latency = s, latency
        elif hot < 0 or rif / share < hot_load:
            hot = s
            hot_load = rif / share
    if cold >= 0 and not equal:
        cold = _least_loaded_of_the_fastest(
            pq, p, w, count, total, load, theta, cold_latency, bar, errors
        )
    best = cold if cold >= 0 else hot
    chosen = pq.slot_backend[p, best]
    pq.slot_uses[p, best] += 1
    if pq.slot_uses[p, best] >= _reuse_budget(pq, pq.candidate.shape[0]):
        pq.slot_backend[p, best] = -1
    for _ in range(pq.removals):
        if pq.meta[p, 2] == 1:
            slot = _worst(pq, p, theta, w, count, equal, total, load, best)
        else:
            slot = _oldest(pq, p)
        if slot < 0:
            break
        pq.slot_backend[p, slot] = -1
        pq.meta[p, 2] = 1 - pq.meta[p, 2]
    return int(chosen)


@jit
def _least_loaded_of_the_fastest(
    pq: PrequalState,
    p: int,
    w: FloatArray,
    count: int,
    total: float,
    load: IntArray,
    theta: float,
    fastest: float,
    bar: float,
    errors: IntArray,
) -> int:
    """`ProbePool._least_loaded_of_the_fastest` (unequal weights): among the cold answers of
    latency within `WEIGHTED_LATENCY_BAND` of `fastest` (refuges: `_no_refuge`), the lowest
    RIF / share, then the lowest latency, then the first slot."""
    band = fastest * (1.0 + WEIGHTED_LATENCY_BAND)
    best = -1
    best_load, best_latency = 0.0, 0.0
    for s in range(pq.slot_backend.shape[1]):
        b = pq.slot_backend[p, s]
        if b < 0 or not pq.candidate[b]:
            continue
        share = _share_of(pq, b, w, count, False, total)
        rif = _rif_now(pq, p, s, load)
        if rif > theta * share:
            continue
        latency = _latency_now(pq, p, s, rif)
        if latency > band or _no_refuge(b, latency, bar, errors):
            continue
        per_share = rif / share
        if best < 0 or per_share < best_load or (per_share == best_load and latency < best_latency):
            best, best_load, best_latency = s, per_share, latency
    return best


@jit
def _no_refuge(b: int, latency: float, bar: float, errors: IntArray) -> bool:
    """`ProbePool._refuges` leaves out the cold answer of backend b: it failed at this proxy
    and is slower than `bar` (none when no answer is hot: bar < 0)."""
    return bar >= 0.0 and errors[b] > 0 and latency > bar


@jit
def _share_of(
    pq: PrequalState, b: int, w: FloatArray, count: int, equal: bool, total: float
) -> float:
    """`ProbePool._share_of` for backend b: its `relative_shares` entry, 1 under the published
    rule (`equal`) and for a backend that is no candidate."""
    return 1.0 if equal or not pq.candidate[b] else w[b] * count / total


@jit
def _worst(
    pq: PrequalState,
    p: int,
    theta: float,
    w: FloatArray,
    count: int,
    equal: bool,
    total: float,
    load: IntArray,
    chosen: int,
) -> int:
    """The hot answer with the highest RIF / share, else the one with the highest latency, both
    as they stand now, slot `chosen` with the request it is about to send."""
    hot, slow = -1, -1
    hot_load, slow_latency = 0.0, 0.0
    for s in range(pq.slot_backend.shape[1]):
        b = pq.slot_backend[p, s]
        if b < 0:
            continue
        share = _share_of(pq, b, w, count, equal, total)
        rif = _rif_now(pq, p, s, load) + (1 if s == chosen else 0)
        per_share = rif / share
        if rif > theta * share and (hot < 0 or per_share > hot_load):
            hot, hot_load = s, per_share
        latency = _latency_now(pq, p, s, rif)
        if slow < 0 or latency > slow_latency:
            slow, slow_latency = s, latency
    return hot if hot >= 0 else slow


@jit
def _candidates(pq: PrequalState, w: FloatArray, avail: np.ndarray) -> tuple[int, bool]:
    """`PrequalPicker.candidates` into `pq.candidate` and, in order, `pq.order`; their count and
    whether their weights are all equal (every draw is then uniform: `_draw_index`)."""
    count = 0
    for b in range(w.shape[0]):
        ok = avail[b] and w[b] > 0.0
        pq.candidate[b] = ok
        if ok:
            pq.order[count] = b
            count += 1
    if count == 0:
        for b in range(w.shape[0]):
            pq.candidate[b] = avail[b]
            if avail[b]:
                pq.order[count] = b
                count += 1
    return count, count == 0 or _equal_rest(pq, w, 0, count)


@jit
def pick(
    pq: PrequalState,
    p: int,
    w: FloatArray,
    avail: np.ndarray,
    load: IntArray,
    errors: IntArray,
    now: float,
    rng: np.ndarray,
) -> int:
    """The choice of `PrequalPicker.pick` (without its probes: see `targets`) with proxy p's
    requests in flight per backend `load` and failures in its metrics window `errors`; -1 if
    none."""
    count, equal = _candidates(pq, w, avail)
    if count == 0:
        return -1
    chosen = _choose(pq, p, now, w, count, equal, load, errors)
    if chosen < 0:
        chosen = pq.order[_draw_index(pq, w, 0, count, equal, rng)]
    return int(chosen)


@jit
def targets(
    pq: PrequalState, w: FloatArray, avail: np.ndarray, load: IntArray, rng: np.ndarray
) -> int:
    """`PrequalPicker.targets`: how many backends to probe, left first in `pq.order`; `load`:
    the proxy's requests in flight per backend (`BUSY_PROBE_WEIGHT` under unequal weights, put
    on `w` for the draws and taken off after: × and ÷ a power of two are exact)."""
    count, equal = _candidates(pq, w, avail)
    biased = not equal
    if biased:
        for k in range(count):
            if load[pq.order[k]] > 0:
                w[pq.order[k]] *= BUSY_PROBE_WEIGHT
        equal = _equal_rest(pq, w, 0, count)
    probes = int(pq.probes)
    fraction = pq.probes - probes
    if fraction > 0.0 and uniform(rng) < fraction:
        probes += 1
    probes = min(probes, count)
    for k in range(probes):
        j = _draw_index(pq, w, k, count, equal, rng)
        pq.order[k], pq.order[j] = pq.order[j], pq.order[k]
    if biased:
        for k in range(count):
            if load[pq.order[k]] > 0:
                w[pq.order[k]] /= BUSY_PROBE_WEIGHT
    return probes


@jit
def _draw_index(
    pq: PrequalState, w: FloatArray, start: int, count: int, equal: bool, rng: np.ndarray
) -> int:
    """`PrequalPicker._draw_index` (start 0) and `_draw_probe`: an index in order[start:count]
    from one draw, uniformly when their weights are equal (`equal`: all the candidates' are),
    else in proportion to them (summed left to right)."""
    u = uniform(rng)
    if equal or _equal_rest(pq, w, start, count):
        return start + int(u * (count - start))
    total = 0.0
    for k in range(start, count):
        total += w[pq.order[k]]
    x = u * total
    acc = 0.0
    for k in range(start, count):
        acc += w[pq.order[k]]
        if x < acc:
            return k
    return count - 1


@jit
def _equal_rest(pq: PrequalState, w: FloatArray, start: int, count: int) -> bool:
    """Whether order[start:count] all have the same weight."""
    first = w[pq.order[start]]
    for k in range(start + 1, count):  # noqa: SIM110 (a loop numba compiles, unlike all(...))
        if w[pq.order[k]] != first:
            return False
    return True
