"""The world generator: seeded scenario files drawn from one documented distribution.

`generate_world(seed, index)` draws world `index` of generator seed `seed` from a numpy Generator
seeded by (seed, index) and nothing else, so a world is the same whatever else was generated,
and `world.text` is the same bytes on every machine. The distribution (docs/scenarios.md,
"Generated worlds") mixes pool sizes, capacity mixes, traffic shapes, trouble, metric delay and
proxy replicas; every world is a valid scenario file (`world.family()` parses it with the one
scenario schema) whose traffic is sized against the capacity left at the worst moment of its
trouble, so some balancer can always serve it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from envs.worlds.pool import EventDraft, GroupDraft, PoolDraft, draw_pool, sig
from envs.worlds.trouble import draw_trouble
from rl_lb.errors import ConfigError
from rl_lb.scenarios import ScenarioFamily

__all__ = [
    "ARRIVAL_KINDS",
    "DURATION_S",
    "HELDOUT_SEED",
    "MAX_COUNT",
    "World",
    "generate_world",
    "generate_worlds",
    "world_name",
    "write_worlds",
]

DURATION_S = 120.0
"""Every world runs as long as the library's scenarios."""
ARRIVAL_KINDS = ("steady", "ramp", "bursts")
STEADY_LOAD = (0.2, 0.8)
"""Poisson load as a share of the capacity left (usable: see `GroupDraft.capacity_at`) at the
worst moment of the trouble."""
RAMP_PEAK = (0.5, 0.85)
BURST_QUIET, BURST_PEAK = (0.2, 0.6), (0.7, 1.05)
"""MMPP phases, shares of the capacity left: quiet spells and brief bursts (above 1: overload)."""
BURST_DWELL_S, QUIET_DWELL_S = (1.0, 3.0), (6.0, 20.0)
DELAYED_METRICS, MANY_PROXIES, OLD_PICKER_VIEW = 0.3, 0.25, 0.15
"""How often a world has stale metrics, several proxy replicas, and a picker with an old view."""
MAX_COUNT = 100_000
"""Worlds one `rl-lb scenario generate` may write."""
HELDOUT_SEED = 1_000_000
"""The first generator seed of the held-out worlds (`training.heldout`): training draws its
worlds from seeds below it only, so no held-out world is ever trained on."""


@dataclass(frozen=True)
class World:
    """One generated world: its file name, what was drawn, and the scenario file's text."""

    seed: int
    index: int
    name: str
    trouble: tuple[str, ...]
    """The kind of each trouble drawn (`TROUBLE_KINDS`), in order."""
    arrivals: str
    mix: str
    size: int
    text: str

    @property
    def file_name(self) -> str:
        return f"{self.name}.toml"

    def family(self, path: Path | None = None) -> ScenarioFamily:
        """The world parsed by the scenario schema (raises `ScenarioError` if it were invalid)."""
        return ScenarioFamily(tomllib.loads(self.text), path or Path(self.file_name))


def world_name(seed: int, index: int) -> str:
    return f"gen-{seed}-{index:04d}"


