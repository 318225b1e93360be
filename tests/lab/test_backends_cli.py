"""`rl-lb backends` serves a shipped scenario until SIGTERM, then stops cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import urllib.request

import pytest


@pytest.mark.timeout(60)
def test_backends_cli_serves_until_sigterm() -> None:
    command = [sys.executable, "-m", "rl_lb.cli", "backends", "--scenario", "steady", "--seed", "1"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        header = process.stdout.readline()
        assert header.startswith("scenario steady:")
        count = re.search(r"(\d+) backends", header)
        assert count is not None
        lines = [process.stdout.readline() for _ in range(int(count.group(1)))]
        urls = re.findall(r"http://127\.0\.0\.1:\d+", "".join(lines))
        assert len(urls) == len(lines)
        for url in urls:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                assert response.status == 200
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "backends stopped" in out
