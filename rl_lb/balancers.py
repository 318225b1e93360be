"""A balancer is a weight policy plus a picker; named presets are the baselines.

`GuardedBalancer` is how a learned policy is served: its output is checked every interval and the
least-latency preset takes over, with the reason recorded, whenever it cannot be trusted — and,
with an `OutcomeGuard`, whenever its outcomes are measurably worse than the fallback's would be.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from typing import NamedTuple

import numpy as np

from rl_lb.control import OutcomeGuardSettings
from rl_lb.errors import ConfigError, ModelError
from rl_lb.outcome_guard import OutcomeGuard
from rl_lb.pickers import PICKER_NAMES, make_picker
from rl_lb.policies import make_policy
from rl_lb.policies.learned import DEFAULT_PICKER
from rl_lb.types import FloatArray, LoadView, Picker, PoolSnapshot, WeightPolicy

__all__ = [
    "BALANCER_NAMES",
    "FALLBACK_REASONS",
    "PRESETS",
    "UNGUARDED_SUFFIX",
    "Balancer",
    "Decision",
    "GuardedBalancer",
    "make_balancer",
]

log = logging.getLogger("rl_lb.balancer")

PRESETS: dict[str, tuple[str, str | None]] = {
    "round-robin": ("uniform", "round-robin"),
    "random": ("uniform", "random"),
    "least-request": ("uniform", "p2c"),
    "least-latency": ("uniform", "p2c-latency"),
    "inverse-latency": ("inverse-latency", "random"),
    "capacity": ("capacity", "p2c"),
    "jsq": ("uniform", "jsq"),
    "prequal": ("uniform", "prequal"),
    "learned": ("learned", None),
}
"""Preset → (weight policy, picker); None: the picker the learned policy was trained with."""
BALANCER_NAMES: tuple[str, ...] = tuple(PRESETS)
FALLBACK_PRESET = "least-latency"
UNGUARDED_SUFFIX = "~no-outcome-guard"
"""`learned~no-outcome-guard`: the learned policy with its output guard only (guard-off figures)."""
FALLBACK_REASONS: tuple[str, ...] = (
    "missing",
    "load-failed",
    "exception",
    "shape",
    "nan",
    "negative",
    "all-zero",
    "stale",
    "regression",
)
"""Why a guarded balancer is on its fallback; the proxy exports a counter for each."""


class Decision(NamedTuple):
    """What one control interval decided."""

    weights: FloatArray
    picker: Picker
    mode: str
    """"primary" or "fallback"."""
    reason: str
    """"" in primary mode, else one of `FALLBACK_REASONS`."""


class Balancer:
    """A weight policy and a picker under one name."""

    def __init__(self, name: str, policy: WeightPolicy, picker: Picker) -> None:
        self.name = name
        self.policy = policy
        self.picker = picker
        self._active = picker

    def decide(self, snapshot: PoolSnapshot, now: float) -> Decision:
        """Weights for the next interval, installed in the picker (off the request path)."""
        weights = self.policy.weights(snapshot)
        self.picker.update(weights)
        self._active = self.picker
        return Decision(weights, self.picker, "primary", "")

    def pick(self, view: LoadView) -> int:
        """One backend for one request, with the picker of the last decision."""
        return self._active.pick(view)

    def reset(self) -> None:
        self.policy.reset()
        self._active = self.picker


class GuardedBalancer(Balancer):
    """Serves `primary` while its output can be trusted, else `fallback` (least-latency).

    Checked every interval: the policy raised, returned the wrong shape, NaN, negative or
    all-zero weights, or the snapshot is older than `max_staleness_s`. It returns to the
    primary as soon as the cause is gone. A missing primary (no model, or one that failed to
    load) keeps it on the fallback for good, with that reason.

    With an `outcome_guard` (make_balancer gives every learned policy one) it also watches what
    the primary's traffic got: a regression holds the fallback for a backoff (reason
    "regression"), its weights are spread so that no two backends are forced much traffic, and
    backends it knows too little of get a probe weight floor.
    """

    def __init__(
        self,
        primary: Balancer | None,
        fallback: Balancer | None = None,
        *,
        max_staleness_s: float | None = None,
        missing_reason: str = "missing",
        name: str | None = None,
        outcome_guard: OutcomeGuard | None = None,
    ) -> None:
        self.primary = primary
        self.fallback = fallback or make_balancer(FALLBACK_PRESET)
        chosen = primary or self.fallback
        super().__init__(name or chosen.name, chosen.policy, chosen.picker)
        self.max_staleness_s = max_staleness_s
        self.missing_reason = missing_reason
        self.mode = "primary" if primary else "fallback"
        self.reason = "" if primary else missing_reason
        self.fallback_counts: Counter[str] = Counter()
        self.switches = 0
        self.outcome_guard = outcome_guard

    def decide(self, snapshot: PoolSnapshot, now: float) -> Decision:
        weights, reason = self._primary_weights(snapshot, now)
        guard = self.outcome_guard
        if guard is not None:
            if guard.observe(snapshot, now, served_by_policy=self.mode == "primary"):
                last = guard.last
                assert last is not None, "observe() switched on an interval it compared"
                # INFO: the proxy's controller warns once per mode change for operators; as a
                # WARNING this printed every switch of every candidate in training's evaluations.
                log.info(
                    "balancer %s: policy regression: its traffic cost %.1f ms where %s's "
                    "would cost %.1f ms (%.2fx); %s for %g s",
                    self.name,
                    1000 * last.policy_s,
                    self.fallback.name,
                    1000 * last.fallback_s,
                    last.policy_s / last.fallback_s,
                    self.fallback.name,
                    guard.hold_until - now,
                )
            elif guard.early_return is not None:
                log.info(
                    "balancer %s: %s's traffic cost %.1f ms, no less than the policy's %.1f ms "
                    "at its regression: the policy serves again",
                    self.name,
                    self.fallback.name,
                    1000 * guard.early_return.fallback_s,
                    1000 * guard.early_return.policy_s,
                )
            if not reason and guard.holding(now):
                reason = "regression"
            elif not reason and weights is not None and snapshot.live.any():
                weights = guard.shape(weights, snapshot)
        if reason:
            decision = self.fallback.decide(snapshot, now)
            decision = decision._replace(mode="fallback", reason=reason)
            self.fallback_counts[reason] += 1
        else:
            assert self.primary is not None
            assert weights is not None
            self.primary.picker.update(weights)
            decision = Decision(weights, self.primary.picker, "primary", "")
        if decision.mode != self.mode or decision.reason != self.reason:
            self._log_change(decision)
        self.mode, self.reason = decision.mode, decision.reason
        self._active = decision.picker
        return decision

    def _primary_weights(self, snapshot: PoolSnapshot, now: float) -> tuple[FloatArray | None, str]:
        """The primary's weights, or why they cannot be used."""
        if self.primary is None:
            return None, self.missing_reason
        if self.max_staleness_s is not None and snapshot.age(now) > self.max_staleness_s:
            return None, "stale"
        try:
            raw = self.primary.policy.weights(snapshot)
        except Exception:
            log.exception("policy %s raised; using %s", self.primary.name, self.fallback.name)
            return None, "exception"
        weights = np.asarray(raw, dtype=np.float64)
        if weights.shape != (len(snapshot),):
            return None, "shape"
        if not np.all(np.isfinite(weights)):
            return None, "nan"
        if np.any(weights < 0):
            return None, "negative"
        live = snapshot.live
        if not live.any():
            return weights, ""  # nothing to weigh: the picker will answer "no backend"
        weights = np.where(live, weights, 0.0)
        total = weights.sum()
        if total <= 0:
            return None, "all-zero"
        return weights / total, ""

    def _log_change(self, decision: Decision) -> None:
        """At INFO: whoever runs the balancer (the proxy's controller) reports mode changes to
        operators once, with its own context; this record is for debugging the guard itself."""
        self.switches += 1
        if decision.mode == "fallback":
            log.info(
                "balancer %s: fallback to %s (%s)", self.name, self.fallback.name, decision.reason
            )
        else:
            log.info("balancer %s: back to the policy (was: %s)", self.name, self.reason)

    def reset(self) -> None:
        super().reset()
        if self.primary is not None:
            self.primary.reset()
        self.fallback.reset()
        if self.outcome_guard is not None:
            self.outcome_guard.reset()
        self.mode = "primary" if self.primary else "fallback"
        self.reason = "" if self.primary else self.missing_reason


