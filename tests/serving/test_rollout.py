"""Rollout through the registry: proxies following `models:/rl-lb-policy@champion` in a temporary
SQLite MLflow store move to a good new version after its canary, roll a bad one back on their
own, and keep serving throughout; `rl-lb promote` moves the alias only past its gate."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from rollout_fixtures import (
    FASTEST,
    SLOWEST,
    SlowBackend,
    Traffic,
    slow_first_pool,
    write_directional_model,
)
from serving_helpers import admin_json, eventually, proxy_config

from rl_lb.balancers import make_balancer
from rl_lb.cli import main as rl_lb
from rl_lb.errors import ConfigError
from rl_lb.policies.learned import REGISTERED_MODEL
from rl_lb.types import PoolSnapshot
from serving.app import ProxyServer
from serving.config import ProxyConfig, load_config
from serving.rollout import MIN_ARM_REQUESTS, UNJUDGED_LIMIT, Canary, followed_alias
from training.tracking import POLICY_ARTIFACT_PATH, register_policy, setup_experiment

ALIAS = f"models:/{REGISTERED_MODEL}@champion"
POLL_S = 0.3
CANARY_S = 1.0
FOLLOW = {
    "balancer": "learned",
    "policy": ALIAS,
    "policy_poll_interval_s": POLL_S,
    "canary_share": 0.3,
    "canary_duration_s": CANARY_S,
    "health_path": None,
}
SETTLE_S = 10.0
"""Slack on top of one poll plus the canary period (one event loop runs everything here)."""


class Registry:
    """A temporary SQLite MLflow store holding fixture policies as `rl-lb-policy` versions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.experiment = setup_experiment("rollout-test")
        self.client = mlflow.MlflowClient()

    def register(self, sign: float, version: str) -> int:
        model = write_directional_model(self.root / version, sign, version)
        with mlflow.start_run(experiment_id=self.experiment) as run:
            mlflow.log_artifacts(str(model), POLICY_ARTIFACT_PATH)
        return register_policy(run.info.run_id, run.info.artifact_uri)

    def point(self, version: int) -> None:
        """Move the alias directly (what `rl-lb promote --force` does)."""
        self.client.set_registered_model_alias(REGISTERED_MODEL, "champion", str(version))

    def champion(self) -> int:
        found = self.client.get_model_version_by_alias(REGISTERED_MODEL, "champion")
        return int(found.version)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow database, created once: its migrations take seconds."""
    database = tmp_path_factory.mktemp("store") / "mlruns.db"
    mlflow.MlflowClient(f"sqlite:///{database}").search_experiments()
    return database


@pytest.fixture
def registry(
    empty_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Registry]:
    """A store of this test's own (a copy of the empty one) that every command here uses."""
    database = tmp_path / "mlruns.db"
    shutil.copyfile(empty_store, database)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{database}")
    yield Registry(tmp_path)
    mlflow.set_tracking_uri(None)  # the next test picks its own store


@pytest.fixture
async def pool() -> AsyncIterator[Callable[[int], Awaitable[list[SlowBackend]]]]:
    """`await pool(n)`: n backends, the first one slow, the others fast."""
    async for make in slow_first_pool():
        yield make


@contextlib.asynccontextmanager
async def proxies(
    n: int, backends: list[SlowBackend], **settings: Any
) -> AsyncIterator[list[ProxyServer]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(
                ProxyServer(proxy_config(backends, **{**FOLLOW, **settings}))
            )
            for _ in range(n)
        ]


ALIKE_TOLERANCE = 4.0
"""The canary tolerance where the two versions are the same policy: their 1 s canaries differ
only by noise, which on a busy 2-core machine (two CPU burners beside the suite) reached 1.41x,
past the default 1.25, and rolled a good version back. Rolling back is tested where the
versions differ (the bad version below, with the default tolerance)."""


def served(proxy: ProxyServer) -> tuple[int | None, Any]:
    """(registry version the rollout serves, the model header's version of the balancer)."""
    assert proxy.rollout is not None
    primary = getattr(proxy.controller.balancer, "primary", None)
    return proxy.rollout.version, getattr(getattr(primary, "policy", None), "version", None)


