"""The held-out evaluation: the learned policy on generated worlds training never saw.

    .venv/bin/python -m training.heldout [--worlds 200] [--policy PATH] [--out heldout/]
                                         [--results docs/results.md] [--mlflow]

Worlds are `rl-lb scenario generate --seed HELDOUT_SEED` (generator seeds below it are for
training; none may ever be it). For each world, the *selection* seeds pick its best heuristic
among every preset; the *evaluation* seeds, other seeds paired across balancers, then measure
the learned policy (guard on, and off: `learned~no-outcome-guard`), that heuristic and
least-latency. A world's ratio is the mean over the evaluation seeds of the paired ratios, so
neither side is flattered by the minimum of many noisy runs. Writes `heldout.csv` (one row per
world), `heldout.md` (the summary) and the worlds' files under `OUT/worlds/`.

The selection runs heuristics only, so it does not depend on the policy: its records are kept in
`OUT/selection.json` with the worlds' texts and seeds they were made for, and a later run on the
same worlds and seeds (another policy, or after `--selection-only`) reuses them instead of
running them again. Delete the file after a change of the simulator. The figures, the summary
against the targets and where they are written: `training.heldout_report`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from envs.cli import check_output_path
from envs.evaluate import evaluate
from envs.record_cache import RecordCache
from envs.worlds import HELDOUT_SEED, World, generate_worlds
from rl_lb.balancers import UNGUARDED_SUFFIX
from rl_lb.errors import ConfigError
from rl_lb.scenarios import ScenarioFamily
from training.evaluation import LEARNED, REFERENCE
from training.heldout_report import (
    BEGIN,
    CSV_COLUMNS,
    END,
    EVALUATION_SEEDS,
    HEURISTICS,
    SELECTION_SEEDS,
    TARGETS,
    WorldResult,
    _mean,
    by_world,
    log_to_mlflow,
    pick_best,
    render_summary,
    summarise,
    update_results_page,
    write_csv,
)
from training.script import add_record_cache_flag, run_script

__all__ = [
    "BEGIN",
    "CSV_COLUMNS",
    "END",
    "EVALUATION_SEEDS",
    "HELDOUT_SEED",
    "HEURISTICS",
    "SELECTION_SEEDS",
    "TARGETS",
    "WorldResult",
    "log_to_mlflow",
    "main",
    "progress_log",
    "render_summary",
    "run_heldout",
    "summarise",
    "update_results_page",
    "write_csv",
    "write_worlds",
]

SELECTION_FILE = "selection.json"


def progress_log(
    log: Callable[[str], None] | None, stage: str
) -> Callable[[int, int], None] | None:
    """`evaluate`'s progress as a line to `log` at every tenth of `stage`; None without a log."""
    if log is None:
        return None
    report = log

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            report(f"{stage}: {done}/{total} episodes")

    return progress


def write_worlds(worlds: Sequence[World], folder: Path) -> dict[str, ScenarioFamily]:
    """Each world's file into `folder` (created), and its family read back from that file, so
    the episodes run what a person can open and replay."""
    folder.mkdir(parents=True, exist_ok=True)
    families = {}
    for world in worlds:
        path = folder / world.file_name
        path.write_text(world.text, encoding="utf-8")
        families[world.name] = world.family(path)
    return families


