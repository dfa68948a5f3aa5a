"""The sweep controller: Ray Tune schedules, an Optuna study samples and records, MLflow logs.

`run_sweep(spec, callbacks)` runs a compiled spec (the search, then the promotion of its best configs)
and returns a `SweepSummary`; `SweepCallback`s are told each trial's start, reports and outcome;
`promoted_configs` and `choose` read the promotion's results and the sweep's answer from the studies.
`stop_on_sigterm` and `stop_signal` make SIGTERM stop a sweep as Ctrl-C does; `diagnosis_text`,
`SweepTracker` and `sweep_page` read a sweep's MLflow runs; `dashboard_app` and `dashboard_page`
serve its study to optuna-dashboard.
"""

from __future__ import annotations

from typing import Any

from tuner.sweep._callback import SweepCallback
from tuner.sweep._dashboard import dashboard_app, dashboard_page
from tuner.sweep._diagnose import diagnosis_text
from tuner.sweep._export import export_choice
from tuner.sweep._locate import find_sweep, list_sweeps, trial_folder
from tuner.sweep._outage import StudyOutage
from tuner.sweep._promotion import PromotedConfig, choose, promoted_configs, promotion_study
from tuner.sweep._run import (
    SweepSummary,
    load_study,
    open_study,
    preflight,
    run_sweep,
    sync_tracking,
    trials_to_run,
)
from tuner.sweep._signals import stop_on_sigterm, stop_signal
from tuner.sweep._study import (
    TrialRow,
    best_feasible,
    count_states,
    engine_config_of,
    redact,
    trial_rows,
)

__all__ = ["PromotedConfig", "StudyOutage", "SweepCallback", "SweepSummary", "SweepTracker",
           "TrialRow", "best_feasible", "choose", "count_states", "dashboard_app", "dashboard_page",
           "diagnosis_text", "engine_config_of", "export_choice", "find_sweep", "list_sweeps",
           "load_study", "open_study", "preflight", "promoted_configs", "promotion_study", "redact",
           "run_sweep", "stop_on_sigterm", "stop_signal", "sweep_page", "sync_tracking",
           "trial_folder", "trial_rows", "trials_to_run"]


def __getattr__(name: str) -> Any:
    # MLflow takes seconds to import: `import tuner.sweep` loads it only where tracking is used.
    if name in ("SweepTracker", "sweep_page"):
        from tuner.sweep import _tracking

        return getattr(_tracking, name)
    raise AttributeError(name)
