"""The sim-to-real comparison: the same scenario and balancers, simulated and live, side by side.

Per scenario and balancer it puts the simulator's and the live run's p99 next to each other (means
over seeds) with their ratio, and says whether both name the same best balancer (lowest effective
p99, the figure `rl-lb evaluate` and the trainer rank by). A policy is trained on the simulator's
verdicts, so a different best balancer live is the gap that matters most; a live p99 outside
±`TOLERANCE` of the simulator's is the one to explain.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from envs.episode import EpisodeResult, fallback_share_of

__all__ = [
    "TOLERANCE",
    "Comparison",
    "Row",
    "compare",
    "describe_spell",
    "fallback_spell",
    "fallback_spells",
    "markdown",
    "rich_tables",
]

TOLERANCE = 0.30
TIE = 0.05
"""Balancers within 5% of the best effective p99 are tied for best: a ranking inside that margin
is one seed's noise, not a verdict a policy could learn from."""


def _mean(records: Sequence[dict[str, Any]], key: str) -> float:
    values = [float(r[key]) for r in records if r[key] is not None]
    return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True)
class Row:
    balancer: str
    sim_p99_ms: float
    live_p99_ms: float
    sim_effective_p99_ms: float
    live_effective_p99_ms: float
    sim_p50_ms: float
    live_p50_ms: float
    live_errors: float
    sim_errors: float

    @property
    def ratio(self) -> float:
        """Live p99 over simulated p99."""
        return self.live_p99_ms / self.sim_p99_ms if self.sim_p99_ms > 0 else math.nan

    @property
    def within(self) -> bool:
        return abs(self.ratio - 1.0) <= TOLERANCE


@dataclass(frozen=True)
class Comparison:
    scenario: str
    seeds: int
    rows: tuple[Row, ...]

    def _best(self, side: str) -> tuple[str, ...]:
        values = {r.balancer: getattr(r, f"{side}_effective_p99_ms") for r in self.rows}
        lowest = min(values.values())
        return tuple(b for b, v in values.items() if v <= lowest * (1 + TIE))

    @property
    def sim_best(self) -> tuple[str, ...]:
        """The simulator's best balancer and any tied with it."""
        return self._best("sim")

    @property
    def live_best(self) -> tuple[str, ...]:
        return self._best("live")

    @property
    def agrees(self) -> bool:
        """Both sides name a common best balancer (ties included)."""
        return bool(set(self.sim_best) & set(self.live_best))

    @property
    def disagrees(self) -> bool:
        """The gap the doc must explain: a p99 off by more than the tolerance, or another best."""
        return not self.agrees or not all(r.within for r in self.rows)


def compare(sim: Sequence[dict[str, Any]], live: Sequence[dict[str, Any]]) -> list[Comparison]:
    """Group evaluate-style records by scenario and balancer (means over seeds), in input order."""
    grouped: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(lambda: {"sim": [], "live": []})
    )
    for side, records in (("sim", sim), ("live", live)):
        for r in records:
            grouped[r["scenario"]][r["balancer"]][side].append(r)
    comparisons = []
    for scenario, balancers in grouped.items():
        rows = []
        for balancer, sides in balancers.items():
            s, lv = sides["sim"], sides["live"]
            if not s or not lv:
                continue
            rows.append(
                Row(
                    balancer=balancer,
                    sim_p99_ms=_mean(s, "p99_ms"),
                    live_p99_ms=_mean(lv, "p99_ms"),
                    sim_effective_p99_ms=_mean(s, "effective_p99_ms"),
                    live_effective_p99_ms=_mean(lv, "effective_p99_ms"),
                    sim_p50_ms=_mean(s, "p50_ms"),
                    live_p50_ms=_mean(lv, "p50_ms"),
                    sim_errors=_mean(s, "errors") / max(_mean(s, "requests"), 1.0),
                    live_errors=_mean(lv, "errors") / max(_mean(lv, "requests"), 1.0),
                )
            )
        if rows:
            seeds = max(len(sides["live"]) for sides in balancers.values())
            comparisons.append(Comparison(scenario, seeds, tuple(rows)))
    return comparisons


_HEADERS = (
    "balancer", "sim p50", "live p50", "sim p99", "live p99", "live/sim", "±30%",
    "sim eff p99", "live eff p99", "sim err %", "live err %",
)  # fmt: skip


def _cells(row: Row) -> list[str]:
    return [
        row.balancer,
        f"{row.sim_p50_ms:.1f}",
        f"{row.live_p50_ms:.1f}",
        f"{row.sim_p99_ms:.1f}",
        f"{row.live_p99_ms:.1f}",
        f"{row.ratio:.2f}",
        "yes" if row.within else "NO",
        f"{row.sim_effective_p99_ms:.1f}",
        f"{row.live_effective_p99_ms:.1f}",
        f"{100 * row.sim_errors:.2f}",
        f"{100 * row.live_errors:.2f}",
    ]


