"""Library helpers of the lab's commands: an event loop to run on, a clean stop, a scenario draw.

The lab's commands run on uvloop when it is installed, because the load generator's own CPU time
bounds the rate it can hold on one core and its scheduling lag shows up in every latency it
measures.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import numpy as np

from rl_lb.scenarios import Scenario, load_scenario

__all__ = ["load_scenario_sample", "run_async", "wait_for_stop_signal"]

T = TypeVar("T")


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh event loop (uvloop when installed)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None
    try:
        import uvloop
    except ImportError:
        factory = None
    else:
        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


async def wait_for_stop_signal() -> None:
    """Return on SIGINT or SIGTERM, so the caller's cleanup runs instead of a traceback."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)


def load_scenario_sample(name_or_path: str, seed: int) -> Scenario:
    """One concrete scenario drawn from a shipped name or a file, reproducibly from `seed`."""
    return load_scenario(name_or_path).sample(np.random.default_rng(seed))
