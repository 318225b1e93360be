"""`LivePoolEnv`: the Gymnasium environment of a running `rl-lb serve`, stepped in wall-clock time.

The same observation and action as the simulated `BackendPoolEnv` (one `FeatureEncoder`), the
same reward function (`envs.env.interval_reward`); what changes is where the numbers come from.
Each step posts the decoded weights to the proxy's admin API (`POST /admin/weights`, validated
there like a policy's output), sleeps one control interval, reads the snapshot the control loop
now sees (`GET /admin/snapshot`) and encodes it here with the step history (the proxy's own
`observation` field is the same encoding without history, which a history-trained policy cannot
use; a test checks the two agree), and scores the interval from the deltas of the proxy's own
counters (`GET /metrics`). The proxy keeps its guard:
refused weights leave it on its previous decision, and weights not refreshed within two control
intervals (a PPO update taking its time) send it to least-latency with reason "stale".

The interval's figures are per exchange with a backend, read from the exported latency histogram:
the mean is exact (sum / count), the p99 is interpolated inside the histogram's buckets (1, 2.5, 5,
10, 25, 50, 100, 250 ms ...), and requests that failed (a 5xx, or an error the proxy answered
itself) count once more at the timeout, as in the simulator's effective latency.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any, NamedTuple

import gymnasium as gym
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from envs.env import DEFAULT_SLOTS, interval_reward, policy_spaces
from rl_lb.errors import ConfigError
from rl_lb.features import FeatureEncoder
from rl_lb.types import PoolSnapshot

__all__ = [
    "Counters",
    "Interval",
    "LivePoolEnv",
    "snapshot_from_json",
]

HTTP_TIMEOUT_S = 5.0
_UNPLACED = ("no-backend", "overloaded")
"""Proxy error reasons of requests that reached no backend."""


def snapshot_from_json(data: Mapping[str, Any]) -> PoolSnapshot:
    """The `PoolSnapshot` behind `GET /admin/snapshot` (JSON has no NaN or infinity: null is
    "no data" for quantiles and latency, "never answered" (infinity) for staleness)."""

    def floats(key: str, missing: float) -> np.ndarray:
        return np.array([missing if v is None else float(v) for v in data[key]])

    return PoolSnapshot(
        taken_at=float(data["taken_at"]),
        names=tuple(data["names"]),
        in_flight=np.array(data["in_flight"], dtype=np.int64),
        ewma_s=floats("ewma_s", math.nan),
        p50_s=floats("p50_s", math.nan),
        p95_s=floats("p95_s", math.nan),
        p99_s=floats("p99_s", math.nan),
        error_rate=floats("error_rate", math.nan),
        throughput_rps=floats("throughput_rps", math.nan),
        staleness_s=floats("staleness_s", math.inf),
        healthy=np.array(data["healthy"], dtype=np.bool_),
        ejected=np.array(data["ejected"], dtype=np.bool_),
        weights=floats("weights", 0.0),
        window_s=float(data["window_s"]),
    )


class Interval(NamedTuple):
    """What the proxy's counters say about one control interval."""

    requests: int
    errors: int
    mean_s: float
    """Mean time to response headers over the exchanges; NaN without any."""
    effective_p99_s: float
    """p99 with failed requests at the timeout; NaN without any request."""


