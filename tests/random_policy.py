"""A SetActorCriticPolicy with O(1) random weights, for tests of the network and its export.

SB3's initialisation makes every slot's score ~0.01, too close to each other to tell a wrong
forward pass from a right one.
"""

from __future__ import annotations

import torch as th

from envs.env import policy_spaces
from rl_lb.features import FeatureEncoder
from training.policy import SetActorCriticPolicy

ENCODER = FeatureEncoder()


def make_policy(seed: int = 0, activation: str = "tanh") -> SetActorCriticPolicy:
    th.manual_seed(seed)
    policy = SetActorCriticPolicy(
        *policy_spaces(ENCODER),
        lambda _: 3e-4,
        slot_net=[32, 24],
        head_net=[16],
        critic_net=[16],
        activation=activation,
    )
    with th.no_grad():
        for parameter in policy.parameters():
            parameter.normal_(0.0, 0.4)
    return policy
