"""The sweep controller: Ray Tune schedules, an Optuna study samples and records, MLflow logs.

`run_sweep(spec, callbacks)` runs a compiled spec (the search, then the promotion of its best configs)
and returns a `SweepSummary`; `SweepCallback`s are told each trial's start, reports and outcome;
`promoted_configs` and `choose` read the promotion's results and the sweep's answer from the studies.
"""

from __future__ import annotations

from tuner.sweep._callback import SweepCallback
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
from tuner.sweep._study import (
           TrialRow,
           best_feasible,
           count_states,
           engine_config_of,
           redact,
           trial_rows,
)

__all__ = ["PromotedConfig", "StudyOutage", "SweepCallback", "choose", "promoted_configs", "promotion_study", "SweepSummary", "TrialRow", "best_feasible", "count_states", "engine_config_of",
           "export_choice",            "find_sweep", "list_sweeps", "load_study", "open_study", "preflight", "redact", "run_sweep", "sync_tracking", "trial_folder",
           "trial_rows", "trials_to_run"]
