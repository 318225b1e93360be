"""The control loop: once per interval, snapshot → balancer → weights for the picker.

It runs on the event loop between requests, never inside one: the request path only calls
`controller.picker.pick(view)`, and the picker is swapped here as a whole. Three sources of
weights share one rule set (the guard of `GuardedBalancer`, so that whatever cannot be trusted
goes to least-latency with a reason):

* the configured balancer (a preset, or a learned policy guarded by least-latency);
* external weights posted to the admin API (a Gymnasium env stepping a live proxy): they must
  be refreshed within two intervals, or the fallback takes over with reason "stale";
* nothing else: a balancer swap (admin API, SIGHUP) is validated before it is installed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from rl_lb.balancers import FALLBACK_PRESET, Balancer, Decision, GuardedBalancer, make_balancer
from rl_lb.control import OutcomeGuardSettings
from rl_lb.errors import ConfigError, ModelError
from rl_lb.pickers import make_picker
from rl_lb.slow_start import RAMPS_ITSELF
from rl_lb.types import FloatArray, Picker, PoolSnapshot
from serving.config import ProxyConfig
from serving.monitor import Monitor
from serving.prequal_probe import Prober

__all__ = ["EXTERNAL_WEIGHTS_LIFETIME", "Controller", "balancer_spec", "build_balancer"]

log = logging.getLogger("rl_lb.serving.controller")

VALIDATION_TIMEOUT_S = 5.0
"""Bound on loading a new policy and running its test forward pass."""
EXTERNAL_WEIGHTS_LIFETIME = 2
"""Control intervals after which posted weights are stale (the fallback takes over)."""


def balancer_spec(balancer: str, policy: str | None) -> str:
    """The `make_balancer` name for a balancer flag and an optional model path or URI."""
    return f"learned:{policy}" if policy and balancer == "learned" else balancer


def build_balancer(
    spec: str,
    max_staleness_s: float,
    *,
    strict: bool,
    outcome_guard: OutcomeGuardSettings | None = None,
) -> Balancer:
    """`strict`: a model that cannot load is an error (a swap), else a fallback (start-up).
    `outcome_guard`: the proxy's guard settings (None: the defaults)."""
    return make_balancer(
        spec,
        max_staleness_s=max_staleness_s,
        on_load_error="raise" if strict else "fallback",
        outcome_guard=outcome_guard or True,
    )


class _Fixed:
    """A policy that returns the weights last posted to the admin API."""

    name = "external"

    def __init__(self, weights: FloatArray) -> None:
        self.values = weights

    def weights(self, snapshot: PoolSnapshot) -> FloatArray:
        return self.values

    def reset(self) -> None:
        """Nothing to forget: the poster owns the state."""


class _External:
    """External weights and the two guarded balancers that serve them (fresh, or stale)."""

    def __init__(self, weights: FloatArray, now: float) -> None:
        self.fixed = _Fixed(weights)
        self.set_at = now
        fallback = make_balancer(FALLBACK_PRESET)
        primary = Balancer("external", self.fixed, make_picker("p2c"))
        self.fresh = GuardedBalancer(primary, fallback, name="external")
        self.stale = GuardedBalancer(None, fallback, missing_reason="stale", name="external")


