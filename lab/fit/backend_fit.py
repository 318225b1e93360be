"""One backend's world from its recorded requests: concurrency, service time, errors, changes.

The model is the simulator's (envs/): `concurrency` servers and a FIFO queue. A request
dispatched while n exchanges are open at the backend (itself counted) starts at once when
n <= c; otherwise it waits for n - c of the requests ahead to finish, each finishing at rate
c / mean, so its expected latency is mean × (1 + (n - c) / c). `fit_concurrency` fits that
broken line to the mean latency per in-flight count and keeps the c of least gamma deviance.

Given c, when the recording holds every request, each request's service time is read off the
departures (`service_times`): in a FIFO queue of c servers a request starts when it arrives or
when the c-th latest of the earlier requests finishes, whichever is later, so its service time
is its finish minus that start. Those of the requests that queued (`_busy_service`) are the
server's occupancy while it is busy; their distribution is chosen by likelihood among the
simulator's (`fit_service`) and their mean sets the backend's capacity, to which a replay at
the recipe's peak load (the pool's capacity) is as sensitive as a queue at load 1 is: on the
gunicorn pool a mean 2 % low replayed the pool p99 40 % low. The queue factor
1 + (n - c) / c (`_queue_mean`) is the fallback for a sampled recording, whose departures are
not all known: it takes the request in service to have a whole service left, so it reads a
near-constant service time up to 8 % low.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from rl_lb.types import FloatArray, IntArray

__all__ = [
    "MIN_BIN",
    "BackendFit",
    "ChangeWindow",
    "ServiceFit",
    "change_points",
    "fit_backend",
    "fit_concurrency",
    "fit_service",
    "refine_concurrency",
    "service_times",
]

MIN_BIN = 20
"""Requests at or below a concurrency (and twice as many above it) needed to tell it."""
MIN_SERVICE = 30
"""Low-load requests below which the service time is reported as too thin to fit."""
CHANGE_WINDOW_S = 5.0
"""Width of the windows of mean low-load latency that change points are looked for in."""
CHANGE_RATIO = 1.3
"""A segment whose mean latency differs from the backend's usual by more than this is a change."""
MIN_QUEUED = 100
"""Queued requests from which the service time is measured (`_busy_service`); below, all."""
FIFO_SLACK = 0.01
"""Share of requests that may finish before a FIFO queue lets them start (the timestamps'
jitter) for a concurrency to be read as consistent with the departures (`refine_concurrency`)."""
MAX_OVERTAKEN = 0.05
"""Share of requests finishing before a FIFO queue lets them start beyond which the departures
are not read as a FIFO queue's (the service times then come from the queue factor)."""


@dataclass(frozen=True)
class ServiceFit:
    dist: str
    mean_s: float
    mean_range: tuple[float, float]
    cv: float
    cv_range: tuple[float, float]
    shape: float
    samples: int


@dataclass(frozen=True)
class ChangeWindow:
    at_s: float
    until_s: float
    slowdown: float


@dataclass(frozen=True)
class BackendFit:
    name: str
    requests: int
    concurrency: int | None
    """None: the in-flight count never passed the concurrency long enough to tell it."""
    concurrency_seen: int
    """The largest in-flight count seen (at least 3 requests)."""
    service: ServiceFit
    error_rate: float
    error_latency_s: float
    changes: tuple[ChangeWindow, ...]
    notes: tuple[str, ...] = field(default=())


def _bins(in_flight: IntArray, latency: FloatArray) -> tuple[IntArray, FloatArray, IntArray]:
    """In-flight counts seen (3 requests or more), their mean latency and request count."""
    counts = np.bincount(in_flight)
    sums = np.bincount(in_flight, weights=latency)
    levels = np.flatnonzero(counts >= 3)
    levels = levels[levels >= 1]
    return levels, sums[levels] / counts[levels], counts[levels]


