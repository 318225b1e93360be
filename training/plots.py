"""The run's figures, drawn on bare `Figure`s (the Agg canvas: no display, no pyplot state).

Two kinds: the latency CDF of every balancer in every scenario (a tail plot, log-scaled, since
the p99 is what the policy is judged on) and the learned policy's weights over time where the
right answer moves: `degrading` and `fast-failure`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from matplotlib.figure import Figure

from training.evaluation import LEARNED

__all__ = ["WEIGHT_SCENARIOS", "latency_cdf", "make_all", "weights_over_time"]

WEIGHT_SCENARIOS = ("degrading", "fast-failure")

_T = TypeVar("_T")


def latency_cdf(scenario: str, latencies_ms: Mapping[str, np.ndarray], out: Path) -> Path:
    """One line per balancer: fraction of requests slower than x (failures at the timeout)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for balancer, values in latencies_ms.items():
        ordered = np.sort(values)
        tail = 1.0 - np.arange(1, len(ordered) + 1) / len(ordered)
        ax.step(ordered, np.maximum(tail, 1e-6), where="post", label=balancer, lw=1.4)
    ax.set(xscale="log", yscale="log", ylim=(1e-4, 1), xlabel="latency (ms)")
    ax.set(ylabel="fraction of requests slower", title=f"{scenario}: latency tail")
    ax.axhline(0.01, color="grey", lw=0.6, ls=":")
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(True, which="both", alpha=0.3)
    path = out / f"latency_cdf_{scenario}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def weights_over_time(
    scenario: str, times_s: np.ndarray, weights: np.ndarray, names: Sequence[str], out: Path
) -> Path:
    """The learned policy's weight per backend, one control interval per step (stacked)."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    ax.stackplot(times_s, weights.T, labels=list(names), step="post", alpha=0.85)
    ax.set(xlim=(times_s[0], times_s[-1]), ylim=(0, 1), xlabel="time (s)", ylabel="weight")
    ax.set_title(f"{scenario}: learned policy weights")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    path = out / f"weights_{scenario}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def make_all(
    scenarios: Sequence[Any],
    baselines: Sequence[str],
    policy_dir: Path,
    seed: int,
    out: Path,
    executor: Executor | None = None,
) -> Path:
    """Run one episode per scenario and balancer at `seed` (the draw `evaluate` makes) and plot.

    Returns `out`, holding `latency_cdf_<scenario>.png` for every scenario and
    `weights_<scenario>.png` for those of `WEIGHT_SCENARIOS` among them. With `executor` (a
    training run's `EvaluationPool`) the episodes run on its workers: 13 × 9 of them one after
    the other took about 40 s of each `make policy` stage.
    """
    from envs.episode import EpisodeResult, run_episode
    from envs.evaluate import as_family, draw

    out.mkdir(parents=True, exist_ok=True)
    balancers = {**{b: b for b in baselines}, LEARNED: f"learned:{policy_dir}"}
    drawn = [draw(as_family(source), seed) for source in scenarios]
    run = executor.submit if executor is not None else _now

    def start(scenario: Any) -> dict[str, Future[EpisodeResult]]:
        return {label: run(run_episode, scenario, name, seed) for label, name in balancers.items()}

    # one scenario's episodes ahead of the one plotted: the workers stay busy, and no more than
    # two scenarios' results (a request's latency each) are held at once
    ahead = start(drawn[0]) if drawn else {}
    for i, scenario in enumerate(drawn):
        runs, ahead = ahead, start(drawn[i + 1]) if i + 1 < len(drawn) else {}
        results = {label: future.result() for label, future in runs.items()}
        latency_cdf(
            scenario.name, {k: r.effective_latency_s * 1e3 for k, r in results.items()}, out
        )
        if scenario.name in WEIGHT_SCENARIOS:
            learned = results[LEARNED]
            weights_over_time(
                scenario.name, learned.interval_start_s, learned.weights, learned.backend_names, out
            )
    return out


def _now(fn: Callable[..., _T], *args: Any) -> Future[_T]:
    """`fn(*args)` run at once, as a done future (no executor: the plots' episodes in turn)."""
    future: Future[_T] = Future()
    future.set_result(fn(*args))
    return future
