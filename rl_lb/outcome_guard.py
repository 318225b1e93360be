"""The outcome guard: notice that a learned policy does worse than its fallback, and step aside.

`GuardedBalancer` checks what a policy *outputs*; a policy can output perfectly well-formed
weights and still route traffic into a wall (a pool unlike any it trained on). This guard limits
how much harm one interval's weights can do, and checks what the policy's traffic *got*, once
per control interval, from the same `PoolSnapshot` the policy reads — so the simulator and the
proxy run it alike, with no extra measurement.

Why an envelope first. A check that runs once per control interval cannot act inside one: when
the backends a policy favours slow down mid-interval, the weights stay until the next decision,
and even an oracle that falls back at the first decision after the shift ends at 1.16x
least-latency's effective p99 on the shift world of tests/scenarios/ (5 seeds; a 6x slowdown
queues ~150 excess requests a second). What makes a slowdown explode within the interval is the
two-choices picker (p2c, p2c-latency: two distinct candidates drawn by weight, the better scored
wins): when both candidates are slow backends one of them gets the request whatever the scores
say. With weights a and b the pair {a, b} is *forced* a share `a b (1/(1 − a) + 1/(1 − b))` of
all requests (`forced_pair_share`); the rest the scores shed within milliseconds. The shipped
policy put 0.33 and 0.31 on the fast pair there: 30% of the traffic forced onto two backends
that, 6x slower, could serve 19% of it. So the guard bounds the forced share of every pair at
`pair_share` times what equal weights force, `2 / (n (n − 1))` for n live backends
(`spread_weights`): the heaviest weight is kept (a single backend is never forced; a favourite
that turns slow is the CUSUM's to catch, below), the others are capped so that no pair with it
exceeds the bound, the excess going to the lighter ones in proportion. When the others cannot
sum to the rest under that cap (the favourite holds most of the weight and there are more than
2 × `pair_share` live backends) they share it equally, the least the favourite's pairs can be
forced. Weights within the bound are never changed (equal weights are not), nor are pools of
2 (both are always drawn). At the default 4 on eight backends the bound is 14%; on the shift
world the envelope alone keeps the shipped policy at 1.01x least-latency (5 seeds), and on the
scenario library it changed the shipped policy's effective p99 by less than the seed noise
(benchmarks/outcome_guard_cost.py; docs/proxy.md has the figures).

Why a model, not a canary. Routing a fixed share of requests by the fallback would compare like
with like, but that share pays the fallback's latency wherever the policy is much better (on
`heterogeneous` least-latency's p99 is ~6x the learned policy's): its cost never stops. Instead,
each interval the guard estimates both sides from the per-backend figures it already has:

* the cost of a backend, `c_i = max(window p99, (in-flight − 1) / throughput) + error rate ×
  error penalty`: its tail, or the wait a request sent now can expect by Little's law when a
  queue is building faster than the window shows, with every failure priced like the peak-EWMA
  prices it (the one request in service is no queue: see below);
* what the policy got, `P = Σ share_i c_i`, with `share_i` each backend's share of the answers
  in the window (what the traffic really got, whatever the picker did with the weights);
* what the fallback would get, `B = Σ_r q_r c_(r)`: least-latency's own routing rule applied to
  the backends ranked by their *typical* cost — two distinct uniform draws, the cheaper one
  wins, so the r-th of n gets `q_r = 2(n − r) / (n(n − 1))` of the requests, and pays that
  backend's cost `c`.

Why the ranking reads the median, not the tail it prices. Ranked by `c` itself, `B` is the hindsight
of a fallback that knew which backend's window would hold the one slow answer: with a few answers
per window a p99 is nearly the slowest answer, and the cheapest of several noisy p99s is biased low
(the winner's curse), so an unlucky tail on a favourite — a GC pause, a Pareto job — read as a
regression the fallback would have avoided. Least-latency cannot foresee those either; what it does
avoid is what a backend usually does. So the rank key is `max(window p50, (in-flight − 1) /
throughput) + error rate × error penalty`: a backend slow for good, queueing or failing ranks last
as before, one slow answer does not. Measured on the tempering's 97 generated worlds
(training/temper.py, 5 December 2026): with the stage-4 policy tempered at 0.2, 83.5% -> 85.6% of
worlds within 1.10x their best heuristic on the selection seeds (unguarded 84.5%), 83.5% -> 82.5% on
the evaluation seeds; at every other scale of the grid +2 points on the evaluation seeds (0.25:
82.5% -> 84.5%). Where the guard matters most it still holds (gen-3-0075: 4.7x the best with it,
13.4x without).

`B` keeps the backends' current costs, so it is pessimistic about the backends the policy
overloads (the fallback would relieve them) and optimistic about those it leaves idle (the
fallback would load them): the threshold is the margin for the second error. In calibration
(the shipped policy, 5 seeds of each library scenario) `log(P / B)` never exceeded 0.76 (park at
91% load, which needs its slow servers; log 2.5 = 0.92); on the shift world of tests/scenarios/
with the envelope off it passes 1.2 within 1-2 intervals of the shift and reaches 1.7. (Both
measured when the fallback was ranked by the p99 itself; the median ranking below can only
raise `B`, never lower it, and the shift world's tests still see it caught within 5 intervals.)

Why `in-flight − 1`: the queue, not the request in service. In-flight is one instant's count;
where a backend answers a few requests a second, one request caught in service reads by Little's
law as a wait of a whole inter-answer gap. With 12 proxies on 7 one-worker backends (held-out
gen-1000000-0114) each proxy sees a backend answer one or two a second, one request in flight
priced a backend at 0.5-2 s, and some proxy's guard tripped every few seconds (1.48x that
world's best heuristic guarded, 0.79x unguarded). In a pool of two it also broke the ranking
(gen-1000000-0053: 84 answers a second and one in flight ranked the fast backend at 12 ms
behind the slow one's 7.6 ms median, so `B` was all the load on the slow one at the cost it had
nearly idle; the guard read 3.4x, tripped, and least-latency then timed requests out for 20 s:
effective p99 1,000 ms against 174 ms unguarded). Both measured on held-out worlds, so the
held-out figures after this change are no longer blind to it (docs/results.md says so). A
queue that builds (the shift world's slowed backends hold tens) still reads as one.

The statistical rule is a one-sided CUSUM on `x_t = log(P_t / B_t)`: `S_t = max(0, S_{t-1} + x_t
− log threshold)`, and the guard trips when `S_t ≥ evidence`. One interval far above the
threshold trips it at once; a ratio just above it must persist; noise below it never
accumulates. Only intervals the policy served count, and only with two or more known backends.

Backoff: a trip holds the fallback for `backoff_s`, doubled for each further trip, capped at
`max_backoff_s`; a policy that serves `max_backoff_s` without a trip starts again from
`backoff_s`. So the holds grow while the policy keeps failing, and a policy that keeps failing
against a fallback that does better spends its time on the fallback: it cannot flap.

Why a hold can end early: a trip is a prediction, and the hold tests it. The trip says the
fallback's traffic would cost `threshold` x less than the policy's; once the metrics window holds
only the fallback's traffic, the guard prices what that traffic got (`served_cost`) and, when it
is no cheaper than the policy's traffic was at the trip, the hold ends (the trip still doubles the
next one). `B` is blind to the load the fallback would move (above), most of all in pools of two,
where least-latency puts all the traffic on one backend: on held-out generated worlds of two
backends its traffic then cost up to 4x the policy's at the trip (docs/training.md, "A hold ends
when the fallback does no better", has the figures). When neither does better, the two take
turns: a hold ends a window after its trip and the policy is judged a window after it serves
again, so switches into the fallback are then at least two metrics windows apart.

Probes: a backend with fewer than `min_answers` answers in the window is unknown, and a policy
that starves every backend but one would leave the guard blind. Such backends get a weight
floor of `probe_share` / live backends each. With the latency-scored pickers a probed backend that
has answered wins a draw only when the policy's choice is far worse for its weight, so a good
policy pays almost nothing for it.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from rl_lb.control import OutcomeGuardSettings
from rl_lb.metrics import DEFAULT_ERROR_PENALTY_S
from rl_lb.types import BoolArray, FloatArray, PoolSnapshot

__all__ = [
    "Estimate",
    "OutcomeGuard",
    "estimate",
    "fallback_shares",
    "forced_pair_share",
    "pair_share_bound",
    "ranked_shares",
    "served_cost",
    "spread_weights",
]


class Estimate(NamedTuple):
    """One interval's comparison, in seconds of cost."""

    policy_s: float
    """What the policy's traffic got: answer-share-weighted cost."""
    fallback_s: float
    """What least-latency would get at the same per-backend costs."""

    @property
    def log_ratio(self) -> float:
        return math.log(self.policy_s / self.fallback_s)


