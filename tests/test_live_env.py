"""`LivePoolEnv` against a real proxy, emulated backends and steady load started by the tests.

The proxy, its backends and a constant-rate load generator run on an event loop in a background
thread (the environment itself is synchronous: HTTP calls and sleeps), started once for the module
and stopped, with everything it started, at the end.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import urllib.request
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import psutil
import pytest
from gymnasium.utils.env_checker import check_env

from envs import LIVE_ENV_ID
from envs.factory import pool_scenario
from envs.live import Counters, LivePoolEnv, snapshot_from_json
from lab.backends import EmulatedPool
from lab.loadgen import run_load
from rl_lb.control import ControlSpec, HealthSettings
from rl_lb.features import FeatureEncoder
from rl_lb.scenarios import Event, Scenario, ServiceDist
from serving.app import ProxyServer
from serving.config import ProxyConfig

INTERVAL_S = 0.2
RATE = 150.0
SCENARIO: Scenario = pool_scenario(
    3,
    load=0.2,
    duration_s=600.0,
    concurrency=4,
    service=ServiceDist("lognormal", 0.01, 1.0),
    timeout_s=1.0,
    events=[(0, Event(at_s=0.0, until_s=600.0, slowdown=8.0))],
    control_interval_s=INTERVAL_S,
    name="live-env-test",
)
"""Three backends, the first 8x slower all along: a policy has something to get right."""


class Stack:
    """Backends, proxy and load on a private event loop in a thread; `close()` stops all."""

    def __init__(self) -> None:
        self.admin_url = ""
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="live-env-stack")
        self._thread.start()
        if not self._ready.wait(30) or self.error is not None:
            self.close()
            raise RuntimeError(f"stack did not start: {self.error!r}")

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # reported to the test thread
            self.error = error
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with EmulatedPool(SCENARIO, seed=1) as pool:
            config = ProxyConfig(
                backends=tuple(pool.urls),
                listen="127.0.0.1:0",
                admin="127.0.0.1:0",
                balancer="least-latency",
                control_interval_s=INTERVAL_S,
                control=ControlSpec(health=HealthSettings(interval_s=1.0)),
                read_timeout_s=SCENARIO.timeout_s,
            )
            async with ProxyServer(config) as proxy:
                self.admin_url = f"http://127.0.0.1:{proxy.admin_port}"
                load = asyncio.create_task(
                    run_load(f"http://127.0.0.1:{proxy.port}/", RATE, 600.0, process="constant")
                )
                self._ready.set()
                await self._stop.wait()
                load.cancel()
                await asyncio.gather(load, return_exceptions=True)

    def state(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.admin_url}/admin/state", timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    running = Stack()
    try:
        yield running
    finally:
        running.close()
    assert not running._thread.is_alive(), "the backends/proxy thread did not stop"
    left = {p.pid for p in psutil.Process().children(recursive=True)} - children_before
    assert not left, f"processes left behind: {left}"


def make_env(stack: Stack, **kwargs: Any) -> LivePoolEnv:
    return LivePoolEnv(
        stack.admin_url,
        ideal_latency_s=SCENARIO.ideal_latency_s,
        timeout_s=SCENARIO.timeout_s,
        **kwargs,
    )


def test_client_side_encoding_matches_the_proxys_observation(stack: Stack) -> None:
    with urllib.request.urlopen(f"{stack.admin_url}/admin/snapshot", timeout=5) as response:
        data = json.loads(response.read())
    snapshot = snapshot_from_json(data)
    assert snapshot.names == tuple(data["names"])
    np.testing.assert_allclose(
        FeatureEncoder().encode(snapshot), np.asarray(data["observation"]), rtol=1e-6, atol=1e-6
    )


def test_passes_the_gymnasium_checker(stack: Stack) -> None:
    env = gym.make(
        LIVE_ENV_ID,
        admin_url=stack.admin_url,
        ideal_latency_s=SCENARIO.ideal_latency_s,
        timeout_s=SCENARIO.timeout_s,
        episode_steps=5,
    )
    try:
        assert env.spec is not None
        assert env.spec.nondeterministic
        check_env(env.unwrapped, skip_render_check=True)
    finally:
        env.close()


def test_a_step_installs_the_weights_and_scores_the_interval(stack: Stack) -> None:
    env = make_env(stack, episode_steps=3)
    try:
        observation, _ = env.reset(seed=0)
        assert observation.shape == env.observation_space.shape
        action = np.zeros(env.action_space.shape, dtype=np.float32)
        action[0] = -1.0  # starve the slow backend
        _, reward, terminated, truncated, info = env.step(action)
        state = stack.state()
        assert "refused" not in info
        assert state["mode"] == "external"
        np.testing.assert_allclose(state["external_weights"], info["weights"])
        assert info["weights"][0] < info["weights"][1] == pytest.approx(info["weights"][2])
        assert info["requests"] > 0
        assert math.isfinite(reward)
        assert reward <= 0.0
        assert not terminated
        assert not truncated
        for _ in range(2):
            *_, truncated, _ = env.step(action)
        assert truncated
    finally:
        env.close()
    state = stack.state()
    assert state["mode"] != "external", "close() hands the weights back"
    assert state["external_weights"] is None


def test_weights_that_stop_coming_go_stale(stack: Stack) -> None:
    env = make_env(stack)
    try:
        env.reset()
        env.step(np.zeros(env.action_space.shape, dtype=np.float32))
        assert stack.state()["mode"] == "external"
        threading.Event().wait(4 * INTERVAL_S)
        state = stack.state()
        assert (state["mode"], state["reason"]) == ("fallback", "stale")
    finally:
        env.close()


METRICS = """\
rl_lb_backend_requests_total{backend="a",code="2xx"} %(ok)d
rl_lb_backend_requests_total{backend="a",code="5xx"} %(bad)d
rl_lb_backend_latency_seconds_bucket{backend="a",le="0.01"} %(fast)d
rl_lb_backend_latency_seconds_bucket{backend="a",le="0.1"} %(all)d
rl_lb_backend_latency_seconds_bucket{backend="a",le="+Inf"} %(all)d
rl_lb_backend_latency_seconds_count{backend="a"} %(all)d
rl_lb_backend_latency_seconds_sum{backend="a"} %(sum)f
rl_lb_retries_total 0
"""


def counters(ok: int, bad: int, fast: int, total_s: float) -> Counters:
    values = {"ok": ok, "bad": bad, "fast": fast, "all": ok + bad, "sum": total_s}
    return Counters("# TYPE rl_lb_backend_requests counter\n" + METRICS % values)


def test_interval_figures_from_counter_deltas() -> None:
    start = counters(ok=100, bad=0, fast=50, total_s=1.0)
    quiet = counters(ok=1100, bad=0, fast=950, total_s=11.0).since(start, timeout_s=1.0)
    assert (quiet.requests, quiet.errors) == (1000, 0)
    assert quiet.mean_s == pytest.approx(0.01)
    # 900 answers within 10 ms, 100 in (10, 100] ms: rank 990 is 90% into the second bucket
    assert quiet.effective_p99_s == pytest.approx(0.01 + 0.09 * 0.9)
    failing = counters(ok=1080, bad=20, fast=950, total_s=11.0).since(start, timeout_s=1.0)
    assert failing.errors == 20
    assert failing.effective_p99_s == 1.0  # 2% failed: the p99 is a failure, at the timeout


def _policy_start() -> tuple[dict[str, Any], dict[str, np.ndarray] | None]:
    """The shipped policy's architecture and weights when there is one, else SB3 defaults."""
    from rl_lb.policies.learned import HEADER_FILE, SHIPPED_DIR, WEIGHTS_FILE

    header_file = SHIPPED_DIR / HEADER_FILE
    if not header_file.is_file():
        return {}, None
    header = json.loads(header_file.read_text())
    kwargs = {
        "slot_net": header["architecture"]["slot_net"],
        "head_net": header["architecture"]["head_net"],
        "activation": header["activation"],
    }
    with np.load(SHIPPED_DIR / WEIGHTS_FILE) as arrays:
        return kwargs, dict(arrays)


