"""Fixtures of the proxy tests: test backends (stopped at the end) and a plain client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from serving_helpers import TestBackend


@pytest.fixture
async def backends() -> AsyncIterator[Callable[[int], Awaitable[list[TestBackend]]]]:
    """`await backends(n)` starts n test backends; all are stopped at the end of the test."""
    started: list[TestBackend] = []

    async def make(n: int) -> list[TestBackend]:
        new = [await TestBackend(f"b{len(started) + k}").start() for k in range(n)]
        started.extend(new)
        return new

    yield make
    for backend in started:
        await backend.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client: no decompression, no cookie jar, bounded time."""
    async with aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        yield session
