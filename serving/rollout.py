"""Following a registry alias: each new version is validated, tried on a canary, then promoted or
rolled back, by every proxy on its own.

`rl-lb serve --policy models:/rl-lb-policy@champion` reads the alias every
`policy-poll-interval` (through serving/registry.py, the proxy's one registry client; proxies
only read the registry, `rl-lb promote` moves the alias). When it points to a version this proxy
neither serves nor has rolled back:

1. **validate**: the version is loaded and its test forward pass checked exactly as a hot reload
   (`Controller.load_validated`); a refused version is never served.
2. **canary**: for `canary-duration`, each request is routed by the candidate with probability
   `canary-share`, by the current balancer otherwise (`SplitPicker`). Both decide on the same
   snapshot every control interval, so the two arms see the same pool at the same moments.
3. **verdict**: the cost of a request is the peak-EWMA latency (failures at the error penalty)
   of the backend it went to, read at the end of the interval it was sent in; an arm's cost is the
   mean over its requests. The candidate is rolled back when its cost exceeds the current arm's
   by more than `canary-tolerance` (like with like: the same backends over the same intervals,
   only the choice differs), or as soon as its own guard refuses its output (NaN, negative or
   all-zero weights, an exception, an outcome-guard regression). Otherwise it is promoted: it
   serves every request, under its own outcome guard from then on.

With fewer than `MIN_ARM_REQUESTS` requests in either arm the verdict waits, up to
`UNJUDGED_LIMIT` canary periods; an idle proxy then promotes (nothing to compare, and the
outcome guard still watches). A rolled-back version stays rolled back until the alias names
another one. Every step is logged, listed in `/admin/state` (`rollout`) and counted in
`/metrics` (`rl_lb_rollout_events_total{event}`).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from rl_lb.balancers import Balancer, Decision, GuardedBalancer
from rl_lb.errors import RlLbError
from rl_lb.types import LoadView, Picker, PoolSnapshot
from serving.config import ProxyConfig
from serving.controller import Controller, balancer_spec
from serving.registry import ModelRef, alias_version, parse_models_uri

__all__ = ["EVENTS", "Canary", "Rollout", "SplitPicker", "first_version", "followed_alias"]

log = logging.getLogger("rl_lb.serving.rollout")

EVENTS = ("canary", "promoted", "rolled-back", "refused", "abandoned", "poll-failed")
"""What a rollout counts: a canary started, its verdicts, a version that failed validation, a
canary dropped because the alias moved on, a registry read that failed."""
MIN_ARM_REQUESTS = 20
"""Requests each arm needs before a verdict compares their costs."""
UNJUDGED_LIMIT = 3
"""Canary periods a verdict may wait for traffic before an idle proxy promotes unjudged."""
EXCUSED_REASONS = frozenset({"stale"})
"""Candidate fallbacks that say nothing against the candidate (the current sees them too)."""
HISTORY = 20
"""Rollout steps `/admin/state` lists (newest last)."""


def followed_alias(config: ProxyConfig) -> ModelRef | None:
    """The registry alias this proxy follows, or None (a file, a version, or polling off)."""
    policy = config.policy
    if config.policy_poll_interval_s <= 0 or not config.balancer.startswith("learned"):
        return None
    if not policy or not policy.startswith("models:/") or "@" not in policy:
        return None
    return parse_models_uri(policy)


async def first_version(ref: ModelRef) -> int | None:
    """The version the alias names at start-up, so that the proxy serves it by number and knows
    what it serves; None (logged) when the registry cannot be read now."""
    try:
        return await asyncio.to_thread(alias_version, ref.uri)
    except RlLbError as error:
        log.warning("rollout %s: cannot read the alias at start-up: %s", ref.uri, error)
        return None


class SplitPicker:
    """Routes each request by the candidate's picker with probability `share`, else by the
    current one, and counts the picks of each arm per backend."""

    name = "canary-split"

    def __init__(
        self, current: Picker, candidate: Picker, share: float, rng: random.Random, n: int
    ) -> None:
        self.current = current
        self.candidate = candidate
        self.share = share
        self.random = rng.random
        self.picks = ([0] * n, [0] * n)
        """Requests per backend: (current arm, candidate arm)."""

    def update(self, weights: Any) -> None:
        """Nothing: each arm's picker gets its weights from its own balancer's decision."""

    def pick(self, view: LoadView) -> int:
        arm = 1 if self.random() < self.share else 0
        index = (self.candidate if arm else self.current).pick(view)
        picks = self.picks[arm]
        if index < len(picks):  # a backend added since this interval began is not counted
            picks[index] += 1
        return index


@dataclass
class ArmCost:
    """One arm's requests and their summed cost (seconds)."""

    requests: int = 0
    cost_s: float = 0.0

    @property
    def mean_s(self) -> float:
        return self.cost_s / self.requests if self.requests else math.nan