def fallback_shares(n: int) -> FloatArray:
    """Least-latency's share of requests for the backends ranked 1..n by cost (cheapest first).

    Two distinct uniform draws, the cheaper wins: rank r wins when drawn with a worse one.
    """
    if n < 2:
        return np.ones(n, dtype=np.float64)
    r = np.arange(1, n + 1, dtype=np.float64)
    return 2.0 * (n - r) / (n * (n - 1))


def ranked_shares(typical: FloatArray) -> FloatArray:
    """Least-latency's share of requests for each backend by its `typical` cost (lower wins),
    backends of equal cost sharing their ranks' shares equally (either is as likely to win)."""
    order = np.argsort(typical, kind="stable")
    by_rank = fallback_shares(len(typical))
    ranked = typical[order]
    _, group, size = np.unique(ranked, return_inverse=True, return_counts=True)
    tied = np.bincount(group, weights=by_rank) / size
    shares = np.empty(len(typical), dtype=np.float64)
    shares[order] = tied[group]
    return shares


def forced_pair_share(a: float, b: float) -> float:
    """Share of two-choices draws whose two candidates are the backends weighted a and b.

    The first candidate is drawn by weight, the second by weight among the others; one of the
    pair gets such a request whatever the picker's scores say.
    """
    if a >= 1.0 or b >= 1.0:
        return 1.0  # the other one is the only candidate left: every draw that holds it
    return a * b * (1.0 / (1.0 - a) + 1.0 / (1.0 - b))


