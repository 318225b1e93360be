"""The evaluation record cache (envs/record_cache.py): a hit is the record the simulator would
compute, type for type; anything that decides a record (scenario content, balancer, seed, code)
changes its key; a corrupt entry is recomputed; learned policies are never served from it."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tiny_scenarios import tiny

import envs.evaluate
from envs import record_cache
from envs.evaluate import RECORD_KEYS, evaluate
from envs.record_cache import CACHE_ENV, RecordCache, code_fingerprint, default_root
from rl_lb.scenarios import Scenario
from training.checkpoint_eval import Evaluator

BALANCERS = ["round-robin", "least-latency"]


def same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Equal records, each value of the same type (NaN equal to NaN)."""
    return len(a) == len(b) and all(
        list(x) == list(y)
        and all(
            type(x[k]) is type(y[k])
            and (
                x[k] == y[k] or (isinstance(x[k], float) and math.isnan(x[k]) and math.isnan(y[k]))
            )
            for k in x
        )
        for x, y in zip(a, b, strict=True)
    )


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int]]:
    """The episodes `evaluate` simulates (workers=1: in this process)."""
    episodes: list[tuple[str, str, int]] = []
    job = envs.evaluate._job

    def counted(scenario: Scenario, balancer: str, seed: int) -> dict[str, Any]:
        episodes.append((scenario.name, balancer, seed))
        return job(scenario, balancer, seed)

    monkeypatch.setattr(envs.evaluate, "_job", counted)
    return episodes


def test_a_hit_is_the_computed_record_and_runs_nothing(
    tmp_path: Path, ran: list[tuple[str, str, int]]
) -> None:
    cache = RecordCache(tmp_path)
    plain = evaluate([tiny()], BALANCERS, [1, 2], workers=1)
    cold = evaluate([tiny()], BALANCERS, [1, 2], workers=1, cache=cache)
    assert len(ran) == 8
    assert cache.hits == 0
    warm = evaluate([tiny()], BALANCERS, [1, 2], workers=1, cache=cache)
    assert len(ran) == 8
    assert cache.hits == 4
    assert same(plain, cold)
    assert same(plain, warm)
    assert all(tuple(r) == RECORD_KEYS for r in warm)
    assert not list(tmp_path.rglob("*.tmp"))  # written through a renamed temporary file


def test_the_training_evaluator_reads_the_cache(
    tmp_path: Path, ran: list[tuple[str, str, int]]
) -> None:
    scenario = tmp_path / "tiny.toml"
    scenario.write_text(
        'name = "tiny"\nduration_s = 3\n[arrivals]\nprocess = "poisson"\nload = 0.5\n'
        '[[backends]]\nname = "a"\nconcurrency = 1\nservice = { dist = "exponential", '
        "mean_s = 0.01 }\n",
        encoding="utf-8",
    )
    cache = RecordCache(tmp_path / "cache")
    first = Evaluator([str(scenario)], [1], BALANCERS, tmp_path, cache=cache).records(BALANCERS)
    again = Evaluator([str(scenario)], [1], BALANCERS, tmp_path, cache=cache).records(BALANCERS)
    assert len(ran) == 2
    assert cache.hits == 2
    assert same(first, again)


def test_what_decides_a_record_decides_its_key(tmp_path: Path) -> None:
    cache = RecordCache(tmp_path)
    scenario = tiny()
    [record] = evaluate([scenario], ["round-robin"], [1], workers=1, cache=cache)
    assert cache.get(scenario, "round-robin", 1) == record
    moved = dataclasses.replace(scenario, source=tmp_path / "elsewhere.toml")
    assert cache.get(moved, "round-robin", 1) == record  # the file's path is not simulated
    slower = tiny(slowdown=3.5)  # same name, other content
    assert slower.name == scenario.name
    assert cache.get(slower, "round-robin", 1) is None
    assert cache.get(scenario, "round-robin", 2) is None
    assert cache.get(scenario, "least-latency", 1) is None
    assert RecordCache(tmp_path, fingerprint="0" * 64).get(scenario, "round-robin", 1) is None
    keys = {
        cache.key(scenario, "round-robin", 1),
        cache.key(slower, "round-robin", 1),
        cache.key(scenario, "round-robin", 2),
        cache.key(scenario, "least-latency", 1),
        RecordCache(tmp_path, fingerprint="0" * 64).key(scenario, "round-robin", 1),
    }
    assert len(keys) == 5