class Controller:
    """Decides the weights every `control_interval_s`; the picker for requests is `picker`."""

    def __init__(self, config: ProxyConfig, monitor: Monitor, balancer: Balancer) -> None:
        self.config = config
        self.monitor = monitor
        self.balancer = balancer
        self.interval = config.control_interval_s
        self.delay = config.metrics_delay_s
        self.picker: Picker = balancer.picker
        self.prober = Prober(config, monitor)
        """Sends the probes of a `prequal` picker (serving/prequal_probe.py)."""
        self.prober.attach(balancer)
        self.mode = "fallback"
        self.reason = ""
        self.decisions = 0
        self.switches = 0
        self.fallback_counts: Counter[str] = Counter()
        self.switch_counts: Counter[str] = Counter()
        """Mode changes by what they changed to: a fallback reason, or "primary" for a return."""
        self.canary: Callable[[Decision, PoolSnapshot, float], Decision] | None = None
        """A rollout's split of the requests between the current policy and a candidate
        (serving/rollout.py), applied to every decision while set."""
        self.inference_s = math.nan
        """Duration of the last decision (policy forward pass included)."""
        self.on_inference: Callable[[float], None] = lambda seconds: None
        """Hook for the exported histogram of decision times."""
        self.external: _External | None = None
        self.snapshot: PoolSnapshot | None = None
        """The snapshot of the last decision (delayed by `metrics_delay_s`)."""
        self.weights: dict[str, float] = {}
        """Weight per backend URL, as decided for the current interval."""
        self._taken: deque[PoolSnapshot] = deque()
        self._lock = asyncio.Lock()

    # -- deciding ---------------------------------------------------------------------------

    def current_snapshot(self) -> PoolSnapshot:
        """The pool now, with the weights applied since the last decision."""
        names = self.monitor.metrics.names
        weights = np.array([self.weights.get(n, 0.0) for n in names], dtype=np.float64)
        return self.monitor.metrics.snapshot(weights)

    def _delayed(self, fresh: PoolSnapshot) -> PoolSnapshot:
        """The newest snapshot at least `delay` old (the oldest kept one until there is one)."""
        if self.delay <= 0:
            return fresh
        taken = self._taken
        if taken and len(taken[0]) != len(fresh):
            taken.clear()  # the pool changed: older figures describe another pool
        taken.append(fresh)
        cutoff = fresh.taken_at - self.delay
        while len(taken) > 1 and taken[1].taken_at <= cutoff:
            taken.popleft()
        return taken[0]

    def decide(self) -> Decision:
        """One control step (also run at once when the pool changes)."""
        self.monitor.tick()
        now = self.monitor.clock()
        snapshot = self._delayed(self.current_snapshot())
        started = time.perf_counter()
        decision = self._source(now).decide(snapshot, now)
        elapsed = time.perf_counter() - started
        self.inference_s = elapsed
        self.on_inference(elapsed)
        ramped = decision.weights
        if decision.picker.name not in RAMPS_ITSELF:
            ramped = self.monitor.slow_start.scale(decision.weights, now)
        if ramped is not decision.weights:  # some backend is in slow start (rl_lb.slow_start)
            decision.picker.update(ramped)
            decision = decision._replace(weights=ramped)
        if decision.mode == "primary" and self.external is not None:
            decision = decision._replace(mode="external")
        elif self.canary is not None and self.external is None:
            decision = self.canary(decision, snapshot, now)
        if decision.mode == "fallback":
            self.fallback_counts[decision.reason] += 1
        if (decision.mode, decision.reason) != (self.mode, self.reason) and self.decisions:
            self.switches += 1
            self.switch_counts[decision.reason or decision.mode] += 1
            log.warning(
                "balancer mode %s%s (was %s%s)%s",
                decision.mode,
                f" ({decision.reason})" if decision.reason else "",
                self.mode,
                f" ({self.reason})" if self.reason else "",
                self._guard_note(now) if "regression" in (decision.reason, self.reason) else "",
            )
        self.mode, self.reason = decision.mode, decision.reason
        self.picker = decision.picker
        self.weights = dict(zip(snapshot.names, decision.weights.tolist(), strict=True))
        self.snapshot = snapshot
        self.decisions += 1
        recorder = self.monitor.recorder
        if recorder is not None:  # rl-lb serve --record: this decision, then the interval's rows
            recorder.decided(
                snapshot, decision.weights, decision.mode, decision.reason, self.balancer.name
            )
        return decision

    def guard_state(self) -> dict[str, Any] | None:
        """The outcome guard of the configured balancer, for operators: its CUSUM statistic
        against its limit, the last interval's estimates, and when a regression hold ends
        (None: the balancer has no outcome guard, as the presets)."""
        guarded = self.balancer
        guard = guarded.outcome_guard if isinstance(guarded, GuardedBalancer) else None
        if guard is None:
            return None
        now = self.monitor.clock()
        last = guard.last
        holding = guard.holding(now)
        return {
            "evidence": guard.evidence,
            "evidence_limit": guard.settings.evidence,
            "threshold": guard.settings.threshold,
            "log_ratio": None if last is None else last.log_ratio,
            "policy_cost_s": None if last is None else last.policy_s,
            "fallback_cost_s": None if last is None else last.fallback_s,
            "holding": holding,
            "returns_in_s": guard.hold_until - now if holding else None,
            "trips_in_a_row": guard.trips,
            "holds_ended_early": guard.early_returns,
            "next_hold_s": guard.current_hold_s(),
        }

    def _guard_note(self, now: float) -> str:
        """What the outcome guard saw, for the log line of a switch into or out of regression."""
        state = self.guard_state()
        if state is None:
            return ""
        ratio = state["log_ratio"]
        seen = "no estimate" if ratio is None else f"policy/fallback cost {math.exp(ratio):.2f}x"
        if state["holding"]:
            return f": {seen}, back to the policy in {state['returns_in_s']:.3g} s"
        return f": {seen}, next hold {state['next_hold_s']:.3g} s"

    def _source(self, now: float) -> Balancer:
        external = self.external
        if external is None:
            return self.balancer
        if now - external.set_at > EXTERNAL_WEIGHTS_LIFETIME * self.interval:
            return external.stale
        return external.fresh

    async def run(self) -> None:
        """Decide every interval until cancelled; a failing step is logged, never fatal."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.interval
            await asyncio.sleep(max(next_at - loop.time(), 0.0))
            try:
                self.decide()
            except Exception:
                log.exception("control step failed; keeping the previous weights")
            if loop.time() > next_at + self.interval:
                next_at = loop.time()  # fell behind (a stalled loop): do not burst

    # -- changes from the admin API and SIGHUP ----------------------------------------------

    def set_external(self, weights: Sequence[float]) -> Decision:
        """Serve posted weights; refused (ConfigError) when the guard would not trust them."""
        try:
            array = np.asarray(weights, dtype=np.float64)
        except (TypeError, ValueError):
            raise ConfigError("weights", "not a list of numbers") from None
        if array.ndim != 1:
            raise ConfigError("weights", "not a flat list of numbers")
        now = self.monitor.clock()
        candidate = _External(array, now)
        check = candidate.fresh.decide(self.current_snapshot(), now)
        if check.mode != "primary":
            raise ConfigError("weights", f"refused ({check.reason})", "same rules as a policy")
        if self.external is None:
            log.info("external weights mode")
            self.external = candidate
        else:
            self.external.fixed.values = array
            self.external.set_at = now
        return self.decide()

    def clear_external(self) -> Decision:
        if self.external is not None:
            log.info("external weights mode off")
        self.external = None
        return self.decide()

    async def swap_balancer(self, spec: str) -> Balancer:
        """Load and validate a balancer (bounded time) and install it; the old one stays on error.

        Raises `ModelError` or `ConfigError` with the reason when the new one is refused.
        """
        async with self._lock:
            candidate = await self.load_validated(spec)
            self.install(candidate)
            return candidate

    async def load_validated(self, spec: str) -> Balancer:
        """A new balancer, loaded and validated as a swap does (bounded time), not installed."""
        snapshot = self.current_snapshot()
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._validated, spec, snapshot), VALIDATION_TIMEOUT_S
            )
        except TimeoutError:
            raise ModelError(
                spec, f"validation took over {VALIDATION_TIMEOUT_S:g} s", "use a smaller model"
            ) from None

    def install(self, balancer: Balancer) -> None:
        """Serve a validated balancer from the next decision on (which is taken now)."""
        old, self.balancer = self.balancer, balancer
        self.prober.attach(balancer)
        log.warning("balancer %s replaced by %s", old.name, balancer.name)
        self.decide()

    def _validated(self, spec: str, snapshot: PoolSnapshot) -> Balancer:
        """A new balancer whose test forward pass on the current snapshot is trusted."""
        config = self.config
        candidate = build_balancer(
            spec, config.max_staleness_s, strict=True, outcome_guard=config.control.outcome_guard
        )
        decision = candidate.decide(snapshot, snapshot.taken_at)
        if decision.mode != "primary":
            raise ModelError(spec, f"its output on the current pool is refused ({decision.reason})")
        candidate.reset()
        return candidate
