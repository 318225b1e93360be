"""One heuristic across two held-out selections, world by world: what a change to it did.

    .venv/bin/python -m training.compare_selections BEFORE/selection.json AFTER/selection.json
                                                    [--balancer prequal] [--against jsq]

The two files are `training.heldout --selection-only` runs on the same worlds and seeds by two
versions of the code. A change to one heuristic (Prequal's probe pool) moves its effective p99
world by world; the selection's seeds are paired, so the ratio of its means per world is the
change's effect there. Prints the geometric mean of those ratios over the worlds that separate
the heuristics (not every one at the same p99, e.g. every one at the timeout), in how many it
went down, how many worlds each heuristic is best in before and after, and, where `--against`
was best before, the heuristic's ratio to it before and after. docs/baselines.md quotes it.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rl_lb.errors import ConfigError
from training.heldout_report import HEURISTICS, _mean, by_world, geomean, pick_best
from training.script import run_script

__all__ = ["Comparison", "compare", "load_selection", "main", "render"]

Selection = dict[str, dict[str, dict[int, float]]]
"""world → heuristic → seed → effective p99 (ms)."""


def load_selection(path: Path) -> Selection:
    """The records of a `selection.json`, by world; a clear error for anything else."""
    try:
        data = json.loads(path.read_text())
        records = data["records"]
        table = by_world(records)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            str(path),
            f"not a held-out selection ({type(error).__name__}: {error})",
            "write one with `python -m training.heldout --selection-only --out DIR`",
        ) from None
    for world, heuristics in table.items():
        missing = set(HEURISTICS) - set(heuristics)
        if missing:
            raise ConfigError(
                str(path),
                f"{world} has no records of {', '.join(sorted(missing))}",
                "run the selection again with this version of the code",
            )
    return table


@dataclass(frozen=True)
class Comparison:
    worlds: int
    separating: int
    """Worlds whose heuristics do not all have the same mean effective p99 before."""
    geomean_ratio: float
    lower_in: int
    lowest_ratio: float
    highest_ratio: float
    best_before: dict[str, int]
    best_after: dict[str, int]
    against_best_before: int
    """Worlds whose best heuristic before is `against`."""
    versus_before: float | None
    versus_after: float | None


def compare(before: Selection, after: Selection, balancer: str, against: str) -> Comparison:
    """`balancer`'s change from `before` to `after` (see the module's docstring)."""
    worlds = sorted(before)
    if sorted(after) != worlds:
        raise ConfigError(
            "AFTER", "not a selection of the same worlds", "run both on the same --worlds"
        )
    ratios = []
    for world in worlds:
        means = [_mean(list(before[world][h].values())) for h in HEURISTICS]
        if max(means) == min(means):
            continue
        old = _mean(list(before[world][balancer].values()))
        new = _mean(list(after[world][balancer].values()))
        ratios.append(new / old)
    if not ratios:
        raise ConfigError("BEFORE", "no world separates the heuristics", "use more --worlds")
    was_best = [w for w in worlds if pick_best(before[w]) == against]

    def versus(table: Selection) -> float:
        return geomean(
            [
                _mean(list(table[w][balancer].values())) / _mean(list(table[w][against].values()))
                for w in was_best
            ]
        )

    return Comparison(
        worlds=len(worlds),
        separating=len(ratios),
        geomean_ratio=geomean(ratios),
        lower_in=sum(r < 1.0 for r in ratios),
        lowest_ratio=min(ratios),
        highest_ratio=max(ratios),
        best_before=dict(Counter(pick_best(before[w]) for w in worlds).most_common()),
        best_after=dict(Counter(pick_best(after[w]) for w in worlds).most_common()),
        against_best_before=len(was_best),
        versus_before=versus(before) if was_best else None,
        versus_after=versus(after) if was_best else None,
    )


def render(result: Comparison, balancer: str, against: str) -> Sequence[str]:
    lines = [
        f"{balancer}: {result.geomean_ratio:.3f}x its effective p99 before, geometric mean "
        f"over the {result.separating} of {result.worlds} worlds that separate the "
        f"heuristics; lower in {result.lower_in} "
        f"({result.lowest_ratio:.2f}x to {result.highest_ratio:.2f}x)",
        "best heuristic before: " + ", ".join(f"{h} {n}" for h, n in result.best_before.items()),
        "best heuristic after:  " + ", ".join(f"{h} {n}" for h, n in result.best_after.items()),
    ]
    if result.versus_before is not None:
        lines.append(
            f"where {against} was best before ({result.against_best_before} worlds): "
            f"{balancer} / {against} {result.versus_before:.3f} before, "
            f"{result.versus_after:.3f} after"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="selection.json of the code before")
    parser.add_argument("after", type=Path, help="selection.json of the code after")
    parser.add_argument("--balancer", default="prequal", choices=HEURISTICS)
    parser.add_argument("--against", default="jsq", choices=HEURISTICS)
    args = parser.parse_args(argv)
    result = compare(
        load_selection(args.before), load_selection(args.after), args.balancer, args.against
    )
    print("\n".join(render(result, args.balancer, args.against)))


if __name__ == "__main__":
    run_script(main)
