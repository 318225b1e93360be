"""The load generator is open loop, counts what it should, and summarises exactly."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import typer
from aiohttp import web
from aiohttp.test_utils import TestServer

import rl_lb.cli
from lab import tools_cli
from lab.loadgen import (
    CAUSES,
    ERROR_CAUSES,
    LoadResult,
    make_schedule,
    run_load,
    run_schedule,
)


async def stalling_server(stall: dict[str, float]) -> TestServer:
    """Answers at once, except that it holds every request during [start, end) until `end`."""

    async def handle(request: web.Request) -> web.Response:
        now = time.monotonic()
        if "start" not in stall:
            stall["start"], stall["end"] = now + 0.4, now + 0.6
        if now < stall["end"] and now >= stall["start"]:
            await asyncio.sleep(stall["end"] - now)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


async def test_open_loop_latency_includes_a_stall_from_the_intended_send_time() -> None:
    stall: dict[str, float] = {}
    server = await stalling_server(stall)
    try:
        result = await run_load(str(server.make_url("/")), 200, 1.0, process="constant")
    finally:
        await server.close()
    assert result.requests == 200  # constant schedule: rate × duration, whatever the answers
    assert result.error_count == 0
    start, end = stall["start"] - result.started_at, stall["end"] - result.started_at
    during = (result.sent_s >= start + 0.01) & (result.sent_s < end - 0.01)
    assert during.sum() > 25
    # Each request sent during the stall waited until its end, measured from its intended time.
    waited = result.latency_s[during] - (end - result.sent_s[during])
    assert waited.min() > -0.005
    # Sending went on during the stall: the generator never fell behind.
    assert result.lag_s.max() < 0.1
    calm = result.sent_s > end + 0.05
    assert np.median(result.latency_s[calm]) < 0.02


async def test_poisson_count_follows_the_rate_even_when_nothing_answers() -> None:
    with socket.socket() as probe:  # a port nobody listens on: every connect is refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = await run_load(f"http://127.0.0.1:{port}/", 300, 1.0, seed=4)
    assert abs(result.requests - 300) < 5 * math.sqrt(300)
    assert result.errors["connect"] == result.requests
    assert result.achieved_rate == pytest.approx(result.requests, rel=0.05)


async def test_a_given_schedule_starts_at_second_0_and_keeps_its_send_times() -> None:
    stall: dict[str, float] = {}
    server = await stalling_server(stall)
    schedule = np.concatenate([np.linspace(0.0, 0.2, 20), np.linspace(0.5, 0.8, 40)])
    start_at = time.monotonic() + 0.05
    try:
        result = await run_schedule(str(server.make_url("/")), schedule, start_at=start_at)
    finally:
        await server.close()
    assert result.started_at == start_at
    assert np.array_equal(result.sent_s, schedule)
    assert result.requests == 60
    assert result.error_count == 0
    assert result.process == "schedule"
    assert result.duration_s == pytest.approx(0.8)
    # Nothing left before its time: every request's latency is counted from its intended send.
    assert result.lag_s.min() >= 0.0
    assert np.median(result.latency_s) < 0.1


async def test_an_unsorted_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="sorted"):
        await run_schedule("http://127.0.0.1:1/", np.array([0.2, 0.1]))


def synthetic(latencies: np.ndarray, failed: np.ndarray) -> LoadResult:
    n = len(latencies)
    return LoadResult(
        url="http://127.0.0.1:1/",
        rate=float(n),
        duration_s=1.0,
        process="constant",
        started_at=0.0,
        sent_s=np.arange(n) / n,
        latency_s=latencies,
        lag_s=np.zeros(n),
        status=np.where(failed, 503, 200).astype(np.int16),
        cause=np.where(failed, CAUSES.index("5xx"), 0).astype(np.int8),
        span_s=1.0,
    )


def test_quantiles_match_numpy_within_one_percent() -> None:
    rng = np.random.default_rng(2)
    latencies = rng.lognormal(np.log(0.02), 1.0, size=20_000)
    failed = rng.random(20_000) < 0.02
    summary = synthetic(latencies, failed).summary()
    ms = latencies * 1e3
    for key, q in [("p50_ms", 50), ("p90_ms", 90), ("p99_ms", 99), ("p999_ms", 99.9)]:
        assert summary[key] == pytest.approx(np.percentile(ms, q), rel=0.01)
    assert summary["mean_ms"] == pytest.approx(ms.mean(), rel=1e-9)
    assert summary["max_ms"] == pytest.approx(ms.max(), rel=1e-9)
    assert summary["errors"]["5xx"] == failed.sum()
    punished = np.where(failed, np.maximum(latencies, 1.0), latencies)
    effective = synthetic(latencies, failed).effective_quantile_ms(0.99, 1.0)
    assert effective == pytest.approx(np.percentile(punished, 99) * 1e3, rel=0.01)
    assert effective > summary["p99_ms"]


def test_schedules() -> None:
    constant = make_schedule(50.0, 2.0, "constant", 0)
    assert len(constant) == 100
    assert np.allclose(np.diff(constant), 0.02)
    poisson = make_schedule(1000.0, 10.0, "poisson", 1)
    assert np.all(np.diff(poisson) > 0)
    assert poisson[-1] < 10.0
    assert abs(len(poisson) - 10_000) < 5 * 100
    gaps = np.diff(poisson)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential gaps
    assert np.array_equal(poisson, make_schedule(1000.0, 10.0, "poisson", 1))


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], int]:
    """`rl-lb` with only this wing's commands, so its error handling is the real one."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    monkeypatch.setattr(rl_lb.cli, "app", app)
    monkeypatch.setattr(rl_lb.cli, "_register_wings", lambda: tools_cli.register(app))
    return rl_lb.cli.main


