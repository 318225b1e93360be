"""What the proxy costs: rl-lb against nginx, haproxy and a direct connection, in one run.

Backends are nginx workers answering a small static body on loopback. For each target it
measures, with wrk (closed loop, fixed connections), requests/s and latency quantiles, and the CPU
time the proxy process(es) spent per request; then, with rl-lb's open-loop load generator at a
fixed rate (500 req/s by default), the p50/p99 each proxy adds over a direct connection.

    .venv/bin/python benchmarks/proxy_overhead.py [--duration 10] [--rate 500] [--json out.json]

nginx, haproxy and wrk come from Debian's packages; the script installs them (apt-get) if missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from _harness import (
    BACKEND_PORTS,
    PROXY_PORT,
    RL_LB,
    backends_conf,
    ensure_tools,
    nginx_conf,
    process,
    rl_lb_serve,
    wait_port,
)


@dataclass
class Figures:
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float | None
    open_loop_p50_ms: float
    open_loop_p99_ms: float
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None


def nginx_proxy_conf(workdir: Path) -> Path:
    upstream = " ".join(f"server 127.0.0.1:{p};" for p in BACKEND_PORTS)
    return nginx_conf(
        workdir,
        f"""upstream pool {{ least_conn; {upstream} keepalive 64; }}
  server {{ listen 127.0.0.1:{PROXY_PORT};
    location / {{ proxy_pass http://pool; proxy_http_version 1.1;
      proxy_set_header Connection ""; }} }}""",
    )


def haproxy_conf(workdir: Path) -> Path:
    conf = workdir / "haproxy.cfg"
    servers = "\n".join(f"  server b{p} 127.0.0.1:{p}" for p in BACKEND_PORTS)
    conf.write_text(
        f"""global
  nbthread 1
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option http-keep-alive
frontend web
  bind 127.0.0.1:{PROXY_PORT}
  default_backend pool
backend pool
  balance leastconn
  http-reuse always
{servers}
"""
    )
    return conf


def cpu_seconds(pid: int) -> float:
    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = p.cpu_times()
            total += times.user + times.system
    return total


def to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise RuntimeError(f"wrk printed a latency this script cannot read: {text!r}")
    value, unit = match.groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def wrk_quantile_ms(out: str, percent: str) -> float:
    """One line of wrk's "Latency Distribution" (`     99%    1.23ms`), read as ms.

    The line is matched whole: a bare `99%` also matches the end of a std-dev figure such as
    `83.99%` on the "Thread Stats" lines, whose next word is not a latency.
    """
    match = re.search(rf"^\s*{percent}%\s+(\S+)\s*$", out, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no {percent}% latency line:\n{out}")
    return to_ms(match.group(1))


def run_wrk(port: int, duration: float, connections: int) -> tuple[float, float, float, int]:
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration:g}s",
            "--latency",
            f"http://127.0.0.1:{port}/",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50, p99 = wrk_quantile_ms(out, "50"), wrk_quantile_ms(out, "99")
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rps, p50, p99, total


def open_loop(port: int, rate: float, duration: float) -> tuple[float, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run(
            [
                RL_LB,
                "loadgen",
                f"http://127.0.0.1:{port}/",
                "--rate",
                str(rate),
                "--duration",
                str(duration),
                "--json",
                out.name,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        result = json.loads(Path(out.name).read_text())
    return float(result["p50_ms"]), float(result["p99_ms"])


def measure(name: str, port: int, pid: int | None, args: argparse.Namespace) -> Figures:
    run_wrk(port, 1, args.connections)  # warm-up: connection pools, JITs
    before = cpu_seconds(pid) if pid else 0.0
    rps, p50, p99, total = run_wrk(port, args.duration, args.connections)
    cpu = (cpu_seconds(pid) - before) / total * 1e6 if pid else None
    ol50, ol99 = open_loop(port, args.rate, args.duration)
    print(
        f"  {name:<24} {rps:>9.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
        f"cpu {cpu if cpu is not None else float('nan'):7.1f} µs/req  "
        f"open-loop p50 {ol50:.2f} ms p99 {ol99:.2f} ms",
        flush=True,
    )
    return Figures(name, rps, p50, p99, cpu, ol50, ol99)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop requests/s")
    parser.add_argument("--balancers", nargs="+", default=["least-latency", "learned"])
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    ensure_tools()
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="rl-lb-overhead-") as tmp:
        workdir = Path(tmp)
        with process(["nginx", "-c", str(backends_conf(workdir))], BACKEND_PORTS[-1]):
            for port in BACKEND_PORTS:
                wait_port(port)
            print(
                f"backends: nginx on {', '.join(map(str, BACKEND_PORTS))}; wrk -t1 "
                f"-c{args.connections} -d{args.duration:g}s; open loop {args.rate:g} req/s"
            )
            results.append(measure("direct", BACKEND_PORTS[0], None, args))
            with process(["nginx", "-c", str(nginx_proxy_conf(workdir))], PROXY_PORT) as p:
                results.append(measure("nginx", PROXY_PORT, p.pid, args))
            with process(["haproxy", "-f", str(haproxy_conf(workdir))], PROXY_PORT) as p:
                results.append(measure("haproxy", PROXY_PORT, p.pid, args))
            for balancer in args.balancers:
                with process(rl_lb_serve(balancer), PROXY_PORT) as p:
                    results.append(measure(f"rl-lb ({balancer})", PROXY_PORT, p.pid, args))
    direct = results[0]
    nginx_cpu = next(r.cpu_us_per_request for r in results if r.target == "nginx")
    print(
        "\n| target | req/s (wrk) | p50 ms | p99 ms | CPU µs/req | × nginx CPU "
        f"| added p50 ms @{args.rate:g}/s | added p99 ms @{args.rate:g}/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        r.added_p50_ms = r.open_loop_p50_ms - direct.open_loop_p50_ms
        r.added_p99_ms = r.open_loop_p99_ms - direct.open_loop_p99_ms
        cpu = f"{r.cpu_us_per_request:.1f}" if r.cpu_us_per_request is not None else "–"
        ratio = (
            f"{r.cpu_us_per_request / nginx_cpu:.1f}×"
            if r.cpu_us_per_request is not None and nginx_cpu
            else "–"
        )
        print(
            f"| {r.target} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {cpu} | {ratio} "
            f"| {r.added_p50_ms:.2f} | {r.added_p99_ms:.2f} |"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
