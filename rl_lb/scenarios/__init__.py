"""Scenario files (TOML): one schema for the simulator and the emulated live backends.

`load_scenario(path)` parses and validates a file into a `ScenarioFamily` (numbers may still be
`[low, high]` ranges); `family.sample(rng)` draws one concrete `Scenario`, whose `control` holds
the settings the proxy shares (`rl_lb.control.ControlSpec`). Everything is documented in
docs/scenarios.md. The simulator and the emulated live backends both read scenarios through
here, so the two can never disagree about what a file means.

Modules: `schema` (the concrete dataclasses, each key declared once on its field), `fields` (that
declaration, and drawing a template into a dataclass), `read` (typed, bounded reads with one-line
errors), `parse`, `arrivals` and `shared` (the file's sections), `sample` (`ScenarioFamily`),
`library` (loading by name), `scaling` (`time_scaled`), `cli` (`rl-lb scenario`).
"""

from __future__ import annotations

from rl_lb.scenarios.arrivals import PROCESSES
from rl_lb.scenarios.library import (
    LIBRARY_ENV,
    library_scenarios,
    load_scenario,
    load_scenarios,
    resolve_scenario,
    scenario_library_dir,
)
from rl_lb.scenarios.parse import DISTRIBUTIONS, MAX_BACKENDS
from rl_lb.scenarios.sample import ScenarioFamily
from rl_lb.scenarios.scaling import time_scaled
from rl_lb.scenarios.schema import (
    Arrivals,
    BackendSpec,
    Event,
    HealthSpec,
    MetricsSpec,
    Pauses,
    RateStep,
    Scenario,
    ServiceDist,
)

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
    "time_scaled",
]
