"""Prequal (Wydrowski et al., NSDI 2024): pick among recently probed backends, avoiding hot ones.

Balancing on load alone sends requests to a backend that is idle because it is slow; balancing
on latency alone herds onto the one that was fast a moment ago. Prequal asks the backends
themselves (probes) for their requests-in-flight (RIF) and a latency estimate, keeps the answers
in a small pool, and chooses hot-cold lexicographically: among the "cold" answers (RIF at most
the `q_rif` quantile of recently seen RIFs) the lowest latency, else the lowest RIF.

Three pieces, shared by the proxy and the simulator's numba twin (`envs.nb_prequal`):

- `LatencyByRif`, the backend side (`rl_lb.prequal_answer`, with the answer the proxy gives for
  a backend that does not answer probes): the median latency of its recent requests that arrived at
  about its current RIF (the `LATENCY_NEIGHBOURS` of its last `LATENCY_RING` requests nearest in
  RIF, the newer first on ties), each scaled to the current RIF by (RIF + 1) / (its RIF + 1).
  The scaling is ours: without it, a backend whose recent requests all came in a busy spell kept
  that spell's latency once idle, so it was never chosen and never corrected (in the simulator
  with four proxies, half-slow.toml's p99 went from ~900 ms to ~115 ms with it).
  A failed request counts at the error penalty (`metrics.error-penalty`, what the peak-EWMA
  counts it at), also ours: recorded at its own latency, or not at all, a backend that fails
  fast answered probes as idle and fast and drew more requests than under least-latency. And the
  failures of the last `FAILURE_WINDOW_S` add their price spread over the ring (the failed
  share × the penalty): the median alone ignores failures below half (`failure_price`).
- `ProbePool`, the balancer side: at most `pool_size` answers, the newest per backend, dropped
  after `max_age_s` or once used `reuse_budget` times. An answer's RIF is read corrected by the
  proxy's own requests to that backend since it arrived (`load` − `local`: the ones it sent since
  count, the ones answered since no longer do), and its latency moves with it by the backend's own
  rule, × (corrected RIF + 1) / (RIF + 1). The paper adds 1 to the chosen answer's RIF; ours also
  counts the requests that ended meanwhile and the ones sent by another answer of the same
  backend, and its latency: kept as answered, the fastest answer drew request after request until
  its RIF passed θ, the 84th percentile — on pools of equal single-worker backends a queue of
  several behind a lucky estimate (docs/baselines.md). After each choice `removals` answers go,
  alternately the oldest and the worst (the hot one with the highest RIF, else the highest
  latency). θ is the nearest-rank `q_rif` quantile of the last `RIF_HISTORY` RIFs answered.
- `PrequalPicker`, the `Picker`: chooses from the pool (at random with fewer than 2 usable
  answers), then asks its prober to probe `probes` random backends, whose answers serve later
  requests, never the current one. Weights steer the randomness: a backend of weight 0 is never
  a candidate, and when the candidates' weights differ, both the probe targets (drawn without
  replacement; a backend the proxy has requests in flight to at `BUSY_PROBE_WEIGHT` of its
  weight) and the pick without answers are drawn in proportion to them, and the hot-cold
  rule reads each backend's RIF against its share of the weight (`relative_shares`: hot above
  θ × weight / mean weight), so a backend built for four times the mean load is not hot at the
  load it is built for; among the cold answers within `WEIGHTED_LATENCY_BAND` of the lowest
  latency, the lowest RIF / share wins (ours: the lowest of a few noisy latency estimates is
  mostly luck among equal backends), and the cold answer of a backend failing at this proxy
  (`LoadView.error_rate`) slower than the fastest hot answer is no refuge (ours: a backend that
  fails fast holds no requests, so it was taken whenever every other answer was hot, whatever
  its failure price; `REFUGE_LATENCY_RATIO`). Equal weights (the `prequal` preset's) give
  exactly the published algorithm: uniform draws, θ for all, the lowest latency among the cold.
  This is how a weight policy steers Prequal: the learned one pairs with it to keep Prequal's
  hot-cold choice and still shun what Prequal cannot see in a probe (a backend that fails fast
  looks idle and fast) and say which backends are big. Without a prober it answers its own
  probes from what the proxy sees (`LoadView`: in-flight and peak-EWMA latency) — the proxy's
  fallback for backends that do not answer probes.

Ties are broken by slot order and the random draws are consumed in a fixed order (one for a
random pick, one for a fractional probe count, one per probe target) so the twin makes the very
same choices from the same draws (tests/test_prequal.py).
"""

