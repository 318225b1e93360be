"""The held-out evaluation's figures and where they go: one world's result, the summary against
the targets, the per-world CSV, the section of docs/results.md and the MLflow record.

Kept apart from `training.heldout`, which runs the episodes: these are pure functions of the
results (a finished run's CSV can be read back into them), and the protocol's constants (seeds,
heuristics, targets) live here once for both.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from envs.worlds import HELDOUT_SEED, World
from rl_lb.balancers import BALANCER_NAMES
from training.evaluation import LEARNED

__all__ = [
    "BEGIN",
    "CSV_COLUMNS",
    "END",
    "EVALUATION_SEEDS",
    "HEURISTICS",
    "SELECTION_SEEDS",
    "STUDIES",
    "TARGETS",
    "Study",
    "WorldResult",
    "by_world",
    "geomean",
    "log_to_mlflow",
    "pick_best",
    "render_summary",
    "studied",
    "summarise",
    "update_results_page",
    "write_csv",
]

SELECTION_SEEDS = (40_001, 40_002, 40_003)
EVALUATION_SEEDS = (40_004, 40_005, 40_006)
"""Simulator seeds, above training's (10_001…, 20_001…) and docs/results.md's (30_001…)."""
HEURISTICS = tuple(name for name in BALANCER_NAMES if name != LEARNED)
WITHIN = 1.10
"""A world counts as held when learned is within this factor of its best heuristic."""
TARGETS = (
    ("share of worlds with learned <= 1.10x the best heuristic", "share_within", ">=", 0.95),
    ("worst ratio to the best heuristic", "max_vs_best", "<=", 1.5),
    ("geometric mean vs the best heuristic", "geomean_vs_best", "<=", 1.0),
    ("geometric mean vs least-latency", "geomean_vs_reference", "<=", 0.90),
)
BEGIN, END = "<!-- heldout:begin -->", "<!-- heldout:end -->"
"""Markers of the held-out section in docs/results.md, which this module rewrites alone."""
WORST_SHOWN = 10


@dataclass(frozen=True)
class Study:
    """Held-out worlds someone looked at while changing the code: from that change on, their
    figures are no longer blind, and the summary says so beside the figures of the others.

    The list holds the worlds docs/training.md names as studied; the 5 December sessions traced
    more worlds one at a time than they named, so it is a lower bound on what was looked at."""

    change: str
    seeds: str
    """Which simulator seeds were looked at (the evaluation seeds make it the least blind)."""
    worlds: tuple[int, ...]
    """Indices of generator seed `HELDOUT_SEED`."""


STUDIES = (
    Study(
        "Prequal's hot rule reading the weights (5 December 2026)",
        "3 simulator seeds, not recorded",
        (69,),
    ),
    Study(
        "the outcome guard's estimate of the fallback (5 December 2026)",
        "the evaluation seeds",
        (53, 102),
    ),
    Study(
        "Prequal's failure price (5 December 2026)",
        "3 simulator seeds, not recorded",
        (142,),
    ),
    Study(
        "the band of Prequal's least loaded of the nearly fastest (5 December 2026)",
        "simulator seeds 0-2",
        (1, 7, 12, 21, 34, 43, 45, 50, 54, 56, 96, 100, 102, 105, 108, 112, 114, 127, 154, 168,
         183),
    ),
    Study(
        "the outcome guard's queue term, in-flight - 1 (6 December 2026)",
        "the evaluation seeds",
        (53, 114),
    ),
    Study(
        "the seed noise of the misses and near misses (6 December 2026)",
        "simulator seeds 0-9",
        (4, 7, 12, 21, 32, 33, 44, 45, 50, 51, 59, 70, 74, 84, 94, 96, 102, 105, 108, 110, 120,
         122, 127, 132, 139, 150, 154, 155, 159, 165, 183, 198),
    ),
    Study(
        "Prequal's probes drawn away from the proxy's busy backends (6 December 2026)",
        "simulator seeds 0-3; 45 traced on seed 0",
        (12, 21, 45, 50, 102, 108, 120, 127),
    ),
    Study(
        "a failing backend's cold answer as no refuge (6 December 2026)",
        "simulator seeds 0-3, and four variants of the rule compared on all 200 worlds' "
        "evaluation seeds (so no figure here is blind to that choice)",
        (45, 51, 94, 110),
    ),
    Study(
        "Prequal's equal-weight rule for weights within 1.25x of each other (6 December 2026, "
        "not kept: 97.0% -> 94.0% of the tempering's worlds)",
        "the evaluation seeds; 139's weights on simulator seeds 0-1",
        (7, 56, 74, 139, 155, 159),
    ),
    Study(
        "the outcome guard's hold ended when the fallback does no better (6 December 2026)",
        "the evaluation seeds, 94 and 134 traced before the rule was written, 167 after",
        (94, 134, 167),
    ),
)  # fmt: skip


_LOOKED_AT = frozenset(i for study in STUDIES for i in study.worlds)


def _is_studied(world: World) -> bool:
    return world.seed == HELDOUT_SEED and world.index in _LOOKED_AT


def studied(results: Sequence[WorldResult]) -> set[int]:
    """Indices of the held-out worlds among `results` that a change was studied on."""
    return {r.world.index for r in results if _is_studied(r.world)}


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


def geomean(values: Sequence[float]) -> float:
    return math.exp(_mean([math.log(max(v, 1e-9)) for v in values]))


def by_world(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[int, float]]]:
    """Evaluation records as world → balancer → seed → effective p99 (ms)."""
    table: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for record in records:
        table[record["scenario"]][record["balancer"]][int(record["seed"])] = float(
            record["effective_p99_ms"]
        )
    return table


def pick_best(selection: dict[str, dict[int, float]]) -> str:
    """The heuristic with the lowest mean effective p99 over the selection seeds (first on ties)."""
    return min(HEURISTICS, key=lambda h: _mean(list(selection[h].values())))


def summarise(results: Sequence[WorldResult], role: str = "learned") -> dict[str, Any]:
    """The summary figures of `role` ("learned": guard on, "unguarded": off)."""
    vs_best = [r.vs_best[role] for r in results]
    worst = max(results, key=lambda r: r.vs_best[role])
    return {
        "worlds": len(results),
        "share_within": sum(v <= WITHIN for v in vs_best) / len(vs_best),
        "max_vs_best": worst.vs_best[role],
        "max_world": worst.world.name,
        "geomean_vs_best": geomean(vs_best),
        "geomean_vs_reference": geomean([r.vs_reference[role] for r in results]),
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
        *_studied_lines(results),
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


def _studied_lines(results: Sequence[WorldResult]) -> list[str]:
    """Which worlds are not blind, and the figures over the others (nothing if none are)."""
    seen = studied(results)
    blind = [r for r in results if not _is_studied(r.world)]
    if not seen or not blind:
        return []
    lines = [
        "Worlds studied while the code changed, so no longer blind (most were picked as the "
        "worst of an earlier policy, so the figure over the others flatters as much as the "
        "figure over all may; neither is a blind estimate now):",
        "",
    ]
    for study in STUDIES:
        hit = sorted(seen & set(study.worlds))
        if hit:
            names = ", ".join(f"{i:04d}" for i in hit)
            lines.append(f"- {study.change}, on {study.seeds}: {names}")
    on, off = summarise(blind, "learned"), summarise(blind, "unguarded")
    lines += [
        "",
        f"Over the other {len(blind)} worlds: within {WITHIN:.2f}x {on['share_within']:.1%} "
        f"guard on, {off['share_within']:.1%} off; worst {on['max_vs_best']:.3f} "
        f"({on['max_world']}) on, {off['max_vs_best']:.3f} ({off['max_world']}) off.",
        "",
    ]
    return lines


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
