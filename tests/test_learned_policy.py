"""`LearnedPolicy`: the numpy policy the proxy serves, and how it refuses a model it can't trust."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from random_policy import ENCODER, make_policy

from rl_lb.balancers import GuardedBalancer, make_balancer
from rl_lb.errors import ModelError
from rl_lb.features import FeatureEncoder
from rl_lb.policies.learned import SHIPPED_DIR, LearnedPolicy
from rl_lb.types import BackendStats, PoolSnapshot, WeightPolicy
from training.export import export_policy


def random_obs(rng: np.random.Generator, batch: int) -> np.ndarray:
    n_slots, n_features = ENCODER.observation_spec(16).shape
    obs = np.zeros((batch, n_slots, n_features), dtype=np.float32)
    for row in obs:
        n = int(rng.integers(1, n_slots + 1))
        row[:n] = rng.normal(0.0, 1.5, size=(n, n_features))
        row[:n, 0] = 1.0
    return obs


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Seed 1 gives scores spread across [-1, 1] on these pools (some seeds saturate every
    # slot at the clip, which would make every weight uniform and the tests below vacuous).
    return export_policy(make_policy(seed=1), tmp_path_factory.mktemp("model"), ENCODER, "t-1")


def snapshot(n: int, rng: np.random.Generator, taken_at: float = 0.0) -> PoolSnapshot:
    latency = rng.uniform(0.005, 0.2, n)
    return PoolSnapshot.from_backends(
        taken_at,
        [
            BackendStats(
                name=f"b{i}",
                in_flight=int(rng.integers(0, 20)),
                ewma_s=float(latency[i]),
                p50_s=float(latency[i]),
                p95_s=float(latency[i] * 2),
                p99_s=float(latency[i] * 3),
                error_rate=float(rng.choice([0.0, 0.0, 0.3])),
                throughput_rps=float(rng.uniform(0, 300)),
                staleness_s=0.1,
                healthy=bool(rng.random() < 0.85),
                ejected=False,
                weight=1.0 / n,
            )
            for i in range(n)
        ],
    )


def test_it_is_a_weight_policy_with_a_version(model_dir: Path) -> None:
    policy = LearnedPolicy.load(model_dir)
    assert isinstance(policy, WeightPolicy)
    assert policy.version == "t-1"


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(2, 80))
def test_weights_follow_the_backends_in_any_order(model_dir: Path, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    history = [snapshot(n, rng, float(t)) for t in range(4)]
    order = rng.permutation(n)
    plain, permuted = LearnedPolicy.load(model_dir), LearnedPolicy.load(model_dir)
    for s in history:
        weights = plain.weights(s)
        weights_permuted = permuted.weights(s.permuted(order))
    live = history[-1].live
    assert (weights >= 0).all()
    assert (weights[~live] == 0).all()
    assert weights.sum() == pytest.approx(1.0 if live.any() else 0.0)
    np.testing.assert_allclose(weights_permuted, weights[order], atol=1e-6)


def test_numpy_forward_pass_is_equivariant_on_batches(model_dir: Path) -> None:
    network = LearnedPolicy.load(model_dir).network
    rng = np.random.default_rng(7)
    obs = random_obs(rng, 64)
    order = rng.permutation(obs.shape[1])
    np.testing.assert_allclose(
        network.scores(obs[:, order]), network.scores(obs)[:, order], atol=1e-5
    )


@pytest.mark.parametrize("n", [17, 100, 1000])
def test_any_pool_size_gets_one_weight_per_backend(model_dir: Path, n: int) -> None:
    """No maximum: the network's pooled context is a mean over present backends, so the
    scores of a pool do not depend on how many zero rows pad it."""
    rng = np.random.default_rng(n)
    policy = LearnedPolicy.load(model_dir)
    for t in range(3):
        weights = policy.weights(snapshot(n, rng, float(t)))
    assert weights.shape == (n,)
    assert weights.sum() == pytest.approx(1.0)
    assert np.isfinite(weights).all()
    pool = snapshot(n, rng)
    observation = policy.encoder.encode(pool)
    padded = policy.encoder.encode(pool, slots=n + 37)
    np.testing.assert_allclose(
        policy.network.scores(padded)[:n], policy.network.scores(observation), atol=1e-5
    )
    assert not policy.network.scores(padded)[n:].any()


def test_reset_forgets_the_history(model_dir: Path) -> None:
    rng = np.random.default_rng(3)
    snaps = [snapshot(6, rng, float(t)) for t in range(3)]
    policy, fresh = LearnedPolicy.load(model_dir), LearnedPolicy.load(model_dir)
    for s in snaps[:2]:
        policy.weights(s)
    assert not np.allclose(policy.weights(snaps[2]), fresh.weights(snaps[2]))
    policy.reset()
    np.testing.assert_array_equal(
        policy.weights(snaps[2]), LearnedPolicy.load(model_dir).weights(snaps[2])
    )


@pytest.mark.skipif(not (SHIPPED_DIR / "policy.json").exists(), reason="no shipped policy yet")
def test_the_shipped_policy_loads_without_a_spec() -> None:
    policy = LearnedPolicy.load(None)
    assert policy.weights(snapshot(4, np.random.default_rng(0))).sum() == pytest.approx(1.0)


def test_the_learned_preset_is_the_shipped_policy_guarded_with_its_picker() -> None:
    """`learned` alone: the shipped export, served with the picker its header names (docs:
    prequal, not the p2c a header without one gets), least-latency as its fallback."""
    header = json.loads((SHIPPED_DIR / "policy.json").read_text())
    balancer = make_balancer("learned")
    assert isinstance(balancer, GuardedBalancer)
    assert balancer.name == "learned"
    assert balancer.primary is not None
    policy = balancer.primary.policy
    assert isinstance(policy, LearnedPolicy)
    assert policy.version == header["version"]
    assert balancer.primary.picker.name == header["picker"] == "prequal"
    assert balancer.fallback.name == "least-latency"
    assert (balancer.mode, balancer.reason) == ("primary", "")
    pool = snapshot(5, np.random.default_rng(4))
    decision = balancer.decide(pool, now=0.0)
    assert (decision.mode, decision.reason) == ("primary", "")
    assert decision.picker is balancer.primary.picker
    np.testing.assert_allclose(decision.weights, LearnedPolicy.load(None).weights(pool))


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "model"
    out.mkdir()
    for f in model_dir.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def _edit_header(out: Path, **changes: object) -> None:
    header = json.loads((out / "policy.json").read_text())
    header.update(changes)
    (out / "policy.json").write_text(json.dumps(header))


def _resave_weights(out: Path, change) -> None:
    with np.load(out / "policy.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    change(arrays)
    np.savez(out / "policy.npz", **arrays)
    _edit_header(out, weights_sha256=None)


def _truncate(out: Path) -> None:
    data = (out / "policy.npz").read_bytes()
    (out / "policy.npz").write_bytes(data[: len(data) // 2])


def _truncate_unchecked(out: Path) -> None:
    _truncate(out)
    _edit_header(out, weights_sha256=None)


def _nan(arrays: dict[str, np.ndarray]) -> None:
    arrays["rho.0.weight"][0, 0] = np.nan


def _wrong_shape(arrays: dict[str, np.ndarray]) -> None:
    arrays["phi.0.weight"] = arrays["phi.0.weight"][:-1]


def _missing_key(arrays: dict[str, np.ndarray]) -> None:
    del arrays["head.weight"]


OTHER_LAYOUT = {**ENCODER.layout(), "version": ENCODER.layout()["version"] + 1}
SIXTEEN_SLOTS_LAYOUT = {**ENCODER.layout(), "version": 1, "max_backends": 16}
"""What model files said before any pool size was served."""
CORRUPTIONS = {
    "truncated npz": (_truncate, "checksum"),
    "truncated npz, no checksum": (_truncate_unchecked, "corrupt model weights"),
    "bad json": (lambda out: (out / "policy.json").write_text("{not json"), "corrupt model header"),
    "not our format": (lambda out: _edit_header(out, format="onnx"), "not an rl-lb-policy header"),
    "other layout version": (
        lambda out: _edit_header(out, layout=OTHER_LAYOUT),
        f"feature layout version {OTHER_LAYOUT['version']}",
    ),
    "a 16-backend model of layout 1": (
        lambda out: _edit_header(out, layout=SIXTEEN_SLOTS_LAYOUT),
        "feature layout version 1 (this rl-lb reads 2: pools of any size, no 16-backend "
        "maximum) (retrain the policy",
    ),
    "max pooling": (
        lambda out: _edit_header(
            out,
            architecture={
                **json.loads((out / "policy.json").read_text())["architecture"],
                "pool": ["mean", "max"],
            },
        ),
        "pooled with ['mean', 'max']",
    ),
    "history of another shape": (
        lambda out: _edit_header(out, layout=FeatureEncoder(history=2).layout()),
        "has shape",
    ),
    "renamed feature": (
        lambda out: _edit_header(
            out, layout={**ENCODER.layout(), "features": ["x", *ENCODER.names[1:]]}
        ),
        "feature layout mismatch (features differ",
    ),
    "no layout": (lambda out: _edit_header(out, layout=None), "records no feature layout"),
    "unknown activation": (lambda out: _edit_header(out, activation="gelu"), "activation"),
    "unknown picker": (lambda out: _edit_header(out, picker="p3c"), "unknown picker 'p3c'"),
    "NaN weights": (lambda out: _resave_weights(out, _nan), "NaN"),
    "wrong shape": (lambda out: _resave_weights(out, _wrong_shape), "has shape"),
    "missing weight": (lambda out: _resave_weights(out, _missing_key), "lack 'head.weight'"),
    "missing npz": (lambda out: (out / "policy.npz").unlink(), "missing model weights"),
    "missing json": (lambda out: (out / "policy.json").unlink(), "missing model header"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_a_bad_model_is_one_clear_model_error(model_dir: Path, tmp_path: Path, case: str) -> None:
    corrupt, expected = CORRUPTIONS[case]
    out = _copy(model_dir, tmp_path)
    corrupt(out)
    with pytest.raises(ModelError) as caught:
        LearnedPolicy.load(out)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert str(out) in message


def test_a_path_that_does_not_exist_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no such model"):
        LearnedPolicy.load(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["policy.npz", "policy.json"])
def test_either_file_of_the_pair_names_the_model(model_dir: Path, name: str) -> None:
    assert LearnedPolicy.load(model_dir / name).version == "t-1"


def test_a_policy_is_served_with_the_picker_it_was_trained_with(
    model_dir: Path, tmp_path: Path
) -> None:
    assert LearnedPolicy.load(model_dir).picker == "p2c"  # the environment's default
    trained = export_policy(make_policy(seed=5), tmp_path / "jsq", ENCODER, "t-2", picker="jsq")
    assert json.loads((trained / "policy.json").read_text())["picker"] == "jsq"
    assert make_balancer(f"learned:{trained}").picker.name == "jsq"
    assert make_balancer(f"learned:{trained}+p2c-latency").picker.name == "p2c-latency"
    old = _copy(model_dir, tmp_path)
    header = json.loads((old / "policy.json").read_text())
    del header["picker"]  # exported before the header named its picker
    (old / "policy.json").write_text(json.dumps(header))
    assert make_balancer(f"learned:{old}").picker.name == "p2c"
