"""Numba twin of `rl_lb.health` (`HealthChecker`, `OutlierDetector`), one row per proxy.

The simulator must eject a dead or fast-failing backend at the moment the proxy would, or a
policy trained here meets a different pool behind the proxy. So each function below is the
method of the same name in `rl_lb.health`, over the `State` arrays of proxy p: `healthy` and
`hc_streak` (the checker), `ejected`, `eject_until`, `eject_count` and `consec` (the detector),
and `avail` (healthy and not ejected: what the pickers read). The settings come from the `Spec`,
built from the same `rl_lb.control` sections the proxy reads.
tests/test_sim_health.py feeds both the same request and check results and compares every
decision and value.
"""

from __future__ import annotations

from envs.jit import jit
from envs.nb_pickers import invalidate
from envs.nb_state import Spec, State

__all__ = ["TWIN_OF", "expire", "on_check", "on_health_check", "on_result", "set_avail"]

TWIN_OF = "rl_lb.health"


@jit
def set_avail(st: State, p: int, b: int) -> None:
    """The one writer of availability (a retry's brief exclusion aside): a change also marks
    proxy p's draw table stale, as `rl_lb.availability.Availability` bumps its version."""
    avail = st.healthy[p, b] and not st.ejected[p, b]
    if st.avail[p, b] != avail:
        st.avail[p, b] = avail
        invalidate(st.picks, p)


@jit
def on_result(sp: Spec, st: State, p: int, b: int, failed: bool, now: float) -> bool:
    """`OutlierDetector.on_result`: consecutive failures eject, within max_ejection_percent."""
    if st.ejected[p, b]:
        return False
    if not failed:
        st.consec[p, b] = 0
        return False
    st.consec[p, b] += 1
    if st.consec[p, b] < sp.consecutive_failures:
        return False
    already = st.ejected[p].sum()
    n = st.ejected.shape[1]
    if already > 0 and 100.0 * (already + 1) / n > sp.max_ejection_percent:
        return False
    st.consec[p, b] = 0
    st.ejected[p, b] = True
    st.eject_count[p, b] += 1
    st.eject_until[p, b] = now + min(sp.eject_base_s * st.eject_count[p, b], sp.eject_max_s)
    set_avail(st, p, b)
    return True


@jit
def _uneject(st: State, p: int, b: int) -> None:
    st.ejected[p, b] = False
    st.consec[p, b] = 0
    set_avail(st, p, b)


@jit
def expire(st: State, p: int, now: float) -> int:
    """`OutlierDetector.expire`: ejections that ran out end; returns how many."""
    ended = 0
    for b in range(st.ejected.shape[1]):
        if st.ejected[p, b] and st.eject_until[p, b] <= now:
            _uneject(st, p, b)
            ended += 1
    return ended


@jit
def on_health_check(st: State, p: int, b: int, passed: bool, now: float) -> bool:
    """`OutlierDetector.on_health_check`: a passing check ends an ejection at once."""
    if not (passed and st.ejected[p, b]):
        return False
    _uneject(st, p, b)
    st.eject_until[p, b] = now
    return True


@jit
def on_check(sp: Spec, st: State, p: int, b: int, passed: bool) -> bool:
    """`HealthChecker.on_check`: enough results in a row flip the healthy flag."""
    if passed == st.healthy[p, b]:
        st.hc_streak[p, b] = 0
        return False
    st.hc_streak[p, b] += 1
    need = sp.healthy_threshold if passed else sp.unhealthy_threshold
    if st.hc_streak[p, b] < need:
        return False
    st.healthy[p, b] = passed
    st.hc_streak[p, b] = 0
    set_avail(st, p, b)
    return True