def test_cli_writes_json_with_every_key(cli: Callable[[list[str]], int], tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out, records = tmp_path / "run.json", tmp_path / "records.csv"
    args = ["loadgen", f"http://127.0.0.1:{port}/", "--rate", "40", "--duration", "0.5"]
    # every request is refused: the summary is still written, and the exit status says so
    assert cli([*args, "--process", "constant", "--json", str(out), "--records", str(records)]) == 1
    summary = json.loads(out.read_text())
    keys = {"requests", "errors", "mean_ms", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"}
    assert keys | {"achieved_rate", "lag_ms"} <= set(summary)
    assert set(summary["errors"]) == set(ERROR_CAUSES)
    assert summary["requests"] == 20
    assert summary["errors"]["connect"] == 20
    lines = records.read_text().splitlines()
    assert lines[0] == "sent_s,latency_ms,status,cause"
    assert len(lines) == 21
    assert lines[1].endswith(",0,connect")


@pytest.mark.parametrize(
    ("flags", "where"),
    [
        (["--rate", "0", "--duration", "1"], "--rate"),
        (["--rate", "1e9", "--duration", "1"], "--rate"),
        (["--rate", "10", "--duration", "-1"], "--duration"),
        (["--rate", "10000", "--duration", "3600"], "--rate/--duration"),
        (["--rate", "10", "--duration", "1", "--connections", "0"], "--connections"),
        (["--rate", "10", "--duration", "1", "--timeout", "0"], "--timeout"),
        (["--rate", "10", "--duration", "1", "--process", "burst"], "--process"),
    ],
)
def test_bad_flags_exit_2_with_one_line(
    cli: Callable[[list[str]], int],
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    where: str,
) -> None:
    assert cli(["loadgen", "http://127.0.0.1:9/", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"error: {where}:")


def test_bad_url_exits_2(
    cli: Callable[[list[str]], int], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["loadgen", "ftp://example", "--rate", "1", "--duration", "1"]) == 2
    assert "not an http(s) URL" in capsys.readouterr().err
