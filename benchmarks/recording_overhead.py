"""What `rl-lb serve --record` costs: proxy CPU per request with and without recording.

The recipe of docs/sim2real.md "Learn your own pool" (lab/fit/pipeline.py `record_emulated`): the
heterogeneous scenario's emulated backends, service times x5, the stepped load through one
`rl-lb serve` process. Runs alternate without and with `--record` (pairs, interleaved, so that
the machine's own load drifts over both alike) and the proxy's CPU time while the load ran
(start-up excluded) is divided by the requests sent.

    .venv/bin/python benchmarks/recording_overhead.py [--pairs 3] [--duration 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
from pathlib import Path

from lab.fit.pipeline import record_emulated, slowed
from rl_lb.scenarios import load_scenario


def cpu_per_request_us(folder: Path, duration_s: float, seed: int, record: bool) -> float:
    truth = slowed(load_scenario("heterogeneous").nominal(), 5.0)
    run = asyncio.run(
        record_emulated(truth, folder, duration_s=duration_s, seed=seed, record=record)
    )
    return 1e6 * run.proxy_cpu_s / max(run.sent, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load per run")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="rl-lb-record-overhead-") as tmp:
        for pair in range(args.pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            measured: dict[bool, float] = {}
            for record in order:
                folder = Path(tmp) / f"p{pair}-{'rec' if record else 'plain'}"
                measured[record] = cpu_per_request_us(folder, args.duration, args.seed, record)
            ratio = measured[True] / measured[False] - 1
            ratios.append(ratio)
            print(
                f"pair {pair + 1}: {measured[False]:.0f} us/request without, "
                f"{measured[True]:.0f} with: {ratio:+.1%}  "
                f"(load average {os.getloadavg()[0]:.2f})",
                flush=True,
            )
    print(f"median overhead over {len(ratios)} pairs: {statistics.median(ratios):+.1%}")
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
