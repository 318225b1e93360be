"""`rl-lb bench live --protocol http1|h2c|grpc`: a library scenario through the real proxy over each
protocol, and the emulated gRPC backends on their own.

The end-to-end runs are a few seconds each (time-compressed, thinned). A run without errors is
itself the proof that the protocol was spoken: the h2c load generator's preface is refused by a
proxy without HTTP/2, and the gRPC calls fail on anything but a gRPC backend behind an h2c proxy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from lab.bench import bench_scenario, run_live
from lab.bench_protocols import PROTOCOLS, check_protocol, protocol_flags, run_protocol_schedule
from lab.bench_proxy import free_port
from lab.grpc_backends import CALL, SERVING, GrpcEmulatedPool
from lab.load_result import CAUSES
from rl_lb.cli import main
from rl_lb.errors import ConfigError


@pytest.fixture
def no_leftovers() -> Iterator[None]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert not left, f"processes left running: {[p.cmdline() for p in left]}"


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_a_library_scenario_runs_live_over_each_protocol(
    protocol: str, no_leftovers: None
) -> None:
    scenario = bench_scenario("steady", 0, duration=3, rate_scale=0.2)
    (run,) = await run_live(scenario, ["least-latency"], seed=0, protocol=protocol)
    load = run.load
    assert load.requests > 300
    assert load.error_count == 0, load.errors
    assert np.all(load.status == 200)
    assert np.all(np.isfinite(load.latency_s))
    # the emulated service times (lognormal, mean 20-ish ms) are what the load measures
    assert 0.005 < float(np.median(load.latency_s)) < 0.2
    assert run.states
    assert run.record["requests"] == load.requests
    assert {b["weight"] > 0 for b in run.states[-1]["backends"]} == {True}


async def test_grpc_errors_of_a_flaky_backend_reach_the_records(no_leftovers: None) -> None:
    scenario = bench_scenario("fast-failure", 0, duration=3, rate_scale=0.3)
    (run,) = await run_live(scenario, ["round-robin"], seed=0, protocol="grpc")
    load = run.load
    causes = {CAUSES[c] for c in np.unique(load.cause)}
    assert causes == {"ok", "5xx"}
    # a fifth of the calls go to the backend failing half of them until outlier ejection
    # (or the health checks) take it out: some errors, never most calls
    assert load.error_count >= 5
    assert load.error_count / load.requests < 0.2
    assert run.record["errors"] == load.error_count
    assert set(np.unique(load.status[load.failed]).tolist()) == {503}


TRIO = """\
name = "grpc-trio"
duration_s = 10

[arrivals]
process = "poisson"
rate = 10

[[backends]]
name = "good"
concurrency = 2
service = { dist = "constant", mean_s = 0.02 }

[[backends]]
name = "failing"
concurrency = 2
service = { dist = "constant", mean_s = 0.02 }
events = [{ at_s = 0, until_s = 10, error_rate = 1.0, error_latency_s = 0.001 }]

[[backends]]
name = "down"
concurrency = 2
service = { dist = "constant", mean_s = 0.02 }
events = [{ at_s = 0, until_s = 10, down = true }]
"""


async def test_emulated_grpc_backends_follow_the_scenario(tmp_path: Path) -> None:
    path = tmp_path / "grpc-trio.toml"
    path.write_text(TRIO)
    async with GrpcEmulatedPool(bench_scenario(path, 0), seed=0) as pool:
        good, failing, down = pool.backends
        channels = [grpc.aio.insecure_channel(url.removeprefix("http://")) for url in pool.urls]
        try:
            call = [channel.unary_unary(CALL) for channel in channels]
            assert await call[0](b"", timeout=5) == b"POST good\n"
            assert good.in_flight == 0
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call[1](b"", timeout=5)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
            assert failing.up
            assert "injected error" in (failed.value.details() or "")
            assert not down.up
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call[2](b"", timeout=2, wait_for_ready=False)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            check = channels[1].unary_unary("/grpc.health.v1.Health/Check")
            assert await check(b"", timeout=5) == SERVING
        finally:
            for channel in channels:
                await channel.close()
    assert not any(b.up for b in pool.backends)


def test_unknown_protocols_and_unservable_balancers_are_refused() -> None:
    with pytest.raises(ConfigError, match="spdy"):
        check_protocol("spdy")
    with pytest.raises(ConfigError, match="prequal"):
        protocol_flags("grpc", "prequal")
    assert protocol_flags("h2c", "prequal") == ["--http2"]
    assert protocol_flags("http1", "learned") == []


def test_bench_live_cli_refuses_an_unknown_protocol(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["bench", "live", "--scenario", "steady", "--duration", "3", "--protocol", "spdy",
         "--no-mlflow"]
    )  # fmt: skip
    assert code == 2
    assert "spdy" in capsys.readouterr().err


@pytest.mark.parametrize(("protocol", "cause"), [("h2c", "connect"), ("grpc", "5xx")])
async def test_calls_to_a_closed_port_are_failures_not_crashes(
    protocol: str, cause: str, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}/"
    schedule = np.arange(5) * 0.01
    out = tmp_path / "load.npz"
    start = time.monotonic() + 0.05
    await run_protocol_schedule(protocol, [url], schedule, None, start, 2.0, out)
    with np.load(out) as load:
        assert [CAUSES[c] for c in load["cause"]] == [cause] * 5
        assert np.all(np.isfinite(load["latency_s"]))
