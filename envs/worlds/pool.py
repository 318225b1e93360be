"""A generated world's pool while it is being drawn: groups of identical backends, their trouble
windows, and the capacity left at the worst moment of that trouble.

Groups are mutable drafts because trouble is drawn after the pool: hitting part of a group
splits it in two (the scenario schema gives every backend of a group the same events), and a
trouble that would leave too little of the pool is undone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from rl_lb.scenarios import MAX_BACKENDS

__all__ = [
    "CAPACITY_BUDGET_RPS",
    "CONCURRENCIES",
    "MAX_POOL",
    "MIX_KINDS",
    "POOL_LIMIT",
    "EventDraft",
    "GroupDraft",
    "PoolDraft",
    "draw_pool",
    "sig",
]

POOL_LIMIT = 300
"""The largest pool the generator aims for ("hundreds" of backends)."""
MAX_POOL = min(POOL_LIMIT, MAX_BACKENDS)
"""The largest pool actually drawn: the scenario schema's limit while it is below POOL_LIMIT, so
the generator follows automatically when the schema accepts larger pools."""
MIX_KINDS = ("equal", "two-tiers", "three-tiers", "long-tailed")
CONCURRENCIES = (1, 2, 4, 8)
CAPACITY_BUDGET_RPS = 2500.0
"""A pool's nominal capacity is scaled down to at most this (slower service times), so a world of
hundreds of backends simulates as fast as the library's and can still be run live."""
FASTEST_SERVICE_S = (0.005, 0.05)
"""The fastest tier's mean service time is drawn log-uniformly in this range (seconds)."""
TIMEOUT_OVER_SERVICE = 40.0
"""The client timeout is this many fastest mean service times, at least 1 s (library: 1 s over
20-25 ms)."""
MAX_TIER_SLOWNESS = 20.0
"""A long-tailed pool's slowest tier is at most this many times slower than its fastest."""
USABLE_SERVICE = 0.1
"""A backend whose mean service time exceeds this share of the timeout counts as no capacity."""
DISTS = ("exponential", "lognormal", "pareto", "constant")
DIST_WEIGHTS = (0.3, 0.4, 0.2, 0.1)


def sig(x: float, digits: int = 4) -> float:
    """`x` rounded to `digits` significant digits: the value the file shows is the value used."""
    return float(f"{x:.{digits}g}")


@dataclass
class EventDraft:
    """One trouble window of a group (the schema's `events` entry)."""

    at_s: float
    until_s: float
    slowdown: float = 1.0
    slowdown_to: float | None = None
    error_rate: float = 0.0
    error_latency_s: float = 0.001
    down: bool = False

    @property
    def worst_slowdown(self) -> float:
        return max(self.slowdown, self.slowdown_to or self.slowdown)

    @property
    def failing(self) -> bool:
        """Down or answering errors: a balancer serves the world by avoiding these backends."""
        return self.down or self.error_rate > 0


@dataclass
class GroupDraft:
    """A group of identical backends (one `[[backends]]` table)."""

    name: str
    tier: int
    """0 is the fastest tier."""
    count: int
    concurrency: int
    mean_s: float
    events: list[EventDraft] = field(default_factory=list)
    pauses: tuple[float, float] | None = None
    """(every_s, duration_s) of GC-like stalls."""
    notes: list[str] = field(default_factory=list)
    """What hit this group, for the file's comment."""

    @property
    def capacity_rps(self) -> float:
        return self.count * self.concurrency / self.mean_s

    def capacity_at(self, t: float, timeout_s: float) -> float:
        """Usable capacity (requests/s) at the worst moment of whatever window covers `t`.

        What a balancer can rely on: nothing from a failing backend (down, or answering errors,
        which count as timeouts in the effective p99), nothing from one whose service time is
        above `USABLE_SERVICE` of the timeout (its queue alone would time requests out), and
        a paused backend by the share of time it runs.
        """
        slowdown = 1.0
        for event in self.events:
            if event.at_s <= t < event.until_s:
                if event.failing:
                    return 0.0
                slowdown = event.worst_slowdown
        if self.mean_s * slowdown > USABLE_SERVICE * timeout_s:
            return 0.0
        factor = 1.0 / slowdown
        if self.pauses is not None:
            every, length = self.pauses
            factor *= 1.0 - length / every
        return self.capacity_rps * factor


