"""The control spec: every setting the simulator and the proxy must share, declared once.

A policy trained offline is only safe to serve if the proxy feeds it and guards it exactly as the
simulator did: the same metrics window and EWMA time constant, the same error penalty, the same
health-check and ejection rules, the same retry budget. Each of those settings is declared in this
package once — default, bounds, unit and one-line help — and everything else is derived from it:

- the proxy's flags and TOML keys (`Setting.key`, e.g. `--metrics-window` / `metrics-window`),
- the scenario file's sections (`Setting.scenario`, e.g. `[metrics] window_s`),
- the simulator's parameters (the section dataclasses are handed to it as they are),
- the docs' settings tables (`markdown_table`).

A default is written nowhere else in the repository (tests/test_control_spec.py checks the
proxy's flags and docs/proxy.md against this package, tests/test_scenarios.py docs/scenarios.md).

Where things are: `setting` (the declaration mechanism: `Setting`, `setting`, `check_value`),
`pool_settings` (metrics, health checks, ejection), `traffic_settings` (retries, slow start),
`guard_settings` (the outcome guard), `prequal_settings` (Prequal's probes), `spec` (`ControlSpec`
and what is derived from every declaration: flags, docs tables). Import from `rl_lb.control`.
"""

from rl_lb.control.guard_settings import OutcomeGuardSettings
from rl_lb.control.pool_settings import EjectionSettings, HealthSettings, MetricsSettings
from rl_lb.control.prequal_settings import PROBE_PATH, PrequalSettings
from rl_lb.control.setting import Setting, check_value, section_settings, setting
from rl_lb.control.spec import ControlSpec, default_text, markdown_table, spec_settings
from rl_lb.control.traffic_settings import RetrySettings, SlowStartSettings

__all__ = [
    "PROBE_PATH",
    "ControlSpec",
    "EjectionSettings",
    "HealthSettings",
    "MetricsSettings",
    "OutcomeGuardSettings",
    "PrequalSettings",
    "RetrySettings",
    "Setting",
    "SlowStartSettings",
    "check_value",
    "default_text",
    "markdown_table",
    "section_settings",
    "setting",
    "spec_settings",
]
