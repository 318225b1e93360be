"""The short soak: `benchmarks/soak.py` for 30 s, a backend restarting every 10 s."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[2] / "benchmarks" / "soak.py"


def test_a_short_soak_answers_every_request_and_holds_its_memory(tmp_path: Path) -> None:
    figures = tmp_path / "soak.json"
    command = [sys.executable, str(SOAK), "--duration", "30", "--restart-every", "10"]
    command += ["--burst", "2", "--json", str(figures)]
    # Its own session, so that a hung run is ended with the proxy it started.
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=150)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    text = output.decode(errors="replace")
    assert process.returncode == 0, text
    result = json.loads(figures.read_text())
    assert result["sent"] == result["answered"] > 0
    assert result["restarts"] == 3
    assert result["rss_growth"] < 0.10
    assert result["failed_checks"] == []
