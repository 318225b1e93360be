"""The retry budget (Linkerd/Finagle): a share of the recent requests, plus a floor per second."""

from __future__ import annotations

from rl_lb.control import RetrySettings
from rl_lb.retry_budget import RetryBudget


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_retry_budget_allows_a_fifth_of_the_requests() -> None:
    clock = Clock()
    budget = RetryBudget(RetrySettings(budget=0.2, min_retries_per_s=0.0), clock)
    for _ in range(100):
        budget.request()
    assert sum(budget.try_retry() for _ in range(30)) == 20
    clock.now = 11.0  # the window has moved on: old requests no longer pay for retries
    assert not budget.try_retry()
    budget.request()
    assert not budget.try_retry()
    for _ in range(4):
        budget.request()
    assert budget.try_retry()


def test_the_floor_lets_a_quiet_proxy_retry() -> None:
    clock = Clock()
    settings = RetrySettings(budget=0.2, budget_window_s=10.0, min_retries_per_s=2.0)
    budget = RetryBudget(settings, clock)
    assert budget.floor == 20.0
    assert sum(budget.try_retry() for _ in range(30)) == 20  # no request at all: the floor
    budget.request()
    budget.request()
    budget.request()
    budget.request()
    budget.request()
    assert budget.try_retry()  # 5 requests pay for one more
    assert not budget.try_retry()


def test_counts_leave_the_window_one_sub_window_at_a_time() -> None:
    clock = Clock()
    budget = RetryBudget(RetrySettings(budget=1.0, min_retries_per_s=0.0), clock)
    for second in range(10):
        clock.now = second + 0.5
        budget.request()
    clock.now = 9.9
    assert [budget.try_retry() for _ in range(11)] == [True] * 10 + [False]
    clock.now = 10.0  # the sub-window of second 0 (1 request, 0 retries) has left
    assert not budget.try_retry()
    budget.request()
    assert not budget.try_retry()  # 10 requests, 10 retries: the 11th would exceed
