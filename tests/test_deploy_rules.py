"""The shipped Prometheus rules (deploy/prometheus/) are valid and do what their unit tests say.

`promtool` comes with Debian's `prometheus` package; .ci/run installs it and sets
RL_LB_REQUIRE_TOOLS=1, so in CI a missing promtool is a failure, not a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

DEPLOY = Path(__file__).parents[1] / "deploy" / "prometheus"
PROMTOOL = shutil.which("promtool")

if PROMTOOL is None and os.environ.get("RL_LB_REQUIRE_TOOLS") == "1":
    pytest.fail("promtool is required here: apt-get install -y prometheus", pytrace=False)
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool not installed (apt-get install -y prometheus)"
)


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=DEPLOY, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_rules_are_valid() -> None:
    result = _promtool("check", "rules", "rl-lb.rules.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_pass_their_unit_tests() -> None:
    tests = sorted(str(p.relative_to(DEPLOY)) for p in (DEPLOY / "tests").glob("*.test.yml"))
    assert tests, "no rule tests found"
    result = _promtool("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_rule_is_caught(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests against rules with a threshold moved."""
    rules = (DEPLOY / "rl-lb.rules.yml").read_text()
    broken = rules.replace(
        "rl_lb:backends_ejected:ratio > 0.25", "rl_lb:backends_ejected:ratio > 0.75"
    )
    assert broken != rules
    (tmp_path / "rl-lb.rules.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    for test in (DEPLOY / "tests").glob("*.test.yml"):
        (tmp_path / "tests" / test.name).write_text(test.read_text())
    assert PROMTOOL is not None
    result = subprocess.run(
        [PROMTOOL, "test", "rules", *[f"tests/{t.name}" for t in (tmp_path / "tests").iterdir()]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "RlLbBackendsEjected" in result.stdout + result.stderr
