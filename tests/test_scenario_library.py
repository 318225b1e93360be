"""The shipped scenario library (`scenarios/*.toml`) and its table in docs/scenarios.md."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

from rl_lb.scenarios import Scenario, load_scenario, scenario_library_dir
from rl_lb.scenarios.arrivals import ARRIVAL_KEYS
from rl_lb.scenarios.parse import (
    BACKEND_KEYS,
    EVENT_KEYS,
    PAUSES_KEYS,
    SECTION_KEYS,
    SERVICE_KEYS,
    TOP_KEYS,
)
from rl_lb.scenarios.shared import shared_keys

LIBRARY = sorted(scenario_library_dir().glob("*.toml"))
NAMES = [p.stem for p in LIBRARY]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "scenarios.md"
SEEDS = range(12)


def samples(name: str) -> list[Scenario]:
    family = load_scenario(name)
    return [family.sample(np.random.default_rng(seed)) for seed in SEEDS]


def by_name(scenario: Scenario, prefix: str) -> list[int]:
    return [i for i, b in enumerate(scenario.backends) if b.name.startswith(prefix)]


def test_library_has_the_issues_scenarios() -> None:
    assert set(NAMES) == {
        "steady",
        "heterogeneous",
        "slow-backend",
        "degrading",
        "fast-failure",
        "bursty",
        "stale-metrics",
        "gc-pauses",
        "many-proxies",
        "park",
        "large-heterogeneous",
        "large-slowdown",
        "large-many-proxies",
    }


@pytest.mark.parametrize("path", LIBRARY, ids=NAMES)
def test_every_file_loads_samples_and_fits_a_live_run(path: Path) -> None:
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    assert raw["name"] == path.stem
    assert raw["shuffle_backends"] is True
    family = load_scenario(path)
    assert family.description
    assert "\n" not in family.description
    large = path.stem.startswith("large-")  # simulator worlds of ~100-200 backends (issue 15)
    for s in samples(str(path)):
        assert 1 <= len(s.backends) <= (210 if large else 16)
        assert (s.duration_s, s.control_interval_s) == (120, 1.0)
        assert s.timeout_s == (5.0 if path.stem == "park" else 1.0)
        peak = max((s.arrivals.rate, *s.arrivals.mmpp_rates, *(p.rate for p in s.arrivals.profile)))
        assert peak <= (25_000 if large else 1500)
        assert all(0.001 <= b.service.mean_s <= 0.1 for b in s.backends if b.name != "slow")


@pytest.mark.parametrize("name", NAMES)
def test_shuffling_moves_the_trouble_around(name: str) -> None:
    first_names = {s.backends[0].name for s in samples(name)}
    assert len(first_names) > 2


def _load(s: Scenario) -> float:
    return s.arrivals.rate / s.capacity_rps


def test_steady_and_many_proxies() -> None:
    for s in samples("steady"):
        assert len(s.backends) == 4
        assert len({(b.concurrency, b.service) for b in s.backends}) == 1
        assert 0.65 <= _load(s) <= 0.75
    for s in samples("many-proxies"):
        assert (len(s.backends), s.metrics.proxies) == (8, 8)


@pytest.mark.parametrize("name", ["heterogeneous", "stale-metrics"])
def test_heterogeneous_capacities_are_1_1_2_4_8(name: str) -> None:
    for s in samples(name):
        capacities = sorted(b.capacity_rps for b in s.backends)
        assert [c / capacities[0] for c in capacities] == pytest.approx([1, 1, 2, 4, 8])
        assert 0.75 <= _load(s) <= 0.85
        assert s.metrics.delay_s == (0.5 if name == "stale-metrics" else 0.0)


def test_slow_backend_is_ten_times_slower() -> None:
    for s in samples("slow-backend"):
        (slow,) = by_name(s, "slow")
        fast = s.backends[by_name(s, "fast")[0]]
        assert len(s.backends) == 10
        assert 9 <= s.backends[slow].service.mean_s / fast.service.mean_s <= 11


def test_degrading_ramps_one_backend_from_1_to_5_over_a_minute() -> None:
    for s in samples("degrading"):
        (i,) = by_name(s, "degrading")
        (event,) = s.backends[i].events
        assert (event.slowdown, event.slowdown_to) == (1.0, 5.0)
        assert 50 <= event.until_s - event.at_s <= 70
        assert event.until_s < s.duration_s
        assert sum(bool(b.events) for b in s.backends) == 1


def test_fast_failure_errors_half_its_requests_for_most_of_the_episode() -> None:
    for s in samples("fast-failure"):
        (i,) = by_name(s, "flaky")
        (event,) = s.backends[i].events
        assert (event.error_rate, event.error_latency_s) == (0.5, 0.001)
        assert event.until_s - event.at_s >= 0.75 * s.duration_s


def test_bursty_switches_between_40_and_110_percent() -> None:
    for s in samples("bursty"):
        loads = [r / s.capacity_rps for r in s.arrivals.mmpp_rates]
        assert loads == pytest.approx([0.4, 1.1])
        assert s.arrivals.process == "mmpp"


def test_gc_pauses_stall_for_200_ms() -> None:
    for s in samples("gc-pauses"):
        paused = [b.pauses for b in s.backends if b.pauses is not None]
        assert len(paused) == 3
        assert all(p.duration_s == 0.2 and 4 <= p.every_s <= 6 for p in paused)


def test_park_is_parks_setup() -> None:
    for s in samples("park"):
        speeds = sorted(b.capacity_rps for b in s.backends)
        assert [x / speeds[-1] * 1.05 for x in speeds] == pytest.approx(
            [0.15 + 0.1 * k for k in range(10)]
        )
        assert {(b.concurrency, b.service.dist, b.service.shape) for b in s.backends} == {
            (1, "pareto", 1.5)
        }
        assert 0.89 <= _load(s) <= 0.93


def test_docs_library_table_matches_the_files() -> None:
    text = DOCS.read_text(encoding="utf-8")
    section = text[text.index("## The library") :]
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| (\d+) \|", section, re.M))
    loads = dict(re.findall(r"^\| `([a-z-]+)` \| \d+ \| ([^|]+) \|", section, re.M))
    assert sorted(rows) == NAMES
    for name in NAMES:
        nominal = load_scenario(name).nominal()
        assert int(rows[name]) == len(nominal.backends)
        assert f"{_load(nominal):.0%}" in loads[name]


def test_docs_describe_every_key() -> None:
    """A row for every key: the scenario's own, and the shared ones (`section.key`)."""
    text = DOCS.read_text(encoding="utf-8")
    own = {section: set(keys) - set(shared_keys(section)) for section, keys in SECTION_KEYS.items()}
    keys = [
        *TOP_KEYS,
        *ARRIVAL_KEYS,
        *(k for section in own.values() for k in section),
        *BACKEND_KEYS,
        *SERVICE_KEYS,
        *EVENT_KEYS,
        *PAUSES_KEYS,
    ]
    cells = {k: (f"| `{k}` |", f"| `[{k}]` |", f"| `[[{k}]]` |") for k in keys}
    cells |= {
        f"{section}.{k}": (f"| `{section}.{k}` |",)
        for section in SECTION_KEYS
        for k in shared_keys(section)
    }
    missing = [k for k, forms in cells.items() if not any(f in text for f in forms)]
    assert not missing, missing


def test_library_checks_health_once_a_second_as_it_always_has() -> None:
    """The proxy's 5 s default came later; the library keeps the simulator's results."""
    for path in LIBRARY:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        assert raw["health"]["interval_s"] == 1.0, path.name
        assert load_scenario(path).nominal().control.health.interval_s == 1.0
