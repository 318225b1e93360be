"""The set policy: one network scores every backend, so one model serves any pool size and order.

Each backend slot goes through the same per-slot MLP (phi); the pool is summarised by the masked
mean of those embeddings over present slots (DeepSets); a second shared MLP (rho) reads
each slot's embedding next to the pool summary and a bias-free linear head turns it into the
slot's score. Permuting the backends therefore permutes the scores, and absent slots score 0.
The pool summary is a mean only: a max over 1,000 slots is not the max over 16, while a mean
of embeddings reads alike at any pool size, so a policy trained on pools padded to 64 slots
serves 1,000 backends (`rl_lb.policies.learned.POOLING`).

The critic has its own phi and reads only the pooled summary, so the value is permutation
invariant. The Gaussian exploration noise has one log-std shared by every slot (a per-slot std
would give slot 3 a different temperament from slot 7), and absent slots are left out of the
log-probability and the entropy: their actions never reach the environment, so counting them
would only add noise to the gradient.

SB3 hands the distribution nothing but the actor's latent, so the present mask rides along as
the last channel of each slot's latent.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import DiagGaussianDistribution
from stable_baselines3.common.policies import ActorCriticPolicy
from torch import nn

__all__ = [
    "ACTIVATIONS",
    "SetActorCriticPolicy",
    "SetExtractor",
    "SlotScoreHead",
    "linear_layers",
    "present_mean",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {"tanh": nn.Tanh, "relu": nn.ReLU}
PRESENT_COLUMN = 0


def _mlp(sizes: list[int], activation: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for n_in, n_out in itertools.pairwise(sizes):
        layers += [nn.Linear(n_in, n_out), activation()]
    return nn.Sequential(*layers)


def linear_layers(sequential: nn.Sequential) -> list[nn.Linear]:
    """The affine layers of one of `_mlp`'s networks, in order: what an export stores and an
    import fills (`training.export`, `training.warm_start`)."""
    return [m for m in sequential if isinstance(m, nn.Linear)]


def present_mean(rows: th.Tensor, batch: th.Tensor, n_batch: int) -> th.Tensor:
    """Per-observation mean of the present slots' embeddings `rows` (P, H), where `batch` (P,)
    says which observation each row belongs to; zeros for an observation with no slot."""
    sums = rows.new_zeros(n_batch, rows.shape[-1]).index_add(0, batch, rows)
    count = th.bincount(batch, minlength=n_batch).clamp(min=1).to(rows.dtype)
    return sums / count.unsqueeze(-1)


class SetExtractor(nn.Module):
    """The actor and critic networks over the (flattened) slot observation.

    `forward_actor` returns (B, S × (H + 1)): each slot's last latent plus its present flag;
    `forward_critic` returns (B, H_vf) from the pooled critic embedding.
    """

    def __init__(
        self,
        n_slots: int,
        n_features: int,
        slot_net: list[int],
        head_net: list[int],
        critic_net: list[int],
        activation: str,
    ) -> None:
        super().__init__()
        act = ACTIVATIONS[activation]
        self.n_slots, self.n_features, self.activation = n_slots, n_features, activation
        self.slot_net, self.head_net = list(slot_net), list(head_net)
        self.phi = _mlp([n_features, *slot_net], act)
        self.rho = _mlp([2 * slot_net[-1], *head_net], act)
        self.critic_phi = _mlp([n_features, *slot_net], act)
        self.critic_rho = _mlp([slot_net[-1], *critic_net], act)
        self.latent_dim_pi = n_slots * (head_net[-1] + 1)
        self.latent_dim_vf = critic_net[-1]

    def _slots(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """(present rows (P, F), their observation index (P,), the mask (B, S)).

        Only present slots go through the networks: observations are padded to the run's
        largest pool, and a batch of mostly 5-backend pools padded to 64 slots would otherwise
        spend most of its time on padding. The result is the same as computing every slot."""
        x = features.reshape(-1, self.n_slots, self.n_features)
        mask = x[..., PRESENT_COLUMN] > 0.5
        return x[mask], mask.nonzero()[:, 0], mask

    def forward(self, features: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        return self.forward_actor(features), self.forward_critic(features)

    def forward_actor(self, features: th.Tensor) -> th.Tensor:
        rows, batch, mask = self._slots(features)
        h = self.phi(rows)
        pooled = present_mean(h, batch, mask.shape[0])
        z_rows = self.rho(th.cat([h, pooled[batch]], dim=-1))
        z = z_rows.new_zeros((*mask.shape, z_rows.shape[-1]))
        z = z.index_put((*mask.nonzero().unbind(-1),), z_rows)
        return th.cat([z, mask.unsqueeze(-1).to(z.dtype)], dim=-1).flatten(1)

    def forward_critic(self, features: th.Tensor) -> th.Tensor:
        rows, batch, mask = self._slots(features)
        pooled = present_mean(self.critic_phi(rows), batch, mask.shape[0])
        return self.critic_rho(pooled)  # type: ignore[no-any-return]


class SlotScoreHead(nn.Module):
    """One linear score per slot, bias-free: softmax ignores a common shift; absent slots get 0."""

    def __init__(self, n_slots: int, latent: int) -> None:
        super().__init__()
        self.n_slots, self.latent = n_slots, latent
        self.score = nn.Linear(latent, 1, bias=False)

    def forward(self, latent_pi: th.Tensor) -> th.Tensor:
        z = latent_pi.reshape(-1, self.n_slots, self.latent + 1)
        return self.score(z[..., :-1]).squeeze(-1) * z[..., -1]  # type: ignore[no-any-return]


class MaskedSharedGaussian(DiagGaussianDistribution):
    """Diagonal Gaussian with one shared log-std, whose log-prob and entropy skip absent slots."""

    def __init__(self, action_dim: int, latent: int) -> None:
        super().__init__(action_dim)
        self.latent = latent
        self.mask: th.Tensor | None = None

    def proba_distribution_net(
        self, latent_dim: int, log_std_init: float = 0.0
    ) -> tuple[nn.Module, nn.Parameter]:
        head = SlotScoreHead(self.action_dim, self.latent)
        return head, nn.Parameter(th.full((1,), float(log_std_init)), requires_grad=True)

    def masked(self, mask: th.Tensor) -> MaskedSharedGaussian:
        self.mask = mask
        return self

    def log_prob(self, actions: th.Tensor) -> th.Tensor:
        assert self.mask is not None, "masked() sets the mask with each new distribution"
        per_slot: th.Tensor = self.distribution.log_prob(actions)  # type: ignore[no-untyped-call]
        return (per_slot * self.mask).sum(dim=-1)

    def entropy(self) -> th.Tensor:
        assert self.mask is not None, "masked() sets the mask with each new distribution"
        per_slot: th.Tensor = self.distribution.entropy()  # type: ignore[no-untyped-call]
        return (per_slot * self.mask).sum(dim=-1)


class SetActorCriticPolicy(ActorCriticPolicy):
    """`ActorCriticPolicy` with the set networks above; trains with PPO or A2C unchanged.

    Extra keyword arguments (all stored by SB3 with the model, so a checkpoint rebuilds itself):
    `slot_net`, `head_net`, `critic_net` (hidden sizes) and `activation` ("tanh" or "relu").
    """

    def __init__(
        self,
        observation_space: spaces.Space[Any],
        action_space: spaces.Space[Any],
        lr_schedule: Any,
        slot_net: list[int] | None = None,
        head_net: list[int] | None = None,
        critic_net: list[int] | None = None,
        activation: str = "tanh",
        **kwargs: Any,
    ) -> None:
        if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 2:
            raise ValueError("SetActorCriticPolicy needs a (slots, features) Box observation")
        if not isinstance(action_space, spaces.Box) or action_space.shape != (
            observation_space.shape[0],
        ):
            raise ValueError("SetActorCriticPolicy needs one Box action per slot")
        self.slot_net = list(slot_net or [64, 64])
        self.head_net = list(head_net or [64])
        self.critic_net = list(critic_net or [64])
        self.activation = activation
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            slot_net=self.slot_net,
            head_net=self.head_net,
            critic_net=self.critic_net,
            activation=self.activation,
        )
        return data

    def _build_mlp_extractor(self) -> None:
        n_slots, n_features = self.observation_space.shape  # type: ignore[misc]
        self.mlp_extractor = SetExtractor(  # type: ignore[assignment]
            n_slots, n_features, self.slot_net, self.head_net, self.critic_net, self.activation
        )

    def _build(self, lr_schedule: Any) -> None:
        n_slots = int(np.prod(self.action_space.shape))  # type: ignore[arg-type]
        self.action_dist = MaskedSharedGaussian(n_slots, self.head_net[-1])
        super()._build(lr_schedule)

    def _get_action_dist_from_latent(self, latent_pi: th.Tensor) -> MaskedSharedGaussian:
        assert isinstance(self.action_dist, MaskedSharedGaussian)
        mask = latent_pi.reshape(-1, self.action_dist.action_dim, self.head_net[-1] + 1)[..., -1]
        mean_actions = self.action_net(latent_pi)
        return self.action_dist.proba_distribution(mean_actions, self.log_std).masked(mask)

    def scores(self, obs: th.Tensor) -> th.Tensor:
        """The deterministic scores (unclipped) for a batch of observations: what export mirrors."""
        return self.action_net(self.mlp_extractor.forward_actor(obs.flatten(1)))  # type: ignore[no-any-return]