from __future__ import annotations

import math
import random
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Callable, Sequence
from itertools import accumulate
from operator import itemgetter
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from rl_lb.availability import Availability
from rl_lb.control import PrequalSettings
from rl_lb.prequal_answer import (
    FAILURE_WINDOW_S,
    LATENCY_NEIGHBOURS,
    LATENCY_RING,
    own_view_answer,
)
from rl_lb.types import Clock, LoadView, NoBackendAvailable

# FAILURE_WINDOW_S and the LATENCY_ two: the backend side's, re-exported so the twin's check
# covers them
__all__ = [
    "BUSY_PROBE_WEIGHT",
    "FAILURE_WINDOW_S",
    "LATENCY_NEIGHBOURS",
    "LATENCY_RING",
    "REFUGE_LATENCY_RATIO",
    "REUSE_DELTA",
    "RIF_HISTORY",
    "WEIGHTED_LATENCY_BAND",
    "PrequalPicker",
    "ProbePool",
    "Prober",
    "relative_shares",
    "reuse_budget",
    "rif_threshold",
]

RIF_HISTORY = 128
"""RIF values (from probe answers, over all backends) behind the hot threshold θ."""
REUSE_DELTA = 1.0
"""δ of the reuse budget (prequal-rs's default)."""
BUSY_PROBE_WEIGHT = 0.25
"""Under unequal weights, a backend the proxy already has requests in flight to is drawn as a
probe target at this fraction of its weight (`PrequalPicker.targets` says why). A power of two,
so the twin puts it on a weight and takes it off exactly."""
REFUGE_LATENCY_RATIO = 1.0
"""Under unequal weights, a cold answer of a backend failing at this proxy (errors in its
metrics window) is no refuge when it is more than this many times slower than the fastest hot
answer: the choice is made without it (`ProbePool.choose` says why)."""
WEIGHTED_LATENCY_BAND = 1.0
"""Under unequal weights, the cold answers within (1 + this) × the lowest latency count as
equally fast, and the lowest RIF / share among them wins (`ProbePool.choose`)."""

Prober = Callable[[Sequence[int]], None]
"""Sends probes to the given backends; their answers go to `ProbePool.add` later."""


def reuse_budget(settings: PrequalSettings, backends: int) -> int:
    """Requests one answer may serve: ⌈max(1, 1 + δ / ((1 − m/n) · r_probe − r_remove))⌉.

    m is the pool size as far as n backends can fill it (one answer per backend); a denominator
    ≤ 0 (a pool that covers the backends, or more removals than fresh answers) gives `max_reuse`.
    """
    n = max(backends, 1)
    m = min(settings.pool_size, n)
    denominator = (1.0 - m / n) * settings.probes - settings.removals
    if denominator <= 0.0:
        return settings.max_reuse
    budget = max(1.0, 1.0 + REUSE_DELTA / denominator)
    return min(settings.max_reuse, math.ceil(budget))


def rif_threshold(history: Sequence[int], q_rif: float) -> float:
    """θ: the nearest-rank `q_rif` quantile of `history` (the ⌈q·k⌉-th smallest); inf if empty."""
    if not history:
        return math.inf
    rank = max(math.ceil(q_rif * len(history)) - 1, 0)
    return float(sorted(history)[rank])


