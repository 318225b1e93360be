"""Health checks and ejection: the numba twin (`envs.nb_health`) decides as `rl_lb.health`.

One timeline of request results, health-check results and expiry ticks goes into both the
reference (`OutlierDetector`, `HealthChecker`) and the twin over the simulator's arrays: every
call must return the same decision, and afterwards every flag, count and ejection end time must
be equal (times exactly: the same float operations in the same order).
"""

from __future__ import annotations

import numpy as np
import pytest

from envs import nb_health
from envs.build import make_spec, new_state
from envs.factory import pool_scenario
from envs.nb_state import State
from rl_lb.control import ControlSpec, EjectionSettings, HealthSettings
from rl_lb.health import HealthChecker, OutlierDetector

CONTROLS = {
    "envoy-defaults": ControlSpec(),
    "fast": ControlSpec(
        health=HealthSettings(healthy_threshold=2, unhealthy_threshold=1),
        ejection=EjectionSettings(
            consecutive_failures=2, base_ejection_s=0.5, max_ejection_s=2.0, max_ejection_percent=30
        ),
    ),
    "one-at-a-time": ControlSpec(
        health=HealthSettings(healthy_threshold=3, unhealthy_threshold=3),
        ejection=EjectionSettings(
            consecutive_failures=3, base_ejection_s=1.0, max_ejection_s=1.0, max_ejection_percent=0
        ),
    ),
}


def _assert_same(st: State, detector: OutlierDetector, checker: HealthChecker) -> None:
    assert st.healthy[0].tolist() == checker.healthy
    assert st.ejected[0].tolist() == detector.ejected
    assert st.eject_until[0].tolist() == detector.ejected_until
    assert st.eject_count[0].tolist() == detector.times_ejected
    assert st.consec[0].tolist() == detector.failures
    expected = [h and not e for h, e in zip(checker.healthy, detector.ejected, strict=True)]
    assert st.avail[0].tolist() == expected


@pytest.mark.parametrize("n", [1, 7, 20])
@pytest.mark.parametrize("name", CONTROLS)
def test_same_results_same_ejections_and_returns(name: str, n: int) -> None:
    control = CONTROLS[name]
    scenario = pool_scenario(n, load=0.5, duration_s=10.0, control=control)
    spec = make_spec(scenario, np.random.default_rng(0))
    st = new_state(spec, scenario, 16)
    detector = OutlierDetector(n, control.ejection)
    checker = HealthChecker(n, control.health)
    rng = np.random.default_rng(n)
    seen = {"ejections": 0, "flips": 0, "returns": 0}
    t = 0.0
    for step in range(4000):
        if step % 500 == 0:  # backends die, turn flaky and recover
            fail_prob = rng.choice([0.0, 0.0, 0.3, 0.9, 1.0], n)
        t += float(rng.exponential(0.05))
        b = int(rng.integers(n))
        kind = rng.random()
        if kind < 0.8:
            failed = bool(rng.random() < fail_prob[b])
            ejected = detector.on_result(b, failed, t)
            assert nb_health.on_result(spec, st, 0, b, failed, t) == ejected
            seen["ejections"] += ejected
        elif kind < 0.95:
            passed = bool(rng.random() >= fail_prob[b])
            flipped = checker.on_check(b, passed)
            assert nb_health.on_check(spec, st, 0, b, passed) == flipped
            ended = detector.on_health_check(b, passed, t)
            assert nb_health.on_health_check(st, 0, b, passed, t) == ended
            seen["flips"] += flipped
            seen["returns"] += ended
        else:
            returned = detector.expire(t)
            assert nb_health.expire(st, 0, t) == len(returned)
            seen["returns"] += len(returned)
        _assert_same(st, detector, checker)
    assert min(seen.values()) > 0, seen  # every kind of decision was taken and compared


def test_the_spec_carries_the_scenarios_settings() -> None:
    control = CONTROLS["fast"]
    scenario = pool_scenario(3, load=0.5, duration_s=10.0, control=control)
    spec = make_spec(scenario, np.random.default_rng(0))
    assert (spec.healthy_threshold, spec.unhealthy_threshold) == (2, 1)
    assert (spec.consecutive_failures, spec.eject_base_s, spec.eject_max_s) == (2, 0.5, 2.0)
    assert spec.max_ejection_percent == 30.0
