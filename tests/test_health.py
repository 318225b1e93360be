"""Outlier ejection and active health checks (Envoy's rules and defaults)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from rl_lb.control import EjectionSettings, HealthSettings
from rl_lb.errors import ConfigError
from rl_lb.health import HealthChecker, OutlierDetector


def fail(detector: OutlierDetector, i: int, times: int, now: float = 0.0) -> list[bool]:
    return [detector.on_result(i, True, now) for _ in range(times)]


def test_defaults_are_envoys_and_come_from_the_control_spec() -> None:
    assert EjectionSettings() == EjectionSettings(5, 30.0, 300.0, 10.0)
    assert (HealthSettings().healthy_threshold, HealthSettings().unhealthy_threshold) == (1, 2)
    assert OutlierDetector(3).settings == EjectionSettings()
    assert HealthChecker(3).settings == HealthSettings()
    custom = EjectionSettings(consecutive_failures=2, base_ejection_s=1.0)
    assert OutlierDetector(3, custom).settings is custom
    thresholds = HealthSettings(healthy_threshold=3, unhealthy_threshold=4)
    assert HealthChecker(3, thresholds).settings is thresholds


def test_consecutive_failures_eject() -> None:
    d = OutlierDetector(20)
    assert fail(d, 4, 5) == [False] * 4 + [True]
    assert d.ejected[4]
    assert d.times_ejected[4] == 1
    assert sum(d.ejected) == 1


def test_a_success_resets_the_count() -> None:
    d = OutlierDetector(20)
    fail(d, 0, 4)
    assert not d.on_result(0, False, 0.0)
    assert fail(d, 0, 4) == [False] * 4
    assert not d.ejected[0]
    assert d.on_result(0, True, 0.0)


def test_failures_while_ejected_are_ignored() -> None:
    d = OutlierDetector(20)
    fail(d, 0, 5)
    assert fail(d, 0, 20) == [False] * 20
    assert d.times_ejected[0] == 1
    assert d.expire(30.0) == [0]
    assert fail(d, 0, 4, now=30.0) == [False] * 4  # the count restarted at the return


def test_ejection_lasts_base_times_ejections_capped() -> None:
    d = OutlierDetector(20)
    now = 0.0
    durations = []
    for _ in range(12):
        fail(d, 3, 5, now)
        until = d.ejected_until[3]
        assert d.expire(until - 1e-6) == []
        assert d.ejected[3]
        assert d.expire(until) == [3]
        assert not d.ejected[3]
        durations.append(until - now)
        now = until
    assert durations == [30.0 * k for k in range(1, 11)] + [300.0, 300.0]
    assert d.times_ejected[3] == 12


def test_at_most_ten_percent_are_ejected() -> None:
    d = OutlierDetector(20)
    assert fail(d, 0, 5)[-1]
    assert fail(d, 1, 5)[-1]
    assert fail(d, 2, 5) == [False] * 5  # a third would be 15% of 20
    assert d.ejected == [True, True] + [False] * 18
    assert d.expire(30.0) == [0, 1]
    assert d.on_result(2, True, 30.0)  # its count kept running: the next failure ejects


def test_at_least_one_is_ejected_even_below_one_backend_in_ten() -> None:
    d = OutlierDetector(4)
    assert fail(d, 1, 5)[-1]
    assert not fail(d, 2, 5)[-1]
    single = OutlierDetector(1)
    assert fail(single, 0, 5)[-1]
    none_allowed = OutlierDetector(4, EjectionSettings(max_ejection_percent=0.0))
    assert fail(none_allowed, 0, 5)[-1]
    assert not fail(none_allowed, 1, 5)[-1]


def test_a_passing_health_check_ends_an_ejection() -> None:
    d = OutlierDetector(20)
    fail(d, 5, 5, now=10.0)
    assert not d.on_health_check(5, False, 12.0)
    assert d.ejected[5]
    assert d.on_health_check(5, True, 12.0)
    assert not d.ejected[5]
    assert d.ejected_until[5] == 12.0
    assert d.expire(100.0) == []
    assert not d.on_health_check(5, True, 13.0)  # not ejected: nothing to end
    assert d.times_ejected[5] == 1
    fail(d, 5, 5, now=20.0)
    assert d.ejected_until[5] == 80.0  # the second ejection lasts 2 × 30 s


def test_detector_add_and_remove_backends() -> None:
    d = OutlierDetector(3)
    fail(d, 2, 5)
    assert d.add_backend() == 3
    d.remove_backend(0)
    assert d.ejected == [False, True, False]
    assert d.times_ejected == [0, 1, 0]
    fail(d, 2, 4)
    assert d.failures == [0, 0, 4]


def test_health_checker_thresholds() -> None:
    h = HealthChecker(2)
    assert h.healthy == [True, True]
    assert not h.on_check(0, False)
    assert h.healthy[0]
    assert h.on_check(0, False)  # the second failure in a row
    assert h.healthy == [False, True]
    assert h.on_check(0, True)  # one pass is enough by default
    assert h.healthy[0]
    assert not h.on_check(0, False)
    assert not h.on_check(0, True)  # a pass breaks the failure streak
    assert not h.on_check(0, False)
    assert h.healthy[0]


def test_health_checker_needs_the_healthy_threshold_in_a_row() -> None:
    h = HealthChecker(1, HealthSettings(healthy_threshold=3, unhealthy_threshold=1))
    assert h.on_check(0, False)
    assert [h.on_check(0, True) for _ in range(2)] == [False, False]
    assert not h.on_check(0, False)  # breaks the streak
    assert [h.on_check(0, True) for _ in range(3)] == [False, False, True]
    assert h.healthy == [True]


def test_health_checker_add_and_remove_backends() -> None:
    h = HealthChecker(2)
    h.on_check(1, False)
    h.on_check(1, False)
    assert h.add_backend() == 2
    assert h.healthy == [True, False, True]
    h.remove_backend(0)
    assert h.healthy == [False, True]
    assert not h.on_check(1, False)
    assert h.on_check(1, False)


@pytest.mark.parametrize(
    "make",
    [
        lambda: EjectionSettings(consecutive_failures=0),
        lambda: EjectionSettings(base_ejection_s=400.0),
        lambda: EjectionSettings(base_ejection_s=0.0),
        lambda: EjectionSettings(max_ejection_percent=101.0),
        lambda: HealthSettings(healthy_threshold=0),
        lambda: HealthSettings(unhealthy_threshold=0),
        lambda: EjectionSettings(max_ejection_s=-1.0),
    ],
)
def test_bad_settings_are_config_errors(make: Callable[[], object]) -> None:
    with pytest.raises(ConfigError):
        make()
