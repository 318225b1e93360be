"""The batched twins against their references: the same floats, not merely close ones.

`envs.nb_features.encode_batch` against `rl_lb.features.FeatureEncoder.encode` (random
snapshots with unknown latencies, dead, ejected and idle backends, mixed pool sizes and
histories; then the snapshots of simulated episodes); `envs.nb_reward` against numpy's sum,
mean and quantile and against `BackendPoolEnv`'s own interval figures.
"""

from __future__ import annotations

import numpy as np
import pytest

from envs import kernel
from envs.env import BackendPoolEnv
from envs.nb_features import encode_batch
from envs.nb_reward import STATS, batch_interval_stats, linear_quantile, pairwise_sum
from envs.simulator import ControlLoop, Simulator
from rl_lb.features import FeatureEncoder
from rl_lb.scenarios import Scenario, load_scenario
from rl_lb.types import PoolSnapshot

SIZES = [*range(1, 140), 255, 256, 257, 1000, 4099, 8192, 8193, 20_011]
"""Every branch of numpy's pairwise summation: the loop below 8, one block, halves above 128,
and past numpy's 8192-element buffer."""


def random_snapshot(rng: np.random.Generator, n: int) -> PoolSnapshot:
    """A pool with every awkward case: no data, no EWMA, dead, ejected, idle, zero weights."""
    ewma = rng.lognormal(-4, 1.5, n)
    p50 = ewma * rng.uniform(0.3, 2.0, n)
    p50[rng.random(n) < 0.2] = np.nan
    ewma[rng.random(n) < 0.1] = np.nan
    throughput = rng.lognormal(3, 2, n) * (rng.random(n) < 0.8)
    if rng.random() < 0.1:
        throughput[:] = 0.0
    healthy = rng.random(n) < 0.85
    if rng.random() < 0.05:
        healthy[:] = False
    return PoolSnapshot(
        taken_at=float(rng.uniform(0, 100)),
        names=tuple(f"b{i}" for i in range(n)),
        in_flight=rng.integers(0, 40, n) * (rng.random(n) < 0.9),
        ewma_s=ewma,
        p50_s=p50,
        p95_s=p50 * 2,
        p99_s=p50 * rng.uniform(1, 60, n),
        error_rate=rng.uniform(0, 1, n) * (rng.random(n) < 0.3),
        throughput_rps=throughput,
        staleness_s=np.where(rng.random(n) < 0.1, np.inf, rng.exponential(4, n)),
        healthy=healthy,
        ejected=rng.random(n) < 0.1,
        weights=rng.dirichlet(np.ones(n)) * (rng.random(n) < 0.9),
        window_s=float(rng.choice([2.0, 10.0, 30.0])),
    )


@pytest.mark.parametrize("history", [1, 2, 4, 6])
def test_random_batches_encode_to_the_encoders_floats(history: int) -> None:
    rng = np.random.default_rng(history)
    slots = 24
    for _ in range(40):
        k = int(rng.integers(1, 7))
        snapshots, histories = [], []
        for _ in range(k):
            n = int(rng.integers(1, slots + 1))
            snapshots.append(random_snapshot(rng, n))
            past = [random_snapshot(rng, n) for _ in range(int(rng.integers(0, history + 3)))]
            if past and rng.random() < 0.3:  # another pool size in the history: ignored
                past.insert(int(rng.integers(len(past))), random_snapshot(rng, n % slots + 1))
            if past and rng.random() < 0.3:  # the same snapshot twice, or as the current one
                past.append(past[0] if rng.random() < 0.5 else snapshots[-1])
            histories.append(past)
        batch = encode_batch(snapshots, histories, history, slots)
        assert batch.dtype == np.float32
        assert batch.shape == (k, slots, FeatureEncoder(history).n_features)
        for e in range(k):
            expected = FeatureEncoder(history).encode(snapshots[e], histories[e], slots=slots)
            np.testing.assert_array_equal(batch[e], expected)


def simulated_snapshots(name: str, seed: int, intervals: int) -> list[PoolSnapshot]:
    family = load_scenario(name)
    rng = np.random.default_rng(seed)
    scenario = family if isinstance(family, Scenario) else family.sample(rng)
    sim = Simulator(scenario, seed)
    loop = ControlLoop(sim)
    snapshots = []
    for _ in range(min(intervals, loop.intervals)):
        snapshot = loop.visible()[0]
        snapshots.append(snapshot)
        weights = rng.dirichlet(np.ones(len(snapshot))) * snapshot.live
        sim.set_decision(0, weights / max(weights.sum(), 1e-12), "p2c")
        loop.step()
    return snapshots


def test_simulated_episodes_encode_to_the_encoders_floats() -> None:
    """Real snapshots, stepped as an environment does: history = the snapshots decided on."""
    episodes = [
        simulated_snapshots(name, seed, 40)
        for seed, name in enumerate(["gc-pauses", "park", "many-proxies", "fast-failure"])
    ]
    slots = max(len(e[0]) for e in episodes)
    for t in range(1, 40):
        live = [e for e in episodes if t < len(e)]
        batch = encode_batch([e[t] for e in live], [e[:t] for e in live], 4, slots)
        for row, episode in zip(batch, live, strict=True):
            expected = FeatureEncoder(4).encode(episode[t], episode[:t], slots=slots)
            np.testing.assert_array_equal(row, expected)


def test_a_pool_larger_than_the_slots_is_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="does not fit"):
        encode_batch([random_snapshot(rng, 5)], [[]], 4, 4)


def test_pairwise_sum_and_linear_quantile_are_numpys() -> None:
    rng = np.random.default_rng(7)
    for n in SIZES:
        values = rng.lognormal(-4, 2, n)
        assert pairwise_sum(values, 0, n) == values.sum(), n
        assert pairwise_sum(values, 0, n) / n == values.mean(), n
        inner = values[3:] if n > 3 else values
        assert pairwise_sum(values, n - len(inner), len(inner)) == inner.sum(), n
        ordered = np.sort(values)
        for q in (0.0, 0.5, 0.9, 0.99, 1.0):
            assert linear_quantile(ordered, n, q) == np.quantile(values, q), (n, q)


def test_interval_stats_are_the_environments_figures() -> None:
    """Against `BackendPoolEnv._latency_stats` on random intervals (with failures, repeated
    values and empty ones) and on the intervals of a simulated episode."""
    rng = np.random.default_rng(3)
    env = BackendPoolEnv("fast-failure")
    env.reset(seed=1)
    assert env.scenario is not None
    assert env._sim is not None
    latencies = [rng.lognormal(-4, 1, n).round(int(rng.integers(2, 6))) for n in SIZES[::7]]
    failures = [rng.random(len(x)) < rng.uniform(0, 0.5) for x in latencies]
    latencies.append(np.zeros(0))
    failures.append(np.zeros(0, dtype=bool))
    sim, loop = env._sim, ControlLoop(env._sim)
    while not loop.done:
        first, last = loop.step()
        ids = sim.resolved(first, last)
        latencies.append(sim.state.r_latency[ids])
        failures.append(sim.state.r_outcome[ids] != kernel.OK)
    timeout = env.scenario.timeout_s
    figures = batch_interval_stats(latencies, failures, [timeout] * len(latencies))
    assert figures.shape == (len(latencies), len(STATS))
    for row, latency, failed in zip(figures, latencies, failures, strict=True):
        assert row[STATS.index("errors")] == failed.sum()
        expected = env._latency_stats(latency, failed)
        if expected is None:
            assert np.isnan(row[:4]).all()
        else:
            assert tuple(row[:4].tolist()) == expected
