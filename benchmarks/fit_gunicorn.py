"""Fit a pool of real servers nobody here wrote: httpbin under gunicorn with 1, 2 and 4 sync
workers, serving `/delay/D` (issue 18, "done when" line 3).

A gunicorn sync worker serves one request at a time and the rest wait in the listen backlog, so
each server's concurrency is its worker count and its service time is D plus gunicorn's own
cost. The script records the pool through `rl-lb serve --record` under the recipe's stepped
load, fits it (`rl-lb scenario fit`'s code) and replays the fit (`rl-lb scenario check`'s),
then prints the fitted concurrency and mean service time per server against the truth and the
replayed pool p99 against the recorded one; and, to compare, the replay of the service times
the queue factor gives (what a sampled recording, 1 in k, is fitted with).

It also writes `gunicorn-pool-at-R.toml`: the fitted pool under a constant R requests/s
(`--serve-rate`, 55 by default: `benchmarks/pool_specialised.py`'s load), the edit a user makes
to train for the load they serve (training/configs/specialise-gunicorn.toml trains on both).

    pip install httpbin gunicorn
    .venv/bin/python benchmarks/fit_gunicorn.py --duration 120 --delay 0.1 --out g-work

Bounds of the issue: concurrency within ±1, service time within ±15%, pool p99 within ±20%.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from lab.bench_proxy import free_port
from lab.fit.pipeline import record_pool
from lab.fit.recording import read_recording
from lab.fit.replay import recorded_balancer, replay
from lab.fit.world import backend_name, fit_world, render
from rl_lb.scenarios import load_scenario

WORKERS = (1, 2, 4)


@contextlib.contextmanager
def gunicorn_servers(workers: tuple[int, ...], workdir: Path) -> Iterator[list[str]]:
    """One `gunicorn httpbin:app` per worker count, sync workers, on free loopback ports."""
    gunicorn = shutil.which("gunicorn", path=str(Path(sys.executable).parent))
    if gunicorn is None:
        sys.exit("gunicorn is not installed: pip install httpbin gunicorn")
    processes, urls = [], []
    try:
        for count in workers:
            port = free_port()
            log = (workdir / f"gunicorn-{count}.log").open("wb")
            command = [gunicorn, "-w", str(count), "-k", "sync", "-b", f"127.0.0.1:{port}"]
            command += ["--backlog", "2048", "--log-level", "warning", "httpbin:app"]
            processes.append(subprocess.Popen(command, stdout=log, stderr=log))
            urls.append(f"http://127.0.0.1:{port}")
        for url in urls:
            _wait_ready(url)
        yield urls
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(10)


def _wait_ready(url: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/get", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    sys.exit(f"{url} did not answer within {timeout_s:g} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=120.0, help="recording seconds")
    parser.add_argument("--delay", type=float, default=0.1, help="httpbin /delay seconds")
    parser.add_argument("--seeds", type=int, default=3, help="simulator seeds of the replay")
    parser.add_argument(
        "--out", type=Path, help="folder for the recording and fitted files (default: a new one)"
    )
    parser.add_argument(
        "--serve-rate",
        type=float,
        default=55.0,
        help="also write the fitted pool under this constant load (requests/s)",
    )
    args = parser.parse_args()
    if args.out is not None:
        if args.out.exists() and any(args.out.iterdir()):
            sys.exit(f"--out {args.out}: not empty; name a new or empty folder")
        args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out or Path(tempfile.mkdtemp(prefix="fit-gunicorn-"))
    capacity = sum(WORKERS) / args.delay
    with gunicorn_servers(WORKERS, workdir) as urls:
        run = asyncio.run(
            record_pool(
                urls,
                capacity,
                workdir / "rec",
                duration_s=args.duration,
                path=f"/delay/{args.delay:g}",
            )
        )
    recording = read_recording([str(workdir / "rec")], print)
    world = fit_world(recording, "gunicorn-pool")
    scenario_file = workdir / "gunicorn-pool.toml"
    scenario_file.write_text(render(world, [str(workdir / "rec")], None))
    rows = replay(
        load_scenario(str(scenario_file)).nominal(),
        recording,
        recorded_balancer(recording),
        seeds=args.seeds,
    )
    served = dataclasses.replace(
        world, name=f"gunicorn-pool-at-{args.serve_rate:g}", rate_rps=args.serve_rate, profile=()
    )
    (workdir / f"{served.name}.toml").write_text(render(served, [str(workdir / "rec")], None))
    queue_factor = fit_world(recording, "gunicorn-pool", departures=False)
    scenario_file.with_suffix(".queue-factor.toml").write_text(
        render(queue_factor, [str(workdir / "rec")], None)
    )
    rows_queue_factor = replay(
        load_scenario(str(scenario_file.with_suffix(".queue-factor.toml"))).nominal(),
        recording,
        recorded_balancer(recording),
        seeds=args.seeds,
    )
    fits = {fit.name: fit for fit in world.backends}
    print(f"{run.sent} requests in {args.duration:g} s, files in {workdir}")
    print("| server | workers | fitted concurrency | fitted service ms (dist, cv) | vs delay |")
    print("|---|---:|---:|---:|---:|")
    for url, count in zip(urls, WORKERS, strict=True):
        fit = fits[backend_name(url)]
        s = fit.service
        print(
            f"| {backend_name(url)} | {count} | {fit.concurrency or '?'} | "
            f"{s.mean_s * 1e3:.1f} ({s.dist}, {s.cv:.2f}) | {s.mean_s / args.delay - 1:+.1%} |"
        )
    pool = rows[-1]
    print(
        f"pool p99 recorded {pool.recorded_p99_ms:.0f} ms, replayed {pool.simulated_p99_ms:.0f} ms "
        f"({pool.p99_error:+.0%}); p50 {pool.recorded_p50_ms:.0f} / {pool.simulated_p50_ms:.0f} ms"
    )
    old = rows_queue_factor[-1]
    by_name = {fit.name: fit for fit in queue_factor.backends}
    means = ", ".join(f"{by_name[backend_name(u)].service.mean_s * 1e3:.1f}" for u in urls)
    print(
        f"with the queue factor's service times ({means} ms, a sampled recording's): "
        f"replayed {old.simulated_p99_ms:.0f} ms ({old.p99_error:+.0%})"
    )
    for row in rows[:-1]:
        print(
            f"  {row.name}: p50 {row.recorded_p50_ms:.0f}/{row.simulated_p50_ms:.0f} ms, "
            f"p99 {row.recorded_p99_ms:.0f}/{row.simulated_p99_ms:.0f} ms ({row.p99_error:+.0%})"
        )


if __name__ == "__main__":
    main()
