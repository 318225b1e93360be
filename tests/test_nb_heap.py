"""The simulator's event heap hands events back earliest first, whatever order they came in,
with their request and kind attached, also when pushes and pops interleave as in an episode."""

from __future__ import annotations

import heapq

import numpy as np

from envs.factory import pool_scenario
from envs.nb_heap import pop, push
from envs.nb_state import State
from envs.simulator import Simulator


def empty_heap(capacity: int) -> State:
    """A simulator's state whose heap arrays are fresh and empty, `capacity` slots long."""
    state = Simulator(pool_scenario(2, load=0.5, duration_s=1.0), 0).state
    return state._replace(
        h_t=np.zeros(capacity),
        h_r=np.zeros(capacity, dtype=np.int64),
        h_kind=np.zeros(capacity, dtype=np.int64),
        counts=np.zeros(4, dtype=np.int64),
    )


def take(st: State) -> tuple[float, int, int]:
    """The earliest event, removed: read slot 0, then pop (as `kernel.advance` does)."""
    event = (float(st.h_t[0]), int(st.h_r[0]), int(st.h_kind[0]))
    pop(st)
    return event


def test_events_come_back_in_time_order_with_their_request_and_kind() -> None:
    rng = np.random.default_rng(7)
    times = rng.uniform(0.0, 100.0, size=300)
    st = empty_heap(len(times))
    for r, t in enumerate(times):
        push(st, float(t), r, r % 3)
    assert st.counts[2] == len(times)
    taken = [take(st) for _ in range(len(times))]
    expected = sorted((float(t), r, r % 3) for r, t in enumerate(times))
    assert taken == expected
    assert st.counts[2] == 0


def test_interleaved_pushes_and_pops_follow_a_reference_heap() -> None:
    """Like an episode: answers scheduled after the current time while earlier ones are taken."""
    rng = np.random.default_rng(11)
    st = empty_heap(64)
    reference: list[tuple[float, int, int]] = []
    now, r = 0.0, 0
    for _ in range(2000):
        if reference and (len(reference) >= 60 or rng.uniform() < 0.45):
            event = take(st)
            assert event == heapq.heappop(reference)
            now = event[0]
        else:
            event = (now + float(rng.exponential(1.0)), r, int(rng.integers(3)))
            push(st, *event)
            heapq.heappush(reference, event)
            r += 1
        assert st.counts[2] == len(reference)
        if reference:
            assert st.h_t[0] == reference[0][0]
    while reference:
        assert take(st) == heapq.heappop(reference)
