"""`rl-lb bench live` and `bench sim2real` end to end on a tiny compressed scenario; their parts.

The end-to-end runs start real processes (`rl-lb serve`, the load generator); each test checks
that none is left once the command returns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import psutil
import pytest

from envs.episode import EpisodeResult
from envs.evaluate import RECORD_KEYS
from lab.bench import bench_scenario, run_live
from lab.bench_cli import MARK_BEGIN, MARK_END, write_markdown
from lab.bench_proxy import free_ports, proxy_flags
from lab.bench_report import compare, describe_spell, fallback_spell, fallback_spells
from lab.bench_scenario import arrival_schedule
from rl_lb.cli import main
from rl_lb.errors import ConfigError
from rl_lb.scenarios import load_scenario
from rl_lb.scenarios.scaling import time_scaled
from serving.config import KEYS, load_config

TINY = """\
name = "tiny"
description = "Three backends, one of them slowed 6x in the middle of the run."
duration_s = 60
control_interval_s = 1.0

[arrivals]
process = "poisson"
rate = 60
profile = [{ at_s = 30, rate = 90 }]

[[backends]]
name = "fast"
count = 2
concurrency = 4
service = { dist = "lognormal", mean_s = 0.01, cv = 1.0 }

[[backends]]
name = "slowing"
concurrency = 4
service = { dist = "lognormal", mean_s = 0.01, cv = 1.0 }
events = [{ at_s = 20, until_s = 50, slowdown = 6.0 }]
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not left, f"processes left running: {[p.cmdline() for p in left]}"


def test_time_scaling_compresses_the_timeline_and_keeps_the_hardware(tiny: Path) -> None:
    scenario = load_scenario(tiny).nominal()
    scaled = time_scaled(scenario, 0.1, rate_scale=0.5)
    assert scaled.duration_s == pytest.approx(6.0)
    assert scaled.control_interval_s == pytest.approx(0.1)
    health = scaled.control.health
    assert health.interval_s == pytest.approx(scenario.control.health.interval_s * 0.1)
    event = scaled.backends[2].events[0]
    assert (event.at_s, event.until_s) == pytest.approx((2.0, 5.0))
    assert scaled.arrivals.rate == pytest.approx(30.0)
    step = scaled.arrivals.profile[0]
    assert (step.at_s, step.rate) == pytest.approx((3.0, 45.0))
    for before, after in zip(scenario.backends, scaled.backends, strict=True):
        assert after.service == before.service
        assert after.timeout_s == before.timeout_s
    # The metrics' memory is part of the timeline: a policy must see the same history per interval.
    window, tau = scaled.control.metrics.window_s, scaled.control.metrics.ewma_tau_s
    assert window == pytest.approx(scenario.control.metrics.window_s * 0.1)
    assert tau == pytest.approx(scenario.control.metrics.ewma_tau_s * 0.1)


def test_the_proxy_is_started_with_the_scenarios_control_settings(tiny: Path) -> None:
    """Every shared setting reaches the child proxy as the (time-scaled) scenario holds it."""
    nominal = load_scenario(tiny).nominal()
    scenario = time_scaled(nominal, 0.25)
    assert scenario.control.metrics.window_s != nominal.control.metrics.window_s
    flags = proxy_flags(scenario, "least-latency", None)
    given = {flags[i].removeprefix("--"): flags[i + 1] for i in range(0, len(flags) - 1, 2)}
    assert set(scenario.control.flags()) <= set(given)
    config = load_config(
        None,
        {"backend": ["http://127.0.0.1:1"]}
        | {key: value for key, value in given.items() if key in KEYS},
    )
    assert config.control == scenario.control
    assert config.control_interval_s == pytest.approx(scenario.control_interval_s)
    assert config.metrics_delay_s == pytest.approx(scenario.metrics.delay_s)
    assert config.read_timeout_s == pytest.approx(scenario.timeout_s)


def test_the_schedule_follows_the_rate_profile(tiny: Path) -> None:
    scenario = replace(load_scenario(tiny).nominal(), duration_s=600.0)
    times = arrival_schedule(scenario, seed=3)
    assert np.all(np.diff(times) >= 0)
    assert times[0] >= 0.0
    assert times[-1] < 600.0
    before, after = np.sum(times < 30.0), np.sum(times >= 30.0)
    assert before == pytest.approx(60 * 30, rel=0.1)
    assert after == pytest.approx(90 * 570, rel=0.05)


