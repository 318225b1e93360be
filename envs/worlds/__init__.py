"""The world generator: seeded, readable scenario files drawn from one documented distribution.

`generate_world(seed, index)` is one world; `write_worlds` is `rl-lb scenario generate`
(registered on the core's `scenario` group through the `rl_lb.scenario_commands` entry points,
see `envs.worlds.cli`). Modules: `pool` (pool size, capacity mix, service times), `trouble`
(what goes wrong, where and when), `generator` (traffic, metrics, the TOML text).
"""

from __future__ import annotations

from envs.worlds.generator import (
    ARRIVAL_KINDS,
    HELDOUT_SEED,
    MAX_COUNT,
    World,
    generate_world,
    generate_worlds,
    world_name,
    write_worlds,
)
from envs.worlds.pool import MAX_POOL, MIX_KINDS
from envs.worlds.trouble import TROUBLE_KINDS

__all__ = [
    "ARRIVAL_KINDS",
    "HELDOUT_SEED",
    "MAX_COUNT",
    "MAX_POOL",
    "MIX_KINDS",
    "TROUBLE_KINDS",
    "World",
    "generate_world",
    "generate_worlds",
    "world_name",
    "write_worlds",
]
