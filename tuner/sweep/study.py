"""Reading a sweep's Optuna study: the public names the CLI, the benchmarks and the tests use.

- the database: `open_storage` (errors become `StorageError`, passwords redacted: `redact`),
  `schema_init_lock`;
- each trial's record: the user attributes (`Attr`, and `ATTR` by short name), its state as
  recorded (`state_of`: `tuner.trial.recorded_state` of what the study holds), `TrialRow` and
  `trial_rows`, `count_states`, `engine_config_of`;
- the answer: `best_feasible`, `ranked_feasible`, `best_of`, `is_feasible`;
- trials stopped with their controller: `interrupted`, `mark_interrupted`, `requeue_interrupted`;
- the next trial of a search: `ask_trial` (a config a trial already ran is told that trial's
  outcome, `DUPLICATE_TRIES` times at most), `ran_configs`.
"""

from __future__ import annotations

from tuner.sweep._sampling import DUPLICATE_TRIES, ask_trial
from tuner.sweep._study import (
    ATTR,
    PARENT_ATTR,
    StorageError,
    TrialRow,
    best_feasible,
    best_of,
    count_states,
    engine_config_of,
    interrupted,
    is_feasible,
    mark_interrupted,
    open_storage,
    ran_configs,
    ranked_feasible,
    redact,
    requeue_interrupted,
    schema_init_lock,
    state_of,
    trial_rows,
)
from tuner.trial import Attr, State, StopReason

__all__ = ["ATTR", "DUPLICATE_TRIES", "PARENT_ATTR", "Attr", "State", "StopReason", "StorageError",
           "TrialRow", "ask_trial", "best_feasible", "best_of", "count_states", "engine_config_of",
           "interrupted", "is_feasible", "mark_interrupted", "open_storage", "ran_configs",
           "ranked_feasible", "redact", "requeue_interrupted", "schema_init_lock", "state_of",
           "trial_rows"]
