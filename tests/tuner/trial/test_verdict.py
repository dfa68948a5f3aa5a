"""A trial's verdict, without Ray or a study: each way a trial can end, and the state the study's
reader gives back from what was recorded."""

from __future__ import annotations

import json
import math

import pytest

from trials import metrics as K
from tuner.trial import (
    STATES,
    Attr,
    Ending,
    State,
    StopReason,
    TrialFailure,
    TrialReport,
    memory_constraint,
    recorded_state,
    unfit,
    verdict,
)

LIMIT = 10.0


def report(objective: float = 0.5, kl: float = 4.0, kl_max: float = 6.0,
           stop: str | None = None) -> TrialReport:
    return TrialReport(metrics={K.KL: kl, K.SCORES: 0.3}, objective=objective,
                       scheduler_score=objective, kl_max=kl_max, stop_reason=stop)


def judge(last, iterations=8, **kwargs):
    kwargs = {"planned": 8, "raised": False, "kl_limit": LIMIT, **kwargs}
    return verdict(last, iterations, **kwargs)


def test_a_trial_that_ran_its_iterations_is_complete_with_its_score_and_kl():
    v = judge(report(stop=StopReason.COMPLETED))
    assert (v.state, v.told, v.ending) == (State.COMPLETE, State.COMPLETE, Ending.COMPLETED)
    assert v.stop_reason == "completed" and v.value == 0.5 and v.kl_last == 4.0
    assert dict(v.constraints) == {"kl": 6.0 - LIMIT}
    assert dict(v.attrs) == {Attr.ITERATIONS: 8, Attr.REWARD: 0.3, Attr.KL_MAX: 6.0,
                             Attr.KL_FINAL: 4.0, Attr.STOP: "completed"}


def test_a_trial_the_kl_limit_stopped_is_told_complete_and_is_infeasible():
    v = judge(report(kl=12.0, kl_max=12.5, stop=StopReason.KL_LIMIT), iterations=3)
    assert (v.state, v.told, v.ending) == (State.INFEASIBLE, State.COMPLETE, Ending.KL_RULE)
    assert v.stop_reason == "kl_limit" and v.constraints["kl"] == pytest.approx(2.5)


def test_a_trial_the_forecast_stopped_below_the_limit_is_infeasible_by_at_least_one():
    v = judge(report(kl=7.0, kl_max=7.0, stop=StopReason.KL_FORECAST), iterations=3)
    assert (v.state, v.stop_reason) == (State.INFEASIBLE, "kl_forecast")
    assert v.constraints["kl"] == 1.0


def test_a_trial_cut_before_its_last_iteration_is_pruned_with_its_constraint():
    v = judge(report(), iterations=3)
    assert (v.state, v.told, v.ending) == (State.PRUNED, State.PRUNED, Ending.CUT)
    assert v.stop_reason == "pruned" and v.value == 0.5
    assert v.constraints["kl"] == 6.0 - LIMIT and v.attrs[Attr.ITERATIONS] == 3


def test_a_trial_with_no_score_is_pruned_whatever_stopped_it():
    v = judge(report(objective=math.nan, stop=StopReason.KL_LIMIT, kl_max=11.0))
    assert (v.state, v.told, v.stop_reason) == (State.PRUNED, State.PRUNED, "kl_limit")
    assert v.constraints["kl"] == 1.0


def test_a_trial_that_raised_fails_with_its_error_and_the_last_line_in_its_reason():
    error = "RuntimeError: trainer exited\nlog tail:\nModuleNotFoundError: No module named 'x'"
    v = judge(TrialFailure(error=error, retryable=False, kl_max=None), iterations=2)
    assert (v.state, v.told, v.ending) == (State.FAIL, State.FAIL, Ending.RAISED)
    assert v.stop_reason == ("failed: RuntimeError: trainer exited: "
                             "ModuleNotFoundError: No module named 'x'")
    assert v.error == error and v.attrs[Attr.ERROR] == error and v.value is None
    assert dict(v.constraints) == {} and Attr.KL_MAX not in v.attrs


def test_a_trial_whose_process_died_fails_with_its_last_report_kept():
    v = judge(report(), iterations=5, raised=True)
    assert (v.state, v.stop_reason) == (State.FAIL, "failed: the trial's process died")
    assert v.attrs[Attr.KL_MAX] == 6.0 and v.constraints["kl"] == 6.0 - LIMIT


