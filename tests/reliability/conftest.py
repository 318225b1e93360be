"""Fixtures of the reliability tests: every backend and process is stopped at the end, whatever
the test's outcome (the client is tests/conftest's)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from net_fixtures import started_by_the_test
from rel_helpers import CountingBackend, ProcBackend


@pytest.fixture
async def proc_backends() -> AsyncIterator[Callable[..., Awaitable[ProcBackend]]]:
    """`await proc_backends(mode, name)` starts a backend process; all are killed at the end."""
    started: list[ProcBackend] = []

    async def make(mode: str = "ok", name: str | None = None) -> ProcBackend:
        backend = ProcBackend(mode, name or f"b{len(started)}")
        started.append(backend)
        return await backend.start()

    yield make
    for backend in started:
        await backend.stop()


@pytest.fixture
async def counting_backends() -> AsyncIterator[Callable[[int], Awaitable[list[CountingBackend]]]]:
    async for make in started_by_the_test(lambda name: CountingBackend(name).start(), "c"):
        yield make
