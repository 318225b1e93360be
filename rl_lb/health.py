"""Active health checks and passive outlier ejection, shared by the simulator and the proxy.

A power-of-two-choices draw cannot steer clear of a dead backend on its own (two dead draws leave it
no choice), and a weight policy reacts only once per interval; so, as in Envoy, a backend that
fails `consecutive_failures` requests in a row is taken out of rotation for a while. The rules are
pure logic on injected times so that simulated and real pools eject at the same moments. The
settings and their (Envoy's) defaults are declared once, in `rl_lb.control` (`EjectionSettings`,
`HealthSettings`).

This is the reference: the simulator's numba twin (`envs/nb_health.py`) follows it function for
function, and tests/test_sim_health.py feeds both the same results and compares every decision.
"""

from __future__ import annotations

import math

from rl_lb.control import EjectionSettings, HealthSettings

__all__ = ["HealthChecker", "OutlierDetector"]


class OutlierDetector:
    """Ejects a backend after consecutive failures, for base × times-ejected, capped.

    Failures reported while a backend is ejected (requests that were already in flight) are
    ignored: the backend is out already, and counting them would eject it again the moment it
    returns.
    """

    def __init__(self, n: int, settings: EjectionSettings | None = None) -> None:
        self.settings = settings if settings is not None else EjectionSettings()
        self.ejected: list[bool] = [False] * n
        self.times_ejected: list[int] = [0] * n
        self.ejected_until: list[float] = [-math.inf] * n
        self.failures: list[int] = [0] * n
        """Consecutive failures since the last success (or the last ejection)."""

    def on_result(self, i: int, failed: bool, now: float) -> bool:
        """One request's outcome (failed = 5xx or connect failure); True when it ejects i."""
        if self.ejected[i]:
            return False
        if not failed:
            self.failures[i] = 0
            return False
        self.failures[i] += 1
        if self.failures[i] < self.settings.consecutive_failures or not self._room_to_eject():
            return False
        self.failures[i] = 0
        self.ejected[i] = True
        self.times_ejected[i] += 1
        self.ejected_until[i] = now + min(
            self.settings.base_ejection_s * self.times_ejected[i], self.settings.max_ejection_s
        )
        return True

    def _room_to_eject(self) -> bool:
        """Whether one more ejection stays within max_ejection_percent (one is always allowed)."""
        already = sum(self.ejected)
        if already == 0:
            return True
        return 100.0 * (already + 1) / len(self.ejected) <= self.settings.max_ejection_percent

    def expire(self, now: float) -> list[int]:
        """Return to rotation every backend whose ejection has run out; returns their indices."""
        ended = [
            i
            for i, (out, until) in enumerate(zip(self.ejected, self.ejected_until, strict=True))
            if out and until <= now
        ]
        for i in ended:
            self._uneject(i)
        return ended

    def on_health_check(self, i: int, passed: bool, now: float) -> bool:
        """A passing active check ends an ejection at once (Envoy's default); True if it did.

        `now` is taken so that callers report every event with its time alike; the ejection ends
        at the check, whatever was left of it.
        """
        if not (passed and self.ejected[i]):
            return False
        self._uneject(i)
        self.ejected_until[i] = now
        return True

    def _uneject(self, i: int) -> None:
        self.ejected[i] = False
        self.failures[i] = 0

    def add_backend(self) -> int:
        """Track one more backend (never ejected yet); returns its index."""
        self.ejected.append(False)
        self.times_ejected.append(0)
        self.ejected_until.append(-math.inf)
        self.failures.append(0)
        return len(self.ejected) - 1

    def remove_backend(self, i: int) -> None:
        """Forget backend i; later indices shift down, as in `PoolMetrics`."""
        for column in (self.ejected, self.times_ejected, self.ejected_until, self.failures):
            del column[i]


class HealthChecker:
    """Turns active health-check results into a healthy flag per backend (starts healthy)."""

    def __init__(self, n: int, settings: HealthSettings | None = None) -> None:
        self.settings = settings if settings is not None else HealthSettings()
        self.healthy: list[bool] = [True] * n
        self._streak: list[int] = [0] * n
        """Consecutive results that disagree with the current state."""

    def on_check(self, i: int, passed: bool) -> bool:
        """One check result; True when it flips backend i's state."""
        if passed == self.healthy[i]:
            self._streak[i] = 0
            return False
        self._streak[i] += 1
        needed = self.settings.healthy_threshold if passed else self.settings.unhealthy_threshold
        if self._streak[i] < needed:
            return False
        self.healthy[i] = passed
        self._streak[i] = 0
        return True

    def add_backend(self) -> int:
        self.healthy.append(True)
        self._streak.append(0)
        return len(self.healthy) - 1

    def remove_backend(self, i: int) -> None:
        del self.healthy[i]
        del self._streak[i]
