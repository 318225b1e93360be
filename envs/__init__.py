"""The simulator, the Gymnasium environments and the evaluation of balancers on scenarios.

Importing the package registers `rl_lb/BackendPool-v0` (the simulated pool) and
`rl_lb/LivePool-v0` (a running proxy, stepped in wall-clock time) lazily: the entry points are
strings, so numba and the kernels load only when an environment is made.
"""

from __future__ import annotations

import gymnasium

__all__ = ["ENV_ID", "LIVE_ENV_ID"]

ENV_ID = "rl_lb/BackendPool-v0"
LIVE_ENV_ID = "rl_lb/LivePool-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.env:BackendPoolEnv")
if LIVE_ENV_ID not in gymnasium.registry:
    gymnasium.register(id=LIVE_ENV_ID, entry_point="envs.live:LivePoolEnv", nondeterministic=True)
