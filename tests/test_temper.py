"""training/temper.py: the tempered export, the choice of scale and the command."""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from random_policy import ENCODER, make_policy
from snapshots import make_snapshot

from envs.worlds import generate_worlds
from rl_lb.errors import ConfigError
from rl_lb.policies.learned import HEADER_FILE, WEIGHTS_FILE, LearnedPolicy
from training.export import export_policy
from training.temper import ScaleResult, choose, main, run_temper, tempered

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_policy(make_policy(seed=5), tmp_path_factory.mktemp("model"), ENCODER, "t-1")


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / WEIGHTS_FILE) as archive:
        return {key: archive[key] for key in archive.files}


def test_the_tempered_export_scales_the_score_head_only(trained: Path, tmp_path: Path) -> None:
    out = tempered(trained, 0.5, tmp_path / "t", {"worlds_seed": 3})
    before, after = _arrays(trained), _arrays(out)
    assert before.keys() == after.keys()
    for key in before:
        expected = before[key] * 0.5 if key == "head.weight" else before[key]
        np.testing.assert_array_equal(after[key], expected.astype(before[key].dtype))
    header = json.loads((out / HEADER_FILE).read_text())
    assert header["version"] == "t-1~t0.5"
    assert header["weights_sha256"] == hashlib.sha256((out / WEIGHTS_FILE).read_bytes()).hexdigest()
    assert header["temper"]["scale"] == 0.5
    assert header["temper"]["trained_version"] == "t-1"
    assert header["temper"]["worlds_seed"] == 3
    assert LearnedPolicy.load(out).version == "t-1~t0.5"


def test_a_smaller_scale_spreads_the_weights_less(trained: Path, tmp_path: Path) -> None:
    snapshot = make_snapshot([0.01, 0.02, 0.05, 0.2, 0.03], throughput_rps=[90, 60, 20, 5, 40])
    spread = {}
    for scale in (1.0, 0.5, 0.1):
        weights = LearnedPolicy.load(tempered(trained, scale, tmp_path / str(scale))).weights(
            snapshot
        )
        spread[scale] = float(weights.max() / weights.min())
    original = LearnedPolicy.load(trained).weights(snapshot)
    scale_one = LearnedPolicy.load(tmp_path / "1.0").weights(snapshot)
    np.testing.assert_allclose(scale_one, original, rtol=1e-6)
    assert spread[1.0] > spread[0.5] > spread[0.1] >= 1.0


def _result(scale: float, share: float, geomean: float) -> ScaleResult:
    return ScaleResult(scale, 10, share, geomean, 2.0, "w")


def test_the_choice_is_the_share_then_the_geometric_mean_then_nearest_one() -> None:
    assert choose([_result(1.0, 0.6, 0.9), _result(0.5, 0.7, 1.1)]).scale == 0.5
    assert choose([_result(0.35, 0.7, 0.95), _result(0.5, 0.7, 0.94)]).scale == 0.5
    assert choose([_result(0.5, 0.7, 0.94), _result(1.0, 0.7, 0.94)]).scale == 1.0


def test_tiny_worlds_score_each_scale_and_export_the_same_bytes_twice(
    trained: Path, tmp_path: Path
) -> None:
    worlds = [w for w in generate_worlds(seed=3, count=40) if w.size <= 6][:2]
    assert len(worlds) == 2
    lines: list[str] = []
    results = run_temper(
        trained,
        worlds,
        tmp_path / "run",
        scales=(0.5, 1.0),
        selection_seeds=(1,),
        evaluation_seeds=(2,),
        workers=1,
        log=lines.append,
    )
    assert [r.scale for r in results] == [0.5, 1.0]
    for r in results:
        assert 0 < r.worlds <= 2
        assert 0.0 <= r.share_within <= 1.0
        assert math.isfinite(r.geomean_vs_best)
        assert r.geomean_vs_best > 0
        assert r.max_world in {w.name for w in worlds}
    assert lines[0].startswith("selection of each world's best heuristic: ")
    assert lines[-1].startswith("evaluation of 2 scales: ")
    assert (tmp_path / "run" / "scale-0.5" / WEIGHTS_FILE).is_file()
    assert (tmp_path / "run" / "worlds" / worlds[0].file_name).read_text() == worlds[0].text


def test_the_command_exports_the_chosen_scale_byte_for_byte_again(
    trained: Path, tmp_path: Path
) -> None:
    def run(name: str) -> Path:
        main([str(trained), "--export", str(tmp_path / name), "--out", str(tmp_path / f"o-{name}"),
              "--worlds", "1", "--scales", "0.5,1"])  # fmt: skip
        return tmp_path / name

    first, second = run("a"), run("b")
    for file in (WEIGHTS_FILE, HEADER_FILE):
        assert (first / file).read_bytes() == (second / file).read_bytes()
    header = json.loads((first / HEADER_FILE).read_text())
    assert header["temper"]["scale"] in (0.5, 1.0)
    assert [r["scale"] for r in header["temper"]["results"]] == [0.5, 1.0]
    assert "(chosen)" in (tmp_path / "o-a" / "temper.md").read_text()


def test_a_policy_given_as_its_npz_file_is_refused(trained: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a folder"):
        main([str(trained / WEIGHTS_FILE), "--export", str(tmp_path / "e"), "--out", str(tmp_path)])


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["--scales", "0,1"], "--scales"),
        (["--scales", "half"], "--scales"),
        (["--worlds", "0"], "--worlds"),
        (["--seed", "1000000"], "--seed"),
    ],
)
def test_bad_arguments_are_refused(
    trained: Path, tmp_path: Path, args: list[str], what: str
) -> None:
    with pytest.raises(ConfigError, match=what):
        main([str(trained), "--export", str(tmp_path / "e"), "--out", str(tmp_path), *args])
    assert not (tmp_path / "e").exists()


def test_a_missing_policy_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "training.temper", str(tmp_path / "nope"), "--export",
         str(tmp_path / "e"), "--out", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("error: ")
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()
