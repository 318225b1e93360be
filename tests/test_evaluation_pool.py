"""`EvaluationPool`: one set of worker processes for many `evaluate` calls (a training run's
evaluations) gives the records a fresh pool gives, starts once, and stops its workers at the end,
an interrupted run included."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from multiprocessing.process import BaseProcess

import pytest
from tiny_scenarios import tiny

from envs.evaluate import EvaluationPool, evaluate


def workers_of(pool: EvaluationPool) -> list[BaseProcess]:
    assert isinstance(pool._pool, ProcessPoolExecutor)
    return list(pool._pool._processes.values())


def test_a_kept_pool_gives_the_same_records_and_starts_once() -> None:
    scenarios = [tiny("tiny-1", 1.0), tiny("tiny-4", 4.0)]
    alone = [evaluate(scenarios, ["random", "jsq"], [seed], workers=1) for seed in (1, 2)]
    with EvaluationPool() as pool:
        assert pool._pool is None  # nothing started before the first job
        first = evaluate(scenarios, ["random", "jsq"], [1], executor=pool)
        started = pool._pool
        second = evaluate(scenarios, ["random", "jsq"], [2], executor=pool)
        assert pool._pool is started is not None
        processes = workers_of(pool)
    assert [first, second] == alone
    assert pool._pool is None
    assert processes
    assert not any(p.is_alive() for p in processes)


def test_an_interrupted_run_stops_the_workers() -> None:
    processes: list[BaseProcess] = []

    def interrupted() -> None:
        nonlocal processes
        with EvaluationPool() as pool:
            evaluate([tiny("tiny-1", 1.0)], ["random"], [1], executor=pool)
            processes = workers_of(pool)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted()
    assert processes
    assert not any(p.is_alive() for p in processes)
