"""Fixtures of the reliability tests: every backend, process and client is stopped at the end,
whatever the test's outcome."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
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
    started: list[CountingBackend] = []

    async def make(n: int) -> list[CountingBackend]:
        new = [await CountingBackend(f"c{len(started) + k}").start() for k in range(n)]
        started.extend(new)
        return new

    yield make
    for backend in started:
        await backend.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=15),
    ) as session:
        yield session
