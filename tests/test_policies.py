from __future__ import annotations

import numpy as np
import pytest
from snapshots import make_snapshot

from rl_lb.errors import ConfigError
from rl_lb.policies import (
    CapacityPolicy,
    InverseLatencyPolicy,
    UniformPolicy,
    make_policy,
    normalise,
)
from rl_lb.types import WeightPolicy

HEURISTICS = ["uniform", "inverse-latency", "capacity"]


def uneven_pool() -> object:
    return make_snapshot(
        [0.01, 0.02, 0.2, 0.015, 0.05],
        in_flight=[3, 8, 20, 1, 4],
        error_rate=[0.0, 0.1, 0.0, 0.5, 0.0],
        throughput_rps=[300, 200, 40, 500, 80],
        healthy=[True, True, True, True, False],
    )


@pytest.mark.parametrize("name", HEURISTICS)
def test_weights_are_a_distribution_over_live_backends(name: str) -> None:
    policy = make_policy(name)
    assert isinstance(policy, WeightPolicy)
    snap = uneven_pool()
    weights = policy.weights(snap)
    assert weights.shape == (5,)
    assert np.all(weights >= 0)
    assert weights[4] == 0.0  # unhealthy
    assert weights.sum() == pytest.approx(1.0)


@pytest.mark.parametrize("name", HEURISTICS)
@pytest.mark.parametrize("seed", range(5))
def test_permuting_backends_permutes_weights(name: str, seed: int) -> None:
    policy = make_policy(name)
    snap = uneven_pool()
    order = np.random.default_rng(seed).permutation(len(snap)).tolist()
    np.testing.assert_allclose(policy.weights(snap.permuted(order)), policy.weights(snap)[order])


def test_uniform_is_uniform_over_live() -> None:
    snap = make_snapshot([0.01, 0.5, 0.02], ejected=[False, True, False])
    weights = UniformPolicy().weights(snap)
    np.testing.assert_allclose(weights, [0.5, 0.0, 0.5])


def test_inverse_latency_is_proportional_to_speed() -> None:
    weights = InverseLatencyPolicy().weights(make_snapshot([0.01, 0.02, 0.04]))
    np.testing.assert_allclose(weights, np.array([4, 2, 1]) / 7)


def test_inverse_latency_gives_a_new_backend_the_median_share() -> None:
    weights = InverseLatencyPolicy().weights(make_snapshot([0.01, float("nan"), 0.04]))
    speeds = np.array([1 / 0.01, 1 / 0.025, 1 / 0.04])  # 0.025 s: the median of the others
    np.testing.assert_allclose(weights, speeds / speeds.sum())


def test_capacity_favours_parallel_and_error_free_backends() -> None:
    policy = CapacityPolicy()
    # same latency; backend 1 holds four times the requests (Little's law: 4× the capacity)
    weights = policy.weights(make_snapshot([0.02, 0.02], in_flight=[2, 8], throughput_rps=[0, 0]))
    assert weights[1] == pytest.approx(4 * weights[0])
    errors = policy.weights(make_snapshot([0.02, 0.02], error_rate=[0.0, 0.5]))
    assert errors[1] == pytest.approx(errors[0] / 2)


def test_all_unknown_latencies_fall_back_to_uniform() -> None:
    nan = float("nan")
    for policy in (InverseLatencyPolicy(), CapacityPolicy()):
        np.testing.assert_allclose(policy.weights(make_snapshot([nan, nan])), [0.5, 0.5])


def test_normalise_ignores_bad_entries_and_never_returns_all_zero() -> None:
    live = np.array([True, True, True, False])
    np.testing.assert_allclose(normalise(np.array([1.0, np.nan, -2.0, 5.0]), live), [1, 0, 0, 0])
    np.testing.assert_allclose(normalise(np.zeros(4), live), [1 / 3, 1 / 3, 1 / 3, 0])


def test_unknown_policy_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'fastest'"):
        make_policy("fastest")
