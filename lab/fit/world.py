"""The fitted world as a scenario file a person can read and edit, and its fit report.

Every fitted number is written as a `[low, high]` range around it (about two standard errors
of its estimate), so the file is a scenario *family*: training on it draws worlds the data
cannot tell apart from the fitted one. `rl-lb scenario check` runs its midpoints.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lab.fit.backend_fit import BackendFit, fit_backend
from lab.fit.recording import Recording
from rl_lb.types import FloatArray

__all__ = ["RATE_WINDOW_S", "FittedWorld", "backend_name", "fit_world", "rate_profile", "render"]

RATE_WINDOW_S = 10.0
"""Width of the windows the arrival rate profile is measured over."""
RATE_STEP = 0.1
"""A window whose rate differs from the current step's by more than this share starts a step."""


@dataclass(frozen=True)
class FittedWorld:
    name: str
    duration_s: float
    control_interval_s: float
    rate_rps: float
    profile: tuple[tuple[float, float], ...]
    """(at_s, rate) steps after the first window's rate."""
    backends: tuple[BackendFit, ...]
    trace: FloatArray
    """The recorded arrivals (s from the first), for `process = "trace"`."""
    sample: int
    timeout_s: float


def backend_name(url: str) -> str:
    """A scenario name for a backend address: `http://127.0.0.1:9001` → `127.0.0.1-9001`."""
    bare = re.sub(r"^[a-z]+://", "", url)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", bare).strip("-.") or "backend"
    if re.fullmatch(r"b\d+", name):
        name = "backend-" + name
    return name[:64]


def rate_profile(
    arrival_s: FloatArray, duration_s: float, sample: int
) -> tuple[float, tuple[tuple[float, float], ...]]:
    """The arrival rate per `RATE_WINDOW_S` window, merged into steps (first rate, then steps)."""
    edges = np.arange(0.0, duration_s, RATE_WINDOW_S)
    widths = np.minimum(edges + RATE_WINDOW_S, duration_s) - edges
    counts = np.bincount(np.digitize(arrival_s, edges) - 1, minlength=len(edges))[: len(edges)]
    rates = counts * sample / np.maximum(widths, 1e-9)
    if len(rates) > 1 and widths[-1] < RATE_WINDOW_S / 2:  # a stub last window is noise
        rates, edges = rates[:-1], edges[:-1]
    first = float(max(rates[0], 1e-3))
    steps: list[tuple[float, float]] = []
    current = first
    for at, rate in zip(edges[1:], rates[1:], strict=True):
        if rate > 0 and abs(rate - current) > RATE_STEP * current:
            steps.append((float(at), float(rate)))
            current = float(rate)
    return first, tuple(steps)


def fit_world(
    recording: Recording, name: str, control_interval_s: float = 1.0, departures: bool = True
) -> FittedWorld:
    """`departures=False` takes every service time from the queue factor, as for a sampled
    recording (lab/fit/backend_fit.py), to compare the two on one recording."""
    duration = max(recording.duration_s, 1.0)
    fits = []
    for i, url in enumerate(recording.names):
        mine = recording.of(i)
        fits.append(
            fit_backend(
                backend_name(url),
                recording.arrival_s[mine],
                recording.latency_s[mine],
                recording.failed[mine],
                recording.in_flight[mine],
                duration,
                complete=departures and recording.sample == 1,
            )
        )
    rate, profile = rate_profile(recording.arrival_s, duration, recording.sample)
    slowest = float(recording.latency_s.max()) if len(recording.latency_s) else 0.0
    return FittedWorld(
        name=name,
        duration_s=math.ceil(duration),
        control_interval_s=control_interval_s,
        rate_rps=rate,
        profile=profile,
        backends=tuple(fits),
        trace=recording.arrival_s,
        sample=recording.sample,
        timeout_s=max(1.0, math.ceil(slowest * 1.5 * 10) / 10),
    )


def _g(x: float) -> str:
    return f"{x:.4g}"


def _range(low: float, high: float) -> str:
    return f"[{_g(low)}, {_g(high)}]"


def _events(fit: BackendFit, duration: float) -> list[str]:
    """Change windows and the error behaviour as the scenario's (non-overlapping) events."""
    cuts = sorted(
        {0.0, duration, *(c.at_s for c in fit.changes), *(c.until_s for c in fit.changes)}
    )
    if fit.error_rate == 0 and not fit.changes:
        return []
    events = []
    for at, until in itertools.pairwise(cuts):
        if until - at <= 0:
            continue
        slowdown = next((c.slowdown for c in fit.changes if c.at_s <= at < c.until_s), 1.0)
        fields = [f"at_s = {_g(at)}", f"until_s = {_g(until)}"]
        if _g(slowdown) != _g(1.0):  # as written: 1.00001 reads back as 1
            fields.append(f"slowdown = {_g(slowdown)}")
        if fit.error_rate > 0:
            fields += [
                f"error_rate = {_g(fit.error_rate)}",
                f"error_latency_s = {_g(fit.error_latency_s)}",
            ]
        if len(fields) > 2:  # a window between changes, without errors, is no event at all
            events.append("{ " + ", ".join(fields) + " }")
    return events


def render(world: FittedWorld, sources: Sequence[str], trace_file: str | None) -> str:
    """The scenario TOML; `trace_file` (relative to it) makes the arrivals the recorded ones."""
    lines = [
        f'name = "{world.name}"',
        f'description = "Fitted by rl-lb scenario fit from {", ".join(sources)}."',
        f"duration_s = {_g(world.duration_s)}",
        f"control_interval_s = {_g(world.control_interval_s)}",
        "",
        "[arrivals]",
    ]
    if trace_file is not None:
        lines += ['process = "trace"', f'trace = "{trace_file}"']
    else:
        lines += ['process = "poisson"', f"rate = {_g(world.rate_rps)}  # requests/s"]
        if world.profile:
            steps = ", ".join(f"{{ at_s = {_g(a)}, rate = {_g(r)} }}" for a, r in world.profile)
            lines.append(f"profile = [{steps}]")
    for fit in world.backends:
        service = fit.service
        lines += ["", f"[[backends]]  # {fit.requests} requests recorded", f'name = "{fit.name}"']
        if fit.concurrency is None:
            seen = max(fit.concurrency_seen, 1)
            lines.append(
                f"concurrency = [{seen}, {4 * seen}]  # cannot tell: in-flight never passed it"
            )
        else:
            lines.append(f"concurrency = {fit.concurrency}")
        parts = [f'dist = "{service.dist}"', f"mean_s = {_range(*service.mean_range)}"]
        if service.dist == "lognormal":
            parts.append(f"cv = {_range(*service.cv_range)}")
        if service.dist == "pareto":
            parts.append(f"shape = {_g(service.shape)}")
        lines.append("service = { " + ", ".join(parts) + " }")
        lines.append(f"timeout_s = {_g(world.timeout_s)}")
        events = _events(fit, world.duration_s)
        if events:
            lines.append("events = [\n    " + ",\n    ".join(events) + ",\n]")
        for note in fit.notes:
            lines.append(f"# {note}")
    return "\n".join(lines) + "\n"


def write_trace(world: FittedWorld, path: Path) -> None:
    """The recorded arrival times, one a line (a scenario's `process = "trace"` file)."""
    header = "# arrivals recorded by rl-lb serve --record (s from the first)\n"
    path.write_text(header + "\n".join(f"{t:.6f}" for t in world.trace) + "\n")
