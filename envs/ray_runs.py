"""Ray for the simulator's embarrassingly parallel work: `init_ray` and `run_on_ray`.

Ray is an optional extra (`rl-lb[sweep]`) and is imported only inside these functions, so the
simulator and `rl-lb evaluate` work without it. `rl-lb evaluate --ray` spreads its (scenario,
balancer, seed) episodes over local Ray; `--ray-address ADDRESS` over a cluster; `rl-lb sweep`
starts Ray the same way (training/sweep.py).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rl_lb.errors import ConfigError

__all__ = ["LOCAL", "LOOPBACK", "init_ray", "run_on_ray"]

LOCAL = "local"
"""The address that starts Ray on this machine rather than joining a cluster."""

LOOPBACK = "127.0.0.1"
"""The only address local Ray listens on: nothing it starts is reachable from other machines."""


def init_ray(address: str = LOCAL) -> bool:
    """Start Ray on this machine (its cores, no dashboard, node address 127.0.0.1) or join the
    cluster at `address`. Returns False when Ray was already initialised by the caller (who
    then shuts it down), True when this call started or joined it."""
    try:
        import ray
    except ImportError as error:
        raise ConfigError("ray", "Ray is not installed", "pip install 'rl-lb[sweep]'") from error
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report to the Ray project
    if address != LOCAL:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ConfigError(
                "--ray-address", f"cannot join Ray at {address}: {reason}", "check the address"
            ) from error
        return True
    with _node_on_loopback():
        ray.init(
            num_cpus=len(os.sched_getaffinity(0)),
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            log_to_driver=False,
            configure_logging=False,
        )
    return True


@contextmanager
def _node_on_loopback() -> Iterator[None]:
    """Keep a local Ray node on 127.0.0.1 while `ray.init` starts it.

    `_node_ip_address="127.0.0.1"` alone is not enough: Ray swaps a loopback node address for
    the machine's reachable one, and its gRPC servers (GCS, raylet, each worker) then listen on
    all interfaces. Ray keeps a node on loopback, and binds those servers to 127.0.0.1, where it
    treats the machine as unable to join clusters: `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, read
    once when Ray is imported. So the variable goes to the processes `ray.init` starts, and the
    constant it set is overridden in this process, which imported Ray already; both are put back
    afterwards so that a later `--ray-address` in this process joins a cluster as usual.
    """
    from ray._private import ray_constants

    saved_env = os.environ.get(ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR)
    saved_flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved_flag
        if saved_env is None:
            del os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR]
        else:
            os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = saved_env


def run_on_ray(
    function: Callable[..., Any],
    jobs: Sequence[tuple[Any, ...]],
    address: str = LOCAL,
    progress: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """`[function(*job) for job in jobs]`, each job a Ray task of one CPU, results in job
    order. Ray is shut down afterwards (Ctrl-C included) if this call started it."""
    import ray

    started = init_ray(address)
    try:
        task = ray.remote(num_cpus=1)(function)
        pending = {task.remote(*job): i for i, job in enumerate(jobs)}
        results: list[Any] = [None] * len(jobs)
        done = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                results[pending.pop(ref)] = ray.get(ref)
                done += 1
                if progress is not None:
                    progress(done, len(jobs))
        return results
    finally:
        if started:
            ray.shutdown()
