"""The scenario parser, validator and sampler (rl_lb.scenarios) and `rl-lb scenario`."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rl_lb.cli
from rl_lb import control, scenarios
from rl_lb.control import ControlSpec, EjectionSettings, MetricsSettings, RetrySettings
from rl_lb.errors import ScenarioError
from rl_lb.scenarios import (
    MAX_BACKENDS,
    ScenarioFamily,
    library,
    load_scenario,
    load_scenarios,
    resolve_scenario,
    scenario_library_dir,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "scenarios.md"
BASE = """\
name = "t"
duration_s = 100
control_interval_s = 1.0
[arrivals]
process = "poisson"
rate = 100
profile = [{ at_s = 50, rate = 200 }]
[metrics]
proxies = 1
[health]
interval_s = 1.0
[[backends]]
name = "web"
count = 2
concurrency = 4
queue_limit = 10
timeout_s = 1.0
service = { dist = "lognormal", mean_s = 0.01, cv = 1.0 }
events = [{ at_s = 10, until_s = 20, slowdown = 2.0 }]
pauses = { every_s = 5.0, duration_s = 0.2 }
[[backends]]
concurrency = 1
service = { dist = "pareto", mean_s = 0.02, shape = 1.5 }
"""


def edit(*changes: tuple[str, str]) -> str:
    text = BASE
    for old, new in changes:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def write(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_base_document_parses_into_the_dataclasses(tmp_path: Path) -> None:
    family = load_scenario(write(tmp_path, BASE))
    assert (family.name, family.randomised, family.max_backends) == ("t", 0, 3)
    s = family.sample(np.random.default_rng(0))
    assert [b.name for b in s.backends] == ["web-0", "web-1", "b2"]
    web, other = s.backends[0], s.backends[2]
    assert (web.concurrency, web.queue_limit, web.timeout_s) == (4, 10, 1.0)
    assert (web.service.dist, web.service.mean_s, web.service.cv) == ("lognormal", 0.01, 1.0)
    assert web.events == (scenarios.Event(at_s=10, until_s=20, slowdown=2.0),)
    assert web.pauses == scenarios.Pauses(every_s=5.0, duration_s=0.2)
    assert (other.service.dist, other.service.shape, other.queue_limit) == ("pareto", 1.5, 1000)
    assert s.arrivals == scenarios.Arrivals("poisson", 100.0, (scenarios.RateStep(50, 200),))
    assert s.metrics == scenarios.MetricsSpec()
    assert s.control == ControlSpec(health=scenarios.HealthSpec(interval_s=1.0))
    assert (s.duration_s, s.control_interval_s, s.source) == (100, 1.0, family.source)
    assert s.capacity_rps == pytest.approx(2 * 400 + 50)


def test_load_resolves_against_the_sampled_pool_capacity(tmp_path: Path) -> None:
    text = edit(
        (
            "rate = 100\nprofile = [{ at_s = 50, rate = 200 }]",
            "load = 0.5\nprofile = [{ at_s = 50, load = 1.1 }]",
        ),
    )
    s = load_scenario(write(tmp_path, text)).sample(np.random.default_rng(0))
    assert s.capacity_rps == pytest.approx(850.0)
    assert s.arrivals.rate == pytest.approx(425.0)
    assert s.arrivals.profile[0].rate == pytest.approx(935.0)


def test_mmpp_rates_are_resolved_and_the_mean_is_dwell_weighted(tmp_path: Path) -> None:
    text = edit(
        (
            'process = "poisson"\nrate = 100\nprofile = [{ at_s = 50, rate = 200 }]',
            'process = "mmpp"\nloads = [0.4, 1.0]\ndwell_s = [6, 2]',
        )
    )
    a = load_scenario(write(tmp_path, text)).sample(np.random.default_rng(0)).arrivals
    assert a.mmpp_rates == pytest.approx((340.0, 850.0))
    assert a.mmpp_dwell_s == (6, 2)
    assert a.rate == pytest.approx((340.0 * 6 + 850.0 * 2) / 8)


def test_trace_is_read_relative_to_the_file_and_cut_at_the_duration(tmp_path: Path) -> None:
    (tmp_path / "traces").mkdir()
    (tmp_path / "traces" / "t.csv").write_text("# seconds\n0.5\n1.0\n\n99.5\n100.0\n150\n")
    text = edit(
        (
            'process = "poisson"\nrate = 100\nprofile = [{ at_s = 50, rate = 200 }]',
            'process = "trace"\ntrace = "traces/t.csv"',
        )
    )
    a = load_scenario(write(tmp_path, text)).sample(np.random.default_rng(0)).arrivals
    assert a.trace == (0.5, 1.0, 99.5)
    assert a.rate == pytest.approx(3 / 100)


def test_ramp_and_error_events_keep_their_fields(tmp_path: Path) -> None:
    event = (
        "{ at_s = 10, until_s = 20, slowdown = 1.0, slowdown_to = 5.0 }, "
        "{ at_s = 30, until_s = 40, error_rate = 0.5, error_latency_s = 0.002 }, "
        "{ at_s = 50, until_s = 60, down = true }"
    )
    text = edit(("{ at_s = 10, until_s = 20, slowdown = 2.0 }", event))
    events = (
        load_scenario(write(tmp_path, text)).sample(np.random.default_rng(0)).backends[0].events
    )
    assert events == (
        scenarios.Event(10, 20, slowdown=1.0, slowdown_to=5.0),
        scenarios.Event(30, 40, error_rate=0.5, error_latency_s=0.002),
        scenarios.Event(50, 60, down=True),
    )


def test_metrics_health_and_defaults_for_constant_and_exponential(tmp_path: Path) -> None:
    text = edit(
        (
            "proxies = 1",
            "proxies = 3\ndelay_s = 0.5\nwindow_s = 5\newma_tau_s = 2\npicker_refresh_s = 0.25",
        ),
        (
            "[health]\ninterval_s = 1.0",
            "[health]\ninterval_s = 2.0\nhealthy_threshold = 3\nunhealthy_threshold = 4",
        ),
        ('dist = "lognormal", mean_s = 0.01, cv = 1.0', 'dist = "constant", mean_s = 0.01'),
        ('dist = "pareto", mean_s = 0.02, shape = 1.5', 'dist = "exponential", mean_s = 0.02'),
    )
    s = load_scenario(write(tmp_path, text)).sample(np.random.default_rng(0))
    assert s.metrics == scenarios.MetricsSpec(0.5, 3, 0.25)
    assert s.control.metrics == MetricsSettings(window_s=5.0, ewma_tau_s=2.0)
    health = scenarios.HealthSpec(interval_s=2.0, healthy_threshold=3, unhealthy_threshold=4)
    assert s.control.health == health
    assert (s.backends[0].service.cv, s.backends[2].service.cv) == (0.0, 1.0)


def test_every_shared_key_is_read_from_its_section(tmp_path: Path) -> None:
    """Each `Setting.scenario` key reaches `Scenario.control`: write twice every default."""
    lines: dict[str, list[str]] = {}
    expected: dict[str, dict[str, Any]] = {}
    for section, f, info in control.spec_settings():
        if info.scenario is None:
            continue
        file_section, key = info.scenario.split(".")
        value = f.default * 2 if f.default * 2 <= info.maximum else f.default / 2  # a quantile
        lines.setdefault(file_section, []).append(f"{key} = {value!r}")
        expected.setdefault(section, {})[f.name] = value
    tables = "".join(f"[{name}]\n" + "\n".join(keys) + "\n" for name, keys in lines.items())
    text = edit(("[metrics]\nproxies = 1\n[health]\ninterval_s = 1.0\n", tables))
    s = load_scenario(write(tmp_path, text)).sample(np.random.default_rng(0))
    defaults = ControlSpec()
    assert s.control == ControlSpec(
        **{name: replace(getattr(defaults, name), **kw) for name, kw in expected.items()}
    )
    assert s.metrics == scenarios.MetricsSpec()
    assert type(s.control.retries.retries) is int


def test_shared_sections_left_out_keep_the_proxys_defaults(tmp_path: Path) -> None:
    text = edit(("[health]\ninterval_s = 1.0\n", "[ejection]\nconsecutive_failures = 3\n"))
    s = load_scenario(write(tmp_path, text)).nominal()
    assert s.control == ControlSpec(ejection=EjectionSettings(consecutive_failures=3))
    assert s.control.health.interval_s == 5.0


def test_shared_settings_may_be_ranges_and_every_draw_is_valid(tmp_path: Path) -> None:
    shared = (
        "[health]\ninterval_s = [0.5, 2]\nunhealthy_threshold = [1, 3]\n"
        "[ejection]\nbase_ejection_s = [10, 60]\nmax_ejection_s = [60, 120]\n"
        "[retries]\nbudget = [0.1, 0.3]"
    )
    family = load_scenario(write(tmp_path, edit(("[health]\ninterval_s = 1.0", shared))))
    assert family.randomised == 5
    thresholds = set()
    for seed in range(40):
        c = family.sample(np.random.default_rng(seed)).control
        assert 0.5 <= c.health.interval_s <= 2.0
        assert type(c.health.unhealthy_threshold) is int
        thresholds.add(c.health.unhealthy_threshold)
        assert 10 <= c.ejection.base_ejection_s <= c.ejection.max_ejection_s <= 120
        assert 0.1 <= c.retries.budget <= 0.3
    assert thresholds == {1, 2, 3}
    nominal = family.nominal().control
    assert (nominal.health.interval_s, nominal.health.unhealthy_threshold) == (1.25, 2)
    assert nominal.retries.budget == pytest.approx(0.2)
    assert replace(nominal.retries, budget=0.2) == RetrySettings()


def test_time_scaling_compresses_the_shared_memory_but_not_below_the_proxys_shortest_check(
    tmp_path: Path,
) -> None:
    s = load_scenario(write(tmp_path, BASE)).nominal()
    half = scenarios.time_scaled(s, 0.5)
    assert (half.control.metrics.window_s, half.control.metrics.ewma_tau_s) == (5.0, 5.0)
    assert half.control.health.interval_s == 0.5
    guard = half.control.outcome_guard
    assert (guard.backoff_s, guard.max_backoff_s) == (15.0, 300.0)
    assert half.control.ejection == s.control.ejection  # hardware and policy, not timeline
    assert half.control.retries == s.control.retries
    tiny = scenarios.time_scaled(s, 0.01)
    assert tiny.control.health.interval_s == 0.05  # health.interval_s's minimum, not 0.01 s
    assert tiny.control.metrics.window_s == pytest.approx(0.1)


RANGED = edit(
    ("duration_s = 100", "duration_s = [90, 110]"),
    ("rate = 100", "rate = [80, 120]"),
    ("count = 2", "count = [1, 5]"),
    ("concurrency = 4", "concurrency = [2, 6]"),
    ("mean_s = 0.01", "mean_s = [0.005, 0.015]"),
    ("at_s = 10, until_s = 20", "at_s = [5, 15], until_s = [16, 30]"),
    ("proxies = 1", "proxies = [1, 4]"),
)


def test_ranges_are_drawn_within_bounds_and_integers_stay_integers(tmp_path: Path) -> None:
    family = load_scenario(write(tmp_path, RANGED))
    assert (family.randomised, family.max_backends) == (8, 6)
    counts, rates = set(), []
    for seed in range(200):
        s = family.sample(np.random.default_rng(seed))
        web = [b for b in s.backends if b.name.startswith("web")]
        counts.add(len(web))
        assert 90 <= s.duration_s <= 110
        rates.append(s.arrivals.rate)
        assert type(web[0].concurrency) is int
        assert 2 <= web[0].concurrency <= 6
        assert type(s.metrics.proxies) is int
        assert 1 <= s.metrics.proxies <= 4
        assert 0.005 <= web[0].service.mean_s <= 0.015
        event = web[0].events[0]
        assert 5 <= event.at_s <= 15 < 16 <= event.until_s <= 30
        assert len({(b.concurrency, b.service, b.events) for b in web}) == 1  # one draw per group
    assert counts == {1, 2, 3, 4, 5}
    assert 80 <= min(rates) < 85
    assert 115 < max(rates) <= 120


def test_sampling_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    family = load_scenario(
        write(tmp_path, RANGED.replace('name = "t"', 'name = "t"\nshuffle_backends = true'))
    )
    draws = [family.sample(np.random.default_rng(seed)) for seed in (1, 1, 2)]
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]


def test_shuffle_permutes_backends_and_is_off_by_default(tmp_path: Path) -> None:
    text = edit(("count = 2", "count = 6"))
    plain = load_scenario(write(tmp_path, text, "plain.toml"))
    shuffled = load_scenario(
        write(tmp_path, text.replace('name = "t"', 'name = "t"\nshuffle_backends = true'))
    )
    in_order = [f"web-{i}" for i in range(6)] + ["b6"]
    orders = set()
    for seed in range(20):
        assert [b.name for b in plain.sample(np.random.default_rng(seed)).backends] == in_order
        names = [b.name for b in shuffled.sample(np.random.default_rng(seed)).backends]
        assert sorted(names) == sorted(in_order)
        orders.add(tuple(names))
    assert len(orders) > 10
    assert [b.name for b in shuffled.nominal().backends] == in_order


def test_nominal_takes_range_midpoints(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, RANGED)).nominal()
    assert (s.duration_s, s.arrivals.rate, s.metrics.proxies) == (100, 100, 2)
    assert [b.concurrency for b in s.backends] == [4, 4, 4, 1]


def test_family_accepts_a_parsed_dict_without_a_file() -> None:
    family = ScenarioFamily(tomllib.loads(BASE))
    assert family.source is None
    assert family.sample(np.random.default_rng(0)).source is None
    with pytest.raises(ScenarioError, match=r"^<scenario>: duration_s: "):
        ScenarioFamily({**tomllib.loads(BASE), "duration_s": -1})


ARRIVALS = 'process = "poisson"\nrate = 100\nprofile = [{ at_s = 50, rate = 200 }]'
INVALID = {
    "unknown top key": (
        edit(("duration_s", "duraton_s")),
        "duraton_s",
        "did you mean 'duration_s'",
    ),
    "unknown nested key": (
        edit(("concurrency = 4", "concurency = 4")),
        "backends[0].concurency",
        "did you mean 'concurrency'",
    ),
    "missing required": (edit(("duration_s = 100\n", "")), "duration_s", "missing required key"),
    "missing mean": (edit((", mean_s = 0.02", "")), "backends[1].service.mean_s", "missing"),
    "wrong type": (
        edit(("duration_s = 100", 'duration_s = "long"')),
        "duration_s",
        "expected a number",
    ),
    "float for int": (
        edit(("concurrency = 4", "concurrency = 2.5")),
        "backends[0].concurrency",
        "integer",
    ),
    "bool for number": (edit(("rate = 100", "rate = true")), "arrivals.rate", "expected a number"),
    "zero rate": (edit(("rate = 100", "rate = 0")), "arrivals.rate", "must be > 0"),
    "negative load": (edit(("rate = 100", "load = -0.5")), "arrivals.load", "must be > 0"),
    "rate and load": (edit(("rate = 100", "rate = 100\nload = 0.5")), "arrivals.rate", "both"),
    "nan rate": (edit(("rate = 100", "rate = nan")), "arrivals.rate", "not a usable number"),
    "negative step": (edit(("rate = 200 }", "rate = -1 }")), "arrivals.profile[0].rate", "> 0"),
    "step outside": (edit(("at_s = 50", "at_s = 100")), "arrivals.profile[0].at_s", "< 100"),
    "mmpp zero load": (
        edit((ARRIVALS, 'process = "mmpp"\nloads = [0.5, 0]\ndwell_s = [1, 1]')),
        "arrivals.loads[1]",
        "> 0",
    ),
    "mmpp lengths": (
        edit((ARRIVALS, 'process = "mmpp"\nrates = [5, 6]\ndwell_s = [1]')),
        "arrivals.dwell_s",
        "one dwell_s",
    ),
    "key of other process": (
        edit(("rate = 100", "rate = 100\ndwell_s = [1]")),
        "arrivals.dwell_s",
        "does not apply",
    ),
    "unknown process": (
        edit(('"poisson"', '"poison"')),
        "arrivals.process",
        "did you mean 'poisson'",
    ),
    "concurrency 0": (
        edit(("concurrency = 4", "concurrency = 0")),
        "backends[0].concurrency",
        ">= 1",
    ),
    "queue_limit < 0": (
        edit(("queue_limit = 10", "queue_limit = -1")),
        "backends[0].queue_limit",
        ">= 0",
    ),
    "timeout 0": (edit(("timeout_s = 1.0", "timeout_s = 0")), "backends[0].timeout_s", "> 0"),
    "event after end": (
        edit(("until_s = 20", "until_s = 101")),
        "backends[0].events[0].until_s",
        "<= 100",
    ),
    "event before start": (edit(("at_s = 10", "at_s = -1")), "backends[0].events[0].at_s", ">= 0"),
    "event reversed": (
        edit(("until_s = 20", "until_s = 10")),
        "backends[0].events[0].until_s",
        "before it starts",
    ),
    "event ranges may cross": (
        edit(("at_s = 10, until_s = 20", "at_s = [10, 30], until_s = [20, 40]")),
        "backends[0].events[0].until_s",
        "before it starts",
    ),
    "events overlap": (
        edit(("slowdown = 2.0 }", "slowdown = 2.0 }, { at_s = 15, until_s = 30, down = true }")),
        "backends[0].events[1]",
        "overlaps",
    ),
    "empty event": (
        edit(("slowdown = 2.0", "slowdown = 1.0")),
        "backends[0].events[0]",
        "changes nothing",
    ),
    "unknown dist": (
        edit(('"pareto"', '"weibull"')),
        "backends[1].service.dist",
        "exponential, lognormal, pareto, constant",
    ),
    "negative cv": (edit(("cv = 1.0", "cv = -0.1")), "backends[0].service.cv", ">= 0"),
    "cv for pareto": (edit(("shape = 1.5", "cv = 2")), "backends[1].service.cv", "does not apply"),
    "pareto shape 1": (edit(("shape = 1.5", "shape = 1.0")), "backends[1].service.shape", "> 1"),
    "error_rate > 1": (
        edit(("slowdown = 2.0", "error_rate = 1.5")),
        "backends[0].events[0].error_rate",
        "<= 1",
    ),
    "range reversed": (
        edit(("concurrency = 4", "concurrency = [8, 2]")),
        "backends[0].concurrency",
        "low > high",
    ),
    "range of three": (edit(("rate = 100", "rate = [1, 2, 3]")), "arrivals.rate", "exactly two"),
    "proxies 0": (edit(("proxies = 1", "proxies = 0")), "metrics.proxies", ">= 1"),
    "threshold 0": (
        edit(("[health]\ninterval_s = 1.0", "[health]\nhealthy_threshold = 0")),
        "health.healthy_threshold",
        ">= 1",
    ),
    "too many backends": (
        edit(("count = 2", "count = [2, 1000]")),
        "backends",
        "more than the maximum 1000",
    ),
    "count too large": (edit(("count = 2", "count = 1001")), "backends[0].count", "<= 1000"),
    "no backends": ("backends = []\n" + BASE.split("[[backends]]")[0], "backends", "no backends"),
    "backends missing": (BASE.split("[[backends]]")[0], "backends", "missing required key"),
    "backends not tables": (
        "backends = [1]\n" + BASE.split("[[backends]]")[0],
        "backends[0]",
        "expected a table",
    ),
    "trace missing": (
        edit((ARRIVALS, 'process = "trace"\ntrace = "nope.csv"')),
        "arrivals.trace",
        "not found",
    ),
    "pause too long": (
        edit(("duration_s = 0.2 }", "duration_s = 5.0 }")),
        "backends[0].pauses.duration_s",
        "not shorter",
    ),
    "duplicate names": (
        edit(("concurrency = 1\n", 'concurrency = 1\nname = "web"\n')),
        "backends[1].name",
        "two backend groups",
    ),
    "reserved name": (edit(('name = "web"', 'name = "b1"')), "backends[0].name", "reserved"),
    "bad shuffle": ('shuffle_backends = "yes"\n' + BASE, "shuffle_backends", "true or false"),
    "control too long": (
        edit(("control_interval_s = 1.0", "control_interval_s = 200")),
        "control_interval_s",
        "longer than the episode",
    ),
    "metrics not a table": (
        "metrics = 3\n" + edit(("[metrics]\nproxies = 1\n", "")),
        "metrics",
        "expected a table",
    ),
    "health interval too short": (
        edit(("[health]\ninterval_s = 1.0", "[health]\ninterval_s = 0.01")),
        "health.interval_s",
        "must be >= 0.05",
    ),
    "unknown shared key": (
        edit(("[health]\ninterval_s = 1.0", "[health]\ninterval = 1.0")),
        "health.interval",
        "did you mean 'interval_s'",
    ),
    "proxy-only setting": (
        edit(("[health]\ninterval_s = 1.0", "[health]\ntimeout_s = 1.0")),
        "health.timeout_s",
        "unknown key",
    ),
    "ejection base over max": (
        edit(("[health]", "[ejection]\nbase_ejection_s = 400\n[health]")),
        "ejection.max_ejection_s",
        "300 s is shorter than base_ejection_s (400 s) (use base_ejection_s <= max_ejection_s)",
    ),
    "ejection ranges may cross": (
        edit(
            (
                "[health]",
                "[ejection]\nbase_ejection_s = [10, 100]\nmax_ejection_s = [50, 200]\n[health]",
            )
        ),
        "ejection.max_ejection_s",
        "shorter than base_ejection_s",
    ),
    "ejection percent over 100": (
        edit(("[health]", "[ejection]\nmax_ejection_percent = 101\n[health]")),
        "ejection.max_ejection_percent",
        "<= 100",
    ),
    "negative retries": (
        edit(("[health]", "[retries]\nretries = -1\n[health]")),
        "retries.retries",
        ">= 0",
    ),
    "retry budget window 0": (
        edit(("[health]", "[retries]\nbudget_window_s = 0\n[health]")),
        "retries.budget_window_s",
        "> 0",
    ),
    "fractional retries": (
        edit(("[health]", "[retries]\nretries = 1.5\n[health]")),
        "retries.retries",
        "expected an integer",
    ),
}


@pytest.mark.parametrize(("text", "key", "fragment"), INVALID.values(), ids=INVALID.keys())
def test_invalid_files_name_the_file_and_the_key(
    tmp_path: Path, text: str, key: str, fragment: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert fragment in message
    assert "\n" not in message


def test_trace_with_a_bad_line_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("0.1\n0.3\n0.2\n")
    path = write(tmp_path, edit((ARRIVALS, 'process = "trace"\ntrace = "t.csv"')))
    with pytest.raises(ScenarioError, match=r"arrivals\.trace \(t\.csv:3\): bad timestamp"):
        load_scenario(path)


def test_toml_syntax_error_gives_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "t"\nduration_s = \n')
    with pytest.raises(ScenarioError, match=r"invalid TOML: .*line 2") as caught:
        load_scenario(path)
    assert str(caught.value).startswith(str(path))


def test_missing_file_and_unknown_library_name(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="file not found"):
        load_scenario(tmp_path / "absent.toml")
    with pytest.raises(ScenarioError, match="did you mean 'slow-backend'"):
        resolve_scenario("slow-backnd")


def test_names_resolve_to_the_library_and_paths_stay_paths(tmp_path: Path) -> None:
    assert resolve_scenario("steady") == scenario_library_dir() / "steady.toml"
    assert resolve_scenario(tmp_path / "x.toml") == tmp_path / "x.toml"
    assert resolve_scenario("sub/x.toml") == Path("sub/x.toml")
    names = [f.name for f in load_scenarios(["steady", scenario_library_dir() / "park.toml"])]
    assert names == ["steady", "park"]


def test_library_dir_falls_back_to_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert (scenario_library_dir() / "steady.toml").is_file()
    installed = tmp_path / "site" / "rl_lb" / "scenarios" / "library.py"
    monkeypatch.setattr(library, "__file__", str(installed))
    monkeypatch.delenv(scenarios.LIBRARY_ENV, raising=False)
    with pytest.raises(ScenarioError, match=scenarios.LIBRARY_ENV):
        scenario_library_dir()
    monkeypatch.setenv(scenarios.LIBRARY_ENV, str(tmp_path))
    write(tmp_path, BASE, "mine.toml")
    assert load_scenario("mine").name == "t"


def test_docs_hold_the_generated_table_of_shared_settings() -> None:
    """docs/scenarios.md shows `rl_lb.control.markdown_table(scenario=True)` as it is now."""
    text = DOCS.read_text(encoding="utf-8")
    begin, end = "<!-- control:begin -->", "<!-- control:end -->"
    block = text[text.index(begin) + len(begin) : text.index(end)]
    assert block.strip() == control.markdown_table(scenario=True)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the core's own commands: the wings' registration is tested by the lead's CLI tests."""
    monkeypatch.setattr(rl_lb.cli, "entry_points", lambda group: [])


