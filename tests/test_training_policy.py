"""The SB3 set policy: equivariant scores, invariant values, masked log-probs, exact export."""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from hypothesis import given, settings
from hypothesis import strategies as st
from random_policy import ENCODER, make_policy
from stable_baselines3 import A2C, PPO

from envs.env import DEFAULT_SLOTS, policy_spaces
from rl_lb.features import FeatureEncoder
from rl_lb.policies.learned import LearnedPolicy
from training.export import MAX_ARTIFACT_BYTES, export_policy
from training.policy import SetActorCriticPolicy

N_SLOTS, N_FEATURES = ENCODER.observation_spec(DEFAULT_SLOTS).shape


def random_obs(rng: np.random.Generator, batch: int) -> np.ndarray:
    obs = np.zeros((batch, N_SLOTS, N_FEATURES), dtype=np.float32)
    for row in obs:
        n = int(rng.integers(1, N_SLOTS + 1))
        row[:n] = rng.normal(0.0, 1.5, size=(n, N_FEATURES))
        row[:n, 0] = 1.0
        row[:n, 1] = rng.random(n) < 0.8
    return obs


def scores(policy: SetActorCriticPolicy, obs: np.ndarray) -> np.ndarray:
    with th.no_grad():
        return policy.scores(th.as_tensor(obs)).numpy()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_permuting_slots_permutes_scores_and_keeps_the_value(seed: int) -> None:
    rng = np.random.default_rng(seed)
    policy = make_policy()
    obs = random_obs(rng, 1)
    order = rng.permutation(N_SLOTS)
    base, permuted = scores(policy, obs), scores(policy, obs[:, order])
    np.testing.assert_allclose(permuted, base[:, order], atol=1e-5)
    with th.no_grad():
        value = policy.predict_values(th.as_tensor(obs))
        value_permuted = policy.predict_values(th.as_tensor(obs[:, order]))
    np.testing.assert_allclose(value_permuted.numpy(), value.numpy(), atol=1e-5)


def test_absent_slots_score_zero_and_do_not_count_in_log_prob_or_entropy() -> None:
    rng = np.random.default_rng(1)
    policy = make_policy()
    obs = random_obs(rng, 8)
    present = obs[..., 0] > 0.5
    assert (scores(policy, obs)[~present] == 0).all()
    actions = rng.uniform(-1, 1, size=(8, N_SLOTS)).astype(np.float32)
    moved = np.where(present, actions, -actions)
    with th.no_grad():
        _, log_prob, entropy = policy.evaluate_actions(th.as_tensor(obs), th.as_tensor(actions))
        _, log_prob_moved, _ = policy.evaluate_actions(th.as_tensor(obs), th.as_tensor(moved))
    np.testing.assert_allclose(log_prob.numpy(), log_prob_moved.numpy(), rtol=1e-6)
    per_slot = 0.5 + 0.5 * np.log(2 * np.pi) + float(policy.log_std.detach()[0])
    np.testing.assert_allclose(entropy.numpy(), present.sum(axis=1) * per_slot, rtol=1e-5)


def test_one_log_std_is_shared_by_every_slot() -> None:
    assert make_policy().log_std.shape == (1,)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_numpy_export_matches_the_sb3_deterministic_action(tmp_path, activation: str) -> None:
    policy = make_policy(seed=3, activation=activation)
    out = export_policy(policy, tmp_path / "policy", ENCODER, version="test")
    loaded = LearnedPolicy.load(out)
    obs = random_obs(np.random.default_rng(2), 256)
    expected, _ = policy.predict(obs, deterministic=True)
    assert np.abs(expected).max() > 0.5, "the weights should give scores far from zero"
    np.testing.assert_allclose(np.clip(loaded.network.scores(obs), -1, 1), expected, atol=1e-5)
    np.testing.assert_allclose(loaded.network.scores(obs), scores(policy, obs), atol=1e-5)
    size = sum(f.stat().st_size for f in out.iterdir())
    assert size < MAX_ARTIFACT_BYTES


def test_export_refuses_a_policy_trained_on_another_layout(tmp_path) -> None:
    with pytest.raises(ValueError, match="another feature layout"):
        export_policy(make_policy(), tmp_path, FeatureEncoder(history=2), version="test")


class SignEnv(gym.Env[np.ndarray, np.ndarray]):
    """One-step bandit over a random pool: the best score of a slot is the sign of its feature 2."""

    observation_space, action_space = policy_spaces(ENCODER)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.obs = random_obs(self.np_random, 1)[0]
        return self.obs, {}

    def step(self, action: np.ndarray):
        present = self.obs[:, 0] > 0.5
        target = np.sign(self.obs[:, 2]) * 0.8
        reward = -float(np.mean((np.clip(action, -1, 1) - target)[present] ** 2))
        self.obs = random_obs(self.np_random, 1)[0]
        return self.obs, reward, True, False, {}


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny networks: extra threads only fight the other test worker for the two cores."""
    threads = th.get_num_threads()
    th.set_num_threads(1)
    yield
    th.set_num_threads(threads)


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("algo", [PPO, A2C])
def test_sb3_algorithms_learn_per_slot_scores(algo: type[PPO] | type[A2C]) -> None:
    params = {"n_steps": 128, "batch_size": 64, "n_epochs": 5} if algo is PPO else {"n_steps": 8}
    model = algo(
        SetActorCriticPolicy,
        SignEnv(),
        seed=0,
        learning_rate=3e-3,
        policy_kwargs={"slot_net": [16], "head_net": [16], "critic_net": [8]},
        **params,
    )
    obs = random_obs(np.random.default_rng(9), 64)
    present = obs[..., 0] > 0.5
    target = np.sign(obs[..., 2])

    def agreement() -> float:
        return float((np.sign(scores(model.policy, obs)) == target)[present].mean())

    before = agreement()
    model.learn(2560)
    assert agreement() > max(before, 0.9)