@dataclass
class Canary:
    """A candidate version on trial: its balancer, the split of the current interval, the
    accumulated cost of each arm and why its own guard refused it, if it did."""

    version: int
    balancer: Balancer
    share: float
    started: float
    rng: random.Random = field(default_factory=random.Random)
    arms: tuple[ArmCost, ArmCost] = field(default_factory=lambda: (ArmCost(), ArmCost()))
    refused: str = ""
    split: SplitPicker | None = None

    def route(self, decision: Decision, snapshot: PoolSnapshot, now: float) -> Decision:
        """`Controller.canary`: account the interval that ended at `snapshot`, then split the
        next one between `decision` (the current balancer's) and the candidate's."""
        self._account(snapshot)
        candidate = self.balancer.decide(snapshot, now)
        if candidate.mode != "primary" and candidate.reason not in EXCUSED_REASONS:
            self.refused = self.refused or candidate.reason
        self.split = SplitPicker(
            decision.picker, candidate.picker, self.share, self.rng, len(snapshot)
        )
        return decision._replace(picker=self.split)

    def _account(self, snapshot: PoolSnapshot) -> None:
        split = self.split
        if split is None or len(split.picks[0]) != len(snapshot):
            return  # nothing routed yet, or the pool changed: those picks name other backends
        cost = snapshot.ewma_s
        for arm, picks in zip(self.arms, split.picks, strict=True):
            for index, count in enumerate(picks):
                if count and math.isfinite(cost[index]):
                    arm.requests += count
                    arm.cost_s += count * float(cost[index])
        split.picks = ([0] * len(snapshot), [0] * len(snapshot))

    def verdict(self, now: float, duration_s: float, tolerance: float) -> tuple[str, str] | None:
        """("promoted" | "rolled-back", why), or None while the trial goes on."""
        if self.refused:
            return "rolled-back", f"its guard refused it ({self.refused})"
        elapsed = now - self.started
        if elapsed < duration_s:
            return None
        current, candidate = self.arms
        if min(current.requests, candidate.requests) < MIN_ARM_REQUESTS:
            if elapsed < UNJUDGED_LIMIT * duration_s:
                return None
            return "promoted", f"unjudged: {candidate.requests} canary requests"
        ratio = candidate.mean_s / max(current.mean_s, 1e-9)
        costs = f"{candidate.mean_s * 1e3:.1f} ms vs {current.mean_s * 1e3:.1f} ms"
        if ratio > tolerance:
            return "rolled-back", f"its requests cost {ratio:.2f}x the current's ({costs})"
        return "promoted", f"cost ratio {ratio:.2f} <= {tolerance:g} ({costs})"


