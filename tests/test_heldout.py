"""training/heldout.py: per-world best-heuristic selection, paired ratios, the summary, the CSV
and the held-out section of docs/results.md."""

from __future__ import annotations

import csv
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from commands import end_session, read_until, session_groups
from random_policy import ENCODER, make_policy

from envs.worlds import World, generate_world, generate_worlds
from rl_lb.errors import ConfigError
from training.export import export_policy
from training.heldout import (
    BEGIN,
    CSV_COLUMNS,
    END,
    HEURISTICS,
    WorldResult,
    log_to_mlflow,
    main,
    render_summary,
    run_heldout,
    summarise,
    update_results_page,
    write_csv,
)
from training.heldout_report import studied


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[WorldResult], Path]:
    model = export_policy(make_policy(seed=5), tmp_path_factory.mktemp("model"), ENCODER, "t-1")
    worlds = [w for w in generate_worlds(seed=1_000_003, count=40) if w.size <= 6][:3]
    assert len(worlds) == 3
    out = tmp_path_factory.mktemp("heldout")
    lines: list[str] = []
    results = run_heldout(
        worlds,
        out,
        policy=str(model),
        selection_seeds=(1,),
        evaluation_seeds=(2, 3),
        workers=1,
        log=lines.append,
    )
    assert any(line.startswith("selection: ") for line in lines)
    assert lines[-1].startswith("evaluation, ")
    assert lines[-1].endswith("episodes")
    return results, out


def test_three_tiny_worlds_give_a_summary(tiny_run: tuple[list[WorldResult], Path]) -> None:
    results, out = tiny_run
    assert len(results) == 3
    for r in results:
        assert r.best_heuristic in HEURISTICS
        assert Path(r.file).is_file()
        assert Path(r.file).parent == out / "worlds"
        assert set(r.effective_p99_ms) == {"learned", "unguarded", "best", "least-latency"}
        assert all(v > 0 for v in r.effective_p99_ms.values())
        assert 0.0 <= r.fallback_share <= 1.0
    summary = summarise(results)
    assert summary["worlds"] == 3
    assert 0.0 <= summary["share_within"] <= 1.0
    assert summary["max_vs_best"] == max(r.vs_best["learned"] for r in results)
    text = render_summary(results, "cmd", "test policy")
    assert "guard on" in text
    assert "guard off" in text
    for r in results:
        assert f"`{r.world.file_name}`" in text
    with write_csv(results, out / "heldout.csv").open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["world"] for row in rows] == [r.world.name for r in results]
    assert tuple(rows[0]) == CSV_COLUMNS


def _result(world: World, learned: float, unguarded: float, vs_reference: float) -> WorldResult:
    return WorldResult(
        world=world,
        file=world.file_name,
        best_heuristic="jsq",
        timeout_ms=1000.0,
        effective_p99_ms={"learned": 100.0, "unguarded": 100.0, "best": 100.0, "least-latency": 1},
        vs_best={"learned": learned, "unguarded": unguarded},
        vs_reference={"learned": vs_reference, "unguarded": vs_reference},
        fallback_share=0.0,
    )


def test_the_selection_is_kept_and_reused_for_the_same_worlds_and_seeds(
    tiny_run: tuple[list[WorldResult], Path],
) -> None:
    results, out = tiny_run
    worlds, cache = [r.world for r in results], out / "selection.json"
    kept = cache.read_text()
    lines: list[str] = []
    again = run_heldout(
        worlds, out, selection_seeds=(1,), workers=1, log=lines.append, selection_only=True
    )
    assert again == []
    assert lines == [f"selection: reusing {cache} (same worlds, seeds and heuristics)"]
    assert cache.read_text() == kept
    lines.clear()
    run_heldout(worlds, out, selection_seeds=(4,), workers=1, log=lines.append, selection_only=True)
    assert not any("reusing" in line for line in lines), "other seeds: selected again"
    assert cache.read_text() != kept


