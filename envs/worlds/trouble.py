"""The trouble a generated world meets: which kind, on which backends, when.

Trouble lands on any subset of the pool, the fastest tier included (it is chosen on purpose
often: a policy that trusts the fastest backends for good must meet worlds where they turn slow).
Hitting part of a group splits it, since every backend of a scenario group shares its events.
A trouble that would leave less than `MIN_CAPACITY_LEFT` of the pool's usable capacity at its
worst moment is undone: the traffic is then sized against what is left, and a world where
nothing is left separates no balancers.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import numpy as np

from envs.worlds.pool import EventDraft, GroupDraft, PoolDraft, sig

__all__ = [
    "MAX_FAILING_SHARE",
    "MIN_CAPACITY_LEFT",
    "TROUBLE_COUNTS",
    "TROUBLE_KINDS",
    "draw_trouble",
]

TROUBLE_KINDS = (
    "slowdown",
    "temporary-slowdown",
    "speed-up",
    "swap",
    "rolling",
    "fast-failure",
    "down-up",
    "gc-pauses",
)
TROUBLE_COUNTS = (0.1, 0.4, 0.3, 0.2)
"""Probability of 0, 1, 2 and 3 troubles in one world."""
MIN_CAPACITY_LEFT = 0.3
"""Share of its usable capacity without trouble (`PoolDraft.worst_capacity_rps`) that the pool
keeps at the worst moment of its trouble."""
MAX_FAILING_SHARE = 0.25
"""At most this share of the pool (or one backend) fails at once. Errors count as timeouts in
the effective p99, and a power-of-two-choices draw lands on two failing backends with
probability ~share²: with more failing, every heuristic's tail would be the timeout."""
FASTEST_SHARE = 0.4
"""How often a trouble aims at the fastest tier rather than a tier drawn uniformly."""
SLOWDOWN = (2.0, 12.0)
SPEED_UP = (1.5, 4.0)
ATTEMPTS = 3
"""Kinds tried for one trouble before giving up (a kind may not fit the pool, or take too much)."""


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(rng.uniform(math.log(low), math.log(high)))


def _window(rng: np.random.Generator, duration: float, persistent: bool) -> tuple[float, float]:
    """(at_s, until_s): for good from 10-60% of the episode, or 5-30% of it from 5-70%."""
    if persistent:
        return round(rng.uniform(0.1, 0.6) * duration, 1), duration
    at = round(rng.uniform(0.05, 0.7) * duration, 1)
    return at, min(duration, round(at + rng.uniform(0.05, 0.3) * duration, 1))


def _when(at: float, until: float, duration: float) -> str:
    return f"from {at:g} s for good" if until >= duration else f"{at:g}-{until:g} s"


def _tier_label(pool: PoolDraft, tier: int) -> str:
    if pool.tiers == 1:
        return "the pool"
    return "the fastest tier" if tier == 0 else f"tier {tier} of {pool.tiers}"


def _target(
    rng: np.random.Generator, pool: PoolDraft, free: Callable[[GroupDraft], bool]
) -> GroupDraft | None:
    """Some backends of one tier (the fastest, often) that `free` accepts, split off."""
    tier = 0 if rng.random() < FASTEST_SHARE else int(rng.integers(pool.tiers))
    candidates = [g for g in pool.groups if g.tier == tier and free(g)]
    if not candidates:
        candidates = [g for g in pool.groups if free(g)]
    if not candidates:
        return None
    group = candidates[int(rng.integers(len(candidates)))]
    hit = group.count if rng.random() < 0.3 else int(rng.integers(1, group.count + 1))
    return pool.split(group, hit)


def _no_events(group: GroupDraft) -> bool:
    return not group.events


def _hit(pool: PoolDraft, group: GroupDraft, event: EventDraft, what: str) -> str:
    group.events.append(event)
    when = _when(event.at_s, event.until_s, pool.duration_s)
    group.notes.append(f"{what}, {when}")
    return f"{what} on {group.count} backend(s) of {_tier_label(pool, group.tier)}, {when}"


def _slowdown(rng: np.random.Generator, pool: PoolDraft, persistent: bool) -> str | None:
    group = _target(rng, pool, _no_events)
    if group is None:
        return None
    at, until = _window(rng, pool.duration_s, persistent)
    factor = sig(_log_uniform(rng, *SLOWDOWN), 3)
    if rng.random() < 0.3:
        event = EventDraft(at, until, slowdown=1.0, slowdown_to=factor)
        return _hit(pool, group, event, f"slowdown ramping 1x to {factor:g}x")
    return _hit(pool, group, EventDraft(at, until, slowdown=factor), f"slowdown {factor:g}x")


def _speed_up(rng: np.random.Generator, pool: PoolDraft) -> str | None:
    group = _target(rng, pool, _no_events)
    if group is None:
        return None
    at, until = _window(rng, pool.duration_s, persistent=rng.random() < 0.5)
    factor = sig(1.0 / _log_uniform(rng, *SPEED_UP), 3)
    return _hit(pool, group, EventDraft(at, until, slowdown=factor), f"speed-up to {factor:g}x")


