"""Record a live benchmark in MLflow: parameters, the table, latency and weights over time.

MLflow and matplotlib are imported here, lazily, so `rl-lb bench` runs (and says why it did not
log) on an install without the training extra. The store is the trainer's: `MLFLOW_TRACKING_URI`,
else `sqlite:///mlruns.db` with its artifacts beside it.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from envs.episode import EpisodeResult

__all__ = ["EXPERIMENT", "log_bench", "plot_latency", "plot_weights"]

EXPERIMENT = "rl-lb-bench"
BINS = 60
"""Points per latency-over-time curve: one per bin of duration / BINS seconds."""


def _binned_p99(result: EpisodeResult, duration: float) -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(0.0, duration, BINS + 1)
    which = np.digitize(result.arrival_s, edges) - 1
    effective = result.effective_latency_s * 1e3
    p99 = [
        float(np.quantile(effective[which == k], 0.99)) if np.any(which == k) else math.nan
        for k in range(BINS)
    ]
    return (edges[:-1] + edges[1:]) / 2, np.array(p99)


def plot_latency(results: Sequence[EpisodeResult], duration: float, path: Path) -> Path:
    """Effective p99 per time bin, one line per run: where in the timeline the balancers differ."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    for r in results:
        x, y = _binned_p99(r, duration)
        ax.plot(x, y, label=f"{r.balancer} (seed {r.seed})")
    ax.set(xlabel="scenario time (s)", ylabel="effective p99 (ms)", yscale="log")
    ax.set_title(f"{results[0].scenario}: latency over time")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_weights(results: Sequence[EpisodeResult], path: Path) -> Path:
    """The weights the proxy applied over time, one panel per run, one line per backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(9, 2.2 * len(results)), squeeze=False)
    for ax, r in zip(axes[:, 0], results, strict=True):
        for i, name in enumerate(r.backend_names):
            ax.step(r.interval_start_s, r.weights[:, i], where="post", label=name)
        ax.set(ylabel="weight", title=f"{r.balancer} (seed {r.seed})")
    axes[-1, 0].set_xlabel("scenario time (s)")
    axes[0, 0].legend(fontsize="x-small", ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def log_bench(
    params: dict[str, Any],
    records: Sequence[dict[str, Any]],
    results: Sequence[EpisodeResult],
    duration: float,
) -> str:
    """One MLflow run for one `bench live` invocation; returns its id.

    Raises ImportError when MLflow or matplotlib is not installed (the caller says so and goes on).
    """
    import mlflow

    from training.tracking import setup_experiment

    experiment_id = setup_experiment(EXPERIMENT)
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=f"bench-{params['scenario']}"
    ) as run:
        mlflow.log_params(params)
        for r in records:
            prefix = f"{r['balancer']}.seed{r['seed']}"
            mlflow.log_metrics(
                {
                    f"{prefix}.{k}": float(r[k])
                    for k in ("p50_ms", "p99_ms", "effective_p99_ms", "errors")
                }
            )
        mlflow.log_table(
            {key: [r[key] for r in records] for key in records[0]}, artifact_file="bench_table.json"
        )
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            (out / "records.json").write_text(json.dumps(list(records), indent=1))
            plot_latency(results, duration, out / "latency_over_time.png")
            plot_weights(results, out / "weights_over_time.png")
            mlflow.log_artifacts(tmp)
        return str(run.info.run_id)
