"""`BatchedVecEnv`: K simulated pools stepped in one process, their heavy work in batched calls.

SB3's `SubprocVecEnv` pays a process, a pickle round trip and a kernel call per environment
and step; `DummyVecEnv` avoids the processes but still enters numba K times per step, once per
pool and per `Simulator.run_until`, and encodes K observations and scores K intervals one by
one in numpy. Here every environment's own `step` runs unchanged — its decisions, control loop,
wrappers and infos are by construction `BackendPoolEnv`'s — each inside a greenlet. Where it
needs the expensive part it hands a request back to the batch and waits: simulated time to
pass (`Simulator.run_until`), its interval's latency figures (`BackendPoolEnv._latency_stats`),
its observation (`BackendPoolEnv._observe`). Once every environment waits or is done, the
batch serves all the waiting requests of one kind in one call — `advance_pools` (one numba call
for all pools), `envs.nb_reward.batch_interval_stats`, `envs.nb_features.encode_batch` —
and resumes them. A step takes about four such rounds (kernel to the snapshot capture, kernel
to the interval's end, statistics, observation), whatever K.

What stays per environment is light Python: the decision's softmax, the snapshot objects, the
info dicts, SB3's bookkeeping; benchmarks/env_throughput.py measures how the time splits.
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
from envs.nb_features import encode_batch
from envs.nb_reward import batch_interval_stats
from envs.simulator import Simulator
from rl_lb.scenarios import Scenario
from rl_lb.types import FloatArray, IntArray, PoolSnapshot

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


@dataclass
class _Stats:
    """... or the latency figures of its interval (`BackendPoolEnv._latency_stats`)."""

    latency: FloatArray
    failed: np.ndarray


@dataclass
class _Observe:
    """... or its observation (`BackendPoolEnv._observe`) of these inputs."""

    snapshot: PoolSnapshot
    past: list[PoolSnapshot]


_Request = _Wait | _Stats | _Observe


class _StepGreenlet(greenlet):  # type: ignore[misc]  # greenlet's class is untyped here
    """The greenlet of one environment's step: what the hand-overs recognise a batch by."""


def _hub() -> greenlet | None:
    """The batch to hand a request to, or None outside a batched step (then work alone)."""
    current = greenlet.getcurrent()
    return current.parent if isinstance(current, _StepGreenlet) else None


def _scenario(pool: BackendPoolEnv) -> Scenario:
    if pool.scenario is None:
        raise RuntimeError("call reset() before step()")
    return pool.scenario


def _pool_env(env: gym.Env[Any, Any]) -> BackendPoolEnv:
    pool = env.unwrapped
    if not isinstance(pool, BackendPoolEnv):
        raise TypeError(f"BatchedVecEnv steps BackendPoolEnv, got {type(pool).__name__}")
    return pool