def _num(x: float) -> str:
    """A number as the file shows it: integral values without a decimal point."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


def _shares(values: list[float], left: float) -> list[float]:
    """Shares of the capacity left, as loads (shares of the nominal capacity) in the file."""
    return [sig(v * left, 3) for v in values]


def _arrivals(rng: np.random.Generator, left: float) -> tuple[str, list[str], list[str]]:
    """(kind, TOML lines of `[arrivals]`, comment lines) with loads bounded by `left`."""
    kind = ARRIVAL_KINDS[int(rng.integers(len(ARRIVAL_KINDS)))]
    if kind == "steady":
        load = float(rng.uniform(*STEADY_LOAD))
        lines = ['process = "poisson"', f"load = {_num(_shares([load], left)[0])}"]
        return kind, lines, [f"traffic: Poisson at {load:.0%} of the capacity left"]
    if kind == "ramp":
        peak = float(rng.uniform(*RAMP_PEAK))
        low = peak * float(rng.uniform(0.2, 0.6))
        up = rng.random() < 0.5
        steps = int(rng.integers(4, 9))
        times = np.linspace(0.1, 0.8, steps) * DURATION_S
        levels = np.linspace(low, peak, steps + 1) if up else np.linspace(peak, low, steps + 1)
        loads = _shares([float(v) for v in levels], left)
        profile = ", ".join(
            f"{{ at_s = {_num(round(float(t), 1))}, load = {_num(v)} }}"
            for t, v in zip(times, loads[1:], strict=True)
        )
        lines = ['process = "poisson"', f"load = {_num(loads[0])}", f"profile = [{profile}]"]
        ends = (low, peak) if up else (peak, low)
        text = f"traffic: Poisson ramp {ends[0]:.0%} to {ends[1]:.0%} of the capacity left"
        return kind, lines, [f"{text} in {steps} steps"]
    quiet, burst = float(rng.uniform(*BURST_QUIET)), float(rng.uniform(*BURST_PEAK))
    dwell = [sig(float(rng.uniform(*QUIET_DWELL_S)), 3), sig(float(rng.uniform(*BURST_DWELL_S)), 3)]
    loads = _shares([quiet, burst], left)
    lines = [
        'process = "mmpp"',
        f"loads = [{_num(loads[0])}, {_num(loads[1])}]",
        f"dwell_s = [{_num(dwell[0])}, {_num(dwell[1])}]",
    ]
    text = f"traffic: MMPP, {quiet:.0%} of the capacity left for ~{dwell[0]:g} s, bursts of"
    return kind, lines, [f"{text} {burst:.0%} for ~{dwell[1]:g} s"]


def _metrics(rng: np.random.Generator) -> tuple[list[str], list[str]]:
    """TOML lines of `[metrics]` and comment lines: stale metrics, proxy replicas, old views."""
    lines, notes = [], []
    if rng.random() < DELAYED_METRICS:
        delay = round(float(rng.uniform(0.1, 1.0)), 2)
        lines.append(f"delay_s = {_num(delay)}")
        notes.append(f"metrics {delay:g} s old")
    if rng.random() < MANY_PROXIES:
        proxies = int(rng.integers(2, 13))
        lines.append(f"proxies = {proxies}")
        notes.append(f"{proxies} proxy replicas")
    if rng.random() < OLD_PICKER_VIEW:
        refresh = round(float(rng.uniform(0.1, 1.0)), 2)
        lines.append(f"picker_refresh_s = {_num(refresh)}")
        notes.append(f"pickers see load refreshed every {refresh:g} s")
    return lines, notes


def _event(event: EventDraft) -> str:
    keys = [f"at_s = {_num(event.at_s)}", f"until_s = {_num(event.until_s)}"]
    if event.slowdown != 1.0 or event.slowdown_to is not None:
        keys.append(f"slowdown = {_num(event.slowdown)}")
    if event.slowdown_to is not None:
        keys.append(f"slowdown_to = {_num(event.slowdown_to)}")
    if event.error_rate:
        keys += [f"error_rate = {_num(event.error_rate)}"]
        keys += [f"error_latency_s = {_num(event.error_latency_s)}"]
    if event.down:
        keys.append("down = true")
    return "{ " + ", ".join(keys) + " }"


def _service(pool: PoolDraft, group: GroupDraft) -> str:
    extra = {"lognormal": f", cv = {_num(pool.cv)}", "pareto": f", shape = {_num(pool.shape)}"}
    return f'{{ dist = "{pool.dist}", mean_s = {_num(group.mean_s)}{extra.get(pool.dist, "")} }}'


def _group(pool: PoolDraft, group: GroupDraft) -> list[str]:
    each = group.concurrency / group.mean_s
    label = "fastest tier" if group.tier == 0 else f"tier {group.tier}"
    comment = "; ".join([f"{label}, {each:,.0f} req/s each", *group.notes])
    lines = [
        "",
        f"[[backends]]  # {comment}",
        f'name = "{group.name}"',
        f"count = {group.count}",
        f"concurrency = {group.concurrency}",
        f"timeout_s = {_num(pool.timeout_s)}",
        f"service = {_service(pool, group)}",
    ]
    if group.events:
        lines.append(f"events = [{', '.join(_event(e) for e in group.events)}]")
    if group.pauses is not None:
        every, length = group.pauses
        lines.append(f"pauses = {{ every_s = {_num(every)}, duration_s = {_num(length)} }}")
    return lines


def generate_world(seed: int, index: int) -> World:
    """World `index` of generator seed `seed`; its randomness is (seed, index) alone."""
    rng = np.random.default_rng([seed, index])
    pool = draw_pool(rng, DURATION_S)
    trouble = draw_trouble(rng, pool)
    nominal, worst = pool.capacity_rps, pool.worst_capacity_rps()
    left = worst / nominal
    arrival_kind, arrival_lines, arrival_notes = _arrivals(rng, left)
    metric_lines, metric_notes = _metrics(rng)
    name = world_name(seed, index)
    kinds = [kind for kind, _ in trouble]
    dist = {"lognormal": f"lognormal cv {pool.cv:g}", "pareto": f"pareto shape {pool.shape:g}"}
    description = (
        f"Generated: {pool.size} backends ({pool.mix}), {arrival_kind} traffic, "
        f"trouble: {', '.join(kinds) or 'none'}."
    )
    header = [
        f"# World {index} of `rl-lb scenario generate --seed {seed}`: a plain scenario file,",
        "# replay it with `rl-lb evaluate --scenario FILE`. What was drawn:",
        f"# pool: {pool.size} backends, {pool.mix} ({pool.tiers} tier(s)), service "
        f"{dist.get(pool.dist, pool.dist)}, client timeout {pool.timeout_s:g} s",
        f"# capacity: {nominal:,.0f} req/s nominal, {worst:,.0f} req/s ({left:.0%}) usable at the "
        "worst moment of the trouble; loads below are shares of the nominal capacity",
        *(f"# {note}" for note in arrival_notes),
        *(f"# trouble ({kind}): {text}" for kind, text in trouble),
        *(["# trouble: none"] if not trouble else []),
        *(f"# {note}" for note in metric_notes),
    ]
    lines = [
        *header,
        f'name = "{name}"',
        f'description = "{description}"',
        f"duration_s = {_num(DURATION_S)}",
        "control_interval_s = 1.0",
        "shuffle_backends = true",
        "",
        "[arrivals]",
        *arrival_lines,
    ]
    if metric_lines:
        lines += ["", "[metrics]", *metric_lines]
    lines += ["", "[health]", "interval_s = 1.0  # one check a second, as the library"]
    for group in pool.groups:
        lines += _group(pool, group)
    return World(
        seed=seed,
        index=index,
        name=name,
        trouble=tuple(kinds),
        arrivals=arrival_kind,
        mix=pool.mix,
        size=pool.size,
        text="\n".join(lines) + "\n",
    )


def generate_worlds(seed: int, count: int, first: int = 0) -> list[World]:
    """Worlds `first` to `first + count - 1` of generator seed `seed`."""
    return [generate_world(seed, index) for index in range(first, first + count)]


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{str(out)!r} is a file", "name a folder")
    parent = out.parent if str(out.parent) else Path(".")
    if not out.exists() and not parent.is_dir():
        raise ConfigError("--out", f"folder {str(parent)!r} does not exist", "create it first")


def write_worlds(seed: int, count: int, out: Path, first: int = 0) -> list[Path]:
    """Write worlds `first`..`first + count - 1` of `seed` into `out` (created if its parent
    exists); each is parsed by the scenario schema before it is written."""
    if not 1 <= count <= MAX_COUNT:
        raise ConfigError("--count", f"{count} worlds", f"give 1 to {MAX_COUNT}")
    if seed < 0:
        raise ConfigError("--seed", f"negative seed {seed}", "give a seed >= 0")
    if first < 0:
        raise ConfigError("first", f"negative world index {first}", "give an index >= 0")
    _check_out(out)
    try:
        out.mkdir(exist_ok=True)
    except OSError as error:
        what = f"cannot create {str(out)!r}: {error.strerror}"
        raise ConfigError("--out", what, "choose a writable folder") from error
    paths = []
    for world in generate_worlds(seed, count, first):
        path = out / world.file_name
        world.family(path)
        try:
            path.write_text(world.text, encoding="utf-8")
        except OSError as error:
            raise ConfigError(
                "--out", f"cannot write {str(path)!r}: {error.strerror}", ""
            ) from error
        paths.append(path)
    return paths
