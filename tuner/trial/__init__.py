"""One trial, as the controller sees it: what a trial reports (`TrialReport`, `TrialFailure`, the
keys of the result dict), how it is scored (`Scorer`, `scheduler_score`), and what the controller
recorded when it ended (`Outcome`). `tuner.trial._trainable.run_trial` is the Ray Tune function that
runs the engine under the KL limit and reports these records.
"""

from __future__ import annotations

from tuner.trial._engines import check_trainer, launch_argv
from tuner.trial._memory import MemoryCheck, extreme_configs
from tuner.trial._result import (
    ERROR,
    INITIAL_EVAL,
    ITERATION,
    KL_MAX,
    OBJECTIVE,
    SCHEDULER_SCORE,
    START_SECONDS,
    STATES,
    TRAINER,
    WARM_START,
    Outcome,
    StopReason,
    TrialFailure,
    TrialReport,
    failing_alike,
    last_line,
    read_result,
)
from tuner.trial._scoring import WORST, Scorer, kl_constraint, overoptimized, scheduler_score, worst
from tuner.trial._task import TrialTask
from tuner.trial._trainable import run_trial

__all__ = ["ERROR", "INITIAL_EVAL", "ITERATION", "KL_MAX", "OBJECTIVE", "SCHEDULER_SCORE", "STATES", "WORST", "Outcome", "Scorer",
           "StopReason", "TrialFailure", "TrialReport", "check_trainer", "failing_alike",
           "kl_constraint", "last_line", "launch_argv", "overoptimized", "read_result",
           "scheduler_score", "worst"]
__all__ += ["START_SECONDS", "TRAINER", "WARM_START", "MemoryCheck", "TrialTask", "extreme_configs",
            "run_trial"]