class Rollout:
    """One proxy worker following one registry alias (`run` is its task)."""

    def __init__(
        self, config: ProxyConfig, controller: Controller, ref: ModelRef, version: int | None
    ) -> None:
        self.config = config
        self.controller = controller
        self.ref = ref
        self.version = version
        """The registry version serving now (None: unknown, the alias could not be read)."""
        self.canary: Canary | None = None
        self.rolled_back: set[int] = set()
        self.events: Counter[str] = Counter()
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY)
        self.last_poll: float | None = None
        """Wall-clock time of the last successful registry read."""
        self.poll_error = ""

    def spec(self, version: int) -> str:
        return balancer_spec("learned", ModelRef(self.ref.name, version).uri)

    def _event(self, event: str, version: int | None, detail: str, *, level: int) -> None:
        self.events[event] += 1
        self.history.append(
            {"at": time.time(), "event": event, "version": version, "detail": detail}
        )
        log.log(level, "rollout %s: version %s %s: %s", self.ref.uri, version, event, detail)

    # -- the loop ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Judge the canary every control interval and read the alias every poll interval,
        until cancelled; a failing step is logged, never fatal."""
        loop = asyncio.get_running_loop()
        next_poll = loop.time() + self.config.policy_poll_interval_s
        while True:
            await asyncio.sleep(min(self.controller.interval, self.config.policy_poll_interval_s))
            try:
                self.judge()
                if loop.time() >= next_poll:
                    next_poll = loop.time() + self.config.policy_poll_interval_s
                    await self.poll()
            except Exception:
                log.exception("rollout step failed; serving what was served")

    async def poll(self) -> None:
        """Read the alias; a version new to this proxy is validated and put on canary."""
        try:
            version = await asyncio.to_thread(alias_version, self.ref.uri)
        except RlLbError as error:
            if str(error) != self.poll_error:
                self._event("poll-failed", None, str(error), level=logging.WARNING)
            self.poll_error = str(error)
            return
        self.last_poll, self.poll_error = time.time(), ""
        canary = self.canary
        if version == self.version or version in self.rolled_back:
            if canary is not None:
                self._end_canary()
                self._event("abandoned", canary.version, "the alias moved back", level=logging.INFO)
            return
        if canary is not None:
            if canary.version == version:
                return
            self._end_canary()
            moved = f"the alias moved to {version}"
            self._event("abandoned", canary.version, moved, level=logging.INFO)
        try:
            candidate = await self.controller.load_validated(self.spec(version))
        except RlLbError as error:
            self.rolled_back.add(version)
            self._event("refused", version, str(error), level=logging.ERROR)
            return
        if not _serves_a_policy(self.controller.balancer):
            self._promote(version, candidate, "nothing to compare with: no policy is loaded")
            return
        self.canary = Canary(
            version, candidate, self.config.canary_share, self.controller.monitor.clock()
        )
        self.controller.canary = self.canary.route
        self._event(
            "canary",
            version,
            f"{self.config.canary_share:.0%} of requests for {self.config.canary_duration_s:g} s",
            level=logging.WARNING,
        )

    def judge(self) -> None:
        """Promote or roll back the canary once its verdict is in."""
        canary = self.canary
        if canary is None:
            return
        if self.controller.canary != canary.route:
            self.canary = None  # someone else ended it (an admin swap keeps its own balancer)
            return
        config = self.config
        now = self.controller.monitor.clock()
        verdict = canary.verdict(now, config.canary_duration_s, config.canary_tolerance)
        if verdict is None:
            return
        outcome, why = verdict
        self._end_canary()
        if outcome == "promoted":
            canary.balancer.reset()  # its guard judged mixed traffic: start clean
            self._promote(canary.version, canary.balancer, why)
        else:
            self.rolled_back.add(canary.version)
            self._event("rolled-back", canary.version, why, level=logging.WARNING)

    def _end_canary(self) -> None:
        self.canary = None
        self.controller.canary = None

    def _promote(self, version: int, balancer: Balancer, why: str) -> None:
        self.controller.install(balancer)
        self.version = version
        self._event("promoted", version, why, level=logging.WARNING)

    # -- what operators see -----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """`/admin/state`'s `rollout`."""
        canary = self.canary
        trial = None
        if canary is not None:
            current, candidate = canary.arms
            trial = {
                "version": canary.version,
                "share": canary.share,
                "elapsed_s": self.controller.monitor.clock() - canary.started,
                "duration_s": self.config.canary_duration_s,
                "requests": [current.requests, candidate.requests],
                "mean_cost_s": [_finite(current.mean_s), _finite(candidate.mean_s)],
            }
        return {
            "alias": self.ref.uri,
            "version": self.version,
            "canary": trial,
            "rolled_back": sorted(self.rolled_back),
            "poll_interval_s": self.config.policy_poll_interval_s,
            "last_poll": self.last_poll,
            "poll_error": self.poll_error or None,
            "events": dict(self.events),
            "history": list(self.history),
        }

    def metrics(self) -> Iterator[Metric]:
        """The rollout's families for `/metrics`."""
        events = CounterMetricFamily(
            "rl_lb_rollout_events", "Registry rollout steps, by event", labels=["event"]
        )
        for event in EVENTS:
            events.add_metric([event], self.events[event])
        yield events
        versions = GaugeMetricFamily(
            "rl_lb_rollout_version",
            "Registry version serving (current) and on canary (candidate, 0: none)",
            labels=["role"],
        )
        versions.add_metric(["current"], float(self.version or 0))
        versions.add_metric(["candidate"], float(self.canary.version if self.canary else 0))
        yield versions


def _serves_a_policy(balancer: Balancer) -> bool:
    """False for a learned balancer whose model never loaded (it serves its fallback for good)."""
    return not isinstance(balancer, GuardedBalancer) or balancer.primary is not None


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None
