"""What the sweep's Ray Tune callback leaves of a trial that ended, on Ray Tune's own Trial object."""

from __future__ import annotations

import pytest
from ray.tune.experiment import Trial

from tuner.sweep._events import forget_trial


def test_a_trial_that_ended_keeps_its_number_and_tunes_keys_and_drops_the_rest():
    config = {"number": 3, "engine": {"policy_lr": 1e-5, "model_path": "x" * 2000}, "sys_path": ["/a" * 500]}
    trial = Trial("run_trial", stub=True, config=config, evaluated_params={"engine/policy_lr": 1e-5},
                  experiment_tag="3_engine/policy_lr=1e-05")
    for step in range(1, 4):
        trial.update_last_result({"training_iteration": step, "done": step == 3, "scheduler_score": 0.1 * step,
                                  "kl": float(step), "config": config})
    state, meta = map(len, trial.get_json_state())  # what Tune's experiment state holds for it
    assert set(trial.run_metadata.metric_analysis) >= {"training_iteration", "scheduler_score", "kl"}

    forget_trial(trial)

    assert trial.config == {"number": 3} and trial.evaluated_params == {}
    assert trial.run_metadata.metric_analysis == {} and trial.run_metadata.metric_n_steps == {}
    assert {k: v for k, v in trial.last_result.items() if k != "trial_id"} == {
        "training_iteration": 3, "done": True, "scheduler_score": pytest.approx(0.3)}
    after_state, after_meta = map(len, trial.get_json_state())  # the cached JSON was made again, without them
    assert after_state < state - 2 * 2000 and after_meta < meta / 2  # the config and Tune's copy of it
