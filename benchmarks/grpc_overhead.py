"""What gRPC through rl-lb costs: rl-lb against nginx's `grpc_pass` and a direct channel, one run.

Three grpcio backends (a child process, `--backends-only`) answer a unary call at once. For each
target — a direct channel to one backend, nginx (`grpc_pass`, least_conn, keep-alive upstreams)
and `rl-lb serve --backend-protocol h2c` — one grpcio channel sends open-loop unary calls (Poisson,
500 calls/s by default, the live benchmark's gRPC load generator, `lab.bench_protocols`) and
the script reports p50/p99 latency (from each call's intended send time), the p50/p99 added
over the direct channel, and the CPU time the proxy process(es) spent per call at that rate.

    .venv/bin/python benchmarks/grpc_overhead.py [--duration 20] [--rate 500] [--json out.json]
        [--rounds 3] [--baseline /tmp/before]

On shared cores the CPU per call drifts with the other jobs by more than a change to the proxy
makes, so the proxies stay up side by side and `--rounds` measures each in turn again (the order
reversed every other round), reporting each one's median; `--baseline` adds `rl-lb serve` from
another source tree (a `git archive` copy of an earlier commit, put first on PYTHONPATH), and
`--side-by-side` loads the rl-lb proxies at the same time, each from its own load-generator
process, so that the other jobs weigh on both alike (nginx still runs alone).

nginx comes from Debian's packages (the script installs it if missing); grpcio is a development
dependency of the project. Ports are picked free on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from _harness import ensure_tools, nginx_conf, process, wait_port
from proxy_overhead import cpu_seconds

from lab.bench_protocols import run_protocol_schedule
from lab.bench_proxy import free_port
from lab.loadgen import make_schedule
from lab.runtime import run_async
from rl_lb.types import FloatArray, IntArray

BACKENDS = 3
TIMEOUT_S = 5.0
IDLE_S = 3.0
"""Seconds the proxy's CPU is measured with no calls, before the load."""


@dataclass
class Figures:
    target: str
    calls: int
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_us_per_call: float | None
    idle_cpu_ms_per_s: float | None
    """CPU the proxy spends with no calls (timers, control loop): part of the per-call figure."""
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None


async def _serve(ports: list[int]) -> None:
    """grpcio servers on `ports` answering `lab.grpc_backends.CALL` at once, until killed."""
    import grpc

    from lab.grpc_backends import SERVICE

    async def call(request: bytes, context: object) -> bytes:
        return b"ok"

    servers = []
    for port in ports:
        server = grpc.aio.server()
        handler = grpc.unary_unary_rpc_method_handler(call)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Call": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        servers.append(server)
    await asyncio.Event().wait()


def nginx_grpc_conf(workdir: Path, port: int, backends: list[int]) -> Path:
    upstream = " ".join(f"server 127.0.0.1:{p};" for p in backends)
    return nginx_conf(
        workdir,
        f"""upstream grpcpool {{ least_conn; {upstream} keepalive 64; }}
  server {{ listen 127.0.0.1:{port} http2;
    location / {{ grpc_pass grpc://grpcpool; }} }}""",
    )


def rl_lb_grpc(port: int, admin: int, backends: list[int], balancer: str) -> list[str]:
    command = [str(Path(sys.executable).with_name("rl-lb")), "serve"]
    for p in backends:
        command += ["--backend", f"http://127.0.0.1:{p}"]
    return [
        *command,
        "--listen", f"127.0.0.1:{port}",
        "--admin", f"127.0.0.1:{admin}",
        "--backend-protocol", "h2c",
        "--health-path", "",
        "--balancer", balancer,
        "--log-level", "warning",
    ]  # fmt: skip


def open_loop(port: int, rate: float, duration: float, seed: int) -> tuple[FloatArray, IntArray]:
    """Each call's latency (s, from its intended send time) and cause (0: ok)."""
    schedule = make_schedule(rate, duration, "poisson", seed)
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="rl-lb-grpc-load-") as tmp:
        out = Path(tmp) / "load.npz"
        start = time.monotonic() + 0.2
        run_async(run_protocol_schedule("grpc", [url], schedule, None, start, TIMEOUT_S, out))
        with np.load(out) as load:
            return load["latency_s"], load["cause"]


def measure(name: str, port: int, pid: int | None, args: argparse.Namespace) -> Figures:
    open_loop(port, args.rate, 1.0, seed=99)  # warm-up: connections, upstream pools
    idle = None
    if pid:
        before, started = cpu_seconds(pid), time.monotonic()
        time.sleep(IDLE_S)
        idle = (cpu_seconds(pid) - before) / (time.monotonic() - started) * 1e3
    before = cpu_seconds(pid) if pid else 0.0
    latency, cause = open_loop(port, args.rate, args.duration, seed=0)
    return _figures(name, latency, cause, cpu_seconds(pid) - before if pid else None, idle)


def side_by_side(targets: list[tuple[str, int, int]], args: argparse.Namespace) -> list[Figures]:
    """`targets` under the same load at the same time, each from a load-generator process of
    its own: whatever else runs on the shared cores slows them alike."""
    for _, port, _ in targets:
        open_loop(port, args.rate, 1.0, seed=99)
    with tempfile.TemporaryDirectory(prefix="rl-lb-grpc-load-") as tmp:
        outs = [Path(tmp) / f"{i}.npz" for i in range(len(targets))]
        before = [cpu_seconds(pid) for _, _, pid in targets]
        rate = ["--rate", str(args.rate), "--duration", str(args.duration)]
        loads = [
            subprocess.Popen([sys.executable, __file__, "--load-only", str(port), str(out), *rate])
            for (_, port, _), out in zip(targets, outs, strict=True)
        ]
        for load in loads:
            load.wait()
        figures = []
        for (name, _, pid), cpu, out in zip(targets, before, outs, strict=True):
            with np.load(out) as load:
                latency, cause = load["latency_s"], load["cause"]
            figures.append(_figures(name, latency, cause, cpu_seconds(pid) - cpu, None))
    return figures