def run_heldout(
    worlds: Sequence[World],
    out: Path,
    *,
    policy: str | None = None,
    selection_seeds: Sequence[int] = SELECTION_SEEDS,
    evaluation_seeds: Sequence[int] = EVALUATION_SEEDS,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
    selection_only: bool = False,
    record_cache: RecordCache | None = None,
) -> list[WorldResult]:
    """Select each world's best heuristic, then measure learned against it; files under `out`.

    With `selection_only`, stop after the selection (kept in `out/selection.json`) and return
    no results: the policy-independent part of a long run, done ahead of the policy.

    `log` receives a line at every tenth of each stage (a full run takes tens of minutes).
    `record_cache` (envs/record_cache.py) serves the heuristics' episodes run before.
    """
    learned = LEARNED if policy is None else f"{LEARNED}:{policy}"
    unguarded = learned + UNGUARDED_SUFFIX
    folder = out / "worlds"
    families = write_worlds(worlds, folder)
    key = {
        "worlds": {w.name: hashlib.sha256(w.text.encode()).hexdigest() for w in worlds},
        "seeds": list(selection_seeds),
        "heuristics": list(HEURISTICS),
    }
    cache = out / SELECTION_FILE
    saved = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    if saved.get("key") == key:
        if log is not None:
            log(f"selection: reusing {cache} (same worlds, seeds and heuristics)")
        records = saved["records"]
    else:
        records = evaluate(
            list(families.values()),
            HEURISTICS,
            selection_seeds,
            workers=workers,
            progress=progress_log(log, "selection"),
            cache=record_cache,
        )
        cache.write_text(json.dumps({"key": key, "records": records}, default=float), "utf-8")
    selection = by_world(records)
    best = {name: pick_best(selection[name]) for name in families}
    if selection_only:
        return []
    measured: dict[str, dict[str, dict[int, float]]] = {}
    fallback: dict[str, list[float]] = defaultdict(list)
    for heuristic in sorted(set(best.values())):
        names = [n for n in families if best[n] == heuristic]
        balancers = list(dict.fromkeys([learned, unguarded, heuristic, REFERENCE]))
        records = evaluate(
            [families[n] for n in names],
            balancers,
            evaluation_seeds,
            workers=workers,
            progress=progress_log(log, f"evaluation, worlds whose best is {heuristic}"),
            cache=record_cache,
        )
        measured |= by_world(records)
        for record in records:
            if record["balancer"] == learned:
                fallback[record["scenario"]].append(float(record["fallback_share"]))
    results = []
    for world in worlds:
        runs = measured[world.name]
        roles = {"learned": learned, "unguarded": unguarded, "best": best[world.name]}
        roles["least-latency"] = REFERENCE
        seeds = list(evaluation_seeds)
        results.append(
            WorldResult(
                world=world,
                file=str(folder / world.file_name),
                best_heuristic=best[world.name],
                timeout_ms=families[world.name].nominal().timeout_s * 1e3,
                effective_p99_ms={r: _mean([runs[b][s] for s in seeds]) for r, b in roles.items()},
                vs_best={
                    r: _mean([runs[roles[r]][s] / runs[roles["best"]][s] for s in seeds])
                    for r in ("learned", "unguarded")
                },
                vs_reference={
                    r: _mean([runs[roles[r]][s] / runs[REFERENCE][s] for s in seeds])
                    for r in ("learned", "unguarded")
                },
                fallback_share=_mean(fallback[world.name]),
            )
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", type=int, default=200, help="held-out worlds (0..N-1)")
    parser.add_argument(
        "--seed", type=int, default=HELDOUT_SEED, help=f"generator seed, >= {HELDOUT_SEED}"
    )
    parser.add_argument("--policy", default=None, help="a trained model (default: the shipped)")
    parser.add_argument("--out", type=Path, default=Path("heldout"))
    parser.add_argument("--results", type=Path, default=None, help="e.g. docs/results.md")
    parser.add_argument(
        "--selection-only",
        action="store_true",
        help="run only the policy-independent selection (kept for the next run)",
    )
    parser.add_argument("--mlflow", default=None, metavar="EXPERIMENT", help="log the CSV there")
    add_record_cache_flag(parser)
    args = parser.parse_args(argv)
    if args.worlds < 1:
        raise ConfigError("--worlds", f"{args.worlds} worlds", "give at least 1")
    if args.seed < HELDOUT_SEED:
        raise ConfigError("--seed", f"{args.seed} is a training seed", f"use >= {HELDOUT_SEED}")
    check_output_path(args.results, "--results")
    worlds = generate_worlds(args.seed, args.worlds)
    results = run_heldout(
        worlds,
        args.out,
        policy=args.policy,
        log=lambda line: print(line, flush=True),
        selection_only=args.selection_only,
        record_cache=RecordCache.from_env() if args.record_cache else None,
    )
    if args.selection_only:
        print(f"selection kept in {args.out / SELECTION_FILE}")
        return
    command = f".venv/bin/python -m training.heldout --worlds {args.worlds}"
    if args.policy:
        command += f" --policy {args.policy}"
    section = render_summary(results, command, args.policy or "learned (shipped)")
    csv_path = write_csv(results, args.out / "heldout.csv")
    md_path = args.out / "heldout.md"
    md_path.write_text(section, encoding="utf-8")
    print(section)
    print(f"wrote {csv_path} and {md_path}")
    if args.results is not None:
        update_results_page(args.results, section)
        print(f"updated the held-out section of {args.results}")
    if args.mlflow:
        run_id = log_to_mlflow(args.mlflow, [csv_path, md_path], summarise(results))
        print(f"logged to MLflow experiment {args.mlflow!r}, run {run_id}")


if __name__ == "__main__":
    run_script(main)
