"""The study searcher in a real study, without Ray: each result decoded once for the searcher and
the sweep's callbacks, and a finished trial recorded with its verdict."""

from __future__ import annotations

import optuna
import pytest

from tests.sweep_helpers import write_spec
from trials import metrics as K
from tuner.spec import load_spec
from tuner.sweep._searcher import StudySearcher
from tuner.sweep.study import Attr, state_of
from tuner.trial import ITERATION, StopReason, TrialReport, read_result


def _result(iteration: int, kl: float, pid: int = 11, stop: str | None = None, resumed_after: int = 0) -> dict:
    report = TrialReport(metrics={K.KL: kl, K.SCORES: 0.25, K.ITERATION_SECONDS: 2.0},
                         objective=0.1 * iteration, scheduler_score=0.1 * iteration,
                         kl_max=kl, stop_reason=stop, pid=pid, resumed_after=resumed_after)
    return {**report.to_result(), ITERATION: iteration, "time_this_iter_s": 0.1}


@pytest.fixture
def searcher(tmp_path):
    spec = load_spec(write_spec(tmp_path, "s", budget={"trials": 2, "iterations": 2}))
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{tmp_path / 's.db'}")
    searcher = StudySearcher(study, spec)
    assert searcher.suggest("ray-1") is not None
    return searcher


def test_a_result_is_decoded_once_for_the_searcher_and_the_callbacks(searcher):
    first = _result(1, 2.0)
    searcher.on_trial_result("ray-1", first)
    decoded = searcher.decode("ray-1", dict(first))  # the callbacks get Ray's other copy
    assert decoded == read_result(first)
    assert searcher.decode("ray-1", dict(first)) is decoded
    second = searcher.decode("ray-1", _result(2, 3.0))
    assert second is not decoded and second.kl_max == 3.0
    searcher.on_retry("ray-1")  # the next attempt counts from iteration 1 again
    again = searcher.decode("ray-1", _result(1, 5.0, pid=12))
    assert again is not decoded and again.kl_max == 5.0


def test_a_finished_trial_is_recorded_with_its_verdict(searcher):
    searcher.on_trial_result("ray-1", _result(1, 2.0))
    searcher.on_trial_complete("ray-1", _result(2, 16.0, stop=StopReason.KL_LIMIT))
    outcome = searcher.outcome("ray-1")
    assert (outcome.state, outcome.stop_reason, outcome.value) == ("INFEASIBLE", "kl_limit", 0.2)
    assert (outcome.iterations, outcome.kl_max, outcome.kl_final) == (2, 16.0, 16.0)
    assert outcome.compute_seconds == 4.0
    (trial,) = searcher.study.get_trials()
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == [0.2]
    assert trial.constraints == {"kl": 1.0} and state_of(trial) == "INFEASIBLE"
    assert trial.intermediate_values == {1: pytest.approx(0.1), 2: pytest.approx(0.2)}
    assert trial.user_attrs[Attr.STOP] == "kl_limit" and trial.user_attrs[Attr.ITERATIONS] == 2
    assert trial.user_attrs[Attr.PID] == 11 and trial.user_attrs[Attr.REWARD] == 0.25


def test_a_retry_resumed_from_its_checkpoint_counts_the_restored_iterations_once(searcher):
    searcher.on_trial_result("ray-1", _result(1, 2.0))
    searcher.on_trial_result("ray-1", _result(2, 3.0))  # then its worker dies; its checkpoint holds iteration 1
    searcher.on_retry("ray-1")
    searcher.on_trial_result("ray-1", _result(1, 2.0, pid=12, resumed_after=1))  # reported again, not run
    searcher.on_trial_complete("ray-1", _result(2, 3.0, pid=12, stop=StopReason.COMPLETED, resumed_after=1))
    outcome = searcher.outcome("ray-1")
    assert outcome.iterations == 2 and outcome.state == "COMPLETE"
    assert outcome.compute_seconds == 6.0  # iteration 2 ran twice, iteration 1 once
    (trial,) = searcher.study.get_trials()
    assert trial.user_attrs[Attr.RESUMED] == 1 and trial.user_attrs[Attr.RETRIES] == 1
    assert trial.intermediate_values == {1: pytest.approx(0.1), 2: pytest.approx(0.2)}
