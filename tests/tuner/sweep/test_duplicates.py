"""A sampled config that a trial already ran is told that trial's outcome instead of being run again."""

from __future__ import annotations

import json

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from tests.sweep_helpers import tuner, write_spec
from tuner.spec import CompiledSpec, load_spec, parse_spec, trial_config
from tuner.sweep import best_feasible, count_states, load_study, trial_rows
from tuner.sweep._stage import remaining_trials
from tuner.sweep.study import ATTR, DUPLICATE_TRIES, ask_trial, open_storage

SPEC = {"name": "d", "search_space": {"policy_lr": {"choices": [1e-5, 2e-5]}, "kl_coef": 0.05},
        "sampler": {"type": "random", "seed": 2}, "budget": {"trials": 4, "iterations": 2}}
RAN, OTHER = 1e-5, 2e-5  # the config a trial ran, and the only other one


def _study_with(state: TrialState, value: float | None = None) -> tuple[optuna.Study, CompiledSpec, int]:
    """A study whose one trial ran (or is running) the spec's config with policy_lr RAN."""
    spec = parse_spec(SPEC)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=2))
    first = study.ask()
    first.set_user_attr(ATTR["engine"], json.dumps(trial_config(spec, {"policy_lr": RAN}).to_dict()))
    first.set_user_attr(ATTR["kl_max"], 20.0)
    first.set_user_attr(ATTR["stop"], "kl_limit")
    if state == TrialState.RUNNING:
        return study, spec, first.number
    first.report(0.1, step=1)
    first.report(0.2, step=2)
    first.set_constraint("kl", 5.0)
    study.tell(first, value, state=state) if state == TrialState.COMPLETE else study.tell(first, state=state)
    return study, spec, first.number


def _ask(study: optuna.Study, spec: CompiledSpec) -> tuple[float, list[FrozenTrial]]:
    """ask_trial once: the policy_lr of the trial to run, and the trials it told as repeats."""
    before = len(study.trials)
    trial, params, _ = ask_trial(study, spec)
    told = [t for t in study.trials[before:] if t.number != trial.number]
    return params["policy_lr"], told


def test_a_finished_config_is_told_its_outcome():
    study, spec, first = _study_with(TrialState.COMPLETE, 0.25)
    policy_lr, told = _ask(study, spec)
    assert policy_lr == OTHER and len(told) >= 1  # seed 2 samples RAN three times, then OTHER
    for copy in told:
        assert copy.params == {"policy_lr": RAN}
        assert copy.state == TrialState.COMPLETE and copy.values == [0.25]
        assert copy.constraints == {"kl": 5.0} and copy.intermediate_values == {1: 0.1, 2: 0.2}
        assert copy.user_attrs[ATTR["duplicate"]] == first and copy.user_attrs[ATTR["kl_max"]] == 20.0
        assert copy.user_attrs[ATTR["stop"]] == f"same config as trial {first}: kl_limit"
    assert count_states(study)["DUPLICATE"] == len(told)


def test_another_seed_is_not_a_duplicate():
    study, _, _ = _study_with(TrialState.COMPLETE, 0.25)
    spec = parse_spec({**SPEC, "base": {"seed": 1}})  # the trial ran RAN with seed 0
    policy_lr, told = _ask(study, spec)
    assert policy_lr == RAN and told == []
    assert study.trials[-1].state == TrialState.RUNNING


def test_a_pruned_config_stays_pruned_a_running_one_is_not_run_twice_a_failed_one_may_run():
    study, spec, _ = _study_with(TrialState.PRUNED)
    policy_lr, told = _ask(study, spec)
    assert policy_lr == OTHER and told and {t.state for t in told} == {TrialState.PRUNED}

    study, spec, first = _study_with(TrialState.RUNNING)
    policy_lr, told = _ask(study, spec)
    assert policy_lr == OTHER and told and {t.state for t in told} == {TrialState.FAIL}
    assert {t.user_attrs[ATTR["stop"]] for t in told} == {f"same config as trial {first} (running)"}

    study, spec, _ = _study_with(TrialState.FAIL)
    policy_lr, told = _ask(study, spec)
    assert policy_lr == RAN and told == []  # seed 2 samples RAN three times, then OTHER, and it may run again


def test_the_repeats_of_a_used_up_space_run_after_the_last_try():
    study, spec, _ = _study_with(TrialState.COMPLETE, 0.25)
    spec = parse_spec({**SPEC, "search_space": {"policy_lr": {"choices": [RAN]}, "kl_coef": 0.05}})
    policy_lr, told = _ask(study, spec)
    assert policy_lr == RAN and len(told) == DUPLICATE_TRIES - 1


def test_a_sweep_over_two_configs_runs_each_once(tmp_path, demo_model):
    # two configs, three trials: the third sample always repeats one, so it runs only after 25 tries
    spec_path = write_spec(tmp_path, "twoconf",
                           search_space={"policy_lr": {"choices": [3.0e-5, 3.0e-4]},
                                         "kl_coef": 0.05},
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
    # copies do not count toward the budget
    assert remaining_trials(study, spec.budget.trials, open_storage(spec.storage_url())) == 0
    assert ATTR["duplicate"] not in best_feasible(study).user_attrs
    client = MlflowClient(spec.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(spec.name).experiment_id])
    assert len(runs) == 1 + 3  # the parent and the trials that ran; copies have no run
    status = tuner("status", "twoconf", "--workdir", tmp_path / "sweeps", cwd=tmp_path)
    assert status.returncode == 0 and "DUPLICATE" in status.stdout
