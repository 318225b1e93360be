"""A real Prometheus scrapes a running `rl-lb serve`; the script queries its HTTP API.

Everything on loopback, everything stopped at the end:

    python benchmarks/prometheus_scrape.py [--seconds 20] [--workers 2]

1. `rl-lb backends --scenario steady` (emulated backends) and `rl-lb serve` in front of them;
2. Prometheus (Debian package `prometheus`: `apt-get install -y prometheus`) with the shipped
   rules (deploy/prometheus/rl-lb.rules.yml), scraping the proxy's /metrics every second;
3. `rl-lb loadgen` sends traffic for `--seconds`;
4. the script asks Prometheus (`/api/v1/query`) for the main series and a recording rule's
   output, prints them, and checks that Prometheus saw every request loadgen counted.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RL_LB = str(Path(sys.executable).with_name("rl-lb"))
QUERIES = (
    ("requests by status class", 'sum by (code) (rl_lb_requests_total{job="rl-lb"})'),
    ("requests per backend", 'sum by (backend) (rl_lb_backend_requests_total{job="rl-lb"})'),
    ("balancer mode", 'rl_lb_balancer_mode{job="rl-lb"} == 1'),
    ("p99 of whole exchanges (s)", "histogram_quantile(0.99, "
     "sum by (le) (rate(rl_lb_request_duration_seconds_bucket[1m])))"),
    ("recording rule rl_lb:request_errors:ratio_rate5m", "rl_lb:request_errors:ratio_rate5m"),
    ("recording rule rl_lb:backends_ejected:ratio", "rl_lb:backends_ejected:ratio"),
    ("targets up", 'up{job="rl-lb"}'),
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_block(count: int) -> int:
    """The first of `count` consecutive free ports, below the kernel's ephemeral range (whose
    ports other programs take at any moment)."""
    for base in range(20000, 30000, count):
        try:
            for port in range(base, base + count):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise SystemExit("error: no block of free ports between 20000 and 30000")


def wait_for(url: str, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                msg = f"error: {what} did not answer at {url} within {seconds:g} s"
                raise SystemExit(msg) from None
            time.sleep(0.2)


def query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        reply = json.load(response)
    if reply.get("status") != "success":
        raise SystemExit(f"error: query {expr!r} failed: {reply}")
    return list(reply["data"]["result"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--workers", type=int, default=1, help="proxy workers")
    parser.add_argument("--balancer", default="learned", help="the proxy's balancer")
    args = parser.parse_args()
    prometheus_bin = shutil.which("prometheus")
    if prometheus_bin is None:
        print("prometheus is not installed: apt-get install -y prometheus", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="rl-lb-prom-"))
    base = free_block(16)
    listen, admin, prom_port = (
        next(p for p in iter(free_port, None) if not base <= p < base + 16) for _ in range(3)
    )
    processes: list[subprocess.Popen[bytes]] = []

    def start(argv: list[str], name: str) -> subprocess.Popen[bytes]:
        log = (work / f"{name}.log").open("wb")
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        processes.append(process)
        return process

    try:
        start([RL_LB, "backends", "--scenario", "steady", "--base-port", str(base)], "backends")
        wait_for(f"http://127.0.0.1:{base}/health", 30, "the emulated backends")
        count = 0
        while True:  # the steady scenario's backends take consecutive ports
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{base + count}/health", timeout=1)
                count += 1
            except OSError:
                break
        backends = [f"--backend=http://127.0.0.1:{base + k}" for k in range(count)]
        start(
            [
                *(RL_LB, "serve", *backends, "--listen", f"127.0.0.1:{listen}"),
                *("--admin", f"127.0.0.1:{admin}", "--workers", str(args.workers)),
                *("--balancer", args.balancer),
            ],
            "proxy",
        )
        wait_for(f"http://127.0.0.1:{admin}/readyz", 30, "rl-lb serve")
        config = work / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            f"rule_files: ['{ROOT / 'deploy/prometheus/rl-lb.rules.yml'}']\n"
            "scrape_configs:\n"
            "  - job_name: rl-lb\n"
            f"    static_configs: [{{targets: ['127.0.0.1:{admin}']}}]\n"
        )
        start(
            [
                prometheus_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            "prometheus",
        )
        prometheus = f"http://127.0.0.1:{prom_port}"
        wait_for(f"{prometheus}/-/ready", 60, "Prometheus")
        report = work / "load.json"
        loadgen = subprocess.run(
            [
                *(RL_LB, "loadgen", f"http://127.0.0.1:{listen}/"),
                *("--rate", str(args.rate), "--duration", str(args.seconds)),
                *("--json", str(report)),
            ],
            capture_output=True,
            check=False,
        )
        if loadgen.returncode != 0:
            print(loadgen.stdout.decode() + loadgen.stderr.decode(), file=sys.stderr)
            return 1
        time.sleep(5.0)  # a few more scrapes and rule evaluations after the last request
        sent = json.loads(report.read_text())
        print("loadgen: " + json.dumps({k: sent[k] for k in ("requests", "errors") if k in sent}))
        for title, expr in QUERIES:
            print(f"\n{title}\n  {expr}")
            for row in query(prometheus, expr):
                metric, value = row["metric"], row["value"]
                labels = ", ".join(f"{k}={v}" for k, v in metric.items() if k != "__name__")
                print(f"  {{{labels}}} = {value[1]}")
        seen = sum(float(r["value"][1]) for r in query(prometheus, "sum(rl_lb_requests_total)"))
        expected = sent.get("answered", sent.get("requests"))
        print(f"\nPrometheus counted {seen:.0f} client requests; loadgen got {expected} answers")
        return 0 if expected is None or abs(seen - float(expected)) <= 0.01 * float(expected) else 1
    except SystemExit:
        for log in sorted(work.glob("*.log")):
            print(f"--- {log.name}:\n" + log.read_text()[-2000:], file=sys.stderr)
        raise
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in reversed(processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
