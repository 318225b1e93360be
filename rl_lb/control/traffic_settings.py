"""The sections about how traffic reaches a backend: retries and slow start."""

from __future__ import annotations

from dataclasses import dataclass

from rl_lb.control.setting import Setting, _Section, setting

__all__ = ["RetrySettings", "SlowStartSettings"]


@dataclass(frozen=True)
class RetrySettings(_Section):
    """Retries of failed connects, bounded by a Linkerd/Finagle retry budget."""

    retries: int = setting(
        2,
        Setting(
            "retries",
            "Other backends tried after a failed connect (and, for idempotent requests, more).",
            minimum=0,
            integer=True,
            scenario="retries.retries",
        ),
    )
    budget: float = setting(
        0.2,
        Setting(
            "retry-budget",
            "Retries may add this share of the requests of the budget's window.",
            minimum=0.0,
            scenario="retries.budget",
        ),
    )
    budget_window_s: float = setting(
        10.0,
        Setting(
            "retry-budget-window",
            "Sliding window over which requests and retries are counted.",
            "s",
            minimum=0.0,
            min_exclusive=True,
            scenario="retries.budget_window_s",
        ),
    )
    min_retries_per_s: float = setting(
        10.0,
        Setting(
            "retry-budget-floor",
            "Retries per second allowed whatever the traffic, so a quiet proxy can retry at all.",
            "requests/s",
            minimum=0.0,
            scenario="retries.min_retries_per_s",
        ),
    )


@dataclass(frozen=True)
class SlowStartSettings(_Section):
    """Envoy's slow start: a backend that joins or returns ramps up to its full weight.

    The rule is `rl_lb.slow_start`'s; docs/proxy.md ("Slow start") says why the window is 30 s.
    """

    window_s: float = setting(
        30.0,
        Setting(
            "slow-start-window",
            "A backend added or back from ejection or unhealthy ramps to its full weight over "
            "this time (0: off).",
            "s",
            minimum=0.0,
            scenario="slow_start.window_s",
        ),
    )
    aggression: float = setting(
        1.0,
        Setting(
            "slow-start-aggression",
            "Shape of the ramp: weight x (time / window)^(1 / aggression); 1 is linear.",
            minimum=0.0,
            min_exclusive=True,
            scenario="slow_start.aggression",
        ),
    )
    min_weight_percent: float = setting(
        10.0,
        Setting(
            "slow-start-min-weight",
            "Least share of its weight a ramping backend gets.",
            "%",
            maximum=100.0,
            scenario="slow_start.min_weight_percent",
        ),
    )
