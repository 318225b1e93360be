"""Servers a test starts are stopped at its end, whatever its outcome (serving, reliability)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol, TypeVar


class Server(Protocol):
    async def stop(self) -> None: ...


S = TypeVar("S", bound=Server)


async def started_by_the_test(
    start: Callable[[str], Awaitable[S]], prefix: str
) -> AsyncIterator[Callable[[int], Awaitable[list[S]]]]:
    """A fixture body: `await make(n)` starts n servers named prefix0, prefix1, …; every one is
    stopped when the test ends, whatever its outcome."""
    started: list[S] = []

    async def make(n: int) -> list[S]:
        new = [await start(f"{prefix}{len(started) + k}") for k in range(n)]
        started.extend(new)
        return new

    try:
        yield make
    finally:
        for server in started:
            await server.stop()
