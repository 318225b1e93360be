"""The section of Prequal's probes, and where a backend answers them."""

from __future__ import annotations

from dataclasses import dataclass

from rl_lb.control.setting import Setting, _Section, setting

__all__ = ["PROBE_PATH", "PrequalSettings"]


PROBE_PATH = "/.rl-lb/probe"
"""Where the proxy's `prequal` probes a backend by default, and where the emulated backends
answer (GET → JSON `{"rif": int, "latency_ms": float}`; docs/proxy.md)."""


@dataclass(frozen=True)
class PrequalSettings(_Section):
    """Prequal's probe pool and hot-cold rule (`rl_lb.prequal`; defaults from the paper).

    `q_rif` is the RIF quantile above which a backend is hot: 0.84 is the paper's default; the
    prequal-rs reimplementation found that 0.6 herds less at high load.
    """

    probes: float = setting(
        3.0,
        Setting(
            "prequal-probes",
            "Probes sent per request (to random backends; a fraction is a probability).",
            minimum=0.0,
            maximum=16.0,
            scenario="prequal.probes",
        ),
    )
    pool_size: int = setting(
        16,
        Setting(
            "prequal-pool",
            "Most probe answers kept (the newest per backend).",
            minimum=2,
            maximum=64,
            integer=True,
            scenario="prequal.pool_size",
        ),
    )
    max_age_s: float = setting(
        1.0,
        Setting(
            "prequal-max-age",
            "Probe answers older than this are dropped.",
            "s",
            minimum=0.0,
            min_exclusive=True,
            scenario="prequal.max_age_s",
        ),
    )
    removals: int = setting(
        1,
        Setting(
            "prequal-removals",
            "Answers removed per request, alternately the oldest and the worst.",
            minimum=0,
            maximum=16,
            integer=True,
            scenario="prequal.removals",
        ),
    )
    q_rif: float = setting(
        0.84,
        Setting(
            "prequal-q-rif",
            "Quantile of recent requests-in-flight above which a backend is hot "
            "(0.6 herds less at high load).",
            maximum=1.0,
            scenario="prequal.q_rif",
        ),
    )
    max_reuse: int = setting(
        16,
        Setting(
            "prequal-max-reuse",
            "Most requests one probe answer may serve.",
            minimum=1,
            integer=True,
            scenario="prequal.max_reuse",
        ),
    )
    probe_rtt_s: float = setting(
        0.001,
        Setting(
            "prequal-probe-rtt",
            "Simulator only: round trip of one probe (the proxy's probes take the real one).",
            "s",
            minimum=0.0,
            scenario="prequal.probe_rtt_s",
            proxy=False,
        ),
    )