def test_a_trial_out_of_memory_is_pruned_and_infeasible_for_memory():
    failure = TrialFailure(error="OutOfMemoryError: CUDA out of memory\ntrace", retryable=False)
    v = judge(failure, iterations=1, memory_budget_gb=8.0, predicted_gb=6.5)
    assert (v.state, v.told, v.ending) == (State.INFEASIBLE, State.PRUNED, Ending.OUT_OF_MEMORY)
    assert v.stop_reason == "memory: OutOfMemoryError: CUDA out of memory"
    assert dict(v.constraints) == {"kl": 0.0, "memory": 1.0}  # fitted by prediction, ran out anyway
    bigger = judge(failure, memory_budget_gb=8.0, predicted_gb=9.0)
    assert bigger.constraints["memory"] == 2.0


def test_a_checked_trial_carries_its_memory_constraint():
    v = judge(report(stop=StopReason.COMPLETED), memory_budget_gb=8.0, predicted_gb=6.5)
    assert v.state == State.COMPLETE and v.constraints["memory"] == -1.5
    assert "memory" not in judge(report(), memory_budget_gb=8.0).constraints


def test_a_trial_that_reported_no_kl_has_no_kl_attributes():
    v = judge(report(kl=math.nan, kl_max=math.nan, stop=StopReason.COMPLETED))
    assert Attr.KL_MAX not in v.attrs and "kl" not in v.constraints
    nan_final = judge(report(kl=math.nan, kl_max=3.0, stop=StopReason.COMPLETED))
    assert nan_final.attrs[Attr.KL_FINAL] == 3.0  # the last KL missing: the largest stands in


def test_a_config_predicted_not_to_fit_is_recorded_unlaunched():
    assert unfit(7.9, 8.0) is None
    v = unfit(9.25, 8.0)
    assert (v.state, v.told, v.ending) == (State.INFEASIBLE, State.PRUNED, Ending.UNFIT)
    assert v.stop_reason == "memory: predicted 9.25 GiB > 8 GiB"
    assert dict(v.constraints) == {"kl": 0.0, "memory": 1.25}
    assert v.attrs[Attr.UNLAUNCHED] == v.attrs[Attr.STOP] == v.stop_reason


def test_memory_constraint_is_at_least_one_for_a_trial_out_of_memory():
    assert memory_constraint(6.0, 8.0) == -2.0
    assert memory_constraint(6.0, 8.0, out_of_memory=True) == 1.0


@pytest.mark.parametrize("told,constraints,duplicate,state", [
    ("COMPLETE", {"kl": -1.0}, False, State.COMPLETE),
    ("COMPLETE", {"kl": 0.5}, False, State.INFEASIBLE),
    ("PRUNED", {"kl": -1.0, "memory": 1.0}, False, State.INFEASIBLE),
    ("PRUNED", None, False, State.PRUNED),
    ("FAIL", {"kl": 3.0}, False, State.FAIL),
    ("RUNNING", {}, False, State.RUNNING),
    ("COMPLETE", {"kl": -1.0}, True, State.DUPLICATE),
])
def test_the_recorded_state_is_read_back_from_what_the_study_holds(told, constraints, duplicate,
                                                                   state):
    assert recorded_state(told, constraints, duplicate) == state


def test_states_and_keys_are_their_strings_in_records():
    assert STATES == ("COMPLETE", "INFEASIBLE", "PRUNED", "FAIL", "RUNNING", "WAITING", "DUPLICATE")
    assert f"{State.FAIL:<6}|" == "FAIL  |" and str(StopReason.KL_LIMIT) == "kl_limit"
    assert json.dumps({Attr.STOP: StopReason.PRUNED}) == '{"stop_reason": "pruned"}'


def test_a_trial_records_its_last_mean_response_length_for_the_kl_target_of_its_export():
    last = TrialReport(metrics={K.KL: 4.0, K.SCORES: 0.3, K.RESPONSE_LENGTH: 37.5}, objective=0.5,
                       scheduler_score=0.5, kl_max=6.0, stop_reason=StopReason.COMPLETED)
    assert judge(last).attrs[Attr.RESPONSE_LENGTH] == 37.5
    assert Attr.RESPONSE_LENGTH not in judge(report(stop=StopReason.COMPLETED)).attrs
