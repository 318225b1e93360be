"""The section of the learned policy's outcome guard."""

from __future__ import annotations

from dataclasses import dataclass

from rl_lb.control.setting import Setting, _Section, setting
from rl_lb.errors import ConfigError

__all__ = ["OutcomeGuardSettings"]


@dataclass(frozen=True)
class OutcomeGuardSettings(_Section):
    """The outcome guard of a learned policy (`rl_lb.outcome_guard`; docs/proxy.md says why).

    `enabled` is not a flag (a `Setting` is a number): `make_balancer(..., outcome_guard=False)`
    turns the guard off, for the guard-off figures.
    """

    threshold: float = setting(
        2.5,
        Setting(
            "outcome-guard-threshold",
            "Policy worse than this many times the fallback's estimated latency counts as a "
            "regression.",
            minimum=1.0,
            min_exclusive=True,
        ),
    )
    evidence: float = setting(
        0.5,
        Setting(
            "outcome-guard-evidence",
            "CUSUM limit: summed log(ratio / threshold) over intervals that switches to the "
            "fallback.",
            minimum=0.0,
            min_exclusive=True,
        ),
    )
    min_answers: int = setting(
        5,
        Setting(
            "outcome-guard-min-answers",
            "Answers in the metrics window below which a backend is unknown to the guard "
            "(and probed).",
            minimum=1,
            integer=True,
        ),
    )
    probe_share: float = setting(
        0.01,
        Setting(
            "outcome-guard-probe-share",
            "Weight floor, shared among the backends the guard knows too little of.",
            maximum=0.5,
        ),
    )
    # Off by default: measured on 4 December 2026 with the policy retrained for any pool size,
    # 4x cost 9.7x effective p99 on large-heterogeneous (100 backends in tiers, where equal
    # weights force little) and 1.7x on park, while that policy no longer needs it on the
    # shift world (docs/proxy.md, "The outcome guard").
    pair_share: float = setting(
        0.0,
        Setting(
            "outcome-guard-pair-share",
            "Most of the requests two-choices draws may force onto any two backends, as a "
            "multiple of what equal weights force (0: off).",
        ),
    )
    backoff_s: float = setting(
        30.0,
        Setting(
            "outcome-guard-backoff",
            "Time on the fallback after a regression; doubles with each further one.",
            "s",
            minimum=0.0,
            min_exclusive=True,
        ),
    )
    max_backoff_s: float = setting(
        600.0,
        Setting(
            "outcome-guard-max-backoff",
            "Longest time on the fallback; as long without a regression resets the backoff.",
            "s",
            minimum=0.0,
            min_exclusive=True,
        ),
    )
    enabled: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.backoff_s > self.max_backoff_s:
            raise ConfigError(
                "outcome-guard-max-backoff",
                f"{self.max_backoff_s:g} s is shorter than outcome-guard-backoff "
                f"({self.backoff_s:g} s)",
                "use outcome-guard-backoff <= outcome-guard-max-backoff",
            )
        if 0 < self.pair_share < 1:
            raise ConfigError(
                "outcome-guard-pair-share",
                f"{self.pair_share:g} is below what equal weights force (1)",
                "use 0 (off) or a multiple >= 1",
            )