def test_bench_scenarios_refuse_what_a_live_run_cannot_start(tmp_path: Path) -> None:
    assert bench_scenario("many-proxies", 0, duration=10).metrics.proxies == 8
    crowded = tmp_path / "crowded.toml"
    crowded.write_text(TINY.replace("[[backends]]", "[metrics]\nproxies = 9\n\n[[backends]]", 1))
    with pytest.raises(ConfigError, match="9 proxy replicas"):
        bench_scenario(crowded, 0, duration=10)
    with pytest.raises(ConfigError, match="give one of them"):
        bench_scenario("steady", 0, duration=10, time_scale=0.1)


def test_bench_scenarios_keep_the_proxys_shortest_health_period() -> None:
    scenario = bench_scenario("degrading", 0, duration=4)
    assert scenario.control.health.interval_s == 0.05  # not 1/30 s


def test_comparison_ranks_by_effective_p99_with_ties() -> None:
    def record(balancer: str, p99: float, effective: float) -> dict[str, object]:
        return {"scenario": "s", "balancer": balancer, "seed": 0, "requests": 100, "errors": 0,
                "p50_ms": 1.0, "p99_ms": p99, "effective_p99_ms": effective}  # fmt: skip

    sim = [record("a", 10.0, 10.0), record("b", 20.0, 20.0), record("c", 10.2, 10.2)]
    live = [record("a", 12.0, 30.0), record("b", 21.0, 21.0), record("c", 20.0, 40.0)]
    (comparison,) = compare(sim, live)
    assert [r.ratio for r in comparison.rows] == pytest.approx([1.2, 1.05, 20.0 / 10.2])
    assert [r.within for r in comparison.rows] == [True, True, False]
    assert (comparison.sim_best, comparison.live_best) == (("a", "c"), ("b",))
    assert not comparison.agrees
    assert comparison.disagrees
    tied = compare(sim, [record("a", 10, 10), record("b", 20, 20), record("c", 10, 9.8)])
    assert tied[0].agrees  # live's best (c) is tied for best in the simulator


def _episode_with_modes(modes: tuple[str, ...]) -> EpisodeResult:
    empty = np.zeros(0)
    return EpisodeResult(
        scenario="s",
        balancer="learned",
        seed=2,
        backend_names=("a", "b"),
        timeout_s=1.0,
        arrival_s=empty,
        proxy=empty.astype(np.int64),
        backend=empty.astype(np.int64),
        latency_s=empty,
        outcome=empty.astype(np.int64),
        retries=empty.astype(np.int64),
        interval_start_s=np.arange(len(modes)) * 0.5,
        weights=np.zeros((len(modes), 2)),
        modes=modes,
    )


def test_a_fallback_spell_says_why_and_from_when() -> None:
    """The records keep only the share on the fallback; the spell adds the reasons and the
    start, which tell a start-up trip from a regression the guard measured later."""
    modes = (
        "primary",
        "fallback: stale",
        "primary",
        "fallback: regression",
        "fallback: regression",
    )
    spell = fallback_spell(_episode_with_modes(modes))
    assert spell == {
        "scenario": "s",
        "balancer": "learned",
        "seed": 2,
        "share": 0.6,
        "reasons": {"stale": 1, "regression": 2},
        "first_s": 0.5,
    }
    assert describe_spell(spell) == (
        "learned on s seed 2: 60% of control intervals on the fallback "
        "(regression 2, stale 1), the first from 0.5 s"
    )
    never = _episode_with_modes(("primary", "primary"))
    assert fallback_spell(never) is None
    assert fallback_spells([never, _episode_with_modes(modes)]) == [spell]


def test_a_live_spell_carries_the_guards_estimates_at_its_first_interval() -> None:
    modes = ("primary", "fallback: regression", "fallback: regression")
    states = [
        {"outcome_guard": {"policy_cost_s": 0.05, "fallback_cost_s": 0.04}},
        {"outcome_guard": {"policy_cost_s": 0.3, "fallback_cost_s": 0.1}},
        {"outcome_guard": None},
    ]
    episode = _episode_with_modes(modes)
    spell = fallback_spell(episode, states)
    assert spell is not None
    assert spell["guard_at_first"] == {"policy_ms": 300.0, "fallback_ms": 100.0}
    assert describe_spell(spell).endswith(
        "the first from 0.5 s (the guard's estimates then: policy 300 ms, fallback 100 ms)"
    )
    assert fallback_spells([episode], [states]) == [spell]
    assert "guard_at_first" not in (fallback_spell(episode, states[:2]) or {})  # not one per poll
    assert "holds_ended_early" not in spell


