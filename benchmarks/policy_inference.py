"""Time the learned policy's numpy forward pass for a full pool of 16 backends (target ≤ 100 µs).

Uses the shipped policy when there is one, else random weights of the default architecture
(the cost depends only on the shapes). Also times the whole control step the proxy runs once
per interval: encode the snapshot, forward pass, softmax decode.

    .venv/bin/python benchmarks/policy_inference.py
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

import numpy as np

from rl_lb.errors import ModelError
from rl_lb.features import MAX_BACKENDS, FeatureEncoder
from rl_lb.policies.learned import LearnedPolicy, SetNetwork
from rl_lb.types import BackendStats, PoolSnapshot

__all__ = ["main"]


def _random_policy(encoder: FeatureEncoder, rng: np.random.Generator) -> LearnedPolicy:
    def layer(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        weight = rng.normal(0, 1 / np.sqrt(n_in), (n_in, n_out)).astype(np.float32)
        return weight, np.zeros(n_out, np.float32)

    n_features = len(encoder.names)
    network = SetNetwork(
        phi=(layer(n_features, 64), layer(64, 64)),
        rho=(layer(3 * 64, 64),),
        head=rng.normal(0, 0.1, 64).astype(np.float32),
        activation="tanh",
    )
    return LearnedPolicy(network, encoder, {"version": "random"})


def _snapshot(rng: np.random.Generator, taken_at: float) -> PoolSnapshot:
    latency = rng.uniform(0.01, 0.1, MAX_BACKENDS)
    rows = [
        BackendStats(
            f"b{i}", 4, latency[i], latency[i], 2 * latency[i], 3 * latency[i], 0.0, 100.0, 0.1,
            True, False, 1 / MAX_BACKENDS,
        )
        for i in range(MAX_BACKENDS)
    ]  # fmt: skip
    return PoolSnapshot.from_backends(taken_at, rows)


def _best_of(statement: Callable[[], object], number: int) -> float:
    """Microseconds per call, best of 5 repeats (the least disturbed by other processes)."""
    return min(timeit.repeat(statement, number=number, repeat=5)) / number * 1e6


def main() -> None:
    rng = np.random.default_rng(0)
    encoder = FeatureEncoder()
    try:
        policy = LearnedPolicy.load(None)
    except ModelError:
        policy = _random_policy(encoder, rng)
    snapshots = [_snapshot(rng, float(t)) for t in range(encoder.history)]
    for s in snapshots[:-1]:
        policy.weights(s)
    observation = encoder.encode(snapshots[-1], snapshots[:-1])
    forward = _best_of(lambda: policy.network.scores(observation), 2000)
    step = _best_of(lambda: policy.weights(snapshots[-1]), 500)
    print(f"policy {policy.version}: {MAX_BACKENDS} backends")
    print(f"forward pass        {forward:8.1f} µs  (target ≤ 100 µs)")
    print(f"encode+forward+decode {step:6.1f} µs")


if __name__ == "__main__":
    main()