def test_summary_figures_guard_on_and_off() -> None:
    worlds = [generate_world(1_000_000, i) for i in range(3)]
    results = [
        _result(worlds[0], 1.0, 1.0, 0.5),
        _result(worlds[1], 1.2, 2.0, 0.8),
        _result(worlds[2], 0.9, 1.05, 1.0),
    ]
    on, off = summarise(results, "learned"), summarise(results, "unguarded")
    assert on["share_within"] == pytest.approx(2 / 3)
    assert off["share_within"] == pytest.approx(2 / 3)
    assert on["max_vs_best"] == 1.2
    assert on["max_world"] == worlds[1].name
    assert off["max_vs_best"] == 2.0
    assert on["geomean_vs_best"] == pytest.approx((1.0 * 1.2 * 0.9) ** (1 / 3))
    assert on["geomean_vs_reference"] == pytest.approx(0.4 ** (1 / 3))
    text = render_summary(results, "cmd", "p")
    assert "| worst ratio to the best heuristic | 1.200" in text
    assert text.index(worlds[1].file_name) < text.index(worlds[0].file_name), "worst first"
    assert not math.isnan(on["geomean_vs_best"])


def test_worlds_studied_during_development_are_named_and_left_out_of_a_second_figure() -> None:
    studied_worlds = [generate_world(1_000_000, i) for i in (53, 114)]
    blind_worlds = [generate_world(1_000_000, i) for i in (2, 3)]
    results = [
        _result(studied_worlds[0], 2.0, 1.0, 0.5),
        _result(studied_worlds[1], 1.5, 1.0, 0.5),
        _result(blind_worlds[0], 1.0, 1.0, 0.5),
        _result(blind_worlds[1], 1.2, 1.3, 0.5),
    ]
    assert studied(results) == {53, 114}
    text = render_summary(results, "cmd", "p")
    assert "0053, 0114" in text  # the guard's study names both
    assert "Over the other 2 worlds: within 1.10x 50.0% guard on, 50.0% off" in text
    assert f"worst 1.200 ({blind_worlds[1].name}) on, 1.300 ({blind_worlds[1].name}) off" in text
    assert "studied" not in render_summary(results[2:], "cmd", "p")
    other_seed = [_result(generate_world(3, 53), 1.0, 1.0, 0.5)]
    assert studied(other_seed) == set()


def test_the_results_page_section_is_replaced_between_markers(tmp_path: Path) -> None:
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nbody\n")
    update_results_page(page, "first\n")
    update_results_page(page, "second\n")
    text = page.read_text()
    assert text.startswith("# Results\n\nbody\n")
    assert text.count(BEGIN) == 1
    assert text.count(END) == 1
    assert "second" in text
    assert "first" not in text


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--worlds"):
        main(["--worlds", "0", "--out", str(tmp_path)])
    with pytest.raises(ConfigError, match="training seed"):
        main(["--worlds", "1", "--seed", "7", "--out", str(tmp_path)])


def test_the_csv_is_logged_to_mlflow_as_an_artifact(
    tiny_run: tuple[list[WorldResult], Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlruns.db")
    results, out = tiny_run
    csv_path = write_csv(results, out / "heldout.csv")
    run_id = log_to_mlflow("heldout-test", [csv_path], summarise(results))
    client = MlflowClient()
    assert [a.path for a in client.list_artifacts(run_id, "heldout")] == ["heldout/heldout.csv"]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["heldout/worlds"] == 3
    assert metrics["heldout/share_within"] == summarise(results)["share_within"]


def test_ctrl_c_in_a_terminal_stops_the_run_and_its_workers_in_one_line(tmp_path: Path) -> None:
    """A terminal's Ctrl-C reaches the whole process group, the evaluation's worker processes
    too: the workers ignore it and finish their episode, the queued ones are dropped, and the
    command says one line and exits 130, with no traceback and nothing left behind."""
    argv = [sys.executable, "-m", "training.heldout", "--worlds", "6", "--out", str(tmp_path)]
    with subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            read_until(process, "selection: ")
        finally:
            os.killpg(process.pid, signal.SIGINT)
            try:
                _, err = process.communicate(timeout=120)  # one episode per worker at most
            finally:
                end_session(process)
    assert process.returncode == 130
    assert err.strip() == "interrupted (Ctrl-C): stopped before the end"
    assert session_groups(process.pid) == set()