def fit_concurrency(in_flight: IntArray, latency: FloatArray) -> tuple[int | None, int]:
    """(c, largest well-populated in-flight count); c None when no count beyond c is seen.

    Each candidate c gets its maximum-likelihood mean under a gamma model of the latencies (a
    gamma GLM: errors relative to the fitted mean, so the long queues do not drown the knee);
    the c of least deviance wins. A c at the largest populated count has no queued side to check, so
    that answer is "cannot tell".
    """
    levels, means, counts = _bins(in_flight, latency)
    if len(levels) == 0:
        return None, 0
    top = int(levels[-1])
    best_c, best_error = top, math.inf
    for c in range(1, top + 1):
        shape = 1.0 + np.maximum(levels - c, 0) / c
        scale = float(np.sum(counts * means / shape) / np.sum(counts))
        fitted = scale * shape
        error = float(np.sum(counts * ((means - fitted) / fitted - np.log(means / fitted))))
        if error < best_error * (1 - 1e-9):
            best_c, best_error = c, error
    below, above = levels <= best_c, levels > best_c
    if counts[above].sum() < 2 * MIN_BIN or counts[below].sum() < MIN_BIN:
        return None, top
    if means[above].mean() < 1.1 * means[below].mean():  # no climb past it: noise
        return None, top
    return best_c, top


def _lognormal_loglik(x: FloatArray) -> tuple[float, float, float]:
    logs = np.log(x)
    mu, sigma = float(logs.mean()), float(logs.std())
    sigma = max(sigma, 1e-9)
    loglik = float(
        np.sum(-logs - math.log(sigma * math.sqrt(2 * math.pi)) - (logs - mu) ** 2 / (2 * sigma**2))
    )
    return loglik, mu, sigma


def fit_service(latency: FloatArray) -> ServiceFit:
    """The service-time distribution of low-load latencies, by AIC among the simulator's."""
    x = np.maximum(np.asarray(latency, dtype=np.float64), 1e-6)
    n = len(x)
    mean = float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else 0.0
    cv = sd / mean if mean > 0 else 0.0
    half = 2 * sd / math.sqrt(max(n, 1))
    mean_range = (max(mean - half, 1e-6), mean + half)
    candidates: dict[str, float] = {}
    candidates["exponential"] = 2 * 1 - 2 * float(np.sum(-np.log(mean) - x / mean))
    loglik, _, sigma = _lognormal_loglik(x)
    candidates["lognormal"] = 2 * 2 - 2 * loglik
    low = float(x.min())
    alpha = n / float(np.sum(np.log(x / low))) if np.any(x > low) else math.inf
    if 1 < alpha < math.inf:
        pareto = n * math.log(alpha) + n * alpha * math.log(low) - (alpha + 1) * np.sum(np.log(x))
        candidates["pareto"] = 2 * 2 - 2 * float(pareto)
    dist = min(candidates, key=lambda k: candidates[k])
    if cv < 0.05:
        dist = "constant"  # a (near) fixed time: no density to compare, the simulator's constant
    fitted_cv = {"exponential": 1.0, "constant": 0.0}.get(dist, cv)
    if dist == "lognormal":
        fitted_cv = math.sqrt(math.exp(sigma**2) - 1)
    cv_half = fitted_cv * 2 / math.sqrt(2 * max(n - 1, 1))  # normal-theory spread of an sd
    cv_range = (max(fitted_cv - cv_half, 0.0), fitted_cv + cv_half)
    shape = alpha if dist == "pareto" else 1.5
    return ServiceFit(dist, mean, mean_range, fitted_cv, cv_range, shape, n)


def _queue_mean(
    service: ServiceFit, latency: FloatArray, in_flight: IntArray, concurrency: int
) -> ServiceFit:
    """The mean service time from every request, queued ones included: latency over the
    queue model's factor 1 + (n - c) / c (the gamma GLM's estimate). Queued requests are most
    of a loaded backend's, so this mean is several times better measured than the low-load
    one; the distribution's shape (dist, cv) still comes from the low-load requests. It is biased
    low for a service time less variable than the exponential (the request in service has less
    than a whole service left): the fallback when `service_times` cannot be used. (Correcting
    the first wait for the cv, a residual of (1 + cv²) / 2 means, was tried: on gunicorn, cv
    0.15, it raised the means to 108-111 ms where low-load medians were 103-104 ms, and the
    replayed pool p99 from -6% to +94%.)"""
    ratios = latency / (1.0 + np.maximum(in_flight - concurrency, 0) / concurrency)
    mean = float(ratios.mean())
    half = 2 * float(ratios.std(ddof=1)) / math.sqrt(len(ratios)) if len(ratios) > 1 else 0.0
    return dataclasses.replace(
        service, mean_s=mean, mean_range=(max(mean - half, 1e-6), mean + half)
    )


