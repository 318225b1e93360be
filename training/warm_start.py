"""Start a run from an exported policy (`rl-lb train --init DIR`) instead of from scratch.

An export (`policy.npz` + `policy.json`, e.g. `rl_lb/policies/shipped/`) is all a user has of
the shipped policy: its SB3 checkpoint, with the critic and the optimiser, stays with whoever
trained it. So a pool-specialised or retrained policy starts from the export's actor (phi, rho,
the score head: what the proxy serves) with a new critic. A new critic's values are noise, and
PPO's first updates would follow that noise away from the imported actor; `critic_warmup_steps`
trains the critic alone first (`ActorFreeze`), on the imported actor's own rollouts, so the
actor's first update already has advantages worth following.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch as th
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from rl_lb.errors import ConfigError
from rl_lb.policies.learned import LearnedPolicy
from training.config import TrainConfig
from training.policy import SetActorCriticPolicy, SetExtractor, SlotScoreHead, linear_layers

__all__ = ["ActorFreeze", "import_actor", "with_exported_picker"]


def with_exported_picker(config: TrainConfig) -> TrainConfig:
    """`config`, trained with the picker of the policy it starts from unless `[env] picker`
    says otherwise: an imported actor's weights mean what they mean under its picker (the
    shipped one's under `prequal`), and the run's export records the picker it trained with."""
    if not config.init or "picker" in config.env:
        return config
    picker = LearnedPolicy.load(config.init).picker
    return dataclasses.replace(config, env={**config.env, "picker": picker})


def import_actor(policy: SetActorCriticPolicy, spec: str | Path) -> str:
    """Copy the actor of the exported policy `spec` (a folder, its .npz or .json, or
    `models:/rl-lb-policy/N`) into `policy`; returns the export's version.

    The export is read and checked as the proxy reads it (format, checksum, feature layout,
    shapes, finite values); its network must have this run's sizes and activation.
    """
    exported = LearnedPolicy.load(spec)  # a bad one: ModelError, saying where and how to fix
    arch = exported.header.get("architecture", {})
    theirs = (list(arch.get("slot_net", [])), list(arch.get("head_net", [])))
    theirs_activation = exported.header.get("activation")
    ours = (policy.slot_net, policy.head_net)
    if theirs != ours or theirs_activation != policy.activation:
        raise ConfigError(
            str(spec),
            f"its network is slot_net={theirs[0]} head_net={theirs[1]} {theirs_activation}, "
            f"this run's slot_net={ours[0]} head_net={ours[1]} {policy.activation}",
            "set [policy] in the run's config to the export's sizes and activation",
        )
    n_features = policy.observation_space.shape[1]  # type: ignore[index]
    if len(exported.encoder.names) != n_features:
        raise ConfigError(
            str(spec),
            f"it observes {len(exported.encoder.names)} features per backend, the run's "
            f"environments {n_features}",
            "train with the feature history the export was trained with",
        )
    extractor, head = policy.mlp_extractor, policy.action_net
    if not isinstance(extractor, SetExtractor) or not isinstance(head, SlotScoreHead):
        raise TypeError("import_actor needs the set networks of SetActorCriticPolicy")
    network = exported.network
    with th.no_grad():
        for sequential, layers in ((extractor.phi, network.phi), (extractor.rho, network.rho)):
            for linear, (weight, bias) in zip(linear_layers(sequential), layers, strict=True):
                linear.weight.copy_(th.from_numpy(weight.T.copy()))
                linear.bias.copy_(th.from_numpy(bias.copy()))
        head.score.weight.copy_(th.from_numpy(network.head.copy()).unsqueeze(0))
    return exported.version


def actor_parameters(policy: SetActorCriticPolicy) -> list[nn.Parameter]:
    """What the proxy serves (phi, rho, the score head) and the exploration noise (log-std)."""
    extractor = policy.mlp_extractor
    assert isinstance(extractor, SetExtractor)
    modules: list[Any] = [extractor.phi, extractor.rho, policy.action_net]
    return [p for m in modules for p in m.parameters()] + [policy.log_std]


class ActorFreeze(BaseCallback):
    """Keeps the actor fixed for the run's first `steps` environment steps: only the critic
    learns. Frozen parameters get no gradient, and Adam leaves a parameter without one alone
    (no step, no moment update), so the actor resumes exactly as imported."""

    def __init__(self, steps: int) -> None:
        super().__init__()
        self.steps = steps
        self.frozen = False

    def _set(self, frozen: bool) -> None:
        for parameter in actor_parameters(self.model.policy):  # type: ignore[arg-type]
            parameter.requires_grad_(not frozen)
        self.frozen = frozen

    def _on_training_start(self) -> None:
        if self.num_timesteps < self.steps:
            self._set(True)

    def _on_rollout_end(self) -> None:
        # Called after the rollout, before the update it feeds: thaw for the first update whose
        # rollout reaches `steps`.
        if self.frozen and self.num_timesteps >= self.steps:
            self._set(False)

    def _on_step(self) -> bool:
        return True

    def _on_training_end(self) -> None:
        if self.frozen:
            self._set(False)