class BatchedVecEnv(DummyVecEnv):
    """`DummyVecEnv` over `BackendPoolEnv`s whose kernels, rewards' statistics and observations
    are computed in one call per round for all of them.

    Resets, seeds, wrappers, `terminal_observation` and the other infos follow `DummyVecEnv`
    exactly (reset is inherited; `step_wait` keeps its bookkeeping). Each environment may be
    wrapped (reward scaling, time limits) as long as `unwrapped` is a `BackendPoolEnv`; pools of
    different sizes batch together, each padded to the common number of slots.
    """

    def __init__(self, env_fns: list[Callable[[], gym.Env[Any, Any]]]) -> None:
        super().__init__(env_fns)
        self.pools = [_pool_env(env) for env in self.envs]
        shapes = {(pool.encoder.history, pool.slots) for pool in self.pools}
        if len(shapes) > 1:
            raise ValueError(f"environments differ in (history, slots): {sorted(shapes)}")
        self._history, self._slots = shapes.pop()
        for pool in self.pools:
            vars(pool)["_latency_stats"] = _deferred_latency_stats(pool)
            vars(pool)["_observe"] = _deferred_observe(pool)
        self._lists = _PoolLists()
        self.kernel_calls = 0
        """Batched kernel calls so far (about two per step), for the benchmark's accounting."""
        self.kernel_seconds = 0.0
        """Wall time spent in those calls."""
        self.batch_seconds = 0.0
        """Wall time spent in the batched statistics and observations (the rest of a step is
        per-environment Python: decisions, snapshots, infos, SB3's bookkeeping)."""

    def _simulator(self, index: int) -> Simulator:
        """The current episode's simulator of environment `index`, deferring its kernel work.

        Its `run_until` is replaced (on the instance, once per episode) by a hand-over to the
        batch: inside a step's greenlet it suspends the step until the batch has advanced it.
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
        steps = [_StepGreenlet(self.envs[i].step) for i in range(n)]
        results: list[Any] = [None] * n
        waits: list[_Request | None] = [None] * n
        for i in range(n):
            waits[i] = self._resume(steps[i], self.actions[i], results, i)
        while any(w is not None for w in waits):
            answers = self._serve(sims, waits)
            for i, answer in answers.items():
                waits[i] = self._resume(steps[i], answer, results, i)
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

    def _serve(self, sims: list[Simulator], waits: list[_Request | None]) -> dict[int, Any]:
        """Answer every waiting request of one kind in one batched call: the kernel first (the
        others wait for it anyway), then the statistics, then the observations."""
        kernel_waits = {i: w.until for i, w in enumerate(waits) if isinstance(w, _Wait)}
        if kernel_waits:
            started = time.perf_counter()
            until = [kernel_waits.get(i) for i in range(len(sims))]
            self.kernel_calls += advance_simulators(sims, until, self._lists)
            self.kernel_seconds += time.perf_counter() - started
            return dict.fromkeys(kernel_waits)
        started = time.perf_counter()
        stats = {i: w for i, w in enumerate(waits) if isinstance(w, _Stats)}
        if stats:
            pools = [self.pools[i] for i in stats]
            figures = batch_interval_stats(
                [w.latency for w in stats.values()],
                [w.failed for w in stats.values()],
                [_scenario(pool).timeout_s for pool in pools],
            )
            answers: dict[int, Any] = {
                i: None if len(w.latency) == 0 else tuple(row[:4].tolist())
                for (i, w), row in zip(stats.items(), figures, strict=True)
            }
        else:
            observing = {i: w for i, w in enumerate(waits) if isinstance(w, _Observe)}
            obs = encode_batch(
                [w.snapshot for w in observing.values()],
                [w.past for w in observing.values()],
                self._history,
                self._slots,
            )
            answers = {i: obs[j] for j, i in enumerate(observing)}
        self.batch_seconds += time.perf_counter() - started
        return answers

    @staticmethod
    def _resume(step: greenlet, answer: Any, results: list[Any], index: int) -> _Request | None:
        """Run environment `index`'s step, given `answer` (its action to begin with), until it
        asks the batch for something (returned) or ends (None)."""
        out = step.switch(answer)
        if step.dead:
            results[index] = out
            return None
        if not isinstance(out, _Request):
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
                sim.state = grow_state(sim.state)
            else:
                active[i] = False
    return calls


def _deferred_run_until(sim: Simulator) -> Callable[[float], None]:
    """`Simulator.run_until` as a hand-over to the batch, which advances `sim` and switches
    back once `sim.now` has reached `t` (it is then exactly `t`). Called outside a batched
    step, it runs the kernel for this pool alone."""

    def run_until(t: float) -> None:
        if t <= sim.now:
            return
        hub = _hub()
        if hub is None:
            Simulator.run_until(sim, t)
            return
        hub.switch(_Wait(float(t)))

    return run_until


def _deferred_latency_stats(
    pool: BackendPoolEnv,
) -> Callable[[FloatArray, np.ndarray], tuple[float, float, float, float] | None]:
    """`BackendPoolEnv._latency_stats` computed by the batch (with the others' intervals)."""

    def latency_stats(
        latency: FloatArray, failed: np.ndarray
    ) -> tuple[float, float, float, float] | None:
        hub = _hub()
        if hub is None:
            return BackendPoolEnv._latency_stats(pool, latency, failed)
        answer: tuple[float, float, float, float] | None = hub.switch(_Stats(latency, failed))
        return answer

    return latency_stats


def _deferred_observe(pool: BackendPoolEnv) -> Callable[[], np.ndarray]:
    """`BackendPoolEnv._observe` encoded by the batch (with the others' observations)."""

    def observe() -> np.ndarray:
        hub = _hub()
        if hub is None:
            return BackendPoolEnv._observe(pool)
        answer: np.ndarray = hub.switch(_Observe(*pool._observation_inputs()))
        return answer

    return observe
