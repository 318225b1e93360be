"""Shared by the proxy benchmarks: nginx backends on loopback, processes that always stop."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "ADMIN_PORT",
    "BACKEND_PORTS",
    "PROXY_PORT",
    "RL_LB",
    "backends_conf",
    "drive_with_wrk",
    "ensure_tools",
    "nginx_conf",
    "process",
    "rl_lb_serve",
    "wait_port",
]

BACKEND_PORTS = (18081, 18082, 18083, 18084)
PROXY_PORT = 18080
ADMIN_PORT = 18090
PACKAGES = {"nginx": "nginx-light", "haproxy": "haproxy", "wrk": "wrk"}
RL_LB = str(Path(sys.executable).with_name("rl-lb"))


def ensure_tools() -> None:
    missing = [pkg for tool, pkg in PACKAGES.items() if shutil.which(tool) is None]
    if missing:
        print(f"installing {' '.join(missing)} from Debian's packages…", flush=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


@contextlib.contextmanager
def process(cmd: list[str], port: int | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `cmd` until the block ends (SIGTERM, then SIGKILL after 10 s); with `port`, only once
    it listens there. If anything fails meanwhile, the tail of its stderr is shown."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        try:
            if port is not None:
                wait_port(port)
            yield proc
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def nginx_conf(workdir: Path, body: str) -> Path:
    conf = workdir / f"nginx-{abs(hash(body))}.conf"
    conf.write_text(
        f"""daemon off; worker_processes 1; pid {workdir}/nginx-{conf.stem}.pid;
error_log stderr error;
events {{ worker_connections 4096; }}
http {{ access_log off; client_body_temp_path {workdir}; proxy_temp_path {workdir};
  fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};
  {body} }}
"""
    )
    return conf


def backends_conf(workdir: Path) -> Path:
    servers = "\n".join(
        f"server {{ listen 127.0.0.1:{p}; location / {{ return 200 'hello from {p}\\n'; }} }}"
        for p in BACKEND_PORTS
    )
    return nginx_conf(workdir, servers)


def rl_lb_serve(balancer: str, *extra: str) -> list[str]:
    """The command line of an rl-lb proxy in front of the nginx backends."""
    backends = [a for port in BACKEND_PORTS for a in ("--backend", f"http://127.0.0.1:{port}")]
    return [
        RL_LB,
        "serve",
        *backends,
        "--listen",
        f"127.0.0.1:{PROXY_PORT}",
        "--admin",
        f"127.0.0.1:{ADMIN_PORT}",
        "--balancer",
        balancer,
        *extra,
    ]


def drive_with_wrk(requests: int, port: int = PROXY_PORT) -> int:
    """At least `requests` requests through 127.0.0.1:`port` with wrk (10 s runs of 32
    connections until enough were sent); how many were sent."""
    sent = 0
    while sent < requests:
        out = subprocess.run(
            ["wrk", "-t1", "-c32", "-d10s", f"http://127.0.0.1:{port}/"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        sent += int(out.split(" requests in")[0].split()[-1])
    return sent
