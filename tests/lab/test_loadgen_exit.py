"""`rl-lb loadgen` tells success from failure in its exit status, and shows progress."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest
import typer
from aiohttp import web

import rl_lb.cli
from lab import tools_cli
from lab.load_result import LoadResult, failure_verdict
from lab.loadgen import LoadProgress, run_load


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    monkeypatch.setattr(rl_lb.cli, "app", app)
    monkeypatch.setattr(rl_lb.cli, "_register_wings", lambda: tools_cli.register(app))
    return rl_lb.cli.main


@pytest.fixture
def server() -> Iterator[str]:
    """A backend in its own thread (the CLI runs its own event loop): `/ok` and `/flaky`
    (every other request a 503)."""
    calls = {"n": 0}

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def flaky(_: web.Request) -> web.Response:
        calls["n"] += 1
        return web.Response(status=503 if calls["n"] % 2 else 200)

    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/flaky", flaky)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


RUN = ["--rate", "40", "--duration", "0.5", "--process", "constant"]


def test_success_exits_0(cli: Callable[[list[str]], int], server: str) -> None:
    assert cli(["loadgen", f"{server}/ok", *RUN]) == 0


def test_some_errors_exit_1_unless_tolerated(
    cli: Callable[[list[str]], int], server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["loadgen", f"{server}/flaky", *RUN]) == 1
    assert "--tolerate-errors" in capsys.readouterr().err
    assert cli(["loadgen", f"{server}/flaky", *RUN, "--tolerate-errors"]) == 0


def test_total_failure_exits_1_even_if_tolerated(
    cli: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["loadgen", "http://127.0.0.1:9/", *RUN, "--tolerate-errors"]
    assert cli(args) == 1
    assert "every one of the 20 requests failed" in capsys.readouterr().err


def _result(rate: float, span_s: float, failed: int, n: int = 100) -> LoadResult:
    cause = np.zeros(n, dtype=np.int8)
    cause[:failed] = 2
    return LoadResult(
        url="u",
        rate=rate,
        duration_s=1.0,
        process="poisson",
        started_at=0.0,
        sent_s=np.linspace(0, 1, n),
        latency_s=np.full(n, 0.01),
        lag_s=np.zeros(n),
        status=np.full(n, 200, dtype=np.int16),
        cause=cause,
        span_s=span_s,
    )


def test_verdict_on_rate_shortfall() -> None:
    assert failure_verdict(_result(100.0, 1.0, 0)) is None
    verdict = failure_verdict(_result(100.0, 2.0, 0))  # 50/s sent of 100/s asked
    assert verdict is not None
    assert "under 90% of the target" in verdict


async def test_progress_is_reported_while_running() -> None:
    seen: list[LoadProgress] = []
    result = await run_load("http://127.0.0.1:9/", 50.0, 1.6, progress=seen.append)
    assert len(seen) >= 2
    assert all(0 <= p.answered <= p.sent <= p.total == result.requests for p in seen)
    assert [p.sent for p in seen] == sorted(p.sent for p in seen)
    assert seen[-1].errors == seen[-1].answered  # nothing listens on port 9


def test_the_summary_fits_80_columns_with_four_digit_latencies() -> None:
    from lab.load_result import format_summary

    result = _result(985.0, 1.0, 3, n=10_000)
    result = LoadResult(
        **{
            **result.__dict__,
            "url": "http://127.0.0.1:8080/",
            "latency_s": np.linspace(0.5, 9.999, 10_000),
            "lag_s": np.full(10_000, 0.0125),
        }
    )
    lines = format_summary(result)
    assert all(len(line) <= 80 for line in lines), [len(line) for line in lines]
    text = "\n".join(lines)
    assert "max 9999.00" in text
    assert lines[-1].startswith("errors: ")
    assert "none" not in lines[-1]