class Counters:
    """The proxy's cumulative counters at one scrape of /metrics."""

    def __init__(self, text: str) -> None:
        buckets: dict[float, float] = {}
        self.latency_sum = self.exchanges = self.failed = self.retries = self.unplaced = 0.0
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, sample.value
                if name == "rl_lb_backend_latency_seconds_bucket":
                    bound = float(labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + value
                elif name == "rl_lb_backend_latency_seconds_sum":
                    self.latency_sum += value
                elif name == "rl_lb_backend_latency_seconds_count":
                    self.exchanges += value
                elif name == "rl_lb_backend_requests_total" and labels["code"] == "5xx":
                    self.failed += value
                elif name == "rl_lb_proxy_errors_total":
                    self.failed += value
                    if labels["reason"] in _UNPLACED:
                        self.unplaced += value
                elif name == "rl_lb_retries_total":
                    self.retries += value
        self.bounds = np.array(sorted(buckets))
        self.cumulative = np.array([buckets[b] for b in self.bounds])

    def since(self, earlier: Counters, timeout_s: float) -> Interval:
        """The interval from `earlier` to this scrape.

        Requests are exchanges, less retries, plus those the proxy could not place; a failed
        one counts at `timeout_s` on top of its exchange's own latency in the histogram.
        """
        exchanges = self.exchanges - earlier.exchanges
        errors = self.failed - earlier.failed
        requests = exchanges - (self.retries - earlier.retries) + (self.unplaced - earlier.unplaced)
        if requests <= 0:
            return Interval(0, 0, math.nan, math.nan)
        mean = (self.latency_sum - earlier.latency_sum) / exchanges if exchanges > 0 else math.nan
        same = len(earlier.bounds) == len(self.bounds)
        cumulative = self.cumulative - (earlier.cumulative if same else 0.0)
        answered = float(cumulative[-1]) if len(cumulative) else 0.0
        rank = 0.99 * (answered + errors)
        p99 = timeout_s if rank > answered else _quantile(self.bounds, cumulative, rank)
        return Interval(int(requests), int(errors), mean, p99)


def _quantile(bounds: np.ndarray, cumulative: np.ndarray, rank: float) -> float:
    """The value of rank `rank` in a cumulative histogram, linear inside its bucket (as
    Prometheus' histogram_quantile; the +Inf bucket answers its lower edge)."""
    k = int(np.searchsorted(cumulative, rank, side="left"))
    low_edge = float(bounds[k - 1]) if k > 0 else 0.0
    if not math.isfinite(bounds[k]):
        return low_edge
    low_count = float(cumulative[k - 1]) if k > 0 else 0.0
    width = float(cumulative[k]) - low_count
    fraction = (rank - low_count) / width if width > 0 else 1.0
    return low_edge + (float(bounds[k]) - low_edge) * fraction


class LivePoolEnv(gym.Env[np.ndarray, np.ndarray]):
    """Set the weights of a live proxy, one control interval (of wall-clock time) per step.

    `admin_url` is the proxy's admin address (`http://127.0.0.1:9090`). `ideal_latency_s` and
    `timeout_s` are the scenario's (`Scenario.ideal_latency_s`, `Scenario.timeout_s`): the reward
    is made relative to the first and charges failures at the second, as in simulation. An
    episode is truncated after `episode_steps`; `close()` hands the weights back to the proxy's
    own balancer. `info` holds the interval's `requests`, `errors`, `mean_ms`,
    `effective_p99_ms`, the applied `weights` and, when the proxy refused them, `refused`.
    """

    metadata: dict[str, Any] = {"render_modes": []}  # noqa: RUF012 (Gymnasium's class attribute)

    def __init__(
        self,
        admin_url: str,
        *,
        ideal_latency_s: float,
        timeout_s: float,
        episode_steps: int = 64,
        history: int = 4,
        token: str | None = None,
    ) -> None:
        if not (ideal_latency_s > 0 and timeout_s > 0 and episode_steps >= 1):
            raise ConfigError(
                "LivePoolEnv", "ideal_latency_s, timeout_s and episode_steps must be > 0"
            )
        self.admin_url = admin_url.rstrip("/")
        self.ideal_latency_s = ideal_latency_s
        self.timeout_s = timeout_s
        self.episode_steps = episode_steps
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.encoder = FeatureEncoder(history)
        self.observation_space, self.action_space = policy_spaces(self.encoder)
        self.interval_s = float(self._get_json("/admin/state")["control_interval_s"])
        self._snapshot: PoolSnapshot | None = None
        self._history: list[PoolSnapshot] = []
        self._counts: Counters | None = None
        self._steps = 0

    # -- HTTP -------------------------------------------------------------------------------

    def _request(self, path: str, method: str = "GET", body: Any = None) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {**self._headers, **({"Content-Type": "application/json"} if data else {})}
        request = urllib.request.Request(self.admin_url + path, data, headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), bytes(error.read())

    def _get_json(self, path: str) -> dict[str, Any]:
        status, body = self._request(path)
        if status != 200:
            raise ConfigError(self.admin_url + path, f"HTTP {status}: {body[:200]!r}")
        reply: dict[str, Any] = json.loads(body)
        return reply

    def _scrape(self) -> Counters:
        status, body = self._request("/metrics")
        if status != 200:
            raise ConfigError(self.admin_url + "/metrics", f"HTTP {status}")
        return Counters(body.decode())

    # -- the environment --------------------------------------------------------------------

    def _observe(self) -> np.ndarray:
        self._snapshot = snapshot_from_json(self._get_json("/admin/snapshot"))
        past = self._history[len(self._history) - (self.encoder.history - 1) :]
        return self.encoder.encode(
            self._snapshot, past if self.encoder.history > 1 else [], slots=DEFAULT_SLOTS
        )

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._history = []
        self._steps = 0
        observation = self._observe()
        self._counts = self._scrape()
        return observation, {"backends": list(self._snapshot.names) if self._snapshot else []}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._snapshot is None or self._counts is None:
            raise RuntimeError("call reset() before step()")
        snapshot = self._snapshot
        weights = self.encoder.decode(np.asarray(action), snapshot)
        info: dict[str, Any] = {"weights": weights}
        status, body = self._request("/admin/weights", "POST", {"weights": weights.tolist()})
        if status != 200:
            info["refused"] = json.loads(body).get("error", body.decode(errors="replace"))
        time.sleep(self.interval_s)
        self._history.append(snapshot)
        observation = self._observe()
        counts = self._scrape()
        interval = counts.since(self._counts, self.timeout_s)
        self._counts = counts
        self._steps += 1
        info.update(
            requests=interval.requests,
            errors=interval.errors,
            mean_ms=interval.mean_s * 1e3,
            effective_p99_ms=interval.effective_p99_s * 1e3,
        )
        reward = 0.0
        if interval.requests > 0 and math.isfinite(interval.mean_s):
            error_rate = min(interval.errors / interval.requests, 1.0)
            reward = interval_reward(
                interval.effective_p99_s, interval.mean_s, error_rate, self.ideal_latency_s
            )
        return observation, reward, False, self._steps >= self.episode_steps, info

    def close(self) -> None:
        """Give the weights back to the proxy's own balancer (it would fall back anyway)."""
        if self._snapshot is not None:
            with contextlib.suppress(OSError):  # a proxy already gone has nothing to hand back
                self._request("/admin/weights", "DELETE")
        super().close()
