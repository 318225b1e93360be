"""What a training run's evaluations spend besides learning: starting worker processes, and the
baselines' episodes, cold and from the record cache (docs/training.md, "The evaluation record
cache").

    .venv/bin/python benchmarks/evaluation_overhead.py [--config training/configs/shipped.toml]
        [--repeats 3] [--learned]

1. Pool start-up: a new "spawn" pool of two workers (each imports numpy and loads numba's
   cache), each running one `steady` episode, against that episode in this warm process; the
   difference is what every `evaluate` call without a kept `EvaluationPool` pays.
2. The config's first evaluation of the baselines (every `[eval] baselines` × scenario × seed)
   into an empty record cache, then again from it; the records must come back identical.
3. With `--learned`: the same scenarios and seeds with the shipped policy, which is never cached.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from envs.evaluate import _job, _process_pool, evaluate
from envs.record_cache import RecordCache
from rl_lb.scenarios import load_scenario
from training.config import load_config


def _identical(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def same(x: Any, y: Any) -> bool:
        nan = isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y)
        return type(x) is type(y) and (x == y or nan)

    return len(a) == len(b) and all(
        list(x) == list(y) and all(same(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=Path("training/configs/shipped.toml"))
    parser.add_argument("--repeats", type=int, default=3, help="pool start-ups to time")
    parser.add_argument("--learned", action="store_true", help="also time the shipped policy")
    args = parser.parse_args()
    steady = load_scenario("steady").sample(np.random.default_rng(1))
    _job(steady, "round-robin", 1)  # this process's numba cache loaded before timing
    for _ in range(args.repeats):
        start = time.perf_counter()
        _job(steady, "round-robin", 1)
        episode = time.perf_counter() - start
        start = time.perf_counter()
        with _process_pool(2) as pool:
            list(pool.map(_job, [steady, steady], ["round-robin"] * 2, [1, 1]))
        pooled = time.perf_counter() - start
        print(f"pool start-up: {pooled - episode:.2f} s ({pooled:.2f} s with one episode each)")

    config = load_config(args.config)
    scenarios = [str(p) for p in config.scenario_paths()]
    baselines, seeds = config.eval.baselines, config.eval.seeds
    with tempfile.TemporaryDirectory() as folder:
        cache = RecordCache(Path(folder))
        runs = []
        for label in ("cold", "warm"):
            start = time.perf_counter()
            runs.append(evaluate(scenarios, baselines, seeds, cache=cache))
            took = time.perf_counter() - start
            print(f"baselines, {label} cache: {len(runs[-1])} episodes in {took:.2f} s")
        print(f"records identical: {_identical(*runs)}")
    if args.learned:
        start = time.perf_counter()
        records = evaluate(scenarios, ["learned"], seeds)
        print(f"learned: {len(records)} episodes in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
