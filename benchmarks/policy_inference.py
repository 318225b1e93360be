"""Time the learned policy and one whole control decision at N = 16, 100 and 1,000 backends.

Targets (issue 15): the numpy forward pass ≤ 1 ms at N = 1,000 (≤ 100 µs at 16); one control
decision — `PoolMetrics.snapshot` of a pool with a full window of answers, encode, forward
pass, softmax decode, the picker's weight table — ≤ 5 ms at N = 1,000.

Uses the shipped policy when there is one, else random weights of the default architecture
(the cost depends only on the shapes).

    .venv/bin/python benchmarks/policy_inference.py [--backends 16 100 1000]
"""

from __future__ import annotations

import argparse
import random
import time
import timeit
from collections.abc import Callable

import numpy as np

from rl_lb.errors import ModelError
from rl_lb.features import FeatureEncoder
from rl_lb.metrics import PoolMetrics
from rl_lb.pickers import make_picker
from rl_lb.policies.learned import LearnedPolicy, SetNetwork

__all__ = ["main"]

SIZES = (16, 100, 1000)


def _random_policy(encoder: FeatureEncoder, rng: np.random.Generator) -> LearnedPolicy:
    def layer(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        weight = rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_out)).astype(np.float32)
        return weight, np.zeros(n_out, np.float32)

    network = SetNetwork(
        phi=(layer(encoder.n_features, 64), layer(64, 64)),
        rho=(layer(2 * 64, 64),),
        head=rng.normal(0, 0.1, 64).astype(np.float32),
        activation="tanh",
    )
    return LearnedPolicy(network, encoder, {"version": "random"})


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _busy_pool(n: int, rng: random.Random) -> tuple[PoolMetrics, _Clock]:
    """Every backend answered in every sub-window of the 10 s window (20 answers each)."""
    clock = _Clock()
    metrics = PoolMetrics([f"b{i}" for i in range(n)], clock)
    for step in range(200):
        clock.now = step * 0.05
        for i in range(n):
            metrics.record(i, rng.lognormvariate(-4.0, 0.5), error=rng.random() < 0.01)
    return metrics, clock


def _best_of(statement: Callable[[], object], number: int) -> float:
    """Microseconds of this process's CPU time per call, best of 5 repeats: on a shared machine
    the least disturbed figure (wall-clock time also counts the waits for a core)."""
    repeats = timeit.repeat(statement, number=number, repeat=5, timer=time.process_time)
    return min(repeats) / number * 1e6


def measure(n: int, policy: LearnedPolicy) -> dict[str, float]:
    metrics, clock = _busy_pool(n, random.Random(n))
    uniform = np.full(n, 1.0 / n)
    history = []
    for _ in range(policy.encoder.history):
        clock.now += 1.0
        history.append(metrics.snapshot(uniform))
    policy.reset()
    for s in history[:-1]:
        policy.weights(s)
    observation = policy.encoder.encode(history[-1], history[:-1])
    picker = make_picker(policy.picker, random.Random(0))
    repeats = max(20, 20_000 // n)

    def decision() -> None:
        snapshot = metrics.snapshot(uniform)
        picker.update(policy.weights(snapshot))

    return {
        "forward_us": _best_of(lambda: policy.network.scores(observation), repeats),
        "snapshot_us": _best_of(lambda: metrics.snapshot(uniform), max(10, repeats // 4)),
        "decision_us": _best_of(decision, max(10, repeats // 4)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", type=int, nargs="+", default=list(SIZES))
    sizes = parser.parse_args().backends
    encoder = FeatureEncoder()
    try:
        policy = LearnedPolicy.load(None)
    except ModelError:
        policy = _random_policy(encoder, np.random.default_rng(0))
    print(f"policy {policy.version}, picker {policy.picker}; µs of CPU time, best of 5")
    print(f"{'backends':>8}{'forward pass':>14}{'snapshot':>12}{'decision':>12}")
    for n in sizes:
        m = measure(n, policy)
        print(f"{n:>8}{m['forward_us']:>14.1f}{m['snapshot_us']:>12.1f}{m['decision_us']:>12.1f}")


if __name__ == "__main__":
    main()