def pair_share_bound(live: int, pair_share: float) -> float:
    """The most any pair may be forced: `pair_share` times what equal weights force it."""
    return min(1.0, pair_share * 2.0 / (live * (live - 1)))


def _partner_cap(top: float, bound: float) -> float:
    """The weight x at which `forced_pair_share(top, x)` reaches `bound` (top < 1).

    Solves k x² − (k + top + bound) x + bound = 0 with k = top / (1 − top), its smaller root,
    written so that it stays exact when k is small.
    """
    k = top / (1.0 - top)
    b = k + top + bound
    return 2.0 * bound / (b + math.sqrt(max(b * b - 4.0 * k * bound, 0.0)))


def _fill_under(weights: FloatArray, members: BoolArray, cap: float, total: float) -> FloatArray:
    """`weights` of `members` rescaled to sum to `total` with none above `cap` (water-filling:
    the excess of capped ones goes to the others in proportion to their weight)."""
    out = weights.copy()
    capped = np.zeros(len(out), dtype=np.bool_)
    for _ in range(int(members.sum()) + 1):
        free = members & ~capped
        if not free.any():
            break
        left = total - cap * int(capped.sum())
        base = float(out[free].sum())
        out[free] = out[free] * (left / base) if base > 0 else left / int(free.sum())
        over = free & (out > cap * (1.0 + 1e-9))  # not the rounding of an exact fit
        if not over.any():
            break
        out[over] = cap
        capped |= over
    return out


