"""`rl-lb promote VERSION`: move the alias the proxies follow (`champion`) to a registered
version, once it has passed a simulator gate against the version the alias names now.

Proxies started with `--policy models:/rl-lb-policy@champion` read the alias every
`policy-poll-interval` and put a new version on a canary before serving it everywhere
(serving/rollout.py); this command is the one place that writes the alias, so a version reaches
production only through the gate below, or through `--force` (an emergency rollback to a
version known to be good, when waiting for a gate would cost more than it saves).

The gate: both versions run the same library scenarios with the same seeds (paired: the same
worlds and arrivals), each policy on its own, without its outcome guard (`~no-outcome-guard`),
since the guard would hide a bad policy behind least-latency. The candidate passes when its
effective p99 is at most `MAX_GEOMEAN_RATIO` × the champion's in geometric mean over the
scenarios, and at most `MAX_SCENARIO_RATIO` × on every one. A refusal exits 1; bad input (no
such version, an unknown scenario) exits 2.

mlflow and the simulator are imported inside the functions: `rl-lb --help` stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rl_lb.errors import ConfigError, ModelError
from rl_lb.policies.learned import REGISTERED_MODEL

__all__ = [
    "DEFAULT_ALIAS",
    "GATE_SCENARIOS",
    "GATE_SEEDS",
    "Gate",
    "promote",
    "render_gate",
    "run_gate",
]

DEFAULT_ALIAS = "champion"
GATE_SCENARIOS = ("steady", "slow-backend", "heterogeneous", "bursty")
"""A few library scenarios that tell policies apart (a calm pool, one slow backend, mixed speeds,
bursts): 24 episodes, a few minutes on 2 cores."""
GATE_SEEDS = 3
FIRST_SEED = 40_001
"""Above training's seeds (10_001…, 20_001…) and docs/results.md's (30_001…)."""
MAX_GEOMEAN_RATIO = 1.02
MAX_SCENARIO_RATIO = 1.10


@dataclass(frozen=True)
class Gate:
    """The gate's table: per scenario, the champion's and the candidate's mean effective p99."""

    rows: tuple[tuple[str, float, float], ...]
    """(scenario, champion ms, candidate ms)."""

    @property
    def geomean_ratio(self) -> float:
        logs = [math.log(max(c, 1e-9) / max(b, 1e-9)) for _, b, c in self.rows]
        return math.exp(sum(logs) / len(logs))

    @property
    def worst(self) -> tuple[str, float]:
        """The scenario where the candidate does worst against the champion, and that ratio."""
        scenario, champion, candidate = max(self.rows, key=lambda r: r[2] / max(r[1], 1e-9))
        return scenario, candidate / max(champion, 1e-9)

    @property
    def passed(self) -> bool:
        return self.geomean_ratio <= MAX_GEOMEAN_RATIO and self.worst[1] <= MAX_SCENARIO_RATIO


def run_gate(champion: Path, candidate: Path, scenarios: list[str], seeds: int) -> Gate:
    """Both exported policies on the same scenarios and seeds, guard off."""
    from envs.evaluate import evaluate
    from rl_lb.balancers import UNGUARDED_SUFFIX
    from rl_lb.scenarios import resolve_scenario

    names = [f"learned:{path}{UNGUARDED_SUFFIX}" for path in (champion, candidate)]
    paths = [str(resolve_scenario(s)) for s in scenarios]
    records = evaluate(paths, names, list(range(FIRST_SEED, FIRST_SEED + seeds)))
    totals: dict[tuple[str, str], list[float]] = {}
    for record in records:
        key = (str(record["scenario"]), str(record["balancer"]))
        totals.setdefault(key, []).append(float(record["effective_p99_ms"]))
    order = list(dict.fromkeys(str(r["scenario"]) for r in records))
    rows = tuple((s, _mean(totals[(s, names[0])]), _mean(totals[(s, names[1])])) for s in order)
    return Gate(rows)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def render_gate(gate: Gate, champion: int, candidate: int) -> str:
    """The table `rl-lb promote` prints."""
    head = f"{'scenario':<22} {'v' + str(champion):>12} {'v' + str(candidate):>12} {'ratio':>7}"
    lines = [
        "effective p99 (ms), mean over seeds, each policy without its outcome guard",
        head,
        "-" * len(head),
    ]
    for scenario, base, new in gate.rows:
        lines.append(f"{scenario:<22} {base:>12.1f} {new:>12.1f} {new / max(base, 1e-9):>7.3f}")
    lines.append(
        f"{'geometric mean':<22} {'':>12} {'':>12} {gate.geomean_ratio:>7.3f}"
        f"   (pass: <= {MAX_GEOMEAN_RATIO:g}, every scenario <= {MAX_SCENARIO_RATIO:g})"
    )
    return "\n".join(lines)


