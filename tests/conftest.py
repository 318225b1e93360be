"""Fixtures shared by the network tests (tests/serving, tests/reliability), and the signal
disposition every test process starts from."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator

import aiohttp
import pytest


def pytest_configure(config: pytest.Config) -> None:
    """Let the commands the tests start be stopped with Ctrl-C (SIGINT), however the suite started.

    A suite launched in the background by a non-interactive shell (`make test &`, nohup, a CI
    runner's script) inherits SIGINT ignored; an ignored signal stays ignored across exec, and
    Python then never raises KeyboardInterrupt, so every `rl-lb ui`/`backends`/`sweep` a test
    stops with SIGINT would hang until its timeout. Tests of the clean Ctrl-C then measure how
    the suite was launched, not the command: restore the default here, in every xdist worker."""
    del config
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain client: no decompression, no cookie jar, bounded time."""
    async with aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        yield session
