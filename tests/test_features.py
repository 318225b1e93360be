from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from snapshots import make_snapshot

from rl_lb.features import (
    FEATURE_NAMES,
    FEATURES,
    HISTORY_FEATURES,
    LAYOUT_VERSION,
    FeatureEncoder,
)

LATENCY_FEATURES = ("ewma_rel", "p50_rel", "p99_rel", "p99_spread")


def column(encoder: FeatureEncoder, name: str) -> int:
    return encoder.names.index(name)


def test_shape_dtype_and_bounds_follow_the_spec() -> None:
    encoder = FeatureEncoder()
    spec = encoder.observation_spec(16)
    obs = encoder.encode(make_snapshot([0.01, 0.02, 0.05]), slots=16)
    assert obs.shape == spec.shape == (16, len(FEATURE_NAMES))
    assert obs.dtype == spec.dtype == np.float32
    assert spec.low <= obs.min()
    assert obs.max() <= spec.high
    assert encoder.action_spec(16).shape == (16,)
    assert encoder.names == FEATURE_NAMES
    assert encoder.n_features == len(FEATURE_NAMES)


@pytest.mark.parametrize("n", [1, 17, 100, 1000])
def test_one_row_per_backend_for_any_pool_size(n: int) -> None:
    encoder = FeatureEncoder()
    latencies = np.random.default_rng(n).uniform(0.005, 0.2, n).tolist()
    obs = encoder.encode(make_snapshot(latencies))
    assert obs.shape == (n, len(FEATURE_NAMES))
    assert (obs[:, column(encoder, "present")] == 1.0).all()
    assert obs[0, column(encoder, "pool_size")] == pytest.approx(np.log(n))
    assert np.isfinite(obs).all()
    weights = encoder.decode(np.zeros(n, dtype=np.float32), make_snapshot(latencies))
    assert weights == pytest.approx(np.full(n, 1.0 / n))


def test_pool_relative_features_do_not_depend_on_the_pool_size() -> None:
    """No feature divides by a fixed maximum: 10 copies of a pool read like the pool itself
    (apart from log N), so what is learned on 10 backends means the same on 100."""
    encoder = FeatureEncoder()
    latencies = [0.01, 0.02, 0.05, 0.2, 0.015]
    small = encoder.encode(make_snapshot(latencies, error_rate=[0, 0, 0.1, 0.3, 0]))
    large = encoder.encode(make_snapshot(latencies * 10, error_rate=[0, 0, 0.1, 0.3, 0] * 10))
    size = column(encoder, "pool_size")
    others = [i for i in range(encoder.n_features) if i != size]
    np.testing.assert_allclose(large[:5, others], small[:, others], atol=1e-6)
    assert large[0, size] - small[0, size] == pytest.approx(np.log(10))


def test_the_gymnasium_spaces_built_in_envs_are_the_specs() -> None:
    """The core describes the arrays; envs/ turns the descriptions into the spaces."""
    from envs.env import policy_spaces

    encoder = FeatureEncoder(history=2)
    observation_space, action_space = policy_spaces(encoder, 40)
    for space, spec in (
        (observation_space, encoder.observation_spec(40)),
        (action_space, encoder.action_spec(40)),
    ):
        assert space.shape == spec.shape
        assert space.dtype == spec.dtype
        assert (space.low == spec.low).all()
        assert (space.high == spec.high).all()
    observation = encoder.encode(make_snapshot([0.01, 0.5, 0.002]), slots=40)
    assert observation_space.contains(observation)
    assert action_space.contains(np.ones(40, dtype=np.float32))


@pytest.mark.parametrize("n", [1, 2, 7, 64])
def test_mask_marks_present_slots_and_padding_is_zero(n: int) -> None:
    encoder = FeatureEncoder()
    snapshot = make_snapshot([0.01 * (i + 1) for i in range(n)])
    obs = encoder.encode(snapshot, slots=64)
    present = obs[:, column(encoder, "present")]
    assert obs.shape[0] == 64
    assert present[:n].tolist() == [1.0] * n
    assert not obs[n:].any()
    np.testing.assert_array_equal(obs[:n], encoder.encode(snapshot))


def test_a_pool_larger_than_the_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="17 backends does not fit 16 slots"):
        FeatureEncoder().encode(make_snapshot([0.01] * 17), slots=16)
    with pytest.raises(ValueError, match="slots must be at least 1"):
        FeatureEncoder().observation_spec(0)


def test_same_snapshot_same_vector() -> None:
    encoder = FeatureEncoder()
    snap = make_snapshot([0.01, 0.03, 0.2], in_flight=[1, 5, 9], error_rate=[0, 0.1, 0.5])
    history = [make_snapshot([0.02, 0.03, 0.1]), make_snapshot([0.01, 0.02, 0.4])]
    np.testing.assert_array_equal(encoder.encode(snap, history), encoder.encode(snap, history))


