"""Scenario files (TOML): one schema for the simulator and the emulated live backends.

`load_scenario(path)` parses and validates a file into a `ScenarioFamily` (numbers may still be
`[low, high]` ranges); `family.sample(rng)` draws one concrete `Scenario`. Everything below is
documented in docs/scenarios.md. The simulator and the emulated live backends both read scenarios
through here, so the two can never disagree about what a file means.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from rl_lb._scenario_parse import DISTRIBUTIONS, MAX_BACKENDS, PROCESSES, parse_family
from rl_lb._scenario_template import (
    Amount,
    ArrivalsTemplate,
    Distribution,
    Drawer,
    EventTemplate,
    FamilyTemplate,
    GroupTemplate,
    ServiceTemplate,
)
from rl_lb.errors import ScenarioError
from rl_lb.metrics import DEFAULT_EWMA_TAU_S, DEFAULT_WINDOW_S
from rl_lb.toml_file import read_toml

__all__ = [
    "DISTRIBUTIONS",
    "LIBRARY_ENV",
    "MAX_BACKENDS",
    "PROCESSES",
    "Arrivals",
    "BackendSpec",
    "Event",
    "HealthSpec",
    "MetricsSpec",
    "Pauses",
    "RateStep",
    "Scenario",
    "ScenarioFamily",
    "ServiceDist",
    "library_scenarios",
    "load_scenario",
    "load_scenarios",
    "resolve_scenario",
    "scenario_library_dir",
]

LIBRARY_ENV = "RL_LB_SCENARIOS"


@dataclass(frozen=True)
class ServiceDist:
    """Service time of one request on one free server (before slowdowns)."""

    dist: Distribution
    mean_s: float
    cv: float = 1.0
    """Coefficient of variation, for lognormal (exponential is 1, constant 0)."""
    shape: float = 1.5
    """Pareto tail index alpha (> 1); the scale is set so the mean is `mean_s`."""


@dataclass(frozen=True)
class Event:
    """A trouble window on one backend, active for at_s <= t < until_s."""

    at_s: float
    until_s: float
    slowdown: float = 1.0
    """Service-time multiplier. With `slowdown_to`, a linear ramp from `slowdown` to it."""
    slowdown_to: float | None = None
    error_rate: float = 0.0
    """Probability that a request is answered with a 503 after `error_latency_s`."""
    error_latency_s: float = 0.001
    down: bool = False
    """Refuses connections: every request fails at once (connect error)."""


@dataclass(frozen=True)
class Pauses:
    """GC-like stalls: every `every_s` on average (exponential gaps), all servers freeze."""

    every_s: float
    duration_s: float


@dataclass(frozen=True)
class BackendSpec:
    name: str
    concurrency: int
    service: ServiceDist
    queue_limit: int = 1000
    timeout_s: float = 1.0
    events: tuple[Event, ...] = ()
    pauses: Pauses | None = None

    @property
    def capacity_rps(self) -> float:
        """Requests per second this backend sustains with no slowdown."""
        return self.concurrency / self.service.mean_s


@dataclass(frozen=True)
class RateStep:
    at_s: float
    rate: float
    """Requests per second from at_s on (a `load` in the file is resolved against capacity)."""


@dataclass(frozen=True)
class Arrivals:
    process: Literal["poisson", "mmpp", "trace"]
    rate: float
    """Base rate in requests/s (a `load` in the file is resolved against the pool's capacity)."""
    profile: tuple[RateStep, ...] = ()
    mmpp_rates: tuple[float, ...] = ()
    """For mmpp: the rate (requests/s) of each phase."""
    mmpp_dwell_s: tuple[float, ...] = ()
    """For mmpp: mean time spent in each phase (exponential)."""
    trace: tuple[float, ...] = ()
    """For trace: arrival times in seconds from the episode start."""


@dataclass(frozen=True)
class MetricsSpec:
    delay_s: float = 0.0
    """Age of the metrics the balancer sees."""
    proxies: int = 1
    """Independent proxy replicas sharing the pool, each with its own view."""
    window_s: float = DEFAULT_WINDOW_S
    ewma_tau_s: float = DEFAULT_EWMA_TAU_S
    picker_refresh_s: float = 0.0
    """0: the picker sees live load; T > 0: its load view is refreshed only every T seconds
    (Mitzenmacher's "old information" bulletin board, which makes greedy pickers herd)."""


@dataclass(frozen=True)
class HealthSpec:
    interval_s: float = 1.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 2


@dataclass(frozen=True)
class Scenario:
    """One concrete pool, traffic and trouble timeline (every range already drawn)."""

    name: str
    duration_s: float
    control_interval_s: float
    arrivals: Arrivals
    metrics: MetricsSpec
    health: HealthSpec
    backends: tuple[BackendSpec, ...]
    source: Path | None = None
    description: str = ""

    @property
    def capacity_rps(self) -> float:
        return sum(b.capacity_rps for b in self.backends)

    @property
    def ideal_latency_s(self) -> float:
        """Mean service time of the pool if every request went to a free server, by capacity."""
        capacity = self.capacity_rps
        return sum(b.capacity_rps * b.service.mean_s for b in self.backends) / capacity

    @property
    def timeout_s(self) -> float:
        return max(b.timeout_s for b in self.backends)


def _random_drawer(rng: np.random.Generator) -> Drawer:
    def draw(low: float, high: float, integer: bool) -> float:
        if integer:
            return float(rng.integers(int(low), int(high), endpoint=True))
        return float(rng.uniform(low, high))

    return draw


def _midpoint(low: float, high: float, integer: bool) -> float:
    return float((int(low) + int(high)) // 2) if integer else (low + high) / 2


def _service(t: ServiceTemplate, draw: Drawer) -> ServiceDist:
    fixed_cv = 0.0 if t.dist == "constant" else 1.0
    return ServiceDist(
        dist=t.dist,
        mean_s=t.mean_s.draw(draw),
        cv=t.cv.draw(draw) if t.cv is not None else fixed_cv,
        shape=t.shape.draw(draw) if t.shape is not None else 1.5,
    )


def _event(t: EventTemplate, draw: Drawer) -> Event:
    return Event(
        at_s=t.at_s.draw(draw),
        until_s=t.until_s.draw(draw),
        slowdown=t.slowdown.draw(draw),
        slowdown_to=t.slowdown_to.draw(draw) if t.slowdown_to is not None else None,
        error_rate=t.error_rate.draw(draw),
        error_latency_s=t.error_latency_s.draw(draw),
        down=t.down,
    )


def _backends(groups: tuple[GroupTemplate, ...], draw: Drawer) -> list[BackendSpec]:
    """Expand each group; its numbers are drawn once, so a group stays homogeneous."""
    backends: list[BackendSpec] = []
    for group in groups:
        count = group.count.draw_int(draw)
        spec = BackendSpec(
            name="",
            concurrency=group.concurrency.draw_int(draw),
            service=_service(group.service, draw),
            queue_limit=group.queue_limit.draw_int(draw),
            timeout_s=group.timeout_s.draw(draw),
            events=tuple(_event(e, draw) for e in group.events),
            pauses=(
                Pauses(group.pauses.every_s.draw(draw), group.pauses.duration_s.draw(draw))
                if group.pauses is not None
                else None
            ),
        )
        for i in range(count):
            if group.name is None:
                name = f"b{len(backends)}"
            else:
                name = f"{group.name}-{i}" if group.count.high > 1 else group.name
            backends.append(replace(spec, name=name))
    return backends


def _rate(amount: Amount, capacity: float, draw: Drawer) -> float:
    value = amount.value.draw(draw)
    return value * capacity if amount.is_load else value


def _arrivals(t: ArrivalsTemplate, capacity: float, duration: float, draw: Drawer) -> Arrivals:
    if t.process == "mmpp":
        rates = tuple(_rate(a, capacity, draw) for a in t.phases)
        dwell = tuple(d.draw(draw) for d in t.dwell_s)
        mean = sum(r * d for r, d in zip(rates, dwell, strict=True)) / sum(dwell)
        return Arrivals("mmpp", mean, mmpp_rates=rates, mmpp_dwell_s=dwell)
    if t.process == "trace":
        trace = tuple(x for x in t.trace if x < duration)
        return Arrivals("trace", len(trace) / duration, trace=trace)
    assert t.base is not None  # the parser guarantees a rate or load for poisson
    rate = _rate(t.base, capacity, draw)
    profile = tuple(RateStep(s.at_s.draw(draw), _rate(s.amount, capacity, draw)) for s in t.profile)
    return Arrivals("poisson", rate, profile=profile)


def _build(
    t: FamilyTemplate, draw: Drawer, rng: np.random.Generator | None, source: Path | None
) -> Scenario:
    duration = t.duration_s.draw(draw)
    control = t.control_interval_s.draw(draw)
    backends = _backends(t.groups, draw)
    capacity = sum(b.capacity_rps for b in backends)
    arrivals = _arrivals(t.arrivals, capacity, duration, draw)
    m, h = t.metrics, t.health
    metrics = MetricsSpec(
        delay_s=m.delay_s.draw(draw),
        proxies=m.proxies.draw_int(draw),
        window_s=m.window_s.draw(draw),
        ewma_tau_s=m.ewma_tau_s.draw(draw),
        picker_refresh_s=m.picker_refresh_s.draw(draw),
    )
    health = HealthSpec(
        interval_s=h.interval_s.draw(draw),
        healthy_threshold=h.healthy_threshold.draw_int(draw),
        unhealthy_threshold=h.unhealthy_threshold.draw_int(draw),
    )
    if rng is not None and t.shuffle_backends:
        backends = [backends[i] for i in rng.permutation(len(backends))]
    return Scenario(
        name=t.name,
        duration_s=duration,
        control_interval_s=control,
        arrivals=arrivals,
        metrics=metrics,
        health=health,
        backends=tuple(backends),
        source=source,
        description=t.description,
    )


class ScenarioFamily:
    """A parsed, validated scenario file whose numbers may be `[low, high]` ranges.

    All validation happens here, once; `sample` cannot fail, so a training run does not crash
    hours in on an unlucky draw.
    """

    def __init__(self, raw: Mapping[str, object], source: Path | None = None) -> None:
        file = str(source) if source is not None else "<scenario>"
        base_dir = source.parent if source is not None else Path.cwd()
        self._template = parse_family(raw, file, base_dir)
        self.source = source

    @property
    def name(self) -> str:
        return self._template.name

    @property
    def description(self) -> str:
        return self._template.description

    @property
    def randomised(self) -> int:
        """How many numbers are `[low, high]` ranges (0: every sample is the same scenario)."""
        return self._template.ranges

    @property
    def max_backends(self) -> int:
        """The largest pool any sample can have, for sizing observation spaces."""
        return sum(round(g.count.high) for g in self._template.groups)

    def sample(self, rng: np.random.Generator) -> Scenario:
        """Draw every range once (a fixed draw order, so a seed always gives the same pool)."""
        return _build(self._template, _random_drawer(rng), rng, self.source)

    def nominal(self) -> Scenario:
        """Every range at its midpoint and no shuffling: a deterministic summary of the family."""
        return _build(self._template, _midpoint, None, self.source)

    def __repr__(self) -> str:
        return f"ScenarioFamily({self.name!r}, source={self.source!r})"


def load_scenario(path: str | Path) -> ScenarioFamily:
    """Parse and validate one scenario: a file path, or a library name such as `slow-backend`."""
    file = resolve_scenario(path)
    raw = read_toml(file, ScenarioError, "give a path or a name from `rl-lb scenario list`")
    return ScenarioFamily(raw, file)


def load_scenarios(paths: Iterable[str | Path]) -> list[ScenarioFamily]:
    return [load_scenario(p) for p in paths]


def scenario_library_dir() -> Path:
    """The repository's `scenarios/` folder; RL_LB_SCENARIOS when the package is installed alone."""
    beside_package = Path(__file__).resolve().parent.parent / "scenarios"
    if beside_package.is_dir():
        return beside_package
    configured = os.environ.get(LIBRARY_ENV)
    if configured:
        return Path(configured)
    raise ScenarioError(
        LIBRARY_ENV, "scenario library not found", f"set {LIBRARY_ENV} to the scenarios/ folder"
    )


def library_scenarios() -> list[Path]:
    """Every scenario file in the library, sorted by name."""
    return sorted(scenario_library_dir().glob("*.toml"))


def resolve_scenario(name_or_path: str | Path) -> Path:
    """A path is taken as is; a bare name (no folder, no `.toml`) is looked up in the library."""
    path = Path(name_or_path)
    if isinstance(name_or_path, Path) or path.is_file():
        return path
    if len(path.parts) != 1 or path.suffix == ".toml":
        return path
    candidate = scenario_library_dir() / f"{name_or_path}.toml"
    if candidate.is_file():
        return candidate
    names = [p.stem for p in library_scenarios()]
    close = difflib.get_close_matches(str(name_or_path), names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ScenarioError(
        str(name_or_path),
        "no such scenario file or library name",
        f"{hint}library: {', '.join(names)}",
    )