def _client() -> Any:
    """The registry client, on the store every command uses (refused if it does not exist:
    looking a version up must not create an empty store)."""
    import mlflow

    from rl_lb.tracking_store import require_store

    mlflow.set_tracking_uri(require_store(f"{REGISTERED_MODEL} versions"))
    return mlflow.MlflowClient()


def _version(client: Any, version: int) -> None:
    """Refuse (exit 2) a version the registry does not hold."""
    from mlflow.exceptions import MlflowException

    from rl_lb.tracking_store import describe_store

    try:
        client.get_model_version(REGISTERED_MODEL, str(version))
    except MlflowException:
        raise ConfigError(
            f"VERSION {version}",
            f"no such version of {REGISTERED_MODEL} in {describe_store()}",
            "list the versions with `rl-lb ui`",
        ) from None


def _alias_version(client: Any, alias: str) -> int | None:
    from mlflow.exceptions import MlflowException

    try:
        return int(client.get_model_version_by_alias(REGISTERED_MODEL, alias).version)
    except MlflowException:
        return None  # the alias names no version yet


def _download(version: int) -> Path:
    """The version's exported policy, checked as a proxy would load it."""
    import mlflow

    from rl_lb.policies.learned import LearnedPolicy

    uri = f"models:/{REGISTERED_MODEL}/{version}"
    path = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    LearnedPolicy.load(path)  # a ModelError names what is wrong with it
    return path


def promote(
    version: int,
    *,
    alias: str = DEFAULT_ALIAS,
    force: bool = False,
    scenarios: list[str] | None = None,
    seeds: int = GATE_SEEDS,
    echo: Any = print,
) -> int:
    """Move `alias` to `version` if it passes the gate (or `force`); the exit status: 0 moved
    (or already there), 1 refused. Bad input raises `ConfigError` (exit 2)."""
    if not alias or "@" in alias or "/" in alias:
        raise ConfigError("--alias", f"{alias!r} is not an alias name", "e.g. --alias champion")
    client = _client()
    _version(client, version)
    target = f"{REGISTERED_MODEL}@{alias}"
    current = _alias_version(client, alias)
    if current == version:
        echo(f"{target} is already version {version}")
        return 0
    try:
        candidate_path = _download(version)
    except ModelError as error:
        echo(f"refused: version {version} does not load: {error}")
        return 1
    if current is None:
        echo(f"{target} names no version yet: nothing to gate against")
    elif force:
        echo(f"--force: version {version} replaces {current} without the gate")
    else:
        gate = run_gate(
            _download(current), candidate_path, list(scenarios or GATE_SCENARIOS), seeds
        )
        echo(render_gate(gate, current, version))
        if not gate.passed:
            scenario, ratio = gate.worst
            echo(
                f"refused: version {version} loses the gate against {current} (geometric mean "
                f"{gate.geomean_ratio:.3f}, worst {ratio:.3f} on {scenario}); {target} stays "
                f"{current} (--force to override)"
            )
            return 1
    client.set_registered_model_alias(REGISTERED_MODEL, alias, str(version))
    echo(f"{target}: version {current} -> {version}" if current else f"{target}: {version}")
    return 0
