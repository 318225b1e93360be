"""A small random generator for the kernels: xoshiro256** on a 4-word state array.

numpy `Generator` objects work inside numba, but each hand-over between compiled functions
boxes and frees a Python object (10x slower than the whole rest of a request). The state lives
in a plain uint64 array seeded from a `SeedSequence`, so runs are reproducible for a seed and
independent of any global generator.
"""

from __future__ import annotations

import math

import numpy as np

from envs.jit import jit

__all__ = ["exponential", "new_rng", "normal", "uniform"]

_U = np.uint64
_TO_UNIT = 1.0 / 9007199254740992.0


def new_rng(seed: np.random.SeedSequence) -> np.ndarray:
    """A generator state from `seed` (never all zeros: xoshiro could not leave that state)."""
    state = seed.generate_state(4, np.uint64)
    if not state.any():
        state[0] = 1
    return state


@jit
def _rotl(x: np.uint64, k: np.uint64) -> np.uint64:
    return (x << k) | (x >> (_U(64) - k))


@jit
def uniform(s: np.ndarray) -> float:
    """A double in [0, 1) from the top 53 bits of the next output."""
    result = _rotl(s[1] * _U(5), _U(7)) * _U(9)
    t = s[1] << _U(17)
    s[2] ^= s[0]
    s[3] ^= s[1]
    s[1] ^= s[2]
    s[0] ^= s[3]
    s[2] ^= t
    s[3] = _rotl(s[3], _U(45))
    return float(result >> _U(11)) * _TO_UNIT


@jit
def exponential(s: np.ndarray, mean: float) -> float:
    return -mean * math.log(1.0 - uniform(s))


@jit
def normal(s: np.ndarray) -> float:
    """Standard normal by Box-Muller (one of the pair; simplicity over the spare draw)."""
    u = 1.0 - uniform(s)
    return math.sqrt(-2.0 * math.log(u)) * math.cos(2.0 * math.pi * uniform(s))
