"""The sweep controller: Ray Tune schedules, an Optuna study samples and records, MLflow logs."""

from __future__ import annotations

from tuner.sweep._locate import find_sweep, list_sweeps
from tuner.sweep._run import SweepSummary, load_study, preflight, run_sweep
from tuner.sweep._study import best_feasible, count_states, engine_config_of, redact, trial_rows

__all__ = ["SweepSummary", "best_feasible", "count_states", "engine_config_of", "find_sweep", "list_sweeps",
           "load_study", "preflight", "redact", "run_sweep", "trial_rows"]