async def test_three_proxies_move_to_a_good_version_after_one_poll_and_the_canary(
    registry: Registry, pool, client
) -> None:
    first = registry.register(FASTEST, "fast-1")
    registry.point(first)
    backends = (await pool(3))[1:]  # two fast backends: the two versions route alike
    async with proxies(3, backends, canary_tolerance=ALIKE_TOLERANCE) as started:
        assert [served(p) for p in started] == [(first, "fast-1")] * 3
        traffic = Traffic(client, [f"http://127.0.0.1:{p.port}/" for p in started])
        try:
            second = registry.register(FASTEST, "fast-2")
            registry.point(second)
            await eventually(
                lambda: all(served(p) == (second, "fast-2") for p in started),
                timeout=POLL_S + CANARY_S + SETTLE_S,
            )
            _, state = await admin_json(client, started[0], "GET", "/admin/state")
            _, metrics = await admin_json(client, started[0], "GET", "/metrics")
        finally:
            await traffic.stop()
    rollout = state["rollout"]
    assert rollout["alias"] == ALIAS
    assert rollout["version"] == second
    assert rollout["canary"] is None
    assert [e["event"] for e in rollout["history"]] == ["canary", "promoted"]
    assert state["version"] == "fast-2"
    canary, promoted = rollout["history"]
    assert promoted["at"] - canary["at"] >= CANARY_S * 0.9  # served its canary period first
    assert 'rl_lb_rollout_events_total{event="promoted"} 1.0' in metrics
    assert 'rl_lb_rollout_version{role="current"} 2.0' in metrics
    assert traffic.sent > 100
    assert traffic.failed == 0


async def test_a_bad_version_is_rolled_back_and_not_tried_again(
    registry: Registry, pool, client
) -> None:
    good = registry.register(FASTEST, "fast-1")
    registry.point(good)
    backends = await pool(3)  # one slow backend: the bad version sends (nearly) all to it
    async with proxies(1, backends) as (proxy,):
        traffic = Traffic(client, [f"http://127.0.0.1:{proxy.port}/"], workers=6)
        try:
            bad = registry.register(SLOWEST, "slowest-2")
            registry.point(bad)
            rollout = proxy.rollout
            assert rollout is not None
            await eventually(
                lambda: rollout.events["rolled-back"] == 1, timeout=POLL_S + CANARY_S + SETTLE_S
            )
            polls = rollout.last_poll
            await eventually(lambda: rollout.last_poll != polls, timeout=SETTLE_S)
            _, state = await admin_json(client, proxy, "GET", "/admin/state")
        finally:
            await traffic.stop()
    assert served(proxy) == (good, "fast-1")
    assert state["rollout"]["rolled_back"] == [bad]
    assert state["rollout"]["events"]["canary"] == 1  # polled again, not tried again
    rolled_back = state["rollout"]["history"][-1]
    assert rolled_back["event"] == "rolled-back"
    assert "cost" in rolled_back["detail"] or "refused" in rolled_back["detail"]
    assert registry.champion() == bad  # the proxy never writes the registry
    assert traffic.failed == 0


