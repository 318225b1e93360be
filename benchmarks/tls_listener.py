"""What HTTPS on the listener costs: rl-lb against nginx with the same certificate, in one run.

One nginx worker answers a small static body on loopback (the backend). In front of it, in turn:
nginx terminating TLS (`listen … ssl`, `proxy_pass` with upstream keep-alive), rl-lb with
`--tls-cert/--tls-key` (same certificate and key, made here by `trustme`), and rl-lb in cleartext
(what TLS adds to rl-lb itself). wrk drives each over keep-alive connections (the handshakes are
amortised: this is the per-request cost of the record layer and the proxying), and the CPU time
the proxy process spent per request is read from /proc (psutil).

    .venv/bin/python benchmarks/tls_listener.py [--duration 10] [--connections 32] [--json out]

nginx and wrk come from Debian's packages (installed with apt-get when missing); when they
cannot be had, the script says why and stops. Ports 18180-18182, apart from proxy_overhead.py's.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from _harness import ensure_tools, nginx_conf, process, wait_port
from proxy_overhead import cpu_seconds, to_ms

BACKEND_PORT = 18180
PROXY_PORT = 18181
ADMIN_PORT = 18182
RL_LB = str(Path(sys.executable).with_name("rl-lb"))


@dataclass
class Figures:
    target: str
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float


def certificate(workdir: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 from a throw-away CA (the clients here do not verify)."""
    import trustme

    leaf = trustme.CA().issue_cert("127.0.0.1", "localhost")
    cert, key = workdir / "listener.crt", workdir / "listener.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return str(cert), str(key)


def measure(name: str, url: str, pid: int, args: argparse.Namespace) -> Figures:
    run_wrk_url(url, 1, args.connections)  # warm-up: connections, sessions, pools
    before = cpu_seconds(pid)
    rps, p50, p99, total = run_wrk_url(url, args.duration, args.connections)
    cpu = (cpu_seconds(pid) - before) / total * 1e6
    print(
        f"  {name:<22} {rps:>9.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
        f"cpu {cpu:7.1f} µs/req",
        flush=True,
    )
    return Figures(name, rps, p50, p99, cpu)


def run_wrk_url(url: str, duration: float, connections: int) -> tuple[float, float, float, int]:
    """Requests/s, p50 and p99 (ms) and the request count of one wrk run against `url`."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    # the distribution's lines only: a "+/- Stdev" of 83.99% must not read as the p99
    p50 = to_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    p99 = to_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return rps, p50, p99, total


def rl_lb(cert: str | None, key: str | None) -> list[str]:
    tls = ["--tls-cert", cert, "--tls-key", key] if cert and key else []
    return [
        RL_LB,
        "serve",
        "--backend",
        f"http://127.0.0.1:{BACKEND_PORT}",
        "--listen",
        f"127.0.0.1:{PROXY_PORT}",
        "--admin",
        f"127.0.0.1:{ADMIN_PORT}",
        "--balancer",
        "least-latency",
        *tls,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    try:
        ensure_tools()
    except (OSError, subprocess.CalledProcessError) as error:
        print(f"nginx/wrk are missing and could not be installed ({error}): no figures")
        raise SystemExit(1) from None
    if shutil.which("nginx") is None or shutil.which("wrk") is None:
        print("nginx or wrk is not on PATH after installing them: no figures")
        raise SystemExit(1)
    results: list[Figures] = []
    with tempfile.TemporaryDirectory(prefix="rl-lb-tls-") as tmp:
        workdir = Path(tmp)
        cert, key = certificate(workdir)
        backend = nginx_conf(
            workdir,
            f"server {{ listen 127.0.0.1:{BACKEND_PORT}; "
            f"location / {{ return 200 'hello from {BACKEND_PORT}\\n'; }} }}",
        )
        front = nginx_conf(
            workdir,
            f"""upstream pool {{ server 127.0.0.1:{BACKEND_PORT}; keepalive 64; }}
  server {{ listen 127.0.0.1:{PROXY_PORT} ssl; ssl_certificate {cert};
    ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;
    location / {{ proxy_pass http://pool; proxy_http_version 1.1;
      proxy_set_header Connection ""; }} }}""",
        )
        https = f"https://127.0.0.1:{PROXY_PORT}/"
        with process(["nginx", "-c", str(backend)], BACKEND_PORT):
            wait_port(BACKEND_PORT)
            print(
                f"backend: nginx on {BACKEND_PORT}; wrk -t1 -c{args.connections} "
                f"-d{args.duration:g}s over keep-alive; one proxy process each"
            )
            with process(["nginx", "-c", str(front)], PROXY_PORT) as p:
                results.append(measure("nginx (TLS)", https, p.pid, args))
            with process(rl_lb(cert, key), PROXY_PORT) as p:
                results.append(measure("rl-lb (TLS)", https, p.pid, args))
            with process(rl_lb(None, None), PROXY_PORT) as p:
                plain = f"http://127.0.0.1:{PROXY_PORT}/"
                results.append(measure("rl-lb (cleartext)", plain, p.pid, args))
    nginx_cpu = results[0].cpu_us_per_request
    print("\n| target | req/s (wrk) | p50 ms | p99 ms | CPU µs/req | × nginx (TLS) CPU |")
    print("|---|---|---|---|---|---|")
    for r in results:
        ratio = r.cpu_us_per_request / nginx_cpu if nginx_cpu else float("nan")
        print(
            f"| {r.target} | {r.rps:.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.cpu_us_per_request:.1f} | {ratio:.1f}× |"
        )
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
