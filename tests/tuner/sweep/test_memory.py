"""Memory as a constraint of the search: configs predicted not to fit are recorded infeasible without
being launched; `tuner validate` shows the prediction at the space's extremes."""

from __future__ import annotations

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from tests.sweep_helpers import sweep_runs, tuner, write_spec
from trials import PPOConfig
from tuner.spec import extreme_configs, load_spec, parse_spec
from tuner.sweep import load_study, trial_rows
from tuner.sweep.study import ATTR
from tuner.trial import MemoryCheck

SPACE = {"rollout_batch_size": {"choices": [16, 512]}, "response_length": {"choices": [8, 96]}}


def test_the_prediction_grows_with_the_batch_and_the_length(demo_model):
    check = MemoryCheck(1.0, gpus_per_trial=0)
    small = PPOConfig(model_path=str(demo_model), rollout_batch_size=16, mini_batch_size=8, response_length=8)
    big_batch = PPOConfig(model_path=str(demo_model), rollout_batch_size=512, mini_batch_size=64, response_length=8)
    long = PPOConfig(model_path=str(demo_model), rollout_batch_size=16, mini_batch_size=8, response_length=96)
    assert check.predict_gb(small) < check.predict_gb(big_batch) and check.predict_gb(small) < check.predict_gb(long)
    assert check.violation(small) == check.predict_gb(small) - 1.0


def test_on_a_gpu_the_vllm_servers_share_of_the_card_counts_toward_the_trials_memory(demo_model, tmp_path):
    """vLLM reserves its share of the card at its start: on a GPU the trial needs its own peak plus that
    share (of the card: the budget over gpus_per_trial where trials share one); on a CPU nothing more."""
    hf = PPOConfig(model_path=str(demo_model))
    vllm = PPOConfig(model_path=str(demo_model), rollout_engine="vllm", vllm_python=str(tmp_path / "python"),
                     vllm_gpu_memory_utilization=0.25)
    whole, half = MemoryCheck(80.0, gpus_per_trial=1), MemoryCheck(40.0, gpus_per_trial=0.5)
    assert whole.predict_gb(vllm) - whole.predict_gb(hf) == pytest.approx(0.25 * 80)
    assert half.predict_gb(vllm) - half.predict_gb(hf) == pytest.approx(0.25 * 80)  # a quarter of the 80 GiB card
    cpu = MemoryCheck(8.0, gpus_per_trial=0)
    assert cpu.predict_gb(vllm) == cpu.predict_gb(hf)


def test_the_extremes_of_a_space_are_its_ends_and_choices():
    spec = parse_spec({"name": "m", "base": {"mini_batch_size": 8}, "search_space": {
        **SPACE, "policy_lr": {"low": 1e-6, "high": 5e-5, "log": True}}})
    configs = list(extreme_configs(spec))
    assert {(c.rollout_batch_size, c.response_length) for c in configs} == {(16, 8), (16, 96), (512, 8), (512, 96)}


def _write(tmp_path, name: str, **overrides):
    """write_spec's demo sweep, searching SPACE: its fixed rollout and response lengths are left out."""
    path = write_spec(tmp_path, name, search_space=SPACE, **overrides)
    data = yaml.safe_load(path.read_text())
    data["base"] = {k: v for k, v in data["base"].items() if k not in SPACE} | {"mini_batch_size": 16}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _budget_between(demo_model, fitting: int) -> float:
    """A budget that the `fitting` smallest configs of SPACE fit and the others do not."""
    spec = parse_spec({"name": "b", "trial": {"model": str(demo_model)}, "base": {"mini_batch_size": 16},
                       "search_space": SPACE})
    check = MemoryCheck(1.0, gpus_per_trial=0)
    peaks = sorted(check.predict_gb(c) for c in extreme_configs(spec))
    assert len(peaks) == 4 and peaks[fitting - 1] < peaks[fitting]
    return (peaks[fitting - 1] + peaks[fitting]) / 2


