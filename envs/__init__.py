"""The simulator, the Gymnasium environment and the evaluation of balancers on scenarios.

Importing the package registers `rl_lb/BackendPool-v0` (lazily: the entry point is a string, so
numba and the kernels load only when an environment is made).
"""

from __future__ import annotations

import gymnasium

__all__ = ["ENV_ID"]

ENV_ID = "rl_lb/BackendPool-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.env:BackendPoolEnv")
