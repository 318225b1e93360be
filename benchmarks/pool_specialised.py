"""The live half of "learn your own pool" (issue 18, "done when" line 4): balancers compared on
the real gunicorn pool the policy was specialised for.

It starts the same pool `benchmarks/fit_gunicorn.py` records and fits (httpbin under gunicorn
with 1, 2 and 4 sync workers, `GET /delay/D`), then runs `rl-lb bench pool` against it with the
balancers given, every run recorded so that the share of control intervals in primary mode is
printed next to each balancer's p99 (a guarded policy's result in fallback says nothing about
the policy). The recipe around it (record, fit, check, train) is in docs/sim2real.md, "Learn
your own pool, end to end".

    pip install httpbin gunicorn
    .venv/bin/python benchmarks/pool_specialised.py --rate 55 --duration 30 --seeds 3 \
        --balancer least-latency --balancer learned:rl_lb/policies/shipped \
        --balancer learned:/path/to/specialised-policy
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from fit_gunicorn import WORKERS, gunicorn_servers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=55.0, help="requests/s (capacity 70)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per run")
    parser.add_argument("--seeds", type=int, default=3, help="paired runs per balancer")
    parser.add_argument("--delay", type=float, default=0.1, help="httpbin /delay seconds")
    parser.add_argument("--balancer", action="append", required=True, help="as for bench pool")
    parser.add_argument("--record", type=Path, help="folder of the runs' recordings")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="pool-specialised-"))
    record = args.record or workdir / "rec"
    with gunicorn_servers(WORKERS, workdir) as urls:
        command = [sys.executable, "-m", "rl_lb.cli", "bench", "pool"]
        for url in urls:
            command += ["--backend", url]
        command += ["--rate", f"{args.rate:g}", "--duration", f"{args.duration:g}"]
        command += ["--seeds", str(args.seeds), "--path", f"/delay/{args.delay:g}"]
        command += ["--record", str(record)]
        for balancer in args.balancer:
            command += ["--balancer", balancer]
        print(" ".join(command), flush=True)
        status = subprocess.run(command, check=False).returncode
    print(f"recordings in {record}, server logs in {workdir}")
    sys.exit(status)


if __name__ == "__main__":
    main()