def spread_weights(weights: FloatArray, live: BoolArray, pair_share: float) -> FloatArray:
    """`weights` (normalised over `live`) with no pair forced more than the bound, as far as
    that can be done without touching the heaviest weight (see above).

    The others are capped at the weight whose pair with the heaviest reaches the bound; when
    they cannot then sum to the rest (only when the heaviest alone is most of the weight, with
    more than 2 × `pair_share` live backends), they share the rest equally.
    """
    n = int(live.sum())
    if n < 3 or pair_share <= 0:
        return weights
    bound = pair_share_bound(n, pair_share)
    order = np.argsort(-np.where(live, weights, -1.0), kind="stable")
    first, second = int(order[0]), int(order[1])
    top = float(weights[first])
    if top >= 1.0 or forced_pair_share(top, float(weights[second])) <= bound:
        return weights
    others = live.copy()
    others[first] = False
    cap = max(_partner_cap(top, bound), (1.0 - top) / (n - 1))
    spread = _fill_under(np.where(live, weights, 0.0), others, cap, 1.0 - top)
    spread[first] = top
    return spread


def known_backends(snapshot: PoolSnapshot, min_answers: int) -> BoolArray:
    """Live backends with at least `min_answers` answers in the window."""
    answers = snapshot.throughput_rps * snapshot.window_s
    known: BoolArray = snapshot.live & (answers >= min_answers - 1e-9) & np.isfinite(snapshot.p99_s)
    return known


