"""The live benchmark's load generator, in a process of its own.

A load generator sharing the proxy's (or the backends') event loop measures that loop's backlog as
latency, and the two steal each other's CPU; so the benchmark runs `lab.loadgen.run_schedule`
here, in a child process, against a schedule it is handed in a file (the scenario's rate profile,
which `run_load`'s single rate cannot express). Both processes read the
same system-wide monotonic clock, so second 0 of the schedule lines up with the backends' timeline.

    python -m lab.bench_load URL[,URL...] SCHEDULE.npy OUT.npz --timeout S [--targets T.npy]
                             [--protocol http1|h2c|grpc]

Several URLs (proxy replicas) take the requests that `T.npy` assigns them, one index each.

The child imports its libraries, prints `ready`, then reads second 0 (a monotonic time) from its
stdin: starting an interpreter takes longer than a benchmark may wait once its backends run.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lab.loadgen import LoadResult, run_schedule
from lab.runtime import run_async

__all__ = ["CONNECTIONS", "LoadProcess", "main"]

CONNECTIONS = 512
"""Keep-alive connections to the proxy: enough that none is waited for below ~10k requests/s."""
STOP_GRACE_S = 5.0


async def _run_schedule(
    urls: list[str],
    schedule: np.ndarray,
    targets: np.ndarray | None,
    start_at: float,
    timeout: float,
    out: Path,
    protocol: str = "http1",
) -> None:
    """Send one GET per entry of `schedule` (s after `start_at`), measure each, save the arrays
    (h2c streams or gRPC calls instead with `protocol`: `lab.bench_protocols`)."""
    if protocol != "http1":
        from lab.bench_protocols import run_protocol_schedule

        await run_protocol_schedule(protocol, urls, schedule, targets, start_at, timeout, out)
        return
    result = await run_schedule(
        urls,
        schedule,
        targets=targets,
        start_at=start_at,
        connections=CONNECTIONS,
        timeout=timeout,
    )
    np.savez(
        out,
        sent_s=result.sent_s,
        latency_s=result.latency_s,
        lag_s=result.lag_s,
        status=result.status,
        cause=result.cause,
        meta=np.array([result.started_at, result.span_s]),
    )


class LoadProcess:
    """The child process, seen from the benchmark: start early, begin on time, always stop."""

    def __init__(
        self,
        urls: Sequence[str],
        schedule: np.ndarray,
        timeout: float,
        workdir: Path,
        targets: np.ndarray | None = None,
        protocol: str = "http1",
    ) -> None:
        """Request j of `schedule` goes to `urls[targets[j]]` (to `urls[0]` without targets),
        over `protocol` (`lab.bench_protocols.PROTOCOLS`)."""
        self.url = " ".join(urls)
        self._out = workdir / "load.npz"
        self._log = workdir / "load.log"
        schedule_file = workdir / "schedule.npy"
        np.save(schedule_file, schedule)
        command = [sys.executable, "-m", "lab.bench_load", ",".join(urls), str(schedule_file)]
        if targets is not None:
            np.save(workdir / "targets.npy", targets)
            command += ["--targets", str(workdir / "targets.npy")]
        if protocol != "http1":
            command += ["--protocol", protocol]
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [*command, str(self._out), "--timeout", repr(timeout)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )

    def wait_ready(self) -> None:
        """Block until the child has imported its libraries and waits for second 0."""
        stdout = self._process.stdout
        assert stdout is not None
        if stdout.readline().strip() != b"ready":
            raise RuntimeError(f"load generator failed to start: {self._stderr()}")

    def begin(self, start_at: float) -> None:
        """Hand the ready child second 0 of its schedule (a monotonic time still to come)."""
        stdin = self._process.stdin
        assert stdin is not None
        stdin.write(f"{start_at!r}\n".encode())
        stdin.close()

    def done(self) -> bool:
        return self._process.poll() is not None

    def _stderr(self) -> str:
        self.stop()
        return self._log.read_text(errors="replace")[-2000:]

    def result(self) -> LoadResult:
        """The records, once the child has exited; its stderr in the error if it failed."""
        if self._process.wait() != 0 or not self._out.is_file():
            raise RuntimeError(
                f"load generator failed (exit {self._process.returncode}): {self._stderr()}"
            )
        with np.load(self._out) as data:
            arrays = {key: data[key] for key in data.files}
        started_at, span = (float(x) for x in arrays["meta"])
        sent = arrays["sent_s"]
        duration = float(sent[-1]) if len(sent) else 0.0
        return LoadResult(
            url=self.url,
            rate=len(sent) / duration if duration > 0 else 0.0,
            duration_s=duration,
            process="schedule",
            started_at=started_at,
            sent_s=sent,
            latency_s=arrays["latency_s"],
            lag_s=arrays["lag_s"],
            status=arrays["status"],
            cause=arrays["cause"],
            span_s=max(duration, span),
        )

    def stop(self) -> None:
        """Terminate the child if it still runs (Ctrl-C, an error): SIGTERM, then SIGKILL."""
        process = self._process
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None and not stream.closed:
                stream.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.bench_load")
    parser.add_argument("urls", help="one URL, or several separated by commas")
    parser.add_argument("schedule", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--targets", type=Path, help="each request's index among the URLs")
    parser.add_argument("--protocol", default="http1", help="http1, h2c or grpc")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C and terminates us
    schedule = np.load(args.schedule)
    targets = np.load(args.targets) if args.targets else None
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    if start_at < time.monotonic():
        print("bench_load: second 0 had passed when it arrived", file=sys.stderr)
        return 1
    urls = args.urls.split(",")
    run_async(
        _run_schedule(urls, schedule, targets, start_at, args.timeout, args.out, args.protocol)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
