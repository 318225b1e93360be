"""The simulator's retry budget (`envs.nb_retry_budget`) allows exactly the proxy's retries.

The reference is `rl_lb.retry_budget.RetryBudget` (the proxy's, Linkerd/Finagle). One timeline of
requests and failed connects, quiet and busy phases and gaps longer than the window, goes into
both: every allow/deny decision must be the same. Then, end to end, the simulator's retries follow
the scenario's `[retries]` settings.
"""

from __future__ import annotations

import numpy as np
import pytest

from envs import kernel, nb_retry_budget
from envs.factory import pool_scenario
from envs.simulator import Simulator
from rl_lb.control import ControlSpec, RetrySettings
from rl_lb.retry_budget import RetryBudget
from rl_lb.scenarios import Event

SETTINGS = {
    "defaults": RetrySettings(),
    "no-floor": RetrySettings(budget=0.5, budget_window_s=3.0, min_retries_per_s=0.0),
    "floor-only": RetrySettings(budget=0.0, budget_window_s=0.7, min_retries_per_s=4.0),
}


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("name", SETTINGS)
def test_same_timeline_same_decisions(name: str) -> None:
    settings = SETTINGS[name]
    clock = Clock()
    reference = RetryBudget(settings, clock)
    twin = nb_retry_budget.new_budget(2)
    p = 1  # the second proxy: the first one's slots must stay untouched
    rng = np.random.default_rng(len(name))
    decisions = []
    t = 0.0
    for step in range(30_000):
        phase = (step // 3000) % 3
        if step % 3000 == 0 and step:
            t += float(rng.uniform(0.0, 2.5 * settings.budget_window_s))  # a gap
        t += float(rng.exponential((0.5, 0.002, 0.05)[phase]))
        clock.now = t
        if rng.random() < (0.1, 0.5, 0.9)[phase]:  # a failed connect asks for a retry
            allowed = reference.try_retry()
            ours = nb_retry_budget.try_retry(
                twin, p, t, settings.budget, settings.budget_window_s, settings.min_retries_per_s
            )
            assert ours == allowed, (step, t)
            decisions.append(allowed)
        else:
            reference.request()
            nb_retry_budget.count_request(twin, p, t, settings.budget_window_s)
    assert 0 < sum(decisions) < len(decisions)  # both kinds of decision were compared
    assert not twin.requests[0].any()
    assert not twin.retries[0].any()


def _dead_pool(retries: RetrySettings) -> Simulator:
    """Two of three backends refuse connections throughout; about one request per second."""
    down = Event(0.0, 1e9, down=True)
    control = ControlSpec(retries=retries)
    events = [(0, down), (1, down)]
    scenario = pool_scenario(3, load=0.3, duration_s=300.0, events=events, control=control)
    sim = Simulator(scenario, 5)
    sim.run_until(300.0)
    return sim


def test_the_floor_lets_a_quiet_simulated_proxy_retry_past_dead_backends() -> None:
    """At one request per second, 20 % of the requests would pay for almost no retries: the
    floor (10 retries/s) does, as in the proxy, so no request is lost to the dead backends."""
    with_floor = _dead_pool(RetrySettings()).records()
    assert with_floor.retries.sum() > 50
    assert (with_floor.outcome == kernel.OK).sum() > 200
    assert kernel.ERROR not in with_floor.outcome
    without = _dead_pool(RetrySettings(min_retries_per_s=0.0)).records()
    assert (without.outcome == kernel.ERROR).sum() > 50
    no_retries = _dead_pool(RetrySettings(retries=0)).records()
    assert no_retries.retries.sum() == 0