def test_a_live_spell_says_when_holds_ended_early() -> None:
    """The fallback did no better, so the guard let the policy back before the hold's end."""
    modes = ("fallback: regression", "fallback: regression", "primary")
    guard = {"policy_cost_s": 0.3, "fallback_cost_s": 0.1}
    states = [
        {"outcome_guard": {**guard, "holds_ended_early": 0}},
        {"outcome_guard": {**guard, "holds_ended_early": 0}},
        {"outcome_guard": {**guard, "holds_ended_early": 1}},
    ]
    spell = fallback_spell(_episode_with_modes(modes), states)
    assert spell is not None
    assert spell["holds_ended_early"] == 1
    assert describe_spell(spell).endswith("; 1 hold(s) ended early, the fallback no better")


def test_markdown_replaces_only_the_marked_report(tmp_path: Path) -> None:
    doc = tmp_path / "doc.md"
    doc.write_text(f"# Title\nanalysis\n{MARK_BEGIN}\nold\n{MARK_END}\nafter\n")
    write_markdown(doc, "new report")
    assert doc.read_text() == f"# Title\nanalysis\n{MARK_BEGIN}\nnew report\n{MARK_END}\nafter\n"


def test_bench_live_writes_evaluate_records_and_logs_to_mlflow(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_leftovers: None
) -> None:
    out = tmp_path / "live.json"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    argv = ["bench", "live", "--scenario", str(tiny), "--duration", "3", "--json", str(out)]
    assert main([*argv, "--balancer", "least-latency", "--balancer", "round-robin"]) == 0
    records = json.loads(out.read_text())
    assert [r["balancer"] for r in records] == ["least-latency", "round-robin"]
    for record in records:
        assert tuple(record) == RECORD_KEYS
        assert record["scenario"] == "tiny"
        assert record["requests"] > 100
        assert record["p50_ms"] <= record["p99_ms"] <= record["effective_p99_ms"]
    artifacts = {p.name for p in (tmp_path / "mlartifacts").rglob("*.png")}
    assert artifacts == {"latency_over_time.png", "weights_over_time.png"}


async def test_a_live_run_spreads_requests_over_proxy_replicas(
    tiny: Path, tmp_path: Path, no_leftovers: None
) -> None:
    text = tiny.read_text().replace("[[backends]]", "[metrics]\nproxies = 2\n\n[[backends]]", 1)
    tiny.write_text(text)
    scenario = bench_scenario(tiny, 0, duration=3)
    (run,) = await run_live(scenario, ["least-request"], seed=0)
    proxies = run.episode.proxy
    assert set(proxies.tolist()) == {0, 1}
    assert abs(np.mean(proxies) - 0.5) < 0.1  # uniform, as in the simulator
    assert np.all(run.load.status == 200)  # both replicas answered
    assert run.states  # proxy 0's state was polled


def test_bench_sim2real_prints_and_writes_the_comparison(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], no_leftovers: None
) -> None:
    report = tmp_path / "sim2real.md"
    report.write_text(f"analysis stays\n{MARK_BEGIN}\n{MARK_END}\n")
    argv = [
        "bench",
        "sim2real",
        "--scenario",
        str(tiny),
        "--duration",
        "3",
        "--markdown",
        str(report),
    ]
    assert main([*argv, "--balancer", "least-latency", "--balancer", "round-robin"]) == 0
    out = capsys.readouterr().out
    assert "tiny: simulator vs live" in out
    assert "best balancer" in out
    text = report.read_text()
    assert text.startswith("analysis stays\n")
    assert "| least-latency |" in text
    assert "| round-robin |" in text


def test_free_ports_are_distinct_and_avoid_those_handed_out() -> None:
    """A proxy and its admin API once drew the same port (CI, 6 December 2026): ports handed
    out together are distinct, and those already handed out are never drawn again."""
    first = free_ports(64)
    second = free_ports(64, avoid=first)
    assert len(set(first)) == 64
    assert len(set(second)) == 64
    assert not set(first) & set(second)
