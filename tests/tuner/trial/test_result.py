"""What a trial reports: records that round-trip through Ray's result dict; the scores."""

from __future__ import annotations

import math

from trials import metrics as K
from tuner.trial import (
    ERROR,
    OBJECTIVE,
    SCHEDULER_SCORE,
    WORST,
    Outcome,
    Scorer,
    StopReason,
    TrialFailure,
    TrialReport,
    failing_alike,
    read_result,
    scheduler_score,
)


def test_a_report_round_trips_through_the_result_dict():
    report = TrialReport(metrics={K.KL: 3.5, K.SCORES: 0.2}, objective=0.4, scheduler_score=0.4, kl_max=4.0,
                         stop_reason=StopReason.COMPLETED, start_seconds=1.5, warm_start=True, pid=42)
    result = {**report.to_result(), "training_iteration": 3, "time_this_iter_s": 0.1}  # Ray adds its own keys
    assert result[OBJECTIVE] == 0.4 and result[SCHEDULER_SCORE] == 0.4
    assert read_result(result) == report


def test_a_failure_round_trips_and_is_told_apart():
    failure = TrialFailure(error="RewardError: boom", retryable=True, traceback="tb", scheduler_score=-WORST, pid=7)
    result = failure.to_result()
    assert ERROR in result and read_result(result) == failure
    assert not isinstance(read_result(TrialReport({}, 0.0, 0.0, 0.0).to_result()), TrialFailure)


def test_the_scheduler_score_is_the_worst_past_the_limit_or_without_a_score():
    assert scheduler_score(0.7, False, "maximize") == 0.7
    assert scheduler_score(0.7, True, "maximize") == -WORST
    assert scheduler_score(0.7, True, "minimize") == WORST
    assert scheduler_score(math.nan, False, "maximize") == -WORST


def test_the_scorer_starts_from_the_initial_evaluation():
    final = Scorer(K.EVAL_SCORES, "maximize", "final", 3, initial=0.1)
    assert final.update({K.KL: 1.0}) == 0.1  # no evaluation this iteration: the initial one stands
    assert final.update({K.EVAL_SCORES: 0.3}) == 0.3
    best = Scorer(K.EVAL_SCORES, "maximize", "best", 3, initial=0.5)
    assert best.update({K.EVAL_SCORES: 0.3}) == 0.5
    mean = Scorer(K.SCORES, "maximize", "mean_last", 2, initial=math.nan)
    assert math.isnan(mean.update({}))
    mean.update({K.SCORES: 1.0})
    assert mean.update({K.SCORES: 2.0}) == 1.5 and mean.update({K.SCORES: 4.0}) == 3.0


TRAINER_EXIT = ("TrainerExited: the trainer exited with code 1 after 0 reports; log tail:\n"
                "Traceback (most recent call last):\n  File \"train.py\", line 1, in <module>\n"
                "ModuleNotFoundError: No module named 'torch'\n")


def test_a_failed_trials_stop_reason_ends_with_the_errors_last_line():
    reason = StopReason.failed(TRAINER_EXIT)
    assert reason == ("failed: TrainerExited: the trainer exited with code 1 after 0 reports: "
                      "ModuleNotFoundError: No module named 'torch'")
    assert StopReason.failed("ValueError: bad reward") == "failed: ValueError: bad reward"


def _failed(number: int, error: str) -> Outcome:
    return Outcome(number=number, state="FAIL", stop_reason=StopReason.failed(error), value=None,
                   error=error)


def test_the_first_trials_failing_with_the_same_last_line_stop_the_sweep():
    other = TRAINER_EXIT.replace("torch'", "trl'")
    done = Outcome(number=9, state="COMPLETE", stop_reason=StopReason.COMPLETED, value=1.0)
    interrupted = Outcome(number=8, state="FAIL", stop_reason=StopReason.INTERRUPTED, value=None)
    a, b, c, d = (_failed(n, TRAINER_EXIT) for n in range(4))
    assert failing_alike([a, b, c], 3) == "ModuleNotFoundError: No module named 'torch'"
    assert failing_alike([a, interrupted, b], 2) == "ModuleNotFoundError: No module named 'torch'"
    assert failing_alike([a, b], 3) is None  # the third has not ended
    assert failing_alike([a, _failed(1, other), c], 3) is None
    assert failing_alike([a, done, c, d], 3) is None
    assert failing_alike([a], 0) is None  # the promotion: never
