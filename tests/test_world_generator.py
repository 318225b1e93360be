"""The world generator (envs/worlds): reproducible, valid, covering its distribution, serving
balancers that can be told apart; and `rl-lb scenario generate`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from envs.evaluate import evaluate
from envs.worlds import (
    ARRIVAL_KINDS,
    MAX_POOL,
    MIX_KINDS,
    TROUBLE_KINDS,
    World,
    generate_world,
    generate_worlds,
    write_worlds,
)
from rl_lb import cli
from rl_lb.errors import ConfigError
from rl_lb.scenarios import MAX_BACKENDS, Scenario, load_scenario
from rl_lb.scenarios import cli as scenario_cli

WORLDS = 100


@pytest.fixture(scope="module")
def worlds() -> list[World]:
    return generate_worlds(seed=11, count=WORLDS)


def _worst_capacity(scenario: Scenario) -> float:
    """Usable capacity (requests/s) at the worst moment of the trouble, recomputed from the
    parsed scenario: failing backends (down, or answering errors) count 0, as do backends whose
    service time, slowed at its worst, exceeds a tenth of the timeout."""
    moments = {0.0} | {e.at_s for b in scenario.backends for e in b.events}
    moments |= {e.until_s for b in scenario.backends for e in b.events}

    def at(t: float) -> float:
        total = 0.0
        for backend in scenario.backends:
            slowdown, failing = 1.0, False
            for e in backend.events:
                if e.at_s <= t < e.until_s:
                    slowdown = max(e.slowdown, e.slowdown_to or e.slowdown)
                    failing = e.down or e.error_rate > 0
            if failing or backend.service.mean_s * slowdown > 0.1 * scenario.timeout_s:
                continue
            factor = 1.0 / slowdown
            if backend.pauses is not None:
                factor *= 1 - backend.pauses.duration_s / backend.pauses.every_s
            total += backend.capacity_rps * factor
        return total

    return min(at(t) for t in moments if t < scenario.duration_s)


def test_same_seed_same_bytes_and_a_world_depends_on_its_index_only(tmp_path: Path) -> None:
    first = [w.text for w in generate_worlds(seed=5, count=6)]
    assert first == [w.text for w in generate_worlds(seed=5, count=6)]
    assert generate_world(5, 4).text == first[4]
    assert [w.text for w in generate_worlds(seed=6, count=6)] != first
    a = write_worlds(5, 6, tmp_path / "a")
    b = write_worlds(5, 6, tmp_path / "b")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert [p.read_text() for p in a] == first


def test_every_world_is_a_valid_scenario_within_the_schema(worlds: list[World]) -> None:
    for world in worlds:
        family = world.family()
        scenario = family.nominal()
        assert family.randomised == 0, world.name  # a world is one concrete scenario
        assert 2 <= len(scenario.backends) <= min(MAX_POOL, MAX_BACKENDS), world.name
        assert scenario.name == world.name
        assert world.text.startswith("# World "), "the file says what was drawn"


def test_traffic_is_bounded_by_the_capacity_left_after_trouble(worlds: list[World]) -> None:
    for world in worlds:
        scenario = world.family().nominal()
        worst = _worst_capacity(scenario)
        arrivals = scenario.arrivals
        assert worst > 0, world.name
        failing = max(
            (
                sum(
                    any((e.down or e.error_rate > 0) and e.at_s <= t < e.until_s for e in b.events)
                    for b in scenario.backends
                )
                for b0 in scenario.backends
                for t in (e.at_s for e in b0.events)
            ),
            default=0,
        )
        assert failing <= max(1, len(scenario.backends) // 4), world.name
        sustained = max([arrivals.rate, *(s.rate for s in arrivals.profile)])
        assert sustained <= 0.85 * worst * 1.01, world.name
        for rate in arrivals.mmpp_rates:  # bursts: brief overload at most
            assert rate <= 1.05 * worst * 1.01, world.name


def test_the_distribution_covers_every_kind(worlds: list[World]) -> None:
    trouble = Counter(kind for w in worlds for kind in w.trouble)
    assert set(trouble) == set(TROUBLE_KINDS), trouble
    assert {w.mix for w in worlds} == set(MIX_KINDS)
    assert {w.arrivals for w in worlds} == set(ARRIVAL_KINDS)
    assert any(not w.trouble for w in worlds), "calm worlds too"
    sizes = [w.size for w in worlds]
    assert min(sizes) == 2
    assert max(sizes) > 16, "pools beyond the old 16-backend maximum"
    scenarios = [w.family().nominal() for w in worlds]
    assert any(s.metrics.delay_s > 0 for s in scenarios)
    assert any(s.metrics.proxies > 1 for s in scenarios)
    fastest_hit = [
        w
        for w, s in zip(worlds, scenarios, strict=True)
        if any(b.events and b.name.startswith("t0") for b in s.backends)
    ]
    assert len(fastest_hit) >= 10, "trouble must often hit the fastest tier"


def test_small_worlds_separate_balancers() -> None:
    """The best of a few heuristics stays well under the timeout, so balancers differ."""
    small = [w for w in generate_worlds(seed=21, count=30) if w.size <= 12][:3]
    assert len(small) == 3
    families = [w.family() for w in small]
    records = evaluate(families, ["least-latency", "jsq", "capacity"], [0], workers=1)
    for family in families:
        timeout_ms = family.nominal().timeout_s * 1e3
        best = min(r["effective_p99_ms"] for r in records if r["scenario"] == family.name)
        assert best < 0.9 * timeout_ms, family.name


def test_write_worlds_refuses_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--count"):
        write_worlds(1, 0, tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        write_worlds(1, 1, tmp_path / "missing" / "out")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        write_worlds(1, 1, tmp_path / "file")


@pytest.fixture
def scenario_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """`rl-lb` with the core's `scenario` group only (its entry-point sub-commands included):
    the other wings' commands are not under test here."""
    monkeypatch.setattr(cli, "_register_wings", lambda: scenario_cli.register(cli.app))


@pytest.mark.usefixtures("scenario_command")
def test_cli_generates_files_that_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "worlds"
    assert cli.main(["scenario", "generate", "--seed", "3", "--count", "4", "--out", str(out)]) == 0
    files = sorted(out.glob("*.toml"))
    assert [f.name for f in files] == [f"gen-3-{i:04d}.toml" for i in range(4)]
    assert "wrote 4 worlds" in capsys.readouterr().out
    assert cli.main(["scenario", "validate", *map(str, files)]) == 0
    assert load_scenario(files[2]).name == "gen-3-0002"


@pytest.mark.usefixtures("scenario_command")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--count", "0"], "--count: 0 worlds"),
        (["--count", "-3"], "--count: -3 worlds"),
        (["--seed", "-1"], "--seed: negative seed -1"),
        (["--out", "{tmp}/missing/out"], "--out: folder"),
        (["--out", "{tmp}/file"], "is a file"),
    ],
)
def test_cli_bad_out_or_count_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    (tmp_path / "file").write_text("x")
    argv = ["scenario", "generate", "--out", str(tmp_path / "ok")]
    argv += [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "ok").exists() or not any((tmp_path / "ok").iterdir())