def _verdict(c: Comparison) -> str:
    sim, live = " = ".join(c.sim_best), " = ".join(c.live_best)
    best = (
        f"same best balancer (sim {sim}; live {live})"
        if c.agrees
        else f"best balancer differs: sim {sim}, live {live}"
    )
    within = sum(r.within for r in c.rows)
    return f"{best}; live p99 within ±{TOLERANCE:.0%} of the simulator's for {within}/{len(c.rows)}"


def rich_tables(comparisons: Sequence[Comparison]) -> list[Table]:
    tables = []
    for c in comparisons:
        table = Table(
            title=f"{c.scenario}: simulator vs live (ms, mean of {c.seeds} seed(s))",
            caption=_verdict(c),
            title_justify="left",
            caption_justify="left",
        )
        for header in _HEADERS:
            table.add_column(header, justify="left" if header == "balancer" else "right")
        for row in c.rows:
            table.add_row(*_cells(row), style="" if row.within else "red")
        tables.append(table)
    return tables


def markdown(comparisons: Sequence[Comparison]) -> str:
    """One table per scenario and its verdict line, for docs/sim2real.md."""
    lines: list[str] = []
    for c in comparisons:
        lines += [f"### {c.scenario}", "", "| " + " | ".join(_HEADERS) + " |"]
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(_HEADERS) - 1)) + "|")
        lines += ["| " + " | ".join(_cells(row)) + " |" for row in c.rows]
        lines += ["", f"{_verdict(c)}.", ""]
    return "\n".join(lines)


def fallback_spell(
    episode: EpisodeResult, states: Sequence[dict[str, Any]] | None = None
) -> dict[str, Any] | None:
    """Why and when a guarded balancer served its fallback in one run; None if it never did.

    The records keep only the share of intervals on the fallback; a share says nothing of the
    cause (a regression the outcome guard measured, stale or missing inputs, a model that did
    not load) nor of whether it came at start-up, where a live run differs most from the
    simulator. Reasons are counted per polled control interval, `first_s` is the first such
    interval's start (seconds of the run). With the proxy's polled `/admin/state` documents
    (one per interval, as `modes`), `guard_at_first` is what its outcome guard had estimated
    when the first one was polled: the policy's cost against the fallback's, in ms, and
    `holds_ended_early` how many of its holds it ended because the fallback did no better (the
    highest count any poll reported, when not 0: a counter, and the last poll may have none)."""
    fallback = [
        (k, t, mode.partition(": ")[2] or "unstated")
        for k, (t, mode) in enumerate(
            zip(episode.interval_start_s.tolist(), episode.modes, strict=True)
        )
        if mode.startswith("fallback")
    ]
    if not fallback:
        return None
    spell: dict[str, Any] = {
        "scenario": episode.scenario,
        "balancer": episode.balancer,
        "seed": episode.seed,
        "share": fallback_share_of(episode),
        "reasons": dict(Counter(reason for _, _, reason in fallback)),
        "first_s": round(float(fallback[0][1]), 3),
    }
    if states is not None and len(states) == len(episode.modes):
        guard = states[fallback[0][0]].get("outcome_guard") or {}
        policy, fallback_cost = guard.get("policy_cost_s"), guard.get("fallback_cost_s")
        if policy is not None and fallback_cost is not None:
            spell["guard_at_first"] = {
                "policy_ms": round(1e3 * float(policy), 1),
                "fallback_ms": round(1e3 * float(fallback_cost), 1),
            }
        ended = max(
            int((st.get("outcome_guard") or {}).get("holds_ended_early", 0)) for st in states
        )
        if ended:
            spell["holds_ended_early"] = ended
    return spell


def fallback_spells(
    episodes: Sequence[EpisodeResult], states: Sequence[Sequence[dict[str, Any]]] | None = None
) -> list[dict[str, Any]]:
    """`fallback_spell` of each run that had one, in run order (`states`: each run's polls)."""
    spells = (
        fallback_spell(e, None if states is None else states[k]) for k, e in enumerate(episodes)
    )
    return [s for s in spells if s is not None]


def describe_spell(spell: dict[str, Any]) -> str:
    """One line: `learned on gen-1 seed 0: 24% of intervals on the fallback (regression 5)…`."""
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(spell["reasons"].items()))
    guard = spell.get("guard_at_first")
    estimate = (
        f" (the guard's estimates then: policy {guard['policy_ms']:g} ms, "
        f"fallback {guard['fallback_ms']:g} ms)"
        if guard
        else ""
    )
    ended = spell.get("holds_ended_early", 0)
    early = f"; {ended} hold(s) ended early, the fallback no better" if ended else ""
    return (
        f"{spell['balancer']} on {spell['scenario']} seed {spell['seed']}: "
        f"{spell['share']:.0%} of control intervals on the fallback ({reasons}), "
        f"the first from {spell['first_s']:.1f} s{estimate}{early}"
    )
