"""An interrupted sweep (Ctrl-C) resumes without running finished trials again."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.sweep_helpers import start_tuner, stop_sweep, sweep_runs, tuner, write_spec
from tuner.spec import load_spec
from tuner.sweep.study import open_storage


def _finished(storage: str, name: str) -> int:
    if not Path(storage.removeprefix("sqlite:///")).is_file():
        return 0
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        return 0
    return sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))


def test_an_interrupted_sweep_resumes(tmp_path, demo_model):
    spec_path = write_spec(tmp_path, "resume6", scheduler={"type": "none"}, budget={"trials": 6, "iterations": 8},
                           search_space={"policy_lr": {"choices": [3.0e-5, 1.0e-4]},
                                         "kl_coef": {"choices": [0.05, 0.02, 0.1]}})
    spec = load_spec(spec_path)
    proc = start_tuner("run", spec_path, cwd=tmp_path, log=tmp_path / "run.log")
    code, log, _ = stop_sweep(proc, tmp_path / "run.log", ready=lambda: _finished(spec.storage_url(), "resume6") >= 2)
    assert code == 130, log[-3000:]
    assert "tuner resume" in log
    study = optuna.load_study(study_name="resume6", storage=spec.storage_url())
    done_before = {t.number for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert 2 <= len(done_before) < 6

    resumed = tuner("resume", spec.sweep_dir(), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    study = optuna.load_study(study_name="resume6", storage=spec.storage_url())
    counted = [t for t in study.trials if t.user_attrs.get("stop_reason") != "interrupted"]
    assert len(counted) == 6 and all(t.state == optuna.trial.TrialState.COMPLETE for t in counted)
    assert done_before <= {t.number for t in counted}  # finished trials were kept, not run again
    stopped = [t for t in study.trials if t.user_attrs.get("stop_reason") == "interrupted"]
    reruns = {t.user_attrs.get("run_again_of"): t for t in counted}
    assert stopped and all(reruns[t.number].params == t.params for t in stopped)  # ran again
    assert len({t.user_attrs["ray_trial_id"] for t in study.trials}) == len(study.trials)

    client = MlflowClient(spec.tracking_uri())
    runs = sweep_runs(client, "resume6")
    parents = sweep_runs(client, "resume6", "sweep")
    children = sweep_runs(client, "resume6", "trial")
    assert len(parents) == 1  # the parent run is reused
    assert len(children) == len(study.trials)  # one child run per trial, interrupted ones included
    assert all(r.info.status != "RUNNING" for r in runs)


def test_a_continued_study_does_not_draw_its_first_samples_again(tmp_path):
    from tuner.spec import parse_spec, sample_params
    from tuner.sweep import load_study

    spec = parse_spec({"name": "reseed", "workdir": str(tmp_path / "sweeps"), "sampler": {"type": "random"},
                       "search_space": {"policy_lr": {"low": 1.0e-6, "high": 5.0e-5, "log": True},
                                        "kl_coef": {"low": 0.01, "high": 0.2, "log": True}}})
    spec.sweep_dir().mkdir(parents=True)
    first = load_study(spec, create=True)
    trial = first.ask()
    drawn = sample_params(trial, spec)
    first.tell(trial, 0.1)
    again = load_study(spec, create=True)  # what `tuner resume` opens
    assert sample_params(again.ask(), spec) != drawn
    fresh = parse_spec({**spec.resolved(), "name": "reseed-fresh"})
    # a new sweep: the spec's seed, as before
    assert sample_params(load_study(fresh, create=True).ask(), fresh) == drawn


@pytest.mark.parametrize("sampler", ["random", "grid"])
def test_interrupted_configs_run_again_first_and_count_once(tmp_path, sampler):
    """Ctrl-C leaves two trials interrupted: the resumed sweep runs their configs again (same values
    and seed) before new samples, queues each once however often it resumes, and counts the re-runs
    once; a grid covers each point once."""
    from tuner.spec import parse_spec
    from tuner.sweep import load_study
    from tuner.sweep._stage import remaining_trials
    from tuner.sweep.study import ask_trial, mark_interrupted, requeue_interrupted

    lrs = [1e-6, 2e-6, 3e-6, 4e-6]
    spec = parse_spec({"name": f"requeue-{sampler}", "workdir": str(tmp_path / "sweeps"),
                       "sampler": {"type": sampler}, "search_space": {"policy_lr": {"choices": lrs}},
                       "budget": {"trials": 4}})
    spec.sweep_dir().mkdir(parents=True)
    study = load_study(spec, create=True)
    first = [ask_trial(study, spec) for _ in range(2)]  # both running at the Ctrl-C
    storage = open_storage(spec.storage_url())
    mark_interrupted(study, storage)
    assert remaining_trials(study, 4, storage) == 4
    assert requeue_interrupted(study, 4) == [0, 1]
    assert requeue_interrupted(study, 4) == []  # a second resume queues nothing again
    ran = []
    for _ in range(4):
        trial, params, engine = ask_trial(study, spec)
        ran.append((params, engine, trial.user_attrs.get("run_again_of")))
        study.tell(trial, 0.0)
    assert [r[:2] for r in ran[:2]] == [f[1:] for f in first]  # same values, engine config, seed
    assert [r[2] for r in ran] == [0, 1, None, None]
    assert remaining_trials(study, 4, storage) == 0
    if sampler == "grid":
        assert sorted(r[0]["policy_lr"] for r in ran) == lrs
