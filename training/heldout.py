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
running them again. Delete the file after a change of the simulator.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import sys
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.cli import check_output_path
from envs.evaluate import evaluate
from envs.worlds import HELDOUT_SEED, World, generate_worlds
from rl_lb.balancers import BALANCER_NAMES, UNGUARDED_SUFFIX
from rl_lb.errors import ConfigError, RlLbError
from training.evaluation import LEARNED, REFERENCE

__all__ = [
    "EVALUATION_SEEDS",
    "HELDOUT_SEED",
    "HEURISTICS",
    "SELECTION_SEEDS",
    "TARGETS",
    "WorldResult",
    "log_to_mlflow",
    "main",
    "render_summary",
    "run_heldout",
    "summarise",
    "update_results_page",
    "write_csv",
]

SELECTION_SEEDS = (40_001, 40_002, 40_003)
EVALUATION_SEEDS = (40_004, 40_005, 40_006)
"""Simulator seeds, above training's (10_001…, 20_001…) and docs/results.md's (30_001…)."""
HEURISTICS = tuple(name for name in BALANCER_NAMES if name != LEARNED)
UNGUARDED = LEARNED + UNGUARDED_SUFFIX
WITHIN = 1.10
"""A world counts as held when learned is within this factor of its best heuristic."""
TARGETS = (
    ("share of worlds with learned <= 1.10x the best heuristic", "share_within", ">=", 0.95),
    ("worst ratio to the best heuristic", "max_vs_best", "<=", 1.5),
    ("geometric mean vs the best heuristic", "geomean_vs_best", "<=", 1.0),
    ("geometric mean vs least-latency", "geomean_vs_reference", "<=", 0.90),
)
SELECTION_FILE = "selection.json"
BEGIN, END = "<!-- heldout:begin -->", "<!-- heldout:end -->"
"""Markers of the held-out section in docs/results.md, which this module rewrites alone."""
WORST_SHOWN = 10


@dataclass(frozen=True)
class WorldResult:
    """One world's figures: effective p99 means (ms) and paired ratios over evaluation seeds."""

    world: World
    file: str
    best_heuristic: str
    timeout_ms: float
    effective_p99_ms: dict[str, float]
    """Balancer role (learned, unguarded, best, least-latency) → mean over evaluation seeds."""
    vs_best: dict[str, float]
    """learned / unguarded → mean over evaluation seeds of its ratio to the best heuristic."""
    vs_reference: dict[str, float]
    fallback_share: float
    """Share of control intervals the guarded policy spent on its fallback."""

    @property
    def separates(self) -> bool:
        """False when even the best heuristic's tail is the timeout: every balancer fails."""
        return self.effective_p99_ms["best"] < self.timeout_ms


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _by_world(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[int, float]]]:
    table: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for record in records:
        table[record["scenario"]][record["balancer"]][int(record["seed"])] = float(
            record["effective_p99_ms"]
        )
    return table


def _pick_best(selection: dict[str, dict[int, float]]) -> str:
    """The heuristic with the lowest mean effective p99 over the selection seeds (first on ties)."""
    return min(HEURISTICS, key=lambda h: _mean(list(selection[h].values())))


def _progress(log: Callable[[str], None] | None, stage: str) -> Callable[[int, int], None] | None:
    if log is None:
        return None
    report = log

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            report(f"{stage}: {done}/{total} episodes")

    return progress


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
) -> list[WorldResult]:
    """Select each world's best heuristic, then measure learned against it; files under `out`.

    With `selection_only`, stop after the selection (kept in `out/selection.json`) and return
    no results: the policy-independent part of a long run, done ahead of the policy.

    `log` receives a line at every tenth of each stage (a full run takes tens of minutes).
    """
    learned = LEARNED if policy is None else f"{LEARNED}:{policy}"
    unguarded = learned + UNGUARDED_SUFFIX
    folder = out / "worlds"
    folder.mkdir(parents=True, exist_ok=True)
    families = {}
    for world in worlds:
        path = folder / world.file_name
        path.write_text(world.text, encoding="utf-8")
        families[world.name] = world.family(path)
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
            progress=_progress(log, "selection"),
        )
        cache.write_text(json.dumps({"key": key, "records": records}, default=float), "utf-8")
    selection = _by_world(records)
    best = {name: _pick_best(selection[name]) for name in families}
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
            progress=_progress(log, f"evaluation, worlds whose best is {heuristic}"),
        )
        measured |= _by_world(records)
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


def _geomean(values: Sequence[float]) -> float:
    return math.exp(_mean([math.log(max(v, 1e-9)) for v in values]))


def summarise(results: Sequence[WorldResult], role: str = "learned") -> dict[str, Any]:
    """The summary figures of `role` ("learned": guard on, "unguarded": off)."""
    vs_best = [r.vs_best[role] for r in results]
    worst = max(results, key=lambda r: r.vs_best[role])
    return {
        "worlds": len(results),
        "share_within": sum(v <= WITHIN for v in vs_best) / len(vs_best),
        "max_vs_best": worst.vs_best[role],
        "max_world": worst.world.name,
        "geomean_vs_best": _geomean(vs_best),
        "geomean_vs_reference": _geomean([r.vs_reference[role] for r in results]),
        "not_separating": sum(not r.separates for r in results),
    }


