"""`BatchedVecEnv`: K simulated pools stepped in one process, their kernels in one numba call.

SB3's `SubprocVecEnv` pays a process, a pickle round trip and a kernel call per environment
and step; `DummyVecEnv` avoids the processes but still enters numba K times per step, once per
pool and per `Simulator.run_until`. Here every environment's own `step` runs unchanged — so
observations, rewards, padding and infos are by construction what `BackendPoolEnv` gives —
each inside a greenlet. When a step needs simulated time to pass (`Simulator.run_until`), its
greenlet hands the target time back and waits; once every environment waits or is done, one
call of `advance_pools` advances all waiting pools together, and their greenlets resume. A
control interval takes one such round per snapshot capture plus one to its end (usually two).

Everything but the kernel stays per environment and in Python (snapshots, the feature
encoder, the reward's quantiles): benchmarks/env_throughput.py measures how the time splits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from greenlet import greenlet
from numba import njit
from numba.typed import List
from stable_baselines3.common.vec_env import DummyVecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from envs import kernel
from envs.build import grow_state
from envs.env import BackendPoolEnv
from envs.simulator import Simulator
from rl_lb.types import FloatArray, IntArray

__all__ = ["BatchedVecEnv", "advance_pools", "advance_simulators"]


# Numba's own reference counting, which the kernels switch off (envs/jit.py), is needed here:
# typed lists hold the pools. These functions only move references; the work is in `advance`.
_with_nrt = njit(cache=True)


@_with_nrt
def _typed_list(first: Any) -> Any:
    pools = List()
    pools.append(first)
    return pools


@_with_nrt
def _put(pools: Any, index: int, item: Any) -> None:
    if index == len(pools):
        pools.append(item)
    else:
        pools[index] = item


@_with_nrt
def advance_pools(
    specs: Any, states: Any, rngs: Any, t_end: FloatArray, active: np.ndarray, status: IntArray
) -> None:
    """`kernel.advance` for every active pool i up to `t_end[i]`; its result into `status[i]`.

    `specs`, `states`, `rngs` are numba typed lists (one compiled version whatever the batch
    size or the pools' sizes); inactive pools are skipped. A pool that returns NEED_ROOM is
    grown in Python and called again.
    """
    for i in range(len(states)):
        if active[i]:
            status[i] = kernel.advance(specs[i], states[i], t_end[i], rngs[i])


class _PoolLists:
    """The kernel's arguments of every pool, kept in typed lists between calls: a Python list of
    named tuples would be unboxed array by array on every call, a tuple compiled per length.
    An entry is replaced only when its pool changes (a new episode, a grown state)."""

    def __init__(self) -> None:
        self.lists: list[Any] = []
        self._seen: list[tuple[int, int, int]] = []

    def update(self, sims: Sequence[Simulator]) -> tuple[Any, Any, Any]:
        for i, sim in enumerate(sims):
            items = (sim.spec, sim.state, sim._rng)
            key = (id(items[0]), id(items[1]), id(items[2]))
            if not self.lists:
                self.lists = [_typed_list(item) for item in items]
                self._seen.append(key)
            elif i == len(self._seen) or self._seen[i] != key:
                for pools, item in zip(self.lists, items, strict=True):
                    _put(pools, i, item)
                self._seen[i : i + 1] = [key]
        return self.lists[0], self.lists[1], self.lists[2]


@dataclass
class _Wait:
    """What a suspended environment step asks for: its simulator brought to time `until`."""

    until: float


def _pool_env(env: gym.Env[Any, Any]) -> BackendPoolEnv:
    pool = env.unwrapped
    if not isinstance(pool, BackendPoolEnv):
        raise TypeError(f"BatchedVecEnv steps BackendPoolEnv, got {type(pool).__name__}")
    return pool


class BatchedVecEnv(DummyVecEnv):
    """`DummyVecEnv` over `BackendPoolEnv`s whose simulators advance in one numba call per round.

    Resets, seeds, wrappers, `terminal_observation` and the other infos follow `DummyVecEnv`
    exactly (reset is inherited; `step_wait` keeps its bookkeeping). Each environment may be
    wrapped (reward scaling, time limits) as long as `unwrapped` is a `BackendPoolEnv`; pools of
    different sizes batch together, each padded by its environment as `BackendPoolEnv` does.
    """

    def __init__(self, env_fns: list[Callable[[], gym.Env[Any, Any]]]) -> None:
        super().__init__(env_fns)
        self.pools = [_pool_env(env) for env in self.envs]
        self._lists = _PoolLists()
        self.kernel_calls = 0
        """Batched kernel calls so far (about one per round), for the benchmark's accounting."""
        self.kernel_seconds = 0.0
        """Wall time spent in those calls (the rest of a step is Python: snapshots, features,
        rewards, SB3's bookkeeping)."""

    def _simulator(self, index: int) -> Simulator:
        """The current episode's simulator of environment `index`, deferring its kernel work.

        Its `run_until` is replaced (on the instance, once per episode) by a hand-over to the
        batch: inside a step's greenlet it suspends the step until `_advance` has run.
        """
        sim = self.pools[index]._sim
        if sim is None:
            raise RuntimeError("call reset() before step()")
        if "run_until" not in vars(sim):
            vars(sim)["run_until"] = _deferred_run_until(sim)
        return sim

    def step_wait(self) -> VecEnvStepReturn:
        n = self.num_envs
        sims = [self._simulator(i) for i in range(n)]
        steps = [greenlet(self.envs[i].step) for i in range(n)]
        results: list[Any] = [None] * n
        waits: list[_Wait | None] = [None] * n
        for i in range(n):
            waits[i] = self._resume(steps[i], self.actions[i], results, i)
        while any(w is not None for w in waits):
            started = time.perf_counter()
            self.kernel_calls += advance_simulators(
                sims, [None if w is None else w.until for w in waits], self._lists
            )
            self.kernel_seconds += time.perf_counter() - started
            for i, wait in enumerate(waits):
                if wait is not None:
                    waits[i] = self._resume(steps[i], None, results, i)
        for i in range(n):
            obs, self.buf_rews[i], terminated, truncated, self.buf_infos[i] = results[i]
            self.buf_dones[i] = terminated or truncated
            self.buf_infos[i]["TimeLimit.truncated"] = truncated and not terminated
            if self.buf_dones[i]:
                self.buf_infos[i]["terminal_observation"] = obs
                obs, self.reset_infos[i] = self.envs[i].reset()
            self._save_obs(i, obs)
        return (
            self._obs_from_buf(),
            np.copy(self.buf_rews),
            np.copy(self.buf_dones),
            deepcopy(self.buf_infos),
        )

    @staticmethod
    def _resume(step: greenlet, action: Any, results: list[Any], index: int) -> _Wait | None:
        """Run environment `index`'s step until it waits for the kernel (returned) or ends."""
        out = step.switch(action) if action is not None else step.switch()
        if step.dead:
            results[index] = out
            return None
        if not isinstance(out, _Wait):
            raise RuntimeError(f"environment {index} suspended its step for {out!r}")
        return out


def advance_simulators(
    sims: Sequence[Simulator], until: Sequence[float | None], lists: _PoolLists | None = None
) -> int:
    """Bring every `sims[i]` with a target to `until[i]` (None: leave it), as `run_until` would,
    in batched kernel calls; returns how many calls it took (one, unless a pool ran out of room
    and had to grow, then one more for the pools still short of their target). `lists` keeps
    the typed lists from one call to the next."""
    lists = lists if lists is not None else _PoolLists()
    n = len(sims)
    t_end, status = np.zeros(n), np.zeros(n, dtype=np.int64)
    active = np.array([t is not None and t > s.now for s, t in zip(sims, until, strict=True)])
    for i, t in enumerate(until):
        t_end[i] = 0.0 if t is None else float(t)
    calls = 0
    while active.any():
        advance_pools(*lists.update(sims), t_end, active, status)
        calls += 1
        for i, sim in enumerate(sims):
            if active[i] and status[i] == kernel.NEED_ROOM:
                sim.state = grow_state(sim.state, 2 * len(sim.state.r_arrival))
            else:
                active[i] = False
    return calls


def _deferred_run_until(sim: Simulator) -> Callable[[float], None]:
    """`Simulator.run_until` as a hand-over to the batch (the parent greenlet), which advances
    `sim` and switches back once `sim.now` has reached `t` (it is then exactly `t`). Called
    outside a batched step, it runs the kernel for this pool alone."""

    def run_until(t: float) -> None:
        if t <= sim.now:
            return
        hub = greenlet.getcurrent().parent
        if hub is None:  # outside a batched step (a direct call): advance alone, as usual
            Simulator.run_until(sim, t)
            return
        hub.switch(_Wait(float(t)))

    return run_until
