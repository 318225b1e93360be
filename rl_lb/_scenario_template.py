"""A validated scenario file before its `[low, high]` ranges are drawn.

The parser produces these and `ScenarioFamily.sample` consumes them; keeping them apart from the
public dataclasses lets validation happen once, at load time, so sampling can never fail.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "Amount",
    "ArrivalsTemplate",
    "Distribution",
    "Drawer",
    "EventTemplate",
    "FamilyTemplate",
    "GroupTemplate",
    "HealthTemplate",
    "MetricsTemplate",
    "Num",
    "PausesTemplate",
    "Process",
    "ServiceTemplate",
    "StepTemplate",
]

Distribution = Literal["exponential", "lognormal", "pareto", "constant"]
Process = Literal["poisson", "mmpp", "trace"]


class Drawer(Protocol):
    """Picks one value from a range; random for training, the midpoint for summaries."""

    def __call__(self, low: float, high: float, integer: bool) -> float: ...


@dataclass(frozen=True)
class Num:
    """A number from the file: fixed when low == high, else drawn uniformly per episode."""

    low: float
    high: float
    integer: bool = False

    @property
    def is_range(self) -> bool:
        return self.low != self.high

    def draw(self, drawer: Drawer) -> float:
        # Fixed numbers consume no randomness, so adding a range elsewhere in a file does not
        # change how the other ranges are drawn for a given seed more than necessary.
        return drawer(self.low, self.high, self.integer) if self.is_range else self.low

    def draw_int(self, drawer: Drawer) -> int:
        return round(self.draw(drawer))


@dataclass(frozen=True)
class Amount:
    """Traffic written either as `rate` (requests/s) or as `load` (fraction of capacity)."""

    value: Num
    is_load: bool


@dataclass(frozen=True)
class ServiceTemplate:
    dist: Distribution
    mean_s: Num
    cv: Num | None
    shape: Num | None


@dataclass(frozen=True)
class EventTemplate:
    at_s: Num
    until_s: Num
    slowdown: Num
    slowdown_to: Num | None
    error_rate: Num
    error_latency_s: Num
    down: bool


@dataclass(frozen=True)
class PausesTemplate:
    every_s: Num
    duration_s: Num


@dataclass(frozen=True)
class GroupTemplate:
    name: str | None
    count: Num
    concurrency: Num
    service: ServiceTemplate
    queue_limit: Num
    timeout_s: Num
    events: tuple[EventTemplate, ...]
    pauses: PausesTemplate | None


@dataclass(frozen=True)
class StepTemplate:
    at_s: Num
    amount: Amount


@dataclass(frozen=True)
class ArrivalsTemplate:
    process: Process
    base: Amount | None
    """Poisson only: the base rate or load."""
    profile: tuple[StepTemplate, ...]
    phases: tuple[Amount, ...]
    """MMPP only: one rate or load per phase."""
    dwell_s: tuple[Num, ...]
    trace: tuple[float, ...]
    """Trace only: every timestamp in the file, sorted, before cutting at the duration."""


@dataclass(frozen=True)
class MetricsTemplate:
    delay_s: Num
    proxies: Num
    window_s: Num
    ewma_tau_s: Num
    picker_refresh_s: Num


@dataclass(frozen=True)
class HealthTemplate:
    interval_s: Num
    healthy_threshold: Num
    unhealthy_threshold: Num


@dataclass(frozen=True)
class FamilyTemplate:
    name: str
    description: str
    duration_s: Num
    control_interval_s: Num
    shuffle_backends: bool
    arrivals: ArrivalsTemplate
    metrics: MetricsTemplate
    health: HealthTemplate
    groups: tuple[GroupTemplate, ...]
    ranges: int
    """How many numbers in the file are `[low, high]` ranges."""