@pytest.mark.slow  # a sweep: 33 s (the prediction's tests stay fast)
def test_configs_predicted_not_to_fit_are_infeasible_and_never_launched(tmp_path, demo_model):
    budget = _budget_between(demo_model, fitting=1)  # only rollout 16 with 8-token responses fits
    path = _write(tmp_path, "mem", sampler={"type": "random", "seed": 0},
                  budget={"trials": 2, "iterations": 2}, scheduler={"type": "none"},
                      resources={"trial_memory_gb": budget, "max_concurrent": 1})
    proc = tuner("run", path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    spec = load_spec(path)
    study = load_study(spec)
    frozen = {t.number: t for t in study.trials}
    unlaunched = [t for t in study.trials if ATTR["unlaunched"] in t.user_attrs]
    launched = [t for t in study.trials
                if ATTR["unlaunched"] not in t.user_attrs and ATTR["duplicate"] not in t.user_attrs]
    assert len(launched) == 2  # the budget counts launched trials only
    assert unlaunched, [(t.number, t.params, t.user_attrs.get(ATTR["memory"])) for t in study.trials]
    for t in unlaunched:
        assert t.state == optuna.trial.TrialState.PRUNED and t.constraints["memory"] > 0
        assert t.user_attrs[ATTR["memory"]] > budget and "predicted" in t.user_attrs[ATTR["stop"]]
    for t in launched:
        assert t.constraints["memory"] <= 0 and t.user_attrs[ATTR["memory"]] <= budget
        assert (t.params["rollout_batch_size"], t.params["response_length"]) == (16, 8)
    states = {r.number: r.state for r in trial_rows(study)}
    assert all(states[t.number] == "INFEASIBLE" for t in unlaunched)
    client = MlflowClient(spec.tracking_uri())
    runs = sweep_runs(client, spec.name, "trial")
    assert sorted(int(r.data.tags["ppo_tuner.trial_number"]) for r in runs) == sorted(t.number for t in launched)
    assert all(frozen[n].state != optuna.trial.TrialState.FAIL for n in frozen)


def test_validate_shows_the_prediction_at_the_extremes(tmp_path, demo_model):
    budget = _budget_between(demo_model, fitting=2)
    path = _write(tmp_path, "val", resources={"trial_memory_gb": budget})
    proc = tuner("validate", path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("# memory:"))
    assert "predicted peak on a CPU" in line and "rollout 512" in line and "response 96" in line
    assert "exceed resources.trial_memory_gb" in line and not line.split(";")[1].strip().startswith("0 of")


def test_a_trial_out_of_memory_after_its_retries_is_infeasible_for_memory(tmp_path, demo_model):
    """The searcher's record of a trial whose last attempt ran out of memory (the error Ray hands it
    after the retries), in a real study: PRUNED with a positive memory constraint, shown INFEASIBLE."""
    import torch

    from tuner.sweep._searcher import StudySearcher
    from tuner.sweep.study import state_of
    from tuner.trial import TrialFailure
    from tuner.trial._trainable import retryable

    assert retryable(torch.OutOfMemoryError("CUDA out of memory"))  # Ray runs it again first
    spec = load_spec(_write(tmp_path, "oom", resources={"trial_memory_gb": 100.0}))
    study = optuna.create_study(study_name="oom", storage=f"sqlite:///{tmp_path / 'oom.db'}")
    searcher = StudySearcher(study, spec)
    searcher.suggest("ray-1")
    failure = TrialFailure(error="OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
                           retryable=True, kl_max=3.0)
    searcher.on_trial_complete("ray-1", failure.to_result(), error=True)
    (trial,) = study.get_trials()
    assert trial.state == optuna.trial.TrialState.PRUNED and trial.constraints["memory"] > 0
    assert state_of(trial) == "INFEASIBLE" and trial.user_attrs[ATTR["stop"]].startswith("memory: OutOfMemoryError")
    assert searcher.outcome("ray-1").state == "INFEASIBLE"