def service_times(arrival_s: FloatArray, latency_s: FloatArray, concurrency: int) -> FloatArray:
    """Each request's service time in a FIFO queue of `concurrency` servers, from every request's
    arrival and latency (in arrival order): it started at its arrival or, if later, when the
    `concurrency`-th latest finish among the requests before it came (until then every server
    was busy with an earlier request), and served until its own finish. Why: the queued
    requests, most of a loaded backend's, then measure the service time as the low-load ones
    do, whatever its distribution, and their sum over a busy period is its length, so the mean
    is the backend's throughput when busy. A value at or below zero says a request overtook
    the queue (not FIFO, or a request missing from the recording)."""
    finish = arrival_s + latency_s
    latest: list[float] = []  # min-heap of the `concurrency` latest finishes so far
    service = np.empty(len(finish))
    for i, (arrived, done) in enumerate(zip(arrival_s.tolist(), finish.tolist(), strict=True)):
        full = len(latest) == concurrency
        service[i] = done - (max(arrived, latest[0]) if full else arrived)
        if not full:
            heapq.heappush(latest, done)
        elif done > latest[0]:
            heapq.heapreplace(latest, done)
    return service


def _level_deviance(service: FloatArray, in_flight: IntArray, concurrency: int) -> float:
    """How far the mean service time per in-flight count strays from the overall mean (gamma
    deviance per request): near zero when the service time does not depend on the queue, as
    with the right concurrency; a wrong one leaves waits in, or takes work out of, some counts."""
    positive = service > 0
    x, level = service[positive], np.minimum(in_flight[positive], 4 * concurrency)
    overall = float(x.mean())
    counts = np.bincount(level)
    sums = np.bincount(level, weights=x)
    seen = counts >= 3
    means = sums[seen] / counts[seen]
    return float(
        np.sum(counts[seen] * ((means - overall) / overall - np.log(means / overall))) / len(x)
    )


def refine_concurrency(
    arrival_s: FloatArray, latency_s: FloatArray, in_flight: IntArray, concurrency: int
) -> int:
    """`concurrency`, or one less when the departures cannot tell the two apart.

    Why: on a loaded machine every latency carries the machine's delay, which blurs the knee
    `fit_concurrency` looks for, and it has answered c + 1 (never c - 1 in the runs seen); the
    service times read off the departures with c + 1 carry a share of the wait (+50 % seen).
    With one server less, a variable service time makes requests finish before the queue would
    let them start (a near-constant one does not), and a wrong count makes the service time
    depend on the in-flight count; c - 1 is kept when neither shows (`FIFO_SLACK`, and a level
    deviance at most twice c's)."""
    if concurrency <= 1:
        return concurrency
    fewer = service_times(arrival_s, latency_s, concurrency - 1)
    if float(np.mean(fewer <= 0)) > FIFO_SLACK:
        return concurrency
    current = service_times(arrival_s, latency_s, concurrency)
    deviance = _level_deviance(current, in_flight, concurrency)
    if _level_deviance(fewer, in_flight, concurrency - 1) <= 2 * deviance + 1e-4:
        return concurrency - 1
    return concurrency


def _busy_service(
    arrival_s: FloatArray,
    latency_s: FloatArray,
    in_flight: IntArray,
    concurrency: int,
    notes: list[str],
) -> FloatArray | None:
    """The service times (`service_times`) of the requests that queued, or of all when fewer
    than `MIN_QUEUED` did; None (and a note) when the departures are not a FIFO queue's.

    Why the queued ones: they start the moment a server frees, so their service time is the
    server's occupancy alone, the backend's capacity that sets how long its queue grows. A
    request served at once also carries what happens outside the server (the proxy, the
    loopback, connecting: on emulated backends sharing the load generator's loop their low-load
    service read 1-11 % above the queued ones), and a server on a shared machine is slower
    while busy (gunicorn: 103 ms with a few requests open in the pool, 106 ms with 20-80)."""
    service = service_times(arrival_s, latency_s, concurrency)
    if len(service) < MIN_SERVICE:
        return None
    overtaken = float(np.mean(service <= 0))
    if overtaken > MAX_OVERTAKEN:
        notes.append(
            f"{overtaken:.0%} of the requests finished before a FIFO queue of {concurrency} "
            "would let them start: service time from the queue factor"
        )
        return None
    queued = service[(in_flight > concurrency) & (service > 0)]
    return queued if len(queued) >= MIN_QUEUED else service[service > 0]