def _costs(
    snapshot: PoolSnapshot, known: BoolArray, error_penalty_s: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per known backend: its answers a second, its cost (p99 or queue wait, plus errors) and
    its typical cost (median or queue wait, plus errors): see the module's notes."""
    throughput = snapshot.throughput_rps[known]
    little = np.maximum(snapshot.in_flight[known] - 1.0, 0.0) / throughput  # the queue behind
    errors = snapshot.error_rate[known] * error_penalty_s
    cost = np.maximum(np.maximum(snapshot.p99_s[known], little) + errors, 1e-9)  # log(0/0)
    typical = np.maximum(snapshot.p50_s[known], little) + errors
    return throughput, cost, typical


def _answer_weighted(throughput: FloatArray, cost: FloatArray) -> float:
    """The costs weighted by each backend's share of the answers: what the traffic got. One
    formula for the policy's side of `estimate` and for `served_cost`, which a hold compares."""
    return float(np.dot(throughput / throughput.sum(), cost))


def estimate(
    snapshot: PoolSnapshot,
    min_answers: int,
    error_penalty_s: float = DEFAULT_ERROR_PENALTY_S,
) -> Estimate | None:
    """The policy's cost and the fallback's estimated cost, or None with fewer than 2 known.

    The fallback's shares go by rank of the typical cost; each backend is priced by its cost.
    """
    known = known_backends(snapshot, min_answers)
    if known.sum() < 2:
        return None
    throughput, cost, typical = _costs(snapshot, known, error_penalty_s)
    fallback = float(np.dot(ranked_shares(typical), cost))
    return Estimate(_answer_weighted(throughput, cost), fallback)


def served_cost(
    snapshot: PoolSnapshot,
    min_answers: int,
    error_penalty_s: float = DEFAULT_ERROR_PENALTY_S,
) -> float | None:
    """What the window's traffic got, priced as `estimate` prices the policy's (answer-share-
    weighted cost over the known backends), or None when no backend is known. One known is
    enough: a fallback that sends everything to one backend is still measured."""
    known = known_backends(snapshot, min_answers)
    if not known.any():
        return None
    throughput, cost, _ = _costs(snapshot, known, error_penalty_s)
    return _answer_weighted(throughput, cost)


class OutcomeGuard:
    """The CUSUM rule and the backoff of one guarded balancer (state between intervals)."""

    def __init__(
        self,
        settings: OutcomeGuardSettings | None = None,
        error_penalty_s: float = DEFAULT_ERROR_PENALTY_S,
    ) -> None:
        self.settings = settings or OutcomeGuardSettings()
        self.error_penalty_s = error_penalty_s
        self.reset()

    def reset(self) -> None:
        self.evidence = 0.0
        """The CUSUM statistic S_t."""
        self.trips = 0
        """Regressions in a row (each doubles the next hold); 0 after a clean `max_backoff_s`."""
        self.hold_until = -math.inf
        self.primary_since: float | None = None
        self.fallback_until = -math.inf
        """When the fallback last served: the window must start after it to judge the policy."""
        self.last: Estimate | None = None
        self.tripped_at = math.inf
        """When the current hold's trip happened (inf: none yet)."""
        self.trip_cost_s = math.inf
        """What the policy's traffic cost at that trip: the fallback must do better."""
        self.early_return: Estimate | None = None
        """Set by the `observe` that ended a hold early: (the policy's cost at the trip, the
        fallback's measured cost); None otherwise."""
        self.early_returns = 0
        """Holds ended early since `reset`."""

    def holding(self, now: float) -> bool:
        """True while a regression keeps the fallback serving."""
        return now < self.hold_until

    def current_hold_s(self) -> float:
        """The hold the next trip would start."""
        s = self.settings
        return float(min(s.backoff_s * 2.0**self.trips, s.max_backoff_s))

    def observe(self, snapshot: PoolSnapshot, now: float, served_by_policy: bool) -> bool:
        """Account one interval; True when the policy must step aside (the hold starts now).

        `served_by_policy`: the interval that ends at `snapshot` was routed by the policy; the
        others (the fallback served it) say nothing about the policy and only reset the CUSUM.
        """
        s = self.settings
        self.early_return = None
        if not served_by_policy:
            self.evidence, self.primary_since, self.last = 0.0, None, None
            self.fallback_until = now
            if self.holding(now) and now - snapshot.window_s >= self.tripped_at:
                self._test_the_hold(snapshot, now)
            return False
        if self.primary_since is None:
            self.primary_since = now
        elif self.trips and now - self.primary_since >= s.max_backoff_s:
            self.trips = 0  # a long clean run forgives the earlier regressions
        if now - snapshot.window_s < self.fallback_until:
            self.last = None  # the window still holds the fallback's traffic
            return False
        self.last = estimate(snapshot, s.min_answers, self.error_penalty_s)
        if self.last is None:
            return False
        step = self.last.log_ratio - math.log(s.threshold)
        self.evidence = max(0.0, self.evidence + step)
        if self.evidence < s.evidence:
            return False
        self.hold_until = now + self.current_hold_s()
        self.trips += 1
        self.evidence, self.primary_since = 0.0, None
        self.tripped_at, self.trip_cost_s = now, self.last.policy_s
        return True

    def _test_the_hold(self, snapshot: PoolSnapshot, now: float) -> None:
        """End the hold now when the fallback's traffic (the whole window is its own) cost no
        less than the policy's did at the trip: the trip's premise did not hold."""
        served = served_cost(snapshot, self.settings.min_answers, self.error_penalty_s)
        if served is not None and served >= self.trip_cost_s:
            self.hold_until = now
            self.early_return = Estimate(self.trip_cost_s, served)
            self.early_returns += 1

    def shape(self, weights: FloatArray, snapshot: PoolSnapshot) -> FloatArray:
        """The policy's `weights` (normalised over live backends) as served: spread so that no
        pair is forced more than the bound, then with the probe floor on unknown backends."""
        spread = spread_weights(weights, snapshot.live, self.settings.pair_share)
        return self.with_probes(spread, snapshot)

    def with_probes(self, weights: FloatArray, snapshot: PoolSnapshot) -> FloatArray:
        """`weights` (normalised over live backends) with the probe floor on unknown ones."""
        share = self.settings.probe_share
        live = snapshot.live
        unknown = live & ~known_backends(snapshot, self.settings.min_answers)
        if share <= 0 or not unknown.any():
            return weights
        floor = share / int(live.sum())
        probed: FloatArray = np.where(unknown, np.maximum(weights, floor), weights)
        normalised: FloatArray = probed / probed.sum()
        return normalised