def _figures(
    name: str, latency: FloatArray, cause: IntArray, cpu_s: float | None, idle: float | None
) -> Figures:
    calls = len(latency)
    cpu = cpu_s / calls * 1e6 if cpu_s is not None else None
    ok = latency[cause == 0] * 1e3
    p50, p99 = (float(np.quantile(ok, q)) for q in (0.5, 0.99))
    figures = Figures(name, calls, int(np.count_nonzero(cause)), p50, p99, cpu, idle)
    print(
        f"  {name:<24} {calls} calls, {figures.errors} errors  p50 {p50:6.2f} ms  "
        f"p99 {p99:6.2f} ms  cpu {cpu if cpu is not None else float('nan'):7.1f} µs/call "
        f"(idle {idle if idle is not None else float('nan'):.1f} ms/s)",
        flush=True,
    )
    return figures


def _load_average() -> str:
    """The machine's 1/5/15-minute load: on shared cores, latency figures are only read with it."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load per target")
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop calls/s")
    parser.add_argument("--balancer", default="least-latency")
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--rounds", type=int, default=1, help="turns of every proxy, alternating")
    parser.add_argument("--baseline", type=Path, help="also rl-lb from this source tree")
    parser.add_argument(
        "--side-by-side",
        action="store_true",
        help="load the rl-lb proxies at the same time (each round), not one after the other",
    )
    parser.add_argument("--backends-only", type=int, nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--load-only", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backends_only:
        run_async(_serve(args.backends_only))
        return
    if args.load_only:
        latency, cause = open_loop(int(args.load_only[0]), args.rate, args.duration, seed=0)
        np.savez(args.load_only[1], latency_s=latency, cause=cause)
        return
    ensure_tools()
    backends = [free_port() for _ in range(BACKENDS)]
    results: list[Figures] = []
    serve_backends = [sys.executable, __file__, "--backends-only", *map(str, backends)]
    with tempfile.TemporaryDirectory(prefix="rl-lb-grpc-overhead-") as tmp:
        workdir = Path(tmp)
        with process(serve_backends, backends[-1]), contextlib.ExitStack() as proxies:
            for port in backends:
                wait_port(port)
            print(
                f"backends: {BACKENDS} grpcio servers; open loop {args.rate:g} calls/s "
                f"for {args.duration:g} s per target and round; {_load_average()} before"
            )
            results.append(measure("direct", backends[0], None, args))
            targets: list[tuple[str, int, int]] = []
            port = free_port()
            nginx = ["nginx", "-c", str(nginx_grpc_conf(workdir, port, backends))]
            targets.append(
                ("nginx grpc_pass", port, proxies.enter_context(process(nginx, port)).pid)
            )
            trees: list[tuple[str, list[str]]] = [(f"rl-lb ({args.balancer})", [])]
            if args.baseline:
                pythonpath = ["env", f"PYTHONPATH={args.baseline.resolve()}"]
                trees.append((f"rl-lb ({args.balancer}, {args.baseline.name})", pythonpath))
            for name, prefix in trees:
                port = free_port()
                command = [*prefix, *rl_lb_grpc(port, free_port(), backends, args.balancer)]
                targets.append((name, port, proxies.enter_context(process(command, port)).pid))
            for turn in range(args.rounds):
                order = targets if turn % 2 == 0 else targets[::-1]
                if args.side_by_side:
                    results.append(measure(*targets[0], args))  # nginx
                    results += side_by_side([t for t in order if t is not targets[0]], args)
                else:
                    results += [measure(*target, args) for target in order]
    print(f"{_load_average()} after")
    direct = results[0]
    medians = {
        target: statistics.median(r.cpu_us_per_call or 0.0 for r in results if r.target == target)
        for target in dict.fromkeys(r.target for r in results[1:])
    }
    nginx_cpu = medians["nginx grpc_pass"]
    print(
        f"\n| target | calls | errors | p50 ms | p99 ms | CPU µs/call | × nginx CPU "
        f"| idle CPU ms/s | added p50 ms @{args.rate:g}/s | added p99 ms @{args.rate:g}/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        r.added_p50_ms = r.p50_ms - direct.p50_ms
        r.added_p99_ms = r.p99_ms - direct.p99_ms
        cpu = f"{r.cpu_us_per_call:.1f}" if r.cpu_us_per_call is not None else "–"
        ratio = (
            f"{r.cpu_us_per_call / nginx_cpu:.1f}×"
            if r.cpu_us_per_call is not None and nginx_cpu
            else "–"
        )
        idle = f"{r.idle_cpu_ms_per_s:.1f}" if r.idle_cpu_ms_per_s is not None else "–"
        print(
            f"| {r.target} | {r.calls} | {r.errors} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {cpu} "
            f"| {ratio} | {idle} | {r.added_p50_ms:.2f} | {r.added_p99_ms:.2f} |"
        )
    print(f"\nmedian CPU µs/call over {args.rounds} round(s):")
    for target, median in medians.items():
        print(f"  {target:<32} {median:7.1f}  ({median / nginx_cpu:.2f}× nginx)")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