def test_the_code_fingerprint_covers_every_module(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for package in ("envs", "rl_lb"):
        (tmp_path / package / "sub").mkdir(parents=True)
        (tmp_path / package / "sub" / "m.py").write_text("X = 1\n")
    monkeypatch.setattr(record_cache, "_ROOT", tmp_path)
    fingerprint = code_fingerprint.__wrapped__
    before = fingerprint()
    assert fingerprint() == before
    (tmp_path / "rl_lb" / "sub" / "m.py").write_text("X = 2\n")
    edited = fingerprint()
    assert edited != before
    (tmp_path / "envs" / "new.py").write_text("")
    assert fingerprint() not in (before, edited)


def test_the_key_is_the_same_in_another_process(tmp_path: Path) -> None:
    """Nothing in the key depends on the process (an object's address, a hash seed)."""
    code = (
        "import sys; from pathlib import Path; from envs.record_cache import RecordCache;"
        "from tests.tiny_scenarios import tiny;"
        "print(RecordCache(Path(sys.argv[1])).key(tiny(), 'round-robin', 1))"
    )
    root = Path(__file__).resolve().parents[1]
    other = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert other.stdout.strip() == RecordCache(tmp_path).key(tiny(), "round-robin", 1)


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # a half-written file
        lambda text: "",
        lambda text: text.replace('"requests": ', '"requests": 1.5e0 + '),
        lambda text: json.dumps({**json.loads(text), "format": 0}),
        lambda text: text.replace('"seed": 1', '"seed": 2'),  # another episode's record
        lambda text: text.replace('"errors": ', '"errors": "x", "e": '),
    ],
)
def test_a_corrupt_entry_is_recomputed_with_one_warning(
    tmp_path: Path, damage: Any, caplog: pytest.LogCaptureFixture
) -> None:
    cache = RecordCache(tmp_path)
    scenario = tiny()
    [record] = evaluate([scenario], ["round-robin"], [1], workers=1, cache=cache)
    key = cache.key(scenario, "round-robin", 1)
    assert key is not None
    entry = cache.path(key)
    entry.write_text(damage(entry.read_text()))
    with caplog.at_level(logging.WARNING, logger="envs.record_cache"):
        [again] = evaluate([scenario], ["round-robin"], [1], workers=1, cache=cache)
    assert same([again], [record])
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "corrupt" in caplog.records[0].getMessage()
    assert cache.get(scenario, "round-robin", 1) == record  # rewritten


def test_nan_figures_read_back_as_floats(tmp_path: Path) -> None:
    cache = RecordCache(tmp_path)
    scenario = tiny()
    nan = float("nan")
    record: dict[str, Any] = {"scenario": "tiny", "balancer": "random", "seed": 3}
    record |= dict.fromkeys(RECORD_KEYS[3:], nan) | {"requests": 0, "errors": 0}
    cache.put(scenario, record)
    back = cache.get(scenario, "random", 3)
    assert back is not None
    assert same([back], [record])


def test_learned_policies_are_never_cached(tmp_path: Path, ran: list[tuple[str, str, int]]) -> None:
    cache = RecordCache(tmp_path)
    for name in ("learned", "learned:rl_lb/policies/shipped", "learned~no-outcome-guard"):
        assert cache.key(tiny(), name, 1) is None
    for _ in range(2):
        evaluate([tiny()], ["learned", "round-robin"], [1], workers=1, cache=cache)
    assert ran == [("tiny", "learned", 1), ("tiny", "round-robin", 1), ("tiny", "learned", 1)]
    assert len(list(tmp_path.rglob("*.json"))) == 1


def test_the_environment_variable_places_or_disables_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    cache = RecordCache.from_env()
    assert cache is not None
    assert cache.root == default_root() == tmp_path / "xdg/rl-lb/records"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    cache = RecordCache.from_env()
    assert cache is not None
    assert cache.folder.parent == tmp_path / "mine"
    for off in ("off", "OFF", "0"):
        monkeypatch.setenv(CACHE_ENV, off)
        assert RecordCache.from_env() is None


def test_an_unwritable_cache_is_skipped_not_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = RecordCache(blocker)
    with caplog.at_level(logging.WARNING, logger="envs.record_cache"):
        records = evaluate([tiny()], BALANCERS, [1], workers=1, cache=cache)
    assert len(records) == 2
    assert len(caplog.records) == 1
    assert "cannot write" in caplog.records[0].getMessage()


def test_old_code_builds_are_pruned(tmp_path: Path) -> None:
    for i in range(3):
        RecordCache(tmp_path, fingerprint=f"{i:x}" * 64).prune(keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["1" * 16, "2" * 16]