def change_points(
    times: FloatArray, latency: FloatArray, duration_s: float, max_changes: int = 4
) -> tuple[ChangeWindow, ...]:
    """Windows whose low-load latency differs from the usual: binary segmentation of the mean
    latency per `CHANGE_WINDOW_S` window, a split kept when it cuts the squared error by more
    than a BIC penalty; segments beyond `CHANGE_RATIO` of the median segment are changes."""
    edges = np.arange(0.0, duration_s + CHANGE_WINDOW_S, CHANGE_WINDOW_S)
    which = np.digitize(times, edges) - 1
    counts = np.bincount(which, minlength=len(edges))[: len(edges) - 1]
    sums = np.bincount(which, weights=latency, minlength=len(edges))[: len(edges) - 1]
    keep = counts >= 5
    if keep.sum() < 4:
        return ()
    starts = edges[:-1][keep]
    means = sums[keep] / counts[keep]
    penalty = 2 * math.log(len(means)) * float(np.var(np.diff(means))) / 2 + 1e-30
    cuts = [0, len(means)]
    for _ in range(max_changes):
        best: tuple[float, int] | None = None
        for a, b in itertools.pairwise(cuts):
            segment = means[a:b]
            total = float(np.sum((segment - segment.mean()) ** 2))
            for k in range(a + 1, b):
                left, right = means[a:k], means[k:b]
                split = float(
                    np.sum((left - left.mean()) ** 2) + np.sum((right - right.mean()) ** 2)
                )
                gain = total - split
                if gain > penalty and (best is None or gain > best[0]):
                    best = (gain, k)
        if best is None:
            break
        cuts = sorted([*cuts, best[1]])
    segments = [(a, b, float(means[a:b].mean())) for a, b in itertools.pairwise(cuts)]
    usual = float(np.median([m for _, _, m in segments]))
    windows = []
    for a, b, mean in segments:
        ratio = mean / usual
        if ratio > CHANGE_RATIO or ratio < 1 / CHANGE_RATIO:
            until = float(starts[b]) if b < len(starts) else duration_s
            windows.append(ChangeWindow(float(starts[a]), until, ratio))
    return tuple(windows)


def fit_backend(
    name: str,
    arrival_s: FloatArray,
    latency_s: FloatArray,
    failed: np.ndarray,
    in_flight: IntArray,
    duration_s: float,
    complete: bool = True,
) -> BackendFit:
    """Everything the scenario says of one backend, with notes where the data are too thin.
    `complete`: the recording holds every request (not 1 in k), so the departures are known
    and the service times are read off them (`service_times`)."""
    notes: list[str] = []
    ok = ~failed
    concurrency, seen = fit_concurrency(in_flight[ok], latency_s[ok])
    if concurrency is not None and complete:
        concurrency = refine_concurrency(arrival_s[ok], latency_s[ok], in_flight[ok], concurrency)
    if concurrency is None:
        notes.append(
            f"cannot tell the concurrency: latency never climbed with in-flight up to {seen}; "
            "step the load up until it does"
        )
    limit = concurrency if concurrency is not None else max(seen, 1)
    low = ok & (in_flight <= limit)
    if low.sum() < MIN_SERVICE:
        notes.append(f"service time from {int(low.sum())} low-load requests only")
        low = ok
    if not low.any():
        low = np.ones_like(ok)
    service = fit_service(latency_s[low])
    if concurrency is not None:
        busy = (
            _busy_service(arrival_s[ok], latency_s[ok], in_flight[ok], concurrency, notes)
            if complete
            else None
        )
        if busy is not None:
            service = fit_service(busy)
        else:
            service = _queue_mean(service, latency_s[ok], in_flight[ok], concurrency)
    errors = int(failed.sum())
    error_rate = errors / len(failed) if len(failed) else 0.0
    error_latency = float(np.median(latency_s[failed])) if errors else 0.001
    changes = change_points(arrival_s[low], latency_s[low], duration_s)
    return BackendFit(
        name=name,
        requests=len(latency_s),
        concurrency=concurrency,
        concurrency_seen=seen,
        service=service,
        error_rate=error_rate,
        error_latency_s=error_latency,
        changes=changes,
        notes=tuple(notes),
    )
