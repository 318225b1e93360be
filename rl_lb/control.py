"""The control spec: every setting the simulator and the proxy must share, declared once.

A policy trained offline is only safe to serve if the proxy feeds it and guards it exactly as the
simulator did: the same metrics window and EWMA time constant, the same error penalty, the same
health-check and ejection rules, the same retry budget. Each of those settings is declared here
once — default, bounds, unit and one-line help — and everything else is derived from it:

- the proxy's flags and TOML keys (`Setting.key`, e.g. `--metrics-window` / `metrics-window`),
- the scenario file's sections (`Setting.scenario`, e.g. `[metrics] window_s`),
- the simulator's parameters (the section dataclasses are handed to it as they are),
- the docs' settings tables (`markdown_table`).

A default is written nowhere else in the repository (tests/test_control_spec.py checks the
proxy's flags and docs/proxy.md against this module, tests/test_scenarios.py docs/scenarios.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from rl_lb.errors import ConfigError

__all__ = [
    "PROBE_PATH",
    "ControlSpec",
    "EjectionSettings",
    "HealthSettings",
    "MetricsSettings",
    "OutcomeGuardSettings",
    "PrequalSettings",
    "RetrySettings",
    "Setting",
    "SlowStartSettings",
    "check_value",
    "default_text",
    "markdown_table",
    "section_settings",
    "setting",
    "spec_settings",
]


@dataclass(frozen=True)
class Setting:
    """What a user needs to know about one setting, beside its default."""

    key: str
    """The proxy's flag without dashes and its TOML key (`metrics-window`)."""
    help: str
    """One line: what it does, in the user's words."""
    unit: str = ""
    """`s`, `%`, `requests/s`, or '' for a plain number or count."""
    minimum: float = 0.0
    maximum: float = math.inf
    integer: bool = False
    min_exclusive: bool = False
    """True when the minimum itself is refused (a time constant of 0)."""
    scenario: str | None = None
    """The scenario file's `section.key` for it, or None when scenarios do not set it."""

    def describe_range(self) -> str:
        low = f"> {self.minimum:g}" if self.min_exclusive else f">= {self.minimum:g}"
        if self.maximum == math.inf:
            return low
        return f"{low} and <= {self.maximum:g}"


def setting(default: Any, info: Setting) -> Any:
    """A dataclass field carrying its `Setting` (use as `x: float = setting(1.0, Setting(...))`)."""
    return field(default=default, metadata={"setting": info})


def check_value(info: Setting, raw: Any, where: str) -> float | int:
    """`raw` as the setting's type, or a `ConfigError` naming `where` and the valid range."""
    kind = "an integer" if info.integer else "a number"
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise ConfigError(where, f"{raw!r} is not {kind}")
    if info.integer and isinstance(raw, float) and not raw.is_integer():
        raise ConfigError(where, f"{raw!r} is not {kind}")
    try:
        value: float | int = int(raw) if info.integer else float(raw)
    except ValueError:
        raise ConfigError(where, f"{raw!r} is not {kind}") from None
    low_ok = value > info.minimum if info.min_exclusive else value >= info.minimum
    if not (math.isfinite(value) and low_ok and value <= info.maximum):
        raise ConfigError(where, f"{raw!r} is out of range", f"use {kind} {info.describe_range()}")
    return value


