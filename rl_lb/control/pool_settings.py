"""The sections about what the balancer knows of each backend: metrics, health checks, ejection."""

from __future__ import annotations

from dataclasses import dataclass

from rl_lb.control.setting import Setting, _Section, setting
from rl_lb.errors import ConfigError

__all__ = ["EjectionSettings", "HealthSettings", "MetricsSettings"]


@dataclass(frozen=True)
class MetricsSettings(_Section):
    """What the policy and the least-latency picker remember of each backend."""

    window_s: float = setting(
        10.0,
        Setting(
            "metrics-window",
            "Sliding window of the latency quantiles, error rate and throughput the policy sees.",
            "s",
            minimum=0.01,
            scenario="metrics.window_s",
        ),
    )
    ewma_tau_s: float = setting(
        10.0,
        Setting(
            "ewma-tau",
            "Time constant of the peak-EWMA latency (features and the least-latency picker).",
            "s",
            minimum=0.01,
            scenario="metrics.ewma_tau_s",
        ),
    )
    error_penalty_s: float = setting(
        5.0,
        Setting(
            "error-penalty",
            "Latency a failed request counts as in the peak-EWMA cost.",
            "s",
            minimum=0.0,
            min_exclusive=True,
            scenario="metrics.error_penalty_s",
        ),
    )


@dataclass(frozen=True)
class HealthSettings(_Section):
    """Active health checks: how often, and how many results in a row flip a backend's state."""

    interval_s: float = setting(
        5.0,
        Setting(
            "health-interval",
            "Seconds between two health checks of one backend.",
            "s",
            minimum=0.05,
            scenario="health.interval_s",
        ),
    )
    timeout_s: float = setting(
        2.0,
        Setting("health-timeout", "A health check not answered in time fails.", "s", minimum=0.01),
    )
    healthy_threshold: int = setting(
        1,
        Setting(
            "healthy-threshold",
            "Passed checks in a row that make an unhealthy backend healthy again.",
            minimum=1,
            integer=True,
            scenario="health.healthy_threshold",
        ),
    )
    unhealthy_threshold: int = setting(
        2,
        Setting(
            "unhealthy-threshold",
            "Failed checks in a row that make a backend unhealthy.",
            minimum=1,
            integer=True,
            scenario="health.unhealthy_threshold",
        ),
    )


@dataclass(frozen=True)
class EjectionSettings(_Section):
    """Passive outlier ejection (Envoy's `consecutive_5xx` detector and its defaults)."""

    consecutive_failures: int = setting(
        5,
        Setting(
            "consecutive-failures",
            "Failed requests in a row that eject a backend.",
            minimum=1,
            integer=True,
            scenario="ejection.consecutive_failures",
        ),
    )
    base_ejection_s: float = setting(
        30.0,
        Setting(
            "base-ejection",
            "First ejection time; each further ejection of a backend lasts one more of these.",
            "s",
            minimum=0.001,
            scenario="ejection.base_ejection_s",
        ),
    )
    max_ejection_s: float = setting(
        300.0,
        Setting(
            "max-ejection",
            "Longest ejection.",
            "s",
            minimum=0.001,
            scenario="ejection.max_ejection_s",
        ),
    )
    max_ejection_percent: float = setting(
        10.0,
        Setting(
            "max-ejection-percent",
            "Share of the pool that may be ejected at once (at least one backend).",
            "%",
            maximum=100.0,
            scenario="ejection.max_ejection_percent",
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base_ejection_s > self.max_ejection_s:
            raise ConfigError(
                "max-ejection",
                f"{self.max_ejection_s:g} s is shorter than base-ejection "
                f"({self.base_ejection_s:g} s)",
                "use base-ejection <= max-ejection",
            )
