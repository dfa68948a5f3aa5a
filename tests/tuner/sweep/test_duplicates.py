"""A sampled config that a trial already ran is told that trial's outcome instead of being run again."""

from __future__ import annotations

import json

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.sweep_helpers import tuner, write_spec
from tuner.spec import load_spec
from tuner.sweep import best_feasible, count_states, load_study, trial_rows
from tuner.sweep._run import remaining_trials
from tuner.sweep._study import ATTR, open_storage, ran_configs, tell_duplicate


def _study_with(engine: dict, state: TrialState, value: float | None = None) -> tuple[optuna.Study, int]:
    study = optuna.create_study(direction="maximize")
    first = study.ask()
    first.set_user_attr(ATTR["engine"], json.dumps(engine))
    first.set_user_attr(ATTR["kl_max"], 20.0)
    first.set_user_attr(ATTR["stop"], "kl_limit")
    if state == TrialState.RUNNING:
        return study, first.number
    first.report(0.1, step=1)
    first.report(0.2, step=2)
    first.set_constraint("kl", 5.0)
    study.tell(first, value, state=state) if state == TrialState.COMPLETE else study.tell(first, state=state)
    return study, first.number


def tell_if_duplicate(study: optuna.Study, trial: optuna.trial.Trial, engine: dict) -> bool:
    """What ask_trial does with one sample: look its config up among those that ran, tell a repeat."""
    earlier = ran_configs(study).get(json.dumps(engine))
    if earlier is not None:
        tell_duplicate(study, trial, earlier)
    return earlier is not None


def test_a_finished_config_is_told_its_outcome():
    study, first = _study_with({"policy_lr": 1e-5, "seed": 0}, TrialState.COMPLETE, 0.25)
    again = study.ask()
    assert tell_if_duplicate(study, again, {"policy_lr": 1e-5, "seed": 0})
    copy = study.trials[again.number]
    assert copy.state == TrialState.COMPLETE and copy.values == [0.25]
    assert copy.constraints == {"kl": 5.0} and copy.intermediate_values == {1: 0.1, 2: 0.2}
    assert copy.user_attrs[ATTR["duplicate"]] == first and copy.user_attrs[ATTR["kl_max"]] == 20.0
    assert copy.user_attrs[ATTR["stop"]] == f"same config as trial {first}: kl_limit"
    assert count_states(study)["DUPLICATE"] == 1


def test_another_seed_or_value_is_not_a_duplicate():
    study, _ = _study_with({"policy_lr": 1e-5, "seed": 0}, TrialState.COMPLETE, 0.25)
    for engine in ({"policy_lr": 1e-5, "seed": 1}, {"policy_lr": 2e-5, "seed": 0}):
        trial = study.ask()
        assert not tell_if_duplicate(study, trial, engine)
        assert study.trials[trial.number].state == TrialState.RUNNING


def test_a_pruned_config_stays_pruned_a_running_one_is_not_run_twice_a_failed_one_may_run():
    study, _ = _study_with({"x": 1}, TrialState.PRUNED)
    copy = study.ask()
    assert tell_if_duplicate(study, copy, {"x": 1})
    assert study.trials[copy.number].state == TrialState.PRUNED

    study, first = _study_with({"x": 1}, TrialState.RUNNING)
    copy = study.ask()
    assert tell_if_duplicate(study, copy, {"x": 1})
    assert study.trials[copy.number].state == TrialState.FAIL
    assert study.trials[copy.number].user_attrs[ATTR["stop"]] == f"same config as trial {first} (running)"

    study, _ = _study_with({"x": 1}, TrialState.FAIL)
    assert not tell_if_duplicate(study, study.ask(), {"x": 1})


def test_a_sweep_over_two_configs_runs_each_once(tmp_path, demo_model):
    # two configs, three trials: the third sample always repeats one, so it runs only after 25 tries
    spec_path = write_spec(tmp_path, "twoconf", search_space={"policy_lr": {"choices": [3.0e-5, 3.0e-4]}, "kl_coef": 0.05},
                           budget={"trials": 3, "iterations": 2}, scheduler={"type": "none"},
                           sampler={"type": "random", "seed": 3}, resources={"cpus_per_trial": 1, "max_concurrent": 1})
    proc = tuner("run", spec_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = load_spec(spec_path)
    study = load_study(spec)
    rows = trial_rows(study)
    ran = [r for r in rows if r.state != "DUPLICATE"]
    copies = [r for r in rows if r.state == "DUPLICATE"]
    assert len(ran) == 3 and {r.params["policy_lr"] for r in ran[:2]} == {3.0e-5, 3.0e-4}
    assert len(copies) >= 24  # the third slot: 24 repeats told, then the 25th sample runs
    for r in copies:
        original = study.trials[study.trials[r.number].user_attrs[ATTR["duplicate"]]]
        assert r.params == original.params and r.value == original.values[0]
    assert remaining_trials(study, spec.budget.trials, open_storage(spec.storage_url())) == 0  # copies do not count toward the budget
    assert ATTR["duplicate"] not in best_feasible(study).user_attrs
    client = MlflowClient(spec.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    assert len(runs) == 1 + 3  # the parent and the trials that ran; copies have no run
    status = tuner("status", "twoconf", "--workdir", tmp_path / "sweeps", cwd=tmp_path)
    assert status.returncode == 0 and "DUPLICATE" in status.stdout
