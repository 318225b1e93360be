"""Pools of up to 1,000 backends: the scenario limits, their one-line errors, the large library
scenarios and 64 proxies over 100 backends in the simulator (issue 15)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rl_lb.errors import ScenarioError
from rl_lb.scenarios import MAX_BACKENDS, library_scenarios, load_scenario

LIBRARY = {p.stem: p for p in library_scenarios()}
POOL = """
name = "pool"
duration_s = 10
control_interval_s = 1.0

[arrivals]
process = "poisson"
load = 0.5
"""
GROUP = """
[[backends]]
name = "{name}"
count = {count}
concurrency = 2
service = {{ dist = "exponential", mean_s = 0.02 }}
"""


def write(tmp_path: Path, *groups: tuple[str, str]) -> Path:
    """The pool with these (name, count) groups; a group named "" writes `backends = <count>`
    (a top-level key, so before the first table)."""
    path = tmp_path / "pool.toml"
    top = "".join(f"backends = {c}\n" for n, c in groups if not n)
    tables = "".join(GROUP.format(name=n, count=c) for n, c in groups if n)
    path.write_text(top + POOL + tables)
    return path


def test_the_limit_is_1000_backends() -> None:
    assert MAX_BACKENDS == 1000


def test_a_group_of_1000_and_a_count_range_up_to_1000_are_valid(tmp_path: Path) -> None:
    assert load_scenario(write(tmp_path, ("web", "1000"))).max_backends == 1000
    family = load_scenario(write(tmp_path, ("web", "[20, 200]"), ("db", "[1, 3]")))
    assert family.max_backends == 203
    sizes = {len(family.sample(np.random.default_rng(seed)).backends) for seed in range(12)}
    assert len(sizes) > 6
    assert all(21 <= n <= 203 for n in sizes)


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ((("web", "1001"),), "backends[0].count: 1001 is out of range: must be >= 1 and <= 1000"),
        ((("web", "[20, 1200]"),), "backends[0].count"),
        (
            (("web", "600"), ("db", "[300, 500]")),
            "backends: up to 1100 backends in total, more than the maximum 1000",
        ),
        ((("web", "0"),), "backends[0].count: 0 is out of range"),
        ((), "backends: missing required key"),
        ((("", "[]"),), "backends: no backends"),
    ],
)
def test_too_many_or_no_backends_is_one_line_and_exit_2(
    tmp_path: Path, groups: tuple[tuple[str, str], ...], message: str
) -> None:
    path = write(tmp_path, *groups)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
    done = subprocess.run(
        [sys.executable, "-m", "rl_lb.cli", "scenario", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]
    assert str(path) in lines[0]


@pytest.mark.parametrize(
    ("name", "low", "high", "proxies"),
    [
        ("large-heterogeneous", 90, 110, 1),
        ("large-slowdown", 190, 210, 1),
        ("large-many-proxies", 90, 110, 16),
    ],
)
def test_large_library_scenarios(name: str, low: int, high: int, proxies: int) -> None:
    family = load_scenario(LIBRARY[name])
    scenario = family.sample(np.random.default_rng(0))
    assert low <= len(scenario.backends) <= high == family.max_backends
    assert scenario.metrics.proxies == proxies


def test_large_slowdown_slows_a_tenth_of_the_pool_5x() -> None:
    scenario = load_scenario(LIBRARY["large-slowdown"]).sample(np.random.default_rng(1))
    slowed = [b for b in scenario.backends if b.events]
    assert len(slowed) == 20
    assert 0.09 <= len(slowed) / len(scenario.backends) <= 0.11
    assert all(b.events[0].slowdown == 5.0 for b in slowed)


def _pool_of_100(tmp_path: Path, proxies: int, refresh_s: float) -> Path:
    """large-many-proxies with exactly 100 M/M/1 backends (10 ms) at 90% load, 20 s."""
    path = tmp_path / f"pool-100-{proxies}.toml"
    path.write_text(
        LIBRARY["large-many-proxies"]
        .read_text()
        .replace("proxies = 16", f"proxies = {proxies}\npicker_refresh_s = {refresh_s}")
        .replace("count = [90, 110]", "count = 100")
        .replace("duration_s = 120", "duration_s = 20")
        .replace("load = [0.7, 0.8]", "load = 0.9")
        .replace("concurrency = 2", "concurrency = 1")
        .replace(
            'dist = "lognormal", mean_s = [0.018, 0.022], cv = 1.0',
            'dist = "exponential", mean_s = 0.010',
        )
    )
    return path


def test_64_proxies_over_100_backends_run_in_the_simulator(tmp_path: Path) -> None:
    from envs.evaluate import evaluate

    path = _pool_of_100(tmp_path, proxies=64, refresh_s=0.0)
    scenario = load_scenario(path).sample(np.random.default_rng(0))
    assert (scenario.metrics.proxies, len(scenario.backends)) == (64, 100)
    records = {r["balancer"]: r for r in evaluate([path], ["least-request", "random"], [1])}
    assert records["least-request"]["requests"] > 150_000
    # each replica counts only its own requests in flight, yet p2c still beats random
    assert records["least-request"]["mean_ms"] < 0.8 * records["random"]["mean_ms"]


def test_jsq_still_herds_on_stale_views_at_100_backends(tmp_path: Path) -> None:
    """Views refreshed every 50 ms (5 service times): greedy jsq sends the whole refresh period
    to the backends that looked shortest (reference: 12.0 vs p2c's 4.01 service times)."""
    from envs.evaluate import evaluate

    path = _pool_of_100(tmp_path, proxies=1, refresh_s=0.05)
    records = {r["balancer"]: r for r in evaluate([path], ["least-request", "jsq"], [1])}
    assert records["jsq"]["mean_ms"] > 2.0 * records["least-request"]["mean_ms"]
