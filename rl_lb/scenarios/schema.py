"""The concrete scenario dataclasses: what the simulator and the emulated backends are handed.

Each field a file may write has its file default as the dataclass default, and its bounds and
integer-ness as field metadata (`num(...)`): the parser reads it and the sampler draws it from
this one declaration (see `fields`). The settings the proxy shares (metrics window, health
checks, ejection, retries) are not here: they are `rl_lb.control.ControlSpec`, held as
`Scenario.control`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rl_lb.control import ControlSpec, HealthSettings
from rl_lb.scenarios.fields import LISTED, num

__all__ = [
    "Arrivals",
    "BackendSpec",
    "Distribution",
    "Event",
    "HealthSpec",
    "MetricsSpec",
    "Pauses",
    "Process",
    "RateStep",
    "Scenario",
    "ServiceDist",
]

Distribution = Literal["exponential", "lognormal", "pareto", "constant"]
Process = Literal["poisson", "mmpp", "trace"]


@dataclass(frozen=True)
class ServiceDist:
    """Service time of one request on one free server (before slowdowns)."""

    dist: Distribution = field(metadata=LISTED)
    mean_s: float = field(metadata=num(ge=1e-6))
    cv: float = field(default=1.0, metadata=num(ge=0))
    """Coefficient of variation, for lognormal (exponential is 1, constant 0)."""
    shape: float = field(default=1.5, metadata=num(gt=1))
    """Pareto tail index alpha (> 1); the scale is set so the mean is `mean_s`."""


@dataclass(frozen=True)
class Event:
    """A trouble window on one backend, active for at_s <= t < until_s."""

    at_s: float = field(metadata=num(ge=0))
    until_s: float = field(metadata=num())
    """Also <= duration_s and > at_s: the parser checks both against the file."""
    slowdown: float = field(default=1.0, metadata=num(gt=0))
    """Service-time multiplier. With `slowdown_to`, a linear ramp from `slowdown` to it."""
    slowdown_to: float | None = field(default=None, metadata=num(gt=0))
    error_rate: float = field(default=0.0, metadata=num(ge=0, le=1))
    """Probability that a request is answered with a 503 after `error_latency_s`."""
    error_latency_s: float = field(default=0.001, metadata=num(ge=0))
    down: bool = field(default=False, metadata=LISTED)
    """Refuses connections: every request fails at once (connect error)."""


@dataclass(frozen=True)
class Pauses:
    """GC-like stalls: every `every_s` on average (exponential gaps), all servers freeze."""

    every_s: float = field(metadata=num(gt=0))
    duration_s: float = field(metadata=num(gt=0))
    """Also < every_s: the parser checks it."""


@dataclass(frozen=True)
class BackendSpec:
    name: str
    concurrency: int = field(metadata=num(ge=1, integer=True))
    service: ServiceDist = field(metadata=LISTED)
    queue_limit: int = field(default=1000, metadata=num(ge=0, integer=True))
    timeout_s: float = field(default=1.0, metadata=num(gt=0))
    events: tuple[Event, ...] = field(default=(), metadata=LISTED)
    pauses: Pauses | None = field(default=None, metadata=LISTED)

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
    process: Process
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
    """The `[metrics]` keys only scenarios have; the window, EWMA and error penalty the proxy
    shares are `Scenario.control.metrics`."""

    delay_s: float = field(default=0.0, metadata=num(ge=0))
    """Age of the metrics the balancer sees."""
    proxies: int = field(default=1, metadata=num(ge=1, le=64, integer=True))
    """Independent proxy replicas sharing the pool, each with its own view."""
    picker_refresh_s: float = field(default=0.0, metadata=num(ge=0))
    """0: the picker sees live load; T > 0: its load view is refreshed only every T seconds
    (Mitzenmacher's "old information" bulletin board, which makes greedy pickers herd)."""


HealthSpec = HealthSettings
"""The `[health]` section: the proxy's health-check settings (`Scenario.control.health`)."""


@dataclass(frozen=True)
class Scenario:
    """One concrete pool, traffic and trouble timeline (every range already drawn)."""

    name: str = field(metadata=LISTED)
    duration_s: float = field(metadata=num(gt=0))
    control_interval_s: float = field(metadata=num(gt=0, file_default=1.0))
    """How often the policy sets weights; also <= duration_s."""
    arrivals: Arrivals = field(metadata=LISTED)
    metrics: MetricsSpec = field(metadata=LISTED)
    backends: tuple[BackendSpec, ...] = field(metadata=LISTED)
    control: ControlSpec = field(default_factory=ControlSpec)
    """The settings the proxy shares: `[metrics]` window, `[health]`, `[ejection]`, `[retries]`."""
    source: Path | None = None
    description: str = field(default="", metadata=LISTED)

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