class ProbePool:
    """The balancer's probe answers, in `pool_size` slots (slot order breaks every tie)."""

    def __init__(self, settings: PrequalSettings | None = None) -> None:
        self.settings = settings or PrequalSettings()
        size = self.settings.pool_size
        self.backend = [-1] * size
        """Backend of each slot; -1 for a free slot."""
        self.rif = [0] * size
        self.latency_s = [0.0] * size
        self.received_at = [0.0] * size
        self.local = [0] * size
        """The proxy's own requests in flight to the slot's backend when the answer arrived."""
        self.uses = [0] * size
        self.history: list[int] = []
        self._history_next = 0
        self._sorted: list[int] = []
        """`history` in order, kept by insertion: θ is then one index, not a sort per request."""
        self._remove_worst_next = False
        """The removals alternate: the oldest first, then the worst."""

    def add(self, backend: int, rif: int, latency_s: float, now: float, *, local: int) -> None:
        """A probe answer: replaces the backend's entry, else fills a free slot, else the oldest.
        `local`: the proxy's own requests in flight to `backend` now (`choose` reads the answer
        corrected by how they change; required: a forgotten 0 would count them all as sent
        since)."""
        if len(self.history) < RIF_HISTORY:
            self.history.append(rif)
        else:
            del self._sorted[bisect_left(self._sorted, self.history[self._history_next])]
            self.history[self._history_next] = rif
        insort(self._sorted, rif)
        self._history_next = (self._history_next + 1) % RIF_HISTORY
        slot = self.backend.index(backend) if backend in self.backend else -1
        if slot < 0:
            slot = self.backend.index(-1) if -1 in self.backend else self._oldest()
        self.backend[slot] = backend
        self.rif[slot] = rif
        self.latency_s[slot] = latency_s
        self.received_at[slot] = now
        self.local[slot] = local
        self.uses[slot] = 0

    def threshold(self) -> float:
        """`rif_threshold` of the history."""
        count = len(self._sorted)
        if count == 0:
            return math.inf
        return float(self._sorted[max(math.ceil(self.settings.q_rif * count) - 1, 0)])

    def entries(self) -> int:
        return sum(b >= 0 for b in self.backend)

    def choose(
        self,
        candidate: Sequence[bool],
        load: Sequence[int],
        now: float,
        share: Sequence[float] | None = None,
        error_rate: Callable[[int], float] | None = None,
    ) -> int:
        """The hot-cold choice among usable answers and the removals; -1 when fewer than 2
        answers are usable (fresh, of a `candidate` backend).

        `load`: per backend, the proxy's own requests in flight to it now. Each answer is read
        as it stands now (`rif_now`, `latency_now`): its RIF moved by what `load` moved since
        the answer came (`local`), its latency scaled to that. `share`: each candidate's weight
        relative to the candidates' mean (`relative_shares`); an answer is hot when its RIF
        exceeds θ × its share, the cold answer chosen is the least loaded of the fastest
        (`_least_loaded_of_the_fastest`), with every answer hot the lowest RIF / share wins, and
        the worst answer to remove is the hot one of the highest RIF / share. None (equal
        weights) is the published rule.

        `error_rate`: per backend, its failed share at this proxy (`LoadView.error_rate`); with
        it, under unequal weights, a cold answer of a backend that failed in the window and is
        more than `REFUGE_LATENCY_RATIO` × slower than the fastest hot answer is left out of
        this choice (`_refuges`)."""
        settings = self.settings
        for slot, b in enumerate(self.backend):
            if b >= 0 and now - self.received_at[slot] > settings.max_age_s:
                self.backend[slot] = -1
        usable = [s for s, b in enumerate(self.backend) if b >= 0 and candidate[b]]
        if len(usable) < 2:
            return -1
        theta = self.threshold()
        rif = self.rif_now(load)
        scale = {s: self._share_of(s, candidate, share) for s in usable}
        cold = [s for s in usable if rif[s] <= theta * scale[s]]
        hot = [s for s in usable if rif[s] > theta * scale[s]]
        if cold and hot and share is not None and error_rate is not None:
            cold = self._refuges(cold, hot, rif, error_rate)
        if cold and share is not None:
            best = self._least_loaded_of_the_fastest(cold, rif, scale)
        elif cold:
            best = min(cold, key=lambda s: self.latency_now(s, rif[s]))
        else:
            best = min(hot, key=lambda s: rif[s] / scale[s])
        chosen = self.backend[best]
        self.uses[best] += 1
        if self.uses[best] >= reuse_budget(settings, len(candidate)):
            self.backend[best] = -1
        rif[best] += 1  # the request this choice sends, which `load` does not count yet
        for _ in range(settings.removals):
            occupied = [s for s, b in enumerate(self.backend) if b >= 0]
            if not occupied:
                break
            if self._remove_worst_next:
                slot = self._worst(occupied, theta, rif, candidate, share)
            else:
                slot = self._oldest()
            self.backend[slot] = -1
            self._remove_worst_next = not self._remove_worst_next
        return chosen

    def _refuges(
        self, cold: list[int], hot: list[int], rif: list[int], error_rate: Callable[[int], float]
    ) -> list[int]:
        """The cold answers but those of a backend failing at this proxy that are more than
        `REFUGE_LATENCY_RATIO` × slower than the fastest hot answer (latencies as they stand).

        Why: a backend that fails fast holds no requests, so its answer is always cold, and the
        hot-cold rule took it whenever every other answer was hot, whatever its latency. On
        `fast-failure` (one of five backends answers half its requests with a 1 ms 503), seed
        0 of the learned pairing before the rule: 727 of the 728 choices of that backend while
        it failed were of this kind, its answer at 0.11 to 23 s (median 5.0 s: the failure
        price) against a fastest hot one of 7 to 61 ms; it failed 386 requests. The proxy's own
        failures say which answers these are: the same rule for every slow cold answer (× 1, 4
        and 20) also kept needed slow backends out and cost held-out worlds (docs/training.md)."""
        bar = REFUGE_LATENCY_RATIO * min(self.latency_now(s, rif[s]) for s in hot)
        return [
            s
            for s in cold
            if self.latency_now(s, rif[s]) <= bar or error_rate(self.backend[s]) <= 0.0
        ]

    def _least_loaded_of_the_fastest(
        self, cold: list[int], rif: list[int], scale: dict[int, float]
    ) -> int:
        """Among the cold answers whose latency is within `WEIGHTED_LATENCY_BAND` of the
        lowest, the lowest RIF / share (then the lowest latency, then the first slot).

        Why, and only under unequal weights: a latency estimate is the median of a few recent
        requests, so among equal backends the lowest is mostly luck, and the published rule
        sent a request behind a queue of several on one-worker backends while one with none
        waited (the policy served through it was 1.116x `jsq` by geometric mean, up to 1.36x,
        in the 32 held-out worlds where `jsq` was the best heuristic). A weight
        policy has already said which backends are big (their shares), so RIF / share is its
        measure of load; latency still rules out the clearly slower (a backend in trouble, one
        that fails fast: priced at the penalty). Equal weights keep the published rule: with no
        one to say which backends are big, the lowest RIF would send the requests to an idle
        slow one."""
        latency = {s: self.latency_now(s, rif[s]) for s in cold}
        band = min(latency.values()) * (1.0 + WEIGHTED_LATENCY_BAND)
        near = [s for s in cold if latency[s] <= band]
        return min(near, key=lambda s: (rif[s] / scale[s], latency[s]))

    def rif_now(self, load: Sequence[int]) -> list[int]:
        """Per slot: the answer's RIF corrected by the proxy's own requests to its backend since
        (sent since: + 1 each; answered since: − 1 each, at least 0); 0 for a free slot."""
        return [
            max(r + load[b] - sent, 0) if b >= 0 else 0
            for b, r, sent in zip(self.backend, self.rif, self.local, strict=True)
        ]

    def latency_now(self, slot: int, rif_now: int) -> float:
        """The slot's latency scaled to `rif_now` as the backend scales its own (`LatencyByRif`):
        × (rif_now + 1) / (RIF answered + 1)."""
        return self.latency_s[slot] * (rif_now + 1) / (self.rif[slot] + 1)

    def _oldest(self) -> int:
        occupied = [s for s, b in enumerate(self.backend) if b >= 0]
        return min(occupied, key=lambda s: self.received_at[s])

    def _worst(
        self,
        occupied: list[int],
        theta: float,
        rif: list[int],
        candidate: Sequence[bool],
        share: Sequence[float] | None,
    ) -> int:
        """The hot entry with the highest RIF / share, else the one with the highest latency:
        hot as `choose` judges it, RIF and latency as they stand now (`rif`: `rif_now`)."""
        scale = {s: self._share_of(s, candidate, share) for s in occupied}
        hot = [s for s in occupied if rif[s] > theta * scale[s]]
        if hot:
            return max(hot, key=lambda s: (rif[s] / scale[s], -s))
        return max(occupied, key=lambda s: (self.latency_now(s, rif[s]), -s))

    def _share_of(
        self, slot: int, candidate: Sequence[bool], share: Sequence[float] | None
    ) -> float:
        """The share the hot-cold rule scales `slot`'s answer by: 1 under the published rule
        (`share` None) and for a backend that is no candidate (an answer kept from before)."""
        b = self.backend[slot]
        return 1.0 if share is None or not candidate[b] else share[b]