@dataclass
class PoolDraft:
    mix: str
    groups: list[GroupDraft]
    dist: str
    cv: float
    shape: float
    timeout_s: float
    duration_s: float

    @property
    def size(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def capacity_rps(self) -> float:
        return sum(g.capacity_rps for g in self.groups)

    @property
    def tiers(self) -> int:
        return 1 + max(g.tier for g in self.groups)

    def worst_capacity_rps(self) -> float:
        """The pool's capacity at the worst moment of its trouble (checked at every window's
        start, where capacity changes)."""
        moments = {0.0} | {e.at_s for g in self.groups for e in g.events}
        moments |= {e.until_s for g in self.groups for e in g.events if e.until_s < self.duration_s}
        return min(sum(g.capacity_at(t, self.timeout_s) for g in self.groups) for t in moments)

    def most_failing(self) -> int:
        """The most backends failing (down or answering errors) at any one moment."""
        moments = {e.at_s for g in self.groups for e in g.events}
        return max(
            (
                sum(
                    g.count
                    for g in self.groups
                    if any(e.failing and e.at_s <= t < e.until_s for e in g.events)
                )
                for t in moments
            ),
            default=0,
        )

    def name_for(self, tier: int) -> str:
        """A fresh group name in `tier`: t0a, t0b, … (never `b<digits>`, never `x-<digits>`)."""
        taken = sum(g.tier == tier for g in self.groups)
        letters = ""
        n = taken
        while True:
            letters = chr(ord("a") + n % 26) + letters
            n = n // 26 - 1
            if n < 0:
                return f"t{tier}{letters}"

    def split(self, group: GroupDraft, hit: int) -> GroupDraft:
        """The group of `hit` of `group`'s backends, split off when that is not all of them."""
        if hit >= group.count:
            return group
        part = GroupDraft(
            self.name_for(group.tier), group.tier, hit, group.concurrency, group.mean_s
        )
        part.pauses = group.pauses
        part.events = [EventDraft(**vars(e)) for e in group.events]
        part.notes = list(group.notes)
        group.count -= hit
        self.groups.insert(self.groups.index(group) + 1, part)
        return part


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _pool_size(rng: np.random.Generator) -> int:
    """Log-uniform on 2..MAX_POOL: small pools as common as large ones on a log scale."""
    return min(MAX_POOL, max(2, round(_log_uniform(rng, 2, MAX_POOL + 0.5))))


def _tier_slowness(rng: np.random.Generator, mix: str, size: int) -> list[float]:
    """Service-time multiplier of each tier over the fastest (1.0 first, increasing)."""
    if mix == "equal":
        return [1.0]
    if mix == "two-tiers":
        return [1.0, sig(_log_uniform(rng, 2, 10), 3)]
    if mix == "three-tiers":
        middle = _log_uniform(rng, 1.5, 4)
        return [1.0, sig(middle, 3), sig(middle * _log_uniform(rng, 1.5, 4), 3)]
    # long-tailed: Pareto capacities, a few backends far faster than most
    tiers = int(rng.integers(4, 9))
    capacity = np.sort(1.0 + rng.pareto(1.2, size=tiers))[::-1]
    return sorted({sig(min(MAX_TIER_SLOWNESS, float(capacity[0] / c)), 3) for c in capacity})


def _split_counts(rng: np.random.Generator, size: int, tiers: int, long_tailed: bool) -> list[int]:
    """Backends per tier, each at least one; long-tailed pools have few fast and many slow."""
    weights = np.arange(1, tiers + 1, dtype=np.float64) if long_tailed else np.ones(tiers)
    extra = rng.multinomial(size - tiers, weights / weights.sum())
    return [1 + int(e) for e in extra]


def _nominal(
    counts: list[int], concurrency: list[int], slowness: list[float], fastest: float
) -> float:
    return sum(n * c / (fastest * s) for n, c, s in zip(counts, concurrency, slowness, strict=True))


def draw_pool(rng: np.random.Generator, duration_s: float) -> PoolDraft:
    """Pool size, capacity mix, service distribution and timeout; no trouble yet."""
    size = _pool_size(rng)
    mix = str(rng.choice(MIX_KINDS))
    slowness = _tier_slowness(rng, mix, size)[:size]
    counts = _split_counts(rng, size, len(slowness), mix == "long-tailed")
    fastest = _log_uniform(rng, *FASTEST_SERVICE_S)
    same_concurrency = rng.random() < 0.7
    shared = int(rng.choice(CONCURRENCIES))
    concurrency = [shared if same_concurrency else int(rng.choice(CONCURRENCIES)) for _ in slowness]
    # Over the budget (large pools), fewer servers per backend first, then slower service.
    while (
        _nominal(counts, concurrency, slowness, fastest) > CAPACITY_BUDGET_RPS
        and max(concurrency) > 1
    ):
        concurrency = [max(1, c // 2) for c in concurrency]
    fastest *= max(1.0, _nominal(counts, concurrency, slowness, fastest) / CAPACITY_BUDGET_RPS)
    dist = str(rng.choice(DISTS, p=DIST_WEIGHTS))
    cv = sig(rng.uniform(0.5, 2.0), 2)
    shape = sig(rng.uniform(1.5, 3.0), 2)
    timeout = float(max(1.0, math.ceil(TIMEOUT_OVER_SERVICE * fastest)))
    pool = PoolDraft(mix, [], dist, cv, shape, timeout, duration_s)
    for tier, (n, c, s) in enumerate(zip(counts, concurrency, slowness, strict=True)):
        pool.groups.append(GroupDraft(pool.name_for(tier), tier, n, c, sig(fastest * s)))
    return pool