def _child_rng(rng: random.Random | None) -> random.Random | None:
    return random.Random(rng.getrandbits(64)) if rng is not None else None


def make_balancer(
    name: str,
    *,
    rng: random.Random | None = None,
    max_staleness_s: float | None = None,
    on_load_error: str = "raise",
    outcome_guard: OutcomeGuardSettings | bool = True,
) -> Balancer:
    """A balancer by name: a preset, `learned[:PATH|URI]` or `POLICY+PICKER`.

    Learned policies come back guarded: their output always, their outcomes unless
    `outcome_guard` is False (or settings with `enabled=False`), or the name ends with
    `UNGUARDED_SUFFIX`. With `on_load_error="fallback"` a model that fails to load gives a
    guarded balancer on its fallback (reason "load-failed") instead of an error, which is what a
    proxy wants at start-up.
    """
    if name.startswith("learned") and name.endswith(UNGUARDED_SUFFIX):
        unguarded = make_balancer(
            name.removesuffix(UNGUARDED_SUFFIX),
            rng=rng,
            max_staleness_s=max_staleness_s,
            on_load_error=on_load_error,
            outcome_guard=False,
        )
        unguarded.name = name
        return unguarded
    picker_name: str | None
    if name in PRESETS:
        policy_name, picker_name = PRESETS[name]
    elif name.rpartition("+")[2] in PICKER_NAMES:  # learned:PATH+jsq too
        policy_name, _, picker_name = name.rpartition("+")
    elif name.startswith("learned:"):
        policy_name, picker_name = name, None
    elif "+" in name:
        policy_name, _, picker_name = name.partition("+")
    else:
        raise ConfigError(
            "balancer",
            f"unknown balancer {name!r}",
            f"choose a preset ({', '.join(BALANCER_NAMES)}), learned:PATH, "
            "or POLICY+PICKER such as capacity+p2c-latency",
        )
    if not policy_name.startswith("learned"):
        assert picker_name is not None
        return Balancer(
            name, make_policy(policy_name), make_picker(picker_name, rng=_child_rng(rng))
        )
    fallback = make_balancer(FALLBACK_PRESET, rng=_child_rng(rng))
    try:
        policy = make_policy(policy_name)
    except ModelError as error:
        if on_load_error != "fallback":
            raise
        log.error("cannot load the learned policy (%s); serving %s", error, FALLBACK_PRESET)
        return GuardedBalancer(
            None,
            fallback,
            max_staleness_s=max_staleness_s,
            missing_reason="load-failed",
            name=name,
        )
    # A learned policy is served with the picker it was trained with, unless one is named.
    trained_with = str(getattr(policy, "picker", DEFAULT_PICKER))
    picker = make_picker(picker_name or trained_with, rng=_child_rng(rng))
    primary = Balancer(name, policy, picker)
    return GuardedBalancer(
        primary,
        fallback,
        max_staleness_s=max_staleness_s,
        name=name,
        outcome_guard=_outcome_guard(outcome_guard),
    )


def _outcome_guard(settings: OutcomeGuardSettings | bool) -> OutcomeGuard | None:
    if settings is False:
        return None
    chosen = OutcomeGuardSettings() if settings is True else settings
    return OutcomeGuard(chosen) if chosen.enabled else None
