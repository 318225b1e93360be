"""Fixtures of the proxy tests: test backends, stopped at the end (the client: tests/conftest)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from net_fixtures import started_by_the_test
from serving_helpers import TestBackend


@pytest.fixture
async def backends() -> AsyncIterator[Callable[[int], Awaitable[list[TestBackend]]]]:
    """`await backends(n)` starts n test backends; all are stopped at the end of the test."""
    async for make in started_by_the_test(lambda name: TestBackend(name).start(), "b"):
        yield make