class _Section:
    """Checks every field against its `Setting` on construction, so a bad value never lives."""

    def __post_init__(self) -> None:
        for f, info in section_settings(type(self)):
            value = getattr(self, f.name)
            checked = check_value(info, value, info.scenario or info.key)
            object.__setattr__(self, f.name, checked)


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
    pair_share: float = setting(
        4.0,
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


PROBE_PATH = "/.rl-lb/probe"
"""Where the proxy's `prequal` probes a backend by default, and where the emulated backends
answer (GET → JSON `{"rif": int, "latency_ms": float}`; docs/proxy.md)."""


@dataclass(frozen=True)
class PrequalSettings(_Section):
    """Prequal's probe pool and hot-cold rule (`rl_lb.prequal`; defaults from the paper).

    `q_rif` is the RIF quantile above which a backend is hot: 0.84 is the paper's default; the
    prequal-rs reimplementation found that 0.6 herds less at high load.
    """

    probes: float = setting(
        3.0,
        Setting(
            "prequal-probes",
            "Probes sent per request (to random backends; a fraction is a probability).",
            minimum=0.0,
            maximum=16.0,
            scenario="prequal.probes",
        ),
    )
    pool_size: int = setting(
        16,
        Setting(
            "prequal-pool",
            "Most probe answers kept (the newest per backend).",
            minimum=2,
            maximum=64,
            integer=True,
            scenario="prequal.pool_size",
        ),
    )
    max_age_s: float = setting(
        1.0,
        Setting(
            "prequal-max-age",
            "Probe answers older than this are dropped.",
            "s",
            minimum=0.0,
            min_exclusive=True,
            scenario="prequal.max_age_s",
        ),
    )
    removals: int = setting(
        1,
        Setting(
            "prequal-removals",
            "Answers removed per request, alternately the oldest and the worst.",
            minimum=0,
            maximum=16,
            integer=True,
            scenario="prequal.removals",
        ),
    )
    q_rif: float = setting(
        0.84,
        Setting(
            "prequal-q-rif",
            "Quantile of recent requests-in-flight above which a backend is hot "
            "(0.6 herds less at high load).",
            maximum=1.0,
            scenario="prequal.q_rif",
        ),
    )
    max_reuse: int = setting(
        16,
        Setting(
            "prequal-max-reuse",
            "Most requests one probe answer may serve.",
            minimum=1,
            integer=True,
            scenario="prequal.max_reuse",
        ),
    )
    probe_rtt_s: float = setting(
        0.001,
        Setting(
            "prequal-probe-rtt",
            "Simulator only: round trip of one probe (the proxy's probes take the real one).",
            "s",
            minimum=0.0,
            scenario="prequal.probe_rtt_s",
        ),
    )


@dataclass(frozen=True)
class ControlSpec:
    """All the shared settings; the simulator and the proxy each hold one."""

    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    ejection: EjectionSettings = field(default_factory=EjectionSettings)
    retries: RetrySettings = field(default_factory=RetrySettings)
    slow_start: SlowStartSettings = field(default_factory=SlowStartSettings)
    outcome_guard: OutcomeGuardSettings = field(default_factory=OutcomeGuardSettings)
    prequal: PrequalSettings = field(default_factory=PrequalSettings)

    def flags(self) -> dict[str, float | int]:
        """Every setting as `{key: value}`: the TOML keys (and flags) of a proxy that runs it."""
        return {info.key: getattr(getattr(self, name), f.name) for name, f, info in spec_settings()}

    @classmethod
    def from_flags(cls, values: Mapping[str, Any], prefix: str = "--") -> ControlSpec:
        """A spec from `{key: raw value}` (keys as in `flags`; missing ones keep the default).

        Each value is checked with its setting's bounds; an error names `prefix + key`.
        """
        known = {info.key for _, _, info in spec_settings()}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{prefix}{unknown[0]}", "not a control setting")
        sections: dict[str, dict[str, Any]] = {}
        for name, f, info in spec_settings():
            if info.key in values and values[info.key] is not None:
                checked = check_value(info, values[info.key], f"{prefix}{info.key}")
                sections.setdefault(name, {})[f.name] = checked
        return cls(**{name: _section_type(name)(**kw) for name, kw in sections.items()})


def section_settings(section: type[Any]) -> Iterator[tuple[dataclasses.Field[Any], Setting]]:
    """The fields of one section dataclass with their `Setting`, in declaration order."""
    for f in dataclasses.fields(section):
        info = f.metadata.get("setting")
        if isinstance(info, Setting):
            yield f, info


def _section_type(name: str) -> type[Any]:
    spec_field = next(f for f in dataclasses.fields(ControlSpec) if f.name == name)
    factory = spec_field.default_factory
    assert isinstance(factory, type)
    return factory


def spec_settings() -> Iterator[tuple[str, dataclasses.Field[Any], Setting]]:
    """(section name, field, setting) for every setting of the `ControlSpec`."""
    for spec_field in dataclasses.fields(ControlSpec):
        for f, info in section_settings(_section_type(spec_field.name)):
            yield spec_field.name, f, info


def default_text(f: dataclasses.Field[Any], info: Setting) -> str:
    """The default as a user writes it (`10 s`, `5`, `10 %`)."""
    value = f.default
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} {info.unit}".strip()


def markdown_table(*, scenario: bool = False) -> str:
    """The settings as a Markdown table: for docs/proxy.md, or (`scenario`) docs/scenarios.md."""
    if scenario:
        lines = ["| scenario key | default | range | what it does |", "|---|---|---|---|"]
    else:
        lines = ["| flag / TOML key | default | range | what it does |", "|---|---|---|---|"]
    for _, f, info in spec_settings():
        if scenario and info.scenario is None:
            continue
        name = f"`{info.scenario}`" if scenario else f"`--{info.key}` / `{info.key}`"
        rng = info.describe_range() + (f" {info.unit}" if info.unit else "")
        lines.append(f"| {name} | {default_text(f, info)} | {rng} | {info.help} |")
    return "\n".join(lines)