def test_promote_refuses_a_losing_version_and_force_overrides(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    good = registry.register(FASTEST, "fast-1")
    registry.point(good)
    bad = registry.register(SLOWEST, "slowest-2")
    gate = ["--scenario", "slow-backend", "--seeds", "1"]

    assert rl_lb(["promote", str(bad), *gate]) == 1
    out = capsys.readouterr().out
    assert "slow-backend" in out  # the gate's table
    assert f"refused: version {bad} loses the gate against {good}" in out
    assert registry.champion() == good

    assert rl_lb(["promote", str(bad), "--force"]) == 0
    assert registry.champion() == bad
    assert rl_lb(["promote", str(good), *gate]) == 0  # the better one passes back
    assert registry.champion() == good


def test_promote_refuses_bad_input_with_one_line(
    registry: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.point(registry.register(FASTEST, "fast-1"))
    assert rl_lb(["promote", "7"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no such version of rl-lb-policy" in err
    assert "\n" not in err
    assert rl_lb(["promote", "1", "--alias", "a/b"]) == 2


def snapshot_of(costs: list[float]) -> PoolSnapshot:
    """A pool whose backends' peak-EWMA latencies are `costs`."""
    n = len(costs)
    zeros = np.zeros(n)
    return PoolSnapshot(
        taken_at=0.0,
        names=tuple(f"b{i}" for i in range(n)),
        in_flight=np.zeros(n, dtype=np.int64),
        ewma_s=np.array(costs),
        p50_s=np.array(costs),
        p95_s=np.array(costs),
        p99_s=np.array(costs),
        error_rate=zeros,
        throughput_rps=np.full(n, 10.0),
        staleness_s=zeros,
        healthy=np.ones(n, dtype=np.bool_),
        ejected=np.zeros(n, dtype=np.bool_),
        weights=np.full(n, 1.0 / n),
        window_s=10.0,
    )


def trial(current_on: int, candidate_on: int, requests: int = 200) -> Canary:
    """A canary after one interval in which each arm sent all its requests to one backend of a
    pool where backend 0 answers in 10 ms and backend 1 in 40 ms."""
    canary = Canary(2, make_balancer("least-latency"), share=0.5, started=0.0)
    pool = snapshot_of([0.01, 0.04])
    decision = make_balancer("least-latency").decide(pool, 0.0)
    canary.route(decision, pool, 0.0)
    assert canary.split is not None
    canary.split.picks[0][current_on] = requests
    canary.split.picks[1][candidate_on] = requests
    canary.route(decision, pool, 1.0)  # the interval ends: its requests are priced
    return canary


def test_the_verdict_compares_what_each_arms_requests_cost() -> None:
    assert trial(0, 1).verdict(5.0, 5.0, 1.25) == (
        "rolled-back",
        "its requests cost 4.00x the current's (40.0 ms vs 10.0 ms)",
    )
    outcome, why = trial(1, 0).verdict(5.0, 5.0, 1.25)
    assert outcome == "promoted"
    assert why.startswith("cost ratio 0.25 <= 1.25")


def test_the_verdict_waits_for_the_canary_period_and_for_traffic() -> None:
    assert trial(0, 1).verdict(4.9, 5.0, 1.25) is None  # the period is not over
    idle = trial(0, 1, requests=MIN_ARM_REQUESTS - 1)
    assert idle.verdict(5.0, 5.0, 1.25) is None  # too few requests to judge: wait
    assert idle.verdict(UNJUDGED_LIMIT * 5.0, 5.0, 1.25) == (
        "promoted",
        f"unjudged: {MIN_ARM_REQUESTS - 1} canary requests",
    )


def test_a_candidate_whose_output_is_refused_is_rolled_back_at_once() -> None:
    canary = trial(1, 0)
    canary.refused = "nan"
    assert canary.verdict(0.5, 5.0, 1.25) == ("rolled-back", "its guard refused it (nan)")


@pytest.mark.parametrize(
    ("changes", "followed"),
    [
        ({"policy": ALIAS}, ALIAS),
        ({"policy": f"models:/{REGISTERED_MODEL}/3"}, None),  # a fixed version
        ({"policy": "/srv/policy"}, None),
        ({"policy": ALIAS, "policy_poll_interval_s": 0.0}, None),  # loaded once
    ],
)
def test_only_an_alias_with_polling_on_is_followed(
    changes: dict[str, Any], followed: str | None
) -> None:
    config = ProxyConfig(backends=("http://127.0.0.1:9",), balancer="learned", **changes)
    ref = followed_alias(config)
    assert (ref.uri if ref else None) == followed


@pytest.mark.parametrize(
    ("flag", "value"),
    [("canary-share", 0.0), ("canary-share", 0.6), ("canary-tolerance", 1.0)],
)
def test_rollout_settings_out_of_range_are_one_line_errors(flag: str, value: float) -> None:
    with pytest.raises(ConfigError, match=rf"^--{flag}: .*{value:g}"):
        load_config(None, {"backend": ["http://127.0.0.1:9"], flag: value})