def _install(policy: Any, arrays: dict[str, np.ndarray]) -> None:
    """Load the numpy export (weights stored transposed) into the SB3 actor: the inverse of
    `training.export.export_policy`."""
    import torch as th
    from torch import nn

    with th.no_grad():
        for prefix in ("phi", "rho"):
            layers = [m for m in getattr(policy.mlp_extractor, prefix) if isinstance(m, nn.Linear)]
            for i, layer in enumerate(layers):
                layer.weight.copy_(th.from_numpy(arrays[f"{prefix}.{i}.weight"].T.copy()))
                layer.bias.copy_(th.from_numpy(arrays[f"{prefix}.{i}.bias"]))
        policy.action_net.score.weight[0].copy_(th.from_numpy(arrays["head.weight"]))


def test_ppo_fine_tunes_against_the_live_proxy(stack: Stack) -> None:
    import torch as th
    from stable_baselines3 import PPO

    from training.policy import SetActorCriticPolicy

    th.set_num_threads(1)
    kwargs, shipped = _policy_start()
    env = make_env(stack, episode_steps=64)
    try:
        model = PPO(
            SetActorCriticPolicy,
            env,
            n_steps=64,
            batch_size=32,
            n_epochs=2,
            gamma=0.9,
            seed=0,
            device="cpu",
            policy_kwargs=kwargs,
        )
        if shipped is not None:
            _install(model.policy, shipped)
            observation, _ = env.reset()
            scores = model.policy.scores(th.as_tensor(observation[None]))
            assert th.all(th.isfinite(scores))
        model.learn(total_timesteps=192)
        assert model.num_timesteps >= 192
        assert stack.state()["external_weights"] is not None, "the proxy got the policy's weights"
    finally:
        env.close()
    assert stack.state()["external_weights"] is None


def test_install_is_the_inverse_of_the_export(tmp_path: Any) -> None:
    """The shipped-policy start of the fine-tune loads what `export_policy` wrote."""
    import torch as th
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from envs.env import BackendPoolEnv
    from training.export import export_policy
    from training.policy import SetActorCriticPolicy

    venv = make_vec_env(lambda: BackendPoolEnv(SCENARIO), n_envs=1)
    trained = PPO(SetActorCriticPolicy, venv, seed=1, device="cpu")
    fresh = PPO(SetActorCriticPolicy, venv, seed=2, device="cpu")
    export_policy(trained.policy, tmp_path, FeatureEncoder(), "test")  # type: ignore[arg-type]
    with np.load(tmp_path / "policy.npz") as arrays:
        _install(fresh.policy, dict(arrays))
    shape = (2, *trained.observation_space.shape)
    observation = th.as_tensor(np.random.default_rng(0).uniform(-1, 1, shape), dtype=th.float32)
    observation[:, 5:, :] = 0.0
    observation[:, :5, 0] = 1.0
    th.testing.assert_close(fresh.policy.scores(observation), trained.policy.scores(observation))
    venv.close()
