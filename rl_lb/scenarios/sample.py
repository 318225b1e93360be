"""`ScenarioFamily`: a validated file whose ranges are drawn into concrete `Scenario`s.

The draw order is fixed (top level, groups in file order, arrivals, metrics, the shared control
settings, then the shuffle) and fixed numbers consume no randomness, so one seed always gives
the same scenario.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np

from rl_lb.scenarios.arrivals import draw_arrivals
from rl_lb.scenarios.fields import Drawer
from rl_lb.scenarios.parse import FamilyTemplate, GroupTemplate, parse_family
from rl_lb.scenarios.schema import BackendSpec, Scenario

__all__ = ["ScenarioFamily"]


def _random_drawer(rng: np.random.Generator) -> Drawer:
    def draw(low: float, high: float, integer: bool) -> float:
        if integer:
            return float(rng.integers(int(low), int(high), endpoint=True))
        return float(rng.uniform(low, high))

    return draw


def _midpoint(low: float, high: float, integer: bool) -> float:
    return float((int(low) + int(high)) // 2) if integer else (low + high) / 2


def _backends(groups: tuple[GroupTemplate, ...], draw: Drawer) -> list[BackendSpec]:
    """Expand each group; its numbers are drawn once, so a group stays homogeneous."""
    backends: list[BackendSpec] = []
    for group in groups:
        count = group.count.draw_int(draw)
        spec = group.backend.draw(draw)
        for i in range(count):
            if group.name is None:
                name = f"b{len(backends)}"
            else:
                name = f"{group.name}-{i}" if group.count.high > 1 else group.name
            backends.append(replace(spec, name=name))
    return backends


def _build(
    t: FamilyTemplate, draw: Drawer, rng: np.random.Generator | None, source: Path | None
) -> Scenario:
    duration = t.duration_s.draw(draw)
    control_interval = t.control_interval_s.draw(draw)
    backends = _backends(t.groups, draw)
    capacity = sum(b.capacity_rps for b in backends)
    arrivals = draw_arrivals(t.arrivals, capacity, duration, draw)
    metrics = t.metrics.draw(draw)
    control = t.control.draw(draw)
    if rng is not None and t.shuffle_backends:
        backends = [backends[i] for i in rng.permutation(len(backends))]
    return Scenario(
        name=t.name,
        duration_s=duration,
        control_interval_s=control_interval,
        arrivals=arrivals,
        metrics=metrics,
        backends=tuple(backends),
        control=control,
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