def _swap(rng: np.random.Generator, pool: PoolDraft) -> str | None:
    """Two groups of different speeds exchange service times (for good, or for a while)."""
    first = _target(rng, pool, _no_events)
    if first is None:
        return None
    others = [g for g in pool.groups if not g.events and g.mean_s != first.mean_s]
    if not others:
        return None
    second = others[int(rng.integers(len(others)))]
    second = pool.split(second, int(rng.integers(1, second.count + 1)))
    at, until = _window(rng, pool.duration_s, persistent=rng.random() < 0.6)
    ratio = sig(second.mean_s / first.mean_s, 4)
    back = sig(first.mean_s / second.mean_s, 4)
    one = _hit(pool, first, EventDraft(at, until, slowdown=ratio), f"service time {ratio:g}x")
    two = _hit(pool, second, EventDraft(at, until, slowdown=back), f"service time {back:g}x")
    return f"{one}; {two}"


def _rolling(rng: np.random.Generator, pool: PoolDraft) -> str | None:
    """The same trouble moves across 2-4 groups in turn, one window each."""
    wanted = int(rng.integers(2, 5))
    while True:
        free = [g for g in pool.groups if not g.events]
        splittable = [g for g in free if g.count >= 2]
        if len(free) >= wanted or not splittable:
            break
        biggest = max(splittable, key=lambda g: g.count)
        pool.split(biggest, biggest.count // 2)
    free = [g for g in pool.groups if not g.events]
    if len(free) < 2:
        return None
    order = rng.permutation(len(free))[: min(wanted, len(free))]
    width = round(rng.uniform(0.07, 0.17) * pool.duration_s, 1)
    start = round(rng.uniform(0.04, 1.0) * (pool.duration_s - len(order) * width), 1)
    failing = rng.random() < 0.3
    factor = sig(_log_uniform(rng, *SLOWDOWN), 3)
    rate = sig(rng.uniform(0.3, 0.9), 2)
    what = f"rolling errors {rate:.0%}" if failing else f"rolling slowdown {factor:g}x"
    parts = []
    for i, k in enumerate(order):
        at, until = start + i * width, start + (i + 1) * width
        event = (
            EventDraft(round(at, 1), round(until, 1), error_rate=rate)
            if failing
            else EventDraft(round(at, 1), round(until, 1), slowdown=factor)
        )
        parts.append(_hit(pool, free[int(k)], event, f"{what} (turn {i + 1} of {len(order)})"))
    return "; ".join(parts)


def _fast_failure(rng: np.random.Generator, pool: PoolDraft) -> str | None:
    group = _target(rng, pool, _no_events)
    if group is None:
        return None
    at, until = _window(rng, pool.duration_s, persistent=rng.random() < 0.4)
    rate = sig(rng.uniform(0.2, 1.0), 2)
    latency = sig(rng.uniform(0.001, 0.005), 2)
    event = EventDraft(at, until, error_rate=rate, error_latency_s=latency)
    return _hit(pool, group, event, f"fast failures {rate:.0%} in {latency * 1e3:g} ms")


def _down_up(rng: np.random.Generator, pool: PoolDraft) -> str | None:
    """Refuses connections for 5-40 s, then is back; sometimes twice (flapping)."""
    group = _target(rng, pool, _no_events)
    if group is None:
        return None
    duration = pool.duration_s
    at = round(rng.uniform(0.05, 0.5) * duration, 1)
    until = min(duration, round(at + rng.uniform(5, 40), 1))
    text = _hit(pool, group, EventDraft(at, until, down=True), "down")
    again = round(until + rng.uniform(5, 20), 1)
    if rng.random() < 0.3 and again + 5 < duration:
        back = min(duration, round(again + rng.uniform(5, 20), 1))
        text += "; " + _hit(pool, group, EventDraft(again, back, down=True), "down again")
    return text


def _gc_pauses(rng: np.random.Generator, pool: PoolDraft) -> str | None:
    group = _target(rng, pool, lambda g: g.pauses is None)
    if group is None:
        return None
    every = sig(rng.uniform(2.0, 10.0), 2)
    length = sig(rng.uniform(0.05, 0.4), 2)
    group.pauses = (every, length)
    what = f"GC-like pauses of {length * 1e3:g} ms every ~{every:g} s"
    group.notes.append(what)
    return f"{what} on {group.count} backend(s) of {_tier_label(pool, group.tier)}"


_KINDS: dict[str, Callable[[np.random.Generator, PoolDraft], str | None]] = {
    "slowdown": lambda rng, pool: _slowdown(rng, pool, persistent=True),
    "temporary-slowdown": lambda rng, pool: _slowdown(rng, pool, persistent=False),
    "speed-up": _speed_up,
    "swap": _swap,
    "rolling": _rolling,
    "fast-failure": _fast_failure,
    "down-up": _down_up,
    "gc-pauses": _gc_pauses,
}
assert tuple(_KINDS) == TROUBLE_KINDS


def draw_trouble(rng: np.random.Generator, pool: PoolDraft) -> list[tuple[str, str]]:
    """Add 0-3 troubles to `pool` in place; returns (kind, what happened) for each."""
    wanted = int(rng.choice(len(TROUBLE_COUNTS), p=TROUBLE_COUNTS))
    drawn: list[tuple[str, str]] = []
    calm = pool.worst_capacity_rps()  # usable capacity with no trouble: slow tiers may not count
    for _ in range(wanted):
        for _ in range(ATTEMPTS):
            kind = TROUBLE_KINDS[int(rng.integers(len(TROUBLE_KINDS)))]
            before = copy.deepcopy(pool.groups)
            text = _KINDS[kind](rng, pool)
            if (
                text is not None
                and pool.worst_capacity_rps() >= MIN_CAPACITY_LEFT * calm
                and pool.most_failing() <= max(1, int(MAX_FAILING_SHARE * pool.size))
            ):
                drawn.append((kind, text))
                break
            pool.groups = before
    return drawn
