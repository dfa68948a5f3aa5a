"""What the sweep's Ray Tune callback leaves of a trial that ended, on Ray Tune's own Trial object."""

from __future__ import annotations

from ray.tune.experiment import Trial

from tuner.sweep._events import forget_metrics


def test_a_trial_that_ended_keeps_its_last_result_and_drops_tunes_per_metric_statistics():
    trial = Trial("run_trial", stub=True, config={"number": 3})
    for step in range(1, 4):
        trial.update_last_result({"training_iteration": step, "objective": 0.1 * step, "kl": float(step)})
    before = len(trial.get_json_state()[1])  # what Tune's experiment state holds for it
    assert set(trial.run_metadata.metric_analysis) == {"training_iteration", "objective", "kl"}

    forget_metrics(trial)

    assert trial.run_metadata.metric_analysis == {} and trial.run_metadata.metric_n_steps == {}
    assert trial.last_result["kl"] == 3.0 and trial.last_result["training_iteration"] == 3
    assert len(trial.get_json_state()[1]) < before / 2  # the cached JSON was made again, without them
