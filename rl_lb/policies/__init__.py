"""Weight policies: heuristics and the learned policy, all implementing `WeightPolicy`."""

from __future__ import annotations

from rl_lb.errors import ConfigError
from rl_lb.policies.base import normalise, uniform_weights
from rl_lb.policies.heuristics import CapacityPolicy, InverseLatencyPolicy, UniformPolicy
from rl_lb.types import WeightPolicy

__all__ = [
    "POLICY_NAMES",
    "CapacityPolicy",
    "InverseLatencyPolicy",
    "UniformPolicy",
    "make_policy",
    "normalise",
    "uniform_weights",
]

_HEURISTICS: dict[str, type[UniformPolicy | InverseLatencyPolicy | CapacityPolicy]] = {
    "uniform": UniformPolicy,
    "inverse-latency": InverseLatencyPolicy,
    "capacity": CapacityPolicy,
}
POLICY_NAMES: tuple[str, ...] = (*_HEURISTICS, "learned")


def make_policy(name: str) -> WeightPolicy:
    """A policy by name: a heuristic, `learned` (the shipped model) or `learned:PATH|URI`.

    Raises `ModelError` when a learned model cannot be loaded, `ConfigError` for an unknown name.
    """
    if name == "learned" or name.startswith("learned:"):
        from rl_lb.policies.learned import LearnedPolicy

        spec = name.partition(":")[2] or None
        policy: WeightPolicy = LearnedPolicy.load(spec)
        return policy
    if name not in _HEURISTICS:
        raise ConfigError(
            "policy", f"unknown policy {name!r}", f"choose one of {', '.join(POLICY_NAMES)}"
        )
    return _HEURISTICS[name]()
