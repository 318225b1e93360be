"""The proxy in front of 1,000 backends (issue 15): memory, Prometheus series, reload time.

Starts one nginx listening on `--backends` loopback ports and `rl-lb serve --config FILE` in
front of all of them (default balancer: the shipped learned policy), drives `--requests`
requests through it with wrk, and prints its resident memory before and after, the series and
bytes of one `/metrics` scrape and how long a scrape takes, and how long a SIGHUP reload that
replaces a tenth of the backends takes to show in `/admin/state`.

    .venv/bin/python benchmarks/proxy_large_pool.py [--backends 1000] [--requests 100000]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # no types-psutil in the venv
from _harness import (
    ADMIN_PORT,
    PROXY_PORT,
    RL_LB,
    drive_with_wrk,
    ensure_tools,
    nginx_conf,
    process,
)

FIRST_PORT = 19000
RSS_TARGET_MIB = 150


def pool_conf(workdir: Path, ports: range) -> Path:
    """One nginx server block listening on every port of the pool."""
    listens = " ".join(f"listen 127.0.0.1:{p};" for p in ports)
    return nginx_conf(workdir, f"server {{ {listens} location / {{ return 200 'ok'; }} }}")


def write_proxy_conf(path: Path, balancer: str, ports: range) -> None:
    urls = ", ".join(f'"http://127.0.0.1:{p}"' for p in ports)
    path.write_text(
        f'listen = "127.0.0.1:{PROXY_PORT}"\nadmin = "127.0.0.1:{ADMIN_PORT}"\n'
        f'balancer = "{balancer}"\nbackend = [{urls}]\n'
    )


def admin_get(path: str) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}{path}", timeout=30) as answer:
        body: bytes = answer.read()
        return body


def listed_ports() -> set[int]:
    state = json.loads(admin_get("/admin/state"))
    return {int(b["url"].rsplit(":", 1)[1]) for b in state["backends"] if not b.get("draining")}


def scrape_figures(scrapes: int) -> tuple[int, int, int, float]:
    """Series, per-backend series (samples naming a backend), bytes and median scrape seconds."""
    times, body = [], b""
    for _ in range(scrapes):
        started = time.perf_counter()
        body = admin_get("/metrics")
        times.append(time.perf_counter() - started)
    samples = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
    per_backend = sum('backend="' in line for line in samples)
    return len(samples), per_backend, len(body), statistics.median(times)


def reload_seconds(conf: Path, balancer: str, pool: range, proc: subprocess.Popen[bytes]) -> float:
    """Seconds from SIGHUP to `/admin/state` listing a pool with its first tenth replaced."""
    tenth = len(pool) // 10
    new_pool = range(pool.start + tenth, pool.stop + tenth)
    write_proxy_conf(conf, balancer, new_pool)
    started = time.perf_counter()
    proc.send_signal(signal.SIGHUP)
    while listed_ports() != set(new_pool):
        if time.perf_counter() - started > 60:
            raise RuntimeError("the reload did not show in /admin/state within 60 s")
        time.sleep(0.01)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--balancer", default="learned")
    parser.add_argument("--scrapes", type=int, default=5)
    args = parser.parse_args()
    ensure_tools()
    pool = range(FIRST_PORT, FIRST_PORT + args.backends)
    spare = range(pool.stop, pool.stop + args.backends // 10)  # what the reload brings in
    with tempfile.TemporaryDirectory(prefix="rl-lb-large-pool-") as tmp:
        nginx = pool_conf(Path(tmp), range(pool.start, spare.stop))
        conf = Path(tmp) / "proxy.toml"
        write_proxy_conf(conf, args.balancer, pool)
        with (
            process(["nginx", "-c", str(nginx)], pool.start),
            process([RL_LB, "serve", "--config", str(conf)], PROXY_PORT) as proc,
        ):
            memory = psutil.Process(proc.pid)
            time.sleep(1.0)
            before = memory.memory_info().rss / 2**20
            sent = drive_with_wrk(args.requests)
            after = memory.memory_info().rss / 2**20
            series, per_backend, size, scrape = scrape_figures(args.scrapes)
            reload = reload_seconds(conf, args.balancer, pool, proc)
            after_reload = memory.memory_info().rss / 2**20
    print(f"rl-lb serve --balancer {args.balancer} in front of {args.backends:,} backends:")
    print(
        f"  resident memory: {before:.1f} MiB at start, {after:.1f} MiB after {sent:,} "
        f"requests (target ≤ {RSS_TARGET_MIB} MiB), {after_reload:.1f} MiB after the reload"
    )
    print(
        f"  /metrics: {series:,} series ({per_backend:,} labelled by backend), "
        f"{size / 1024:.0f} KiB, {scrape * 1000:.0f} ms per scrape (median of {args.scrapes})"
    )
    print(f"  SIGHUP replacing {len(spare)} backends: in /admin/state after {reload:.2f} s")


if __name__ == "__main__":
    main()