class _Candidates(NamedTuple):
    """What a pick needs from one availability pattern and one set of weights: built on every
    request, it made a pick O(N) (issue 15); kept until either changes."""

    mask: list[bool]
    """Per backend: a candidate (`PrequalPicker.candidates`); `ProbePool.choose` reads it."""
    backends: list[int]
    """The candidates in backend order; `targets` swaps entries in place and back."""
    equal: bool
    """All candidates' weights are equal (or none fit this pool): every draw is uniform."""
    cum: list[float]
    """Running sums of the weights in order, added as `_draw_index` adds them, so a draw from
    the whole list is a binary search with the same result; empty when `equal`."""
    weight: npt.NDArray[np.float64]
    """The weight of each entry of `backends` when unequal, else empty: `targets` draws the
    probes from it (with `BUSY_PROBE_WEIGHT` on), a copy at a time."""
    share: list[float] | None
    """Per backend: its weight relative to the candidates' mean (`relative_shares`); None
    when `equal`."""


def _candidates_table(mask: list[bool], weights: Sequence[float], sized: bool) -> _Candidates:
    """The table for a candidate mask; `sized`: the weights are for this pool."""
    backends = [b for b, ok in enumerate(mask) if ok]
    equal = not sized or not backends or all(weights[b] == weights[backends[0]] for b in backends)
    cum = [] if equal else list(accumulate(weights[b] for b in backends))
    weight = np.array([] if equal else [weights[b] for b in backends], dtype=np.float64)
    share = None if equal else relative_shares(weights, backends, cum[-1])
    return _Candidates(mask, backends, equal, cum, weight, share)


