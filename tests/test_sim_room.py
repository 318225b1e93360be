"""The simulator's memory: request records, the heap and the live ring grow on demand, and a
state that had to grow many times runs exactly as one that never did."""

from __future__ import annotations

import numpy as np
import pytest

from envs import kernel
from envs.factory import pool_scenario
from envs.simulator import Simulator
from rl_lb.scenarios import Event, Pauses, ServiceDist


def troubled_pool():  # type: ignore[no-untyped-def]
    """Queues, timeouts (some of them in service), errors, a down backend and pauses, at a
    load that keeps hundreds of requests live at once."""
    return pool_scenario(
        6,
        load=0.97,
        duration_s=20.0,
        concurrency=4,
        service=ServiceDist("lognormal", 0.05, cv=1.5),
        timeout_s=0.4,
        events=[
            (1, Event(4.0, 9.0, error_rate=0.4, error_latency_s=0.002)),
            (2, Event(6.0, 12.0, slowdown=6.0)),
            (3, Event(10.0, 13.0, down=True)),
        ],
        pauses=[(4, Pauses(2.0, 0.3))],
    )


def run(room: int | None, picker: str) -> Simulator:
    sim = Simulator(troubled_pool(), 3, room=room)
    for p in range(sim.proxies):
        sim.set_decision(p, np.ones(6), picker)
    sim.run_until(22.0)
    return sim


@pytest.mark.parametrize("picker", ["p2c-latency", "prequal"])
def test_a_state_that_grew_from_16_slots_runs_like_one_with_room(picker: str) -> None:
    roomy, cramped = run(None, picker), run(16, picker)
    # It had to grow everything: request records, the heap, the live ring.
    assert len(cramped.state.r_arrival) >= cramped.requests > 16
    assert len(cramped.state.l_refs) > 16
    assert len(cramped.state.h_t) > 16
    assert len(cramped.state.l_refs) < cramped.requests  # the ring holds live requests only
    ours, theirs = cramped.records(), roomy.records()
    for name, column in ours._asdict().items():
        np.testing.assert_array_equal(column, getattr(theirs, name), err_msg=name)
    outcomes = set(ours.outcome.tolist())
    assert {kernel.OK, kernel.ERROR, kernel.TIMEOUT} <= outcomes


def test_live_slots_are_released_when_nothing_holds_their_request() -> None:
    sim = Simulator(troubled_pool(), 3)
    for p in range(sim.proxies):
        sim.set_decision(p, np.ones(6), "p2c")
    sim.run_until(40.0)  # arrivals stop at 20 s; every request is answered or timed out
    st = sim.state
    assert (st.r_outcome[: sim.requests] != kernel.PENDING).all()
    assert st.counts[2] == 0
    assert not st.q_len.any()
    assert not st.busy.any()
    # Nothing is queued, served, awaited or waiting for its timeout: every slot is free.
    assert not st.l_refs.any()