def test_latency_features_are_scale_invariant() -> None:
    encoder = FeatureEncoder()
    latencies = [0.004, 0.01, 0.02, 0.25]
    base = make_snapshot(latencies)
    scaled = make_snapshot([10 * x for x in latencies])
    past = [make_snapshot([0.01, 0.05, 0.02, 0.03])]
    past_scaled = [make_snapshot([0.1, 0.5, 0.2, 0.3])]
    a, b = encoder.encode(base, past), encoder.encode(scaled, past_scaled)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # and the latency features do say something: the slow backend stands out
    assert a[3, column(encoder, "ewma_rel")] > 1.0


def test_permuting_backends_permutes_rows() -> None:
    encoder = FeatureEncoder()
    snap = make_snapshot([0.01, 0.03, 0.2, 0.05], in_flight=[1, 5, 9, 0], error_rate=[0, 0, 0.3, 0])
    order = [2, 0, 3, 1]
    obs = encoder.encode(snap)
    np.testing.assert_allclose(encoder.encode(snap.permuted(order))[:4], obs[order], atol=1e-6)


def test_history_is_newest_first_and_padded() -> None:
    encoder = FeatureEncoder(history=3)
    old = make_snapshot([0.01, 0.01], error_rate=[0.0, 0.2])
    newer = make_snapshot([0.01, 0.01], error_rate=[0.0, 0.7])
    obs = encoder.encode(make_snapshot([0.01, 0.01]), [old, newer])
    assert obs[1, column(encoder, "error_rate@-1")] == pytest.approx(0.7)
    assert obs[1, column(encoder, "error_rate@-2")] == pytest.approx(0.2)
    only_one = encoder.encode(make_snapshot([0.01, 0.01]), [newer])
    assert only_one[1, column(encoder, "error_rate@-2")] == 0.0
    # a snapshot of another pool size (a backend was added) is skipped
    other = make_snapshot([0.01, 0.01, 0.01], error_rate=[0.9, 0.9, 0.9])
    skipped = encoder.encode(make_snapshot([0.01, 0.01]), [old, newer, other])
    np.testing.assert_array_equal(skipped, obs)


def test_unknown_latency_is_neutral_and_flagged() -> None:
    encoder = FeatureEncoder()
    snap = make_snapshot([0.01, float("nan"), 0.03])
    obs = encoder.encode(snap)
    assert np.all(np.isfinite(obs))
    assert obs[1, column(encoder, "ewma_rel")] == 0.0
    assert obs[1, column(encoder, "no_data")] == 1.0
    assert obs[0, column(encoder, "no_data")] == 0.0


def test_dead_backend_is_not_live_and_excluded_from_reference() -> None:
    encoder = FeatureEncoder()
    snap = make_snapshot([0.01, 0.01, 5.0], healthy=[True, True, False])
    obs = encoder.encode(snap)
    assert obs[:3, column(encoder, "live")].tolist() == [1.0, 1.0, 0.0]
    assert obs[0, column(encoder, "ewma_rel")] == pytest.approx(0.0)


def test_decode_is_a_masked_softmax() -> None:
    encoder = FeatureEncoder()
    snap = make_snapshot([0.01] * 4, ejected=[False, True, False, False])
    action = np.zeros(16, dtype=np.float32)
    action[0], action[2], action[3] = 1.0, -1.0, 0.0
    weights = encoder.decode(action, snap)
    assert weights.shape == (4,)
    assert weights[1] == 0.0
    assert weights.sum() == pytest.approx(1.0)
    assert weights[0] > weights[3] > weights[2]
    assert weights[0] / weights[2] == pytest.approx(np.exp(8.0))


def test_decode_reports_non_finite_scores_as_nan() -> None:
    action = np.full(16, np.nan, dtype=np.float32)
    assert np.isnan(FeatureEncoder().decode(action, make_snapshot([0.01, 0.02]))).all()


def test_layout_names_every_column() -> None:
    layout = FeatureEncoder(history=2).layout()
    assert layout["features"] == [f.name for f in FEATURES] + [f"{h}@-1" for h in HISTORY_FEATURES]
    assert layout["version"] == LAYOUT_VERSION == 2
    assert "max_backends" not in layout  # any pool size: nothing in the layout bounds it


def test_docs_list_every_feature() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "features.md").read_text()
    documented = re.findall(r"^\| `([a-z0-9_]+)` \|", doc, flags=re.MULTILINE)
    assert documented == [f.name for f in FEATURES]
    for name in HISTORY_FEATURES:
        assert f"`{name}`" in doc


def test_rolling_history_matches_a_fresh_encoder() -> None:
    """The encoder reuses the rows of past snapshots; the result must not depend on it."""
    rng = np.random.default_rng(3)
    snaps = [
        make_snapshot(
            rng.uniform(0.005, 0.2, 5).tolist(), error_rate=rng.uniform(0, 0.3, 5).tolist()
        )
        for _ in range(8)
    ]
    rolling = FeatureEncoder()
    for t in range(1, len(snaps)):
        history = snaps[max(0, t - 3) : t]
        np.testing.assert_array_equal(
            rolling.encode(snaps[t], history), FeatureEncoder().encode(snaps[t], history)
        )
