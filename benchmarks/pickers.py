"""Cost of one `pick` per picker at 16, 100 and 1,000 backends, with a live `PoolMetrics` view.

The budget is 3 µs per pick on one core for every p2c-family picker at every pool size (issue
15: a pick draws two backends, whatever N; `jsq` scans all N and grows with it).
Run: `.venv/bin/python benchmarks/pickers.py [--backends 16 100 1000]`.
Prints two cases per picker: every backend available (the table of the full pool) and two
unavailable (the cached table for that availability pattern). The view is `PoolMetrics`, whose
`available` is an `Availability` list, as in the simulator and (through `PoolView`) the proxy:
the picker sees that it has not changed in O(1), so the p2c family costs the same at every N.
`prequal` runs twice: with the unequal weights of the others (its weighted probe draws scan the
candidates) and with the equal weights of the `prequal` preset (`prequal=`), the published
algorithm, whose pick is O(pool size + probes).
"""

from __future__ import annotations

import argparse
import random
import time
import timeit

import numpy as np

from rl_lb.metrics import PoolMetrics
from rl_lb.pickers import PICKER_NAMES, make_picker

SIZES = (16, 100, 1000)
PICKS = 200_000
REPEATS = 5


def _pool(rng: random.Random, backends: int) -> PoolMetrics:
    """A pool with uneven in-flight counts and latency history, as after some traffic."""
    metrics = PoolMetrics([f"b{i}" for i in range(backends)], time.monotonic)
    for i in range(backends):
        metrics.in_flight[i] = rng.randrange(0, 20)
        for _ in range(5):
            metrics.record(i, rng.lognormvariate(-4.0, 0.5), error=rng.random() < 0.05)
    return metrics


def _picks(scope: dict[str, object]) -> int:
    """PICKS, or fewer for a picker slower than ~1 µs (jsq at 1,000 backends): about 0.2 s
    of CPU per repeat, so that the whole table stays within minutes."""
    trial = timeit.timeit("pick(view)", timer=time.process_time, globals=scope, number=1_000)
    return max(1_000, min(PICKS, int(0.2 * 1_000 / max(trial, 1e-9))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, nargs="+", default=list(SIZES))
    for backends in parser.parse_args().backends:
        table(backends)


def table(backends: int) -> None:
    rng = random.Random(7)
    weights = np.array([rng.uniform(0.5, 2.0) for _ in range(backends)])
    weights /= weights.sum()
    print(f"µs per pick (CPU time), {backends} backends, best of {REPEATS} repeats")
    print(f"{'picker':<14}{'all available':>15}{'2 unavailable':>15}")
    equal = np.full(backends, 1.0 / backends)
    rows = [(name, name, weights) for name in PICKER_NAMES] + [("prequal=", "prequal", equal)]
    for label, name, row_weights in rows:
        figures = []
        for unavailable in ((), (3, 11)):
            metrics = _pool(rng, backends)
            for i in unavailable:
                metrics.set_health(i, False)
            picker = make_picker(name, random.Random(1))
            picker.update(row_weights)
            scope = {"pick": picker.pick, "view": metrics}
            picks = _picks(scope)
            best = min(
                timeit.repeat(
                    "pick(view)",
                    timer=time.process_time,
                    globals=scope,
                    number=picks,
                    repeat=REPEATS,
                )
            )
            figures.append(best / picks * 1e6)
        print(f"{label:<14}{figures[0]:>15.2f}{figures[1]:>15.2f}")


if __name__ == "__main__":
    main()