CSV_COLUMNS = (
    "world", "file", "backends", "mix", "arrivals", "trouble", "best_heuristic", "timeout_ms",
    "learned_ms", "unguarded_ms", "best_ms", "least_latency_ms", "learned_vs_best",
    "unguarded_vs_best", "learned_vs_least_latency", "unguarded_vs_least_latency",
    "fallback_share", "separates",
)  # fmt: skip


def write_csv(results: Sequence[WorldResult], path: Path) -> Path:
    """The full per-world table, one row per world."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            ms = r.effective_p99_ms
            writer.writerow(
                [
                    r.world.name, r.file, r.world.size, r.world.mix, r.world.arrivals,
                    "+".join(r.world.trouble) or "none", r.best_heuristic, f"{r.timeout_ms:g}",
                    f"{ms['learned']:.2f}", f"{ms['unguarded']:.2f}", f"{ms['best']:.2f}",
                    f"{ms['least-latency']:.2f}", f"{r.vs_best['learned']:.4f}",
                    f"{r.vs_best['unguarded']:.4f}", f"{r.vs_reference['learned']:.4f}",
                    f"{r.vs_reference['unguarded']:.4f}", f"{r.fallback_share:.4f}",
                    int(r.separates),
                ]
            )  # fmt: skip
    return path


def render_summary(results: Sequence[WorldResult], command: str, policy: str) -> str:
    """The held-out section: targets guard on and off, the worst worlds, how to reproduce."""
    on, off = summarise(results, "learned"), summarise(results, "unguarded")
    indices = [r.world.index for r in results]
    seed = results[0].world.seed
    lines = [
        "## Held-out generated worlds",
        "",
        f"{len(results)} worlds of generator seed {seed} (indices {min(indices)}–{max(indices)}; "
        f"training must draw worlds from generator seeds below {HELDOUT_SEED}), policy `{policy}`. "
        f"Per world, simulator seeds {', '.join(map(str, SELECTION_SEEDS))} select the best of "
        f"{len(HEURISTICS)} heuristics; seeds {', '.join(map(str, EVALUATION_SEEDS))} (paired) "
        "measure learned and that heuristic; a world's ratio is the mean of the paired ratios of "
        "effective p99. Regenerate with:",
        "",
        "```",
        command,
        f"rl-lb scenario generate --seed {seed} --count {max(indices) + 1} --out DIR  # the files",
        "```",
        "",
        "| target | guard on | guard off | required | met (on / off) |",
        "|---|---|---|---|---|",
    ]
    for label, key, op, bound in TARGETS:
        cells, met = [], []
        for figures in (on, off):
            value = figures[key]
            cell = f"{value:.1%}" if key == "share_within" else f"{value:.3f}"
            cells.append(cell + (f" ({figures['max_world']})" if key == "max_vs_best" else ""))
            met.append("yes" if (value >= bound if op == ">=" else value <= bound) else "NO")
        lines.append(f"| {label} | {cells[0]} | {cells[1]} | {op} {bound:g} | {' / '.join(met)} |")
    mean_fallback = _mean([r.fallback_share for r in results])
    lines += [
        "",
        f"Guard on, the policy spent {mean_fallback:.1%} of control intervals on its fallback "
        f"(mean over worlds). Worlds where even the best heuristic's effective p99 is the "
        f"timeout (no balancer separates): {on['not_separating']}.",
        "",
        f"Worst {min(WORST_SHOWN, len(results))} worlds (guard on):",
        "",
        "| world | backends | trouble | best heuristic | learned / best | guard off | "
        "learned / least-latency |",
        "|---|---|---|---|---|---|---|",
    ]
    worst = sorted(results, key=lambda r: r.vs_best["learned"], reverse=True)[:WORST_SHOWN]
    for r in worst:
        lines.append(
            f"| `{r.world.file_name}` | {r.world.size} | {', '.join(r.world.trouble) or 'none'} | "
            f"{r.best_heuristic} | {r.vs_best['learned']:.3f} | {r.vs_best['unguarded']:.3f} | "
            f"{r.vs_reference['learned']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def update_results_page(page: Path, section: str) -> None:
    """Put `section` between the held-out markers of `page` (appended with them if absent)."""
    text = page.read_text(encoding="utf-8") if page.exists() else ""
    block = f"{BEGIN}\n{section}{END}\n"
    if BEGIN in text and END in text:
        head, _, rest = text.partition(BEGIN)
        _, _, tail = rest.partition(END)
        text = head + block + tail.removeprefix("\n")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    page.write_text(text, encoding="utf-8")


def log_to_mlflow(experiment: str, files: list[Path], summary: dict[str, Any]) -> str:
    """One MLflow run in `experiment`: the summary as `heldout/...` metrics, the files (the
    per-world CSV, the summary) as artifacts under `heldout/`; returns the run id."""
    import mlflow

    from training.tracking import setup_experiment

    experiment_id = setup_experiment(experiment)
    with mlflow.start_run(experiment_id=experiment_id, run_name="heldout") as run:
        mlflow.log_metrics(
            {f"heldout/{k}": float(v) for k, v in summary.items() if isinstance(v, int | float)}
        )
        for file in files:
            mlflow.log_artifact(str(file), artifact_path="heldout")
        return str(run.info.run_id)


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
    try:
        main()
    except RlLbError as error:  # one line, exit 2, as the `rl-lb` command does
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(error.exit_code) from None
    except KeyboardInterrupt:  # one line, exit 130, as the `rl-lb` command does
        print("interrupted (Ctrl-C): stopped before the end", file=sys.stderr)
        raise SystemExit(130) from None
