"""One trial, as the controller sees it: what a trial reports (`TrialReport`, `TrialFailure`, the
keys of the result dict), how it is scored (`Scorer`, `scheduler_score`), its verdict when it ended
(`verdict`: the `State`, stop reason, constraints and `Attr` attributes the study records), and what
the controller recorded (`Outcome`). `tuner.trial._trainable.run_trial` is the Ray Tune function
that runs the engine under the KL limit and reports these records.
"""

from __future__ import annotations

from tuner.trial._launch import check_trainer, launch, launch_argv
from tuner.trial._memory import GIB, MemoryCheck
from tuner.trial._result import (
    ERROR,
    INITIAL_EVAL,
    ITERATION,
    KL_MAX,
    OBJECTIVE,
    PID,
    SCHEDULER_SCORE,
    START_SECONDS,
    STATES,
    TRAINER,
    WARM_START,
    Outcome,
    State,
    StopReason,
    TrialFailure,
    TrialReport,
    failing_alike,
    last_line,
    read_result,
)
from tuner.trial._scoring import WORST, Scorer, kl_constraint, overoptimized, scheduler_score, worst
from tuner.trial._task import TrialTask
from tuner.trial._trainable import remove_own_checkpoints, run_trial
from tuner.trial._verdict import (
    Attr,
    Ending,
    Verdict,
    ending_of,
    feasible,
    memory_constraint,
    recorded_state,
    unfit,
    verdict,
)

__all__ = ["ERROR", "GIB", "INITIAL_EVAL", "ITERATION", "KL_MAX", "OBJECTIVE", "PID",
           "SCHEDULER_SCORE", "START_SECONDS", "STATES", "TRAINER", "WARM_START", "WORST", "Attr",
           "Ending", "MemoryCheck", "Outcome", "Scorer", "State", "StopReason", "TrialFailure",
           "TrialReport", "TrialTask", "Verdict", "check_trainer", "ending_of", "failing_alike",
           "remove_own_checkpoints",
           "feasible", "kl_constraint", "last_line", "launch", "launch_argv", "memory_constraint",
           "overoptimized", "read_result", "recorded_state", "run_trial", "scheduler_score",
           "unfit", "verdict", "worst"]