@pytest.mark.usefixtures("cli")
def test_cli_validate_prints_one_summary_line_per_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, BASE)
    assert rl_lb.cli.main(["scenario", "validate", str(path), "steady"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0] == (
        f"{path}: ok: t: 3 backends, capacity 850 rps, poisson rate 100 rps (12% load), 100 s"
    )
    assert lines[1].startswith(f"{scenario_library_dir() / 'steady.toml'}: ok: steady: 4 backends")


@pytest.mark.usefixtures("cli")
def test_cli_validate_fails_with_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, edit(('"pareto"', '"weibull"')))
    assert rl_lb.cli.main(["scenario", "validate", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0]
    assert "backends[1].service.dist" in lines[0]


@pytest.mark.usefixtures("cli")
def test_cli_list_shows_every_library_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert rl_lb.cli.main(["scenario", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == sorted(
        p.stem for p in scenario_library_dir().glob("*.toml")
    )
    assert all(len(line.split(maxsplit=1)) == 2 for line in lines)


# Fuzzing: whatever the input, the parser returns a family whose samples build, or raises
# ScenarioError; any other exception is a bug in the validator.

SCALARS = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=8),
    st.sampled_from(["poisson", "mmpp", "trace", "lognormal", "pareto", "constant", "exponential"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.sampled_from(["at_s", "until_s", "rate", "load", "slowdown", "x"]), inner, max_size=3
        ),
    ),
    max_leaves=8,
)
LINES = BASE.splitlines()


def _accepts_or_rejects_cleanly(factory: Callable[[], ScenarioFamily]) -> None:
    try:
        outcome: ScenarioFamily | str = factory()
    except ScenarioError as error:
        outcome = str(error)
    if isinstance(outcome, str):
        assert "\n" not in outcome
        return
    for seed in range(3):
        scenario = outcome.sample(np.random.default_rng(seed))
        assert 1 <= len(scenario.backends) <= MAX_BACKENDS
        assert np.isfinite(scenario.arrivals.rate)
        assert scenario.arrivals.rate > 0


def _paths(node: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    children: list[tuple[str | int, object]] = []
    if isinstance(node, dict):
        children = list(node.items())
    elif isinstance(node, list):
        children = list(enumerate(node))
    found = [(*prefix, key) for key, _ in children]
    for key, child in children:
        found += _paths(child, (*prefix, key))
    return found


PATHS = _paths(tomllib.loads(BASE))
NEW_KEYS = ["trace", "loads", "rates", "dwell_s", "slowdown_to", "picker_refresh_s", "shape", "cv"]


@settings(max_examples=400, deadline=None)
@given(
    path=st.sampled_from(PATHS),
    new_key=st.none() | st.sampled_from(NEW_KEYS),
    value=VALUES,
    delete=st.booleans(),
)
def test_fuzz_random_values_anywhere(
    path: tuple[str | int, ...], new_key: str | None, value: object, delete: bool
) -> None:
    """Replace, delete or add one value anywhere in a valid document."""
    raw: dict[str, object] = tomllib.loads(BASE)
    node: Any = raw
    for step in path[:-1]:
        node = node[step]
    last: str | int = path[-1]
    if new_key is not None and isinstance(node[last], dict):
        node, last = node[last], new_key
    if delete and isinstance(node, dict):
        node.pop(last, None)
    else:
        node[last] = value
    _accepts_or_rejects_cleanly(lambda: ScenarioFamily(raw))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    line=st.integers(0, len(LINES) - 1),
    replacement=st.one_of(
        st.text(alphabet='abcdefgnrstu_=[]{}".,-0123456789 \n#', max_size=30),
        st.builds(
            lambda k, v: f"{k} = {v}",
            st.sampled_from(
                [
                    "rate",
                    "load",
                    "count",
                    "mean_s",
                    "at_s",
                    "until_s",
                    "cv",
                    "dist",
                    "proxies",
                    "trace",
                ]
            ),
            st.sampled_from(
                [
                    "0",
                    "-1",
                    "1e400",
                    "[3, 1]",
                    "[1, 2]",
                    '"x"',
                    "true",
                    "nan",
                    "{}",
                    "[]",
                    "2.5",
                    "17",
                ]
            ),
        ),
    ),
)
def test_fuzz_toml_documents(tmp_path: Path, line: int, replacement: str) -> None:
    lines = list(LINES)
    lines[line] = replacement
    path = write(tmp_path, "\n".join(lines) + "\n", "fuzz.toml")
    _accepts_or_rejects_cleanly(lambda: load_scenario(path))
