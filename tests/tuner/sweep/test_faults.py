"""Nothing lost: real faults in trials, workers and the controller; the counts checked afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.sweep_helpers import start_tuner, sweep_runs, tuner, wait_while_running, write_spec
from tuner.spec import load_spec
from tuner.sweep.study import open_storage

HERE = Path(__file__).resolve().parents[2]


def _spec(tmp_path: Path, name: str, **overrides) -> Path:
    base = {"trial": {"model": "demo", "reward": f"{HERE / 'faulty_reward.py'}:reward", "prompts": "demo"},
            "scheduler": {"type": "none"}, "sampler": {"type": "random"},
            "search_space": {"policy_lr": {"choices": [3.0e-5, 1.0e-4]}, "kl_coef": {"choices": [0.05, 0.1]}}}
    return write_spec(tmp_path, name, **{**base, **overrides})


def _env(tmp_path: Path, *flags: str, **extra: str) -> dict[str, str]:
    faults = tmp_path / "faults"
    faults.mkdir(exist_ok=True)
    for flag in flags:
        (faults / flag).touch()
    return {**os.environ, "FAULT_DIR": str(faults), **extra}


def _trials(spec) -> list[optuna.trial.FrozenTrial]:
    """The trials that ran (not the sampled repeats of a config told its earlier outcome: 4 configs, 5 trials)."""
    trials = optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage_url())).trials
    return [t for t in trials if "duplicate_of" not in t.user_attrs]


def _children(spec) -> list:
    return sweep_runs(MlflowClient(spec.tracking_uri()), spec.experiment_name(), "trial")


def test_trial_faults_fail_or_retry_and_the_sweep_completes(tmp_path, demo_model):
    path = _spec(tmp_path, "faults", budget={"trials": 5, "iterations": 5, "max_failures": 1})
    proc = tuner("run", path, cwd=tmp_path, env=_env(tmp_path, "oom", "inf"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout
    spec = load_spec(path)
    trials = _trials(spec)
    assert (len(trials) == 5 and not list((tmp_path / "faults").glob("oom"))
            and not list((tmp_path / "faults").glob("inf")))
    failed = [t for t in trials if t.state == TrialState.FAIL]
    # inf: the value loss became infinite; the same seed would diverge again, so no retry
    assert len(failed) == 1 and "NonFiniteError" in failed[0].user_attrs["error"]
    assert failed[0].user_attrs.get("retries", 0) == 0
    # oom: can pass, retried once, then finished
    retried = [t for t in trials if t.user_attrs.get("retries")]
    assert len(retried) == 1 and retried[0].state == TrialState.COMPLETE
    assert "OutOfMemoryError" in retried[0].user_attrs["errors"][0]
    children = {int(r.data.tags["ppo_tuner.trial_number"]): r for r in _children(spec)}
    assert len(children) == 5
    assert children[failed[0].number].info.status == "FAILED"
    assert "NonFiniteError" in children[failed[0].number].data.tags["ppo_tuner.error"]
    assert children[retried[0].number].data.tags["ppo_tuner.retries"] == "1"


@pytest.mark.slow  # a sweep: 31 s (retries: test_trial_faults_fail_or_retry...)
def test_a_fault_that_outlasts_max_failures_is_recorded_failed(tmp_path, demo_model):
    path = _spec(tmp_path, "crash", budget={"trials": 3, "iterations": 4, "max_failures": 0})
    proc = tuner("run", path, cwd=tmp_path, env=_env(tmp_path, "crash"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _trials(load_spec(path))
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(trials) == 3 and len(failed) == 1
    assert "RuntimeError: the reward service is unavailable" in failed[0].user_attrs["error"]



def _running_trial_pid(spec) -> int | None:
    if not Path(spec.storage_url().removeprefix("sqlite:///")).is_file():
        return None
    try:
        trials = _trials(spec)
    except (KeyError, Exception):
        return None
    for t in trials:
        if t.state == TrialState.RUNNING and t.user_attrs.get("pid", -1) > 0:
            return t.user_attrs["pid"]
    return None


@pytest.mark.slow  # a sweep with a worker killed: 51 s
def test_a_killed_worker_is_retried_and_the_sweep_completes(tmp_path, demo_model):
    path = _spec(tmp_path, "workerkill", budget={"trials": 4, "iterations": 8, "max_failures": 2},
                 resources={"cpus_per_trial": 1, "max_concurrent": 1})
    spec = load_spec(path)
    log = tmp_path / "run.log"
    proc = subprocess.Popen([*_python_tuner(), "run", str(path)], cwd=tmp_path, stdout=log.open("w"),
                            stderr=subprocess.STDOUT, env=_env(tmp_path, FAULT_SLOW="0.2"))
    pid = wait_while_running(lambda: _running_trial_pid(spec), 240, proc, log)
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    trials = _trials(spec)
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sum(t.user_attrs.get("retries", 0) for t in trials) == 1
    assert len(_children(spec)) == 4


def _python_tuner() -> list[str]:
    import sys

    return [sys.executable, "-m", "tuner.cli"]


@pytest.mark.slow  # a sweep killed and resumed: 76 s (tests/tuner/sweep/test_resume.py stays fast)
def test_the_controller_killed_mid_sweep_resumes_with_nothing_lost(tmp_path, demo_model):
    path = _spec(tmp_path, "ctlkill", budget={"trials": 5, "iterations": 6})
    spec = load_spec(path)
    log = tmp_path / "run.log"
    proc = start_tuner("run", path, cwd=tmp_path, log=log)

    def finished() -> int:
        try:
            return sum(t.state == TrialState.COMPLETE for t in _trials(spec)) if Path(
                spec.storage_url().removeprefix("sqlite:///")).is_file() else 0
        except Exception:
            return 0

    wait_while_running(lambda: finished() >= 2 and _running_trial_pid(spec), 300, proc, log)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(3)
    before = {t.number for t in _trials(spec) if t.state == TrialState.COMPLETE}
    assert any(t.state == TrialState.RUNNING for t in _trials(spec))  # left behind by the dead controller

    resumed = tuner("resume", spec.sweep_dir(), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = _trials(spec)
    counted = [t for t in trials if t.user_attrs.get("stop_reason") != "interrupted"]
    assert len(counted) == 5 and all(t.state == TrialState.COMPLETE for t in counted)
    assert before <= {t.number for t in counted}
    assert not any(t.state == TrialState.RUNNING for t in trials)
    children = _children(spec)
    numbers = [int(r.data.tags["ppo_tuner.trial_number"]) for r in children]
    assert sorted(numbers) == sorted(t.number for t in trials)  # exactly one child run per trial
    assert all(r.info.status != "RUNNING" for r in children)
    interrupted = [r for r in children if r.data.tags.get("ppo_tuner.state") in ("KILLED", "FAIL")]
    assert interrupted and all(r.info.status == "KILLED" for r in interrupted)
    client = MlflowClient(spec.tracking_uri())
    parents = sweep_runs(client, spec.experiment_name(), "sweep")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # the parent run is reused