def relative_shares(weights: Sequence[float], backends: Sequence[int], total: float) -> list[float]:
    """Per backend: weight × candidates / the candidates' total weight (1 for each of equal
    weights; 0 off the candidates). Why the hot-cold rule reads it: Prequal's θ is a quantile of
    the RIFs of a fleet of equal replicas, so a backend able to serve four times the average
    looks hot at the RIF it is built for, and Prequal sends the request to an idle slow one
    instead — in a pool of 2 fast 8-worker and 4 slow 1-worker backends, ~4x capacity's p99.
    Weighted like Envoy's least-request (active requests / weight), a backend the policy trusts
    with k times the mean weight is hot only above k × θ, so a weight policy can say which
    backends are big; with equal weights the rule is the published one."""
    count = len(backends)
    share = [0.0] * len(weights)
    for b in backends:
        share[b] = weights[b] * count / total
    return share


def probe_count(probes: float, candidates: int, draw: Callable[[], float]) -> int:
    """⌊probes⌋ plus one with probability of the fraction (a draw only if there is one)."""
    count = int(probes)
    fraction = probes - count
    if fraction > 0.0 and draw() < fraction:
        count += 1
    return min(count, candidates)


class PrequalPicker:
    """The `prequal` picker. Weights exclude backends (weight 0, unless all are 0) and, unequal,
    bias the random draws (probe targets, the pick without answers) in proportion.

    The candidates are kept (`_Candidates`) while the view's `Availability` keeps its `version`
    (a plain list: its contents) and no `update` comes, so with equal weights a pick is
    O(pool size + probes) at any N. With unequal ones each probe target after the first sums
    the rest of the candidates' weights (in numpy), as the twin does.
    """

    name = "prequal"

    def __init__(
        self,
        rng: random.Random | None = None,
        settings: PrequalSettings | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._rng = rng if rng is not None else random.Random()
        self.pool = ProbePool(settings)
        self.clock = clock
        self.prober: Prober | None = None
        """Who sends the probes; None: answered at once from the proxy's own view."""
        self._weights: list[float] = []
        self._backends = -1
        self._table: _Candidates | None = None
        """The candidates for `_pattern` and the current weights; None after an update."""
        self._pattern: list[bool] = []
        """The availability `_table` was built for (a copy)."""
        self._seen: Sequence[bool] | None = None
        """The view's `available` at the last pick and its `Availability.version` (-1: none)."""
        self._seen_version = -1
        self.blind_picks = 0
        """Picks made without 2 usable answers in the pool (drawn at random, by weight): when
        many are, probes do not keep up and Prequal is only a weighted random choice."""
        self.picks = 0

    def update(self, weights: npt.ArrayLike) -> None:
        array = np.asarray(weights, dtype=np.float64)
        if array.ndim != 1 or not np.all(np.isfinite(array)) or np.any(array < 0):
            raise ValueError(f"weights must be a 1-D array of finite values >= 0, got {array!r}")
        self._weights = array.tolist()
        self._table = None

    def candidates(self, available: Sequence[bool]) -> list[bool]:
        """Available backends, without those of weight 0 unless every available one has 0."""
        weights = self._weights
        if len(weights) != len(available):
            return list(available)
        positive = [a and w > 0 for a, w in zip(available, weights, strict=True)]
        return positive if any(positive) else list(available)

    def _candidates_now(self, available: list[bool]) -> _Candidates:
        """The kept candidates while neither the availability nor the weights changed; else
        built again (O(N)) and kept."""
        table = self._table
        if (
            table is not None
            and available is self._seen
            and isinstance(available, Availability)
            and available.version == self._seen_version
        ):
            return table
        if table is None or available != self._pattern:
            self._pattern = list(available)
            sized = len(self._weights) == self._backends
            table = _candidates_table(self.candidates(available), self._weights, sized)
            self._table = table
        self._seen = available
        self._seen_version = available.version if isinstance(available, Availability) else -1
        return table

    def pick(self, view: LoadView) -> int:
        available = view.available
        if len(available) != self._backends:  # answers of another pool mean nothing here
            if self._backends >= 0:
                self.pool = ProbePool(self.pool.settings)
            self._backends = len(available)
        table = self._candidates_now(available)
        backends = table.backends
        if not backends:
            raise NoBackendAvailable("no backend is available (all unhealthy or ejected)")
        now = self.clock()
        chosen = self.pool.choose(table.mask, view.in_flight, now, table.share, view.error_rate)
        self.picks += 1
        if chosen < 0:
            self.blind_picks += 1
            chosen = backends[self._draw_index(table)]
        targets = self.targets(table, view.in_flight)
        if self.prober is not None:
            self.prober(targets)
        else:
            for b in targets:
                rif = view.in_flight[b]
                self.pool.add(b, *own_view_answer(rif, view.cost(b)), now, local=rif)
        return chosen

    def targets(self, table: _Candidates, in_flight: Sequence[int]) -> list[int]:
        """Backends to probe for one request: drawn without replacement (a partial shuffle of
        the kept candidates, undone after; its k-th step draws from the rest, by weight).

        Under unequal weights, a backend the proxy has requests in flight to (`in_flight`, its
        own) is drawn at `BUSY_PROBE_WEIGHT` of its weight. Why: an answer is used by one or
        two requests and the pool keeps what is left, so on a large pool of equal one-worker
        backends the idle answers were used up as fast as probes found them, and one request
        in five went behind a queue while an idle backend the pool had not heard of waited
        (held-out world gen-1000000-0045, 147 backends, one proxy: 18% of its choices; `jsq`,
        which scans every backend, 1.14x better). A backend the proxy is already sending to is
        busy at any number of proxies, and its answer would mostly say so; one it has nothing
        at may be idle. Equal weights keep the published uniform draws."""
        order = table.backends
        count = probe_count(self.pool.settings.probes, len(order), self._rng.random)
        weight, equal = table.weight, table.equal  # empty when equal
        if not equal:  # a new array: the shuffle swaps it and need not swap it back
            # unequal means 2 candidates or more, so the getter returns a tuple (C-speed gather:
            # half the cost of a generator at 1,000 backends)
            load = np.fromiter(itemgetter(*order)(in_flight), dtype=np.int64, count=len(order))
            weight = np.where(load > 0, weight * BUSY_PROBE_WEIGHT, weight)
            equal = bool(np.all(weight == weight[0]))
        swapped: list[int] = []
        try:
            for k in range(count):
                j = self._draw_probe(weight, equal, k, len(order))
                order[k], order[j] = order[j], order[k]
                if weight.size:
                    weight[k], weight[j] = weight[j], weight[k]
                swapped.append(j)
            return order[:count]
        finally:
            for k in reversed(range(len(swapped))):
                j = swapped[k]
                order[k], order[j] = order[j], order[k]

    def _draw_probe(
        self, weight: npt.NDArray[np.float64], equal: bool, start: int, count: int
    ) -> int:
        """An index in [start, count) drawn with one random number over the probe draws' own
        `weight` (aligned with the candidates as the shuffle left them; empty when `equal`):
        uniformly when the rest are equal, else in proportion to them, the first whose running
        sum (added left to right, as the twin) exceeds u × the sum, the last if u × the sum
        rounded up to it."""
        u = self._rng.random()
        if equal:
            return start + int(u * (count - start))
        rest = weight[start:]
        if bool(np.all(rest == rest[0])):
            return start + int(u * (count - start))
        sums = np.add.accumulate(rest)
        return min(start + int(np.searchsorted(sums, u * float(sums[-1]), side="right")), count - 1)

    def _draw_index(self, table: _Candidates) -> int:
        """The pick without answers: an index in `backends` drawn with one random number,
        uniformly when their weights are equal, else by a binary search of the kept running
        sums (`accumulate` adds left to right, as the twin), the last if u × the sum rounded up
        to it: O(log N)."""
        u = self._rng.random()
        last = len(table.backends) - 1
        if table.equal:
            return int(u * (last + 1))
        return min(bisect_right(table.cum, u * table.cum[-1]), last)

    def reset(self) -> None:
        self.pool = ProbePool(self.pool.settings)
