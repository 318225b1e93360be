"""The proxy's footprint: time to accept after start, resident memory after 100,000 requests.

Starts `rl-lb serve` (default balancer: the shipped learned policy) in front of four nginx
backends on loopback, measures how long until it answers a proxied request, drives 100,000
requests through it with wrk, and prints its resident memory before and after and whether torch
was ever loaded into the process.

    .venv/bin/python benchmarks/proxy_footprint.py [--requests 100000] [--balancer learned]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil
from _harness import (
    PROXY_PORT,
    backends_conf,
    drive_with_wrk,
    ensure_tools,
    process,
    rl_lb_serve,
    wait_port,
)


def time_to_ready(cmd: list[str]) -> tuple[float, float, subprocess.Popen[bytes]]:
    """Seconds from exec to the listening socket, and to the first proxied 200."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(PROXY_PORT, timeout=30)
    listening = time.perf_counter() - started
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PROXY_PORT}/", timeout=1) as answer:
                if answer.status == 200:
                    return listening, time.perf_counter() - started, proc
        except OSError:
            time.sleep(0.01)
        if time.perf_counter() - started > 30:
            proc.kill()
            raise RuntimeError("the proxy never answered a request")


def torch_loaded(pid: int) -> bool:
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "libtorch" in maps or "/torch/" in maps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--balancer", default="learned")
    parser.add_argument("--tries", type=int, default=5, help="start-up timings to take")
    args = parser.parse_args()
    ensure_tools()
    cmd = rl_lb_serve(args.balancer)
    with tempfile.TemporaryDirectory(prefix="rl-lb-footprint-") as tmp:
        conf = backends_conf(Path(tmp))
        with process(["nginx", "-c", str(conf)], 18084):
            starts = []
            for _ in range(args.tries):
                listening, answering, proc = time_to_ready(cmd)
                starts.append((listening, answering))
                proc.terminate()
                proc.wait(10)
            print(f"start-up over {args.tries} tries (balancer {args.balancer}):")
            print(
                f"  listening after   {min(s[0] for s in starts):.2f}–"
                f"{max(s[0] for s in starts):.2f} s"
            )
            print(
                f"  first answer after {min(s[1] for s in starts):.2f}–"
                f"{max(s[1] for s in starts):.2f} s"
            )
            with process(cmd, PROXY_PORT) as proc:
                rss = psutil.Process(proc.pid)
                time.sleep(1.0)
                before = rss.memory_info().rss / 2**20
                sent = drive_with_wrk(args.requests)
                after = rss.memory_info().rss / 2**20
                print(
                    f"resident memory: {before:.1f} MiB at start, {after:.1f} MiB after "
                    f"{sent:,} requests (target ≤ 120 MiB)"
                )
                print(f"torch loaded in the proxy process: {torch_loaded(proc.pid)}")


if __name__ == "__main__":
    main()
