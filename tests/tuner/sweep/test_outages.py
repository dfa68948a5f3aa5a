"""Outages of the study database, for real: the private PostgreSQL is stopped mid-sweep (every
connection dropped) and started again; the trials and runs that survived are counted afterwards."""

from __future__ import annotations

import re
import subprocess
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.sweep_helpers import start_tuner, sweep_runs, tuner, write_spec
from tuner.spec import load_spec


def _states(url: str, name: str) -> list[TrialState]:
    try:
        return [t.state for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)]
    except Exception:  # not created yet, or the server is down
        return []


def _wait_for(predicate, seconds: float, proc: subprocess.Popen, log) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
        time.sleep(0.3)


def _sweep(tmp_path, postgres, name: str, **overrides):
    url = postgres.create_db(name)
    path = write_spec(tmp_path, name, storage=url, scheduler={"type": "none"}, budget={"trials": 5, "iterations": 6},
                      search_space={"policy_lr": {"choices": [3.0e-5, 1.0e-4]},
                                    "kl_coef": {"choices": [0.05, 0.02, 0.1]}},
                      **overrides)
    return path, load_spec(path), url


def _children(spec) -> list:
    return sweep_runs(MlflowClient(spec.tracking_uri()), spec.name, "trial")


@pytest.mark.slow  # about 90 s: a 10 s outage in a 5-trial sweep
def test_the_sweep_rides_through_a_database_restart(tmp_path, demo_model, postgres):
    path, spec, url = _sweep(tmp_path, postgres, "ride")
    log = tmp_path / "run.log"
    proc = start_tuner("run", path, cwd=tmp_path, log=log)
    _wait_for(lambda: TrialState.COMPLETE in _states(url, "ride") and TrialState.RUNNING in _states(url, "ride"),
              300, proc, log)
    postgres.stop_server()
    time.sleep(10)
    postgres.start_server()
    back = time.monotonic()
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "the study database is unreachable" in text and "Traceback" not in text, text[-3000:]
    print(f"restart to the sweep's end: {time.monotonic() - back:.1f} s;",
          re.findall(r"the study database is back after [0-9.]+ s", text))

    trials = optuna.load_study(study_name="ride", storage=url).trials
    trials = [t for t in trials if "duplicate_of" not in t.user_attrs]  # a repeated config, told its outcome
    # an ask that the stop cut off leaves a trial the study holds but no one launched: closed as interrupted
    strays = [t for t in trials if not t.intermediate_values and t.user_attrs.get("stop_reason") == "interrupted"]
    assert len(strays) <= 1 and all(t.state == TrialState.FAIL for t in strays), strays
    trials = [t for t in trials if t not in strays]
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)  # nothing lost, nothing twice
    assert len({t.user_attrs["ray_trial_id"] for t in trials}) == 5
    for t in trials:  # every report held through the outage was written
        assert sorted(t.intermediate_values) == list(range(1, 7)) and t.user_attrs["iterations"] == 6
    children = _children(spec)
    assert sorted(int(r.data.tags["ppo_tuner.trial_number"]) for r in children) == [t.number for t in trials]
    assert all(r.info.status == "FINISHED" for r in children)


@pytest.mark.slow  # about 90 s
def test_an_outage_past_the_window_stops_as_ctrl_c_and_resumes(tmp_path, demo_model, postgres):
    path, spec, url = _sweep(tmp_path, postgres, "outlasted", storage_outage="4s")
    log = tmp_path / "run.log"
    proc = start_tuner("run", path, cwd=tmp_path, log=log)
    _wait_for(lambda: (TrialState.COMPLETE in _states(url, "outlasted")
                       and TrialState.RUNNING in _states(url, "outlasted")),
              300, proc, log)
    postgres.stop_server()
    try:
        code = proc.wait(timeout=120)
    finally:
        postgres.start_server()
    text = log.read_text()
    assert code == 130, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unreachable" in errors[0] and "tuner resume" in errors[0], text[-3000:]
    assert "Traceback" not in text and spec.storage_url().split("@")[0].split(":")[-1] not in text  # no password

    resumed = tuner("resume", spec.sweep_dir(), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = optuna.load_study(study_name="outlasted", storage=url).trials
    counted = [t for t in trials if t.user_attrs.get("stop_reason") != "interrupted"]
    assert len(counted) == 5 and all(t.state == TrialState.COMPLETE for t in counted)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    children = _children(spec)
    assert sorted(int(r.data.tags["ppo_tuner.trial_number"]) for r in children) == [t.number for t in trials]
    assert all(r.info.status != "RUNNING" for r in children)
