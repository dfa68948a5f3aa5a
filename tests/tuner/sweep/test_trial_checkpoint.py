"""Our engine's trial checkpoints in a real sweep: the Ray worker running a trial is SIGKILLed after its
checkpoint, Ray Tune retries the trial, and the retry continues after the checkpoint as the same run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient

from tests.sweep_helpers import (
    FAST_BASE,
    start_tuner,
    stop_sweep,
    sweep_runs,
    tuner,
    wait_while_running,
    write_spec,
)
from trials import CHECKPOINT_FILE, PPOConfig, train
from trials import metrics as K
from tuner.engines import CHECKPOINTS
from tuner.spec import load_spec
from tuner.sweep.study import open_storage

HERE = Path(__file__).resolve().parents[2]
ITERATIONS = 8


def _trial(spec) -> optuna.trial.FrozenTrial | None:
    try:
        trials = optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage_url())).trials
    except Exception:  # the study is not made yet
        return None
    return trials[0] if trials else None


def _pid(spec) -> int | None:
    """The process running the trial's attempt, once it reported."""
    trial = _trial(spec)
    return trial.user_attrs.get("pid") if trial is not None else None



def _spec(tmp_path: Path, name: str) -> Path:
    """One trial of 8 iterations, a checkpoint every 2, the adaptive KL controller; rewards that can be slowed."""
    base = {**FAST_BASE, "ppo_epochs": 2, "mini_batch_size": 16, "checkpoint_every": 2, "kl_mode": "adaptive",
            "kl_target": 1.0, "kl_horizon": 200.0}
    return write_spec(tmp_path, name, base=base, scheduler={"type": "none"}, sampler={"type": "random"},
                      trial={"model": "demo", "reward": f"{HERE / 'faulty_reward.py'}:reward", "prompts": "demo"},
                      search_space={"policy_lr": {"choices": [1.0e-4, 3.0e-4]}}, kl_limit=1000,
                      budget={"trials": 1, "iterations": ITERATIONS, "max_failures": 1, "promote": {"top_k": 0}},
                      resources={"cpus_per_trial": 1, "max_concurrent": 1})


@pytest.mark.slow  # a sweep of one trial whose worker is killed and retried: about 60 s
def test_a_killed_trial_resumes_after_its_checkpoint_as_the_run_never_killed(tmp_path, demo_model):
    path = _spec(tmp_path, "ckpt")
    spec = load_spec(path)
    log = tmp_path / "run.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FAULT_SLOW": "0.3"}  # slow rewards leave time to kill it
    proc = subprocess.Popen([sys.executable, "-m", "tuner.cli", "run", str(path)], cwd=tmp_path, env=env,
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    saved = spec.sweep_dir() / "trials" / "0" / CHECKPOINTS / CHECKPOINT_FILE
    try:
        pid = wait_while_running(lambda: saved.is_file() and _pid(spec), 300, proc, log)
        os.kill(pid, signal.SIGKILL)  # the worker dies mid-trial, as on a lost node
        killed_at = torch.load(saved, weights_only=False)["iteration"]  # what the retry finds
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    trial = _trial(spec)
    assert trial.state == optuna.trial.TrialState.COMPLETE, trial.user_attrs
    assert trial.user_attrs["retries"] == 1 and trial.user_attrs["iterations"] == ITERATIONS
    assert 2 <= killed_at < ITERATIONS and killed_at % 2 == 0
    assert trial.user_attrs["resumed_after"] == killed_at  # the retry continued after the checkpoint
    assert not saved.parent.exists()  # the trial ended: its checkpoint is removed, and the emptied folder

    # The retried trial ends where a run never killed ends: weights, optimizer, KL coefficient and RNGs restored.
    whole = train(PPOConfig.from_dict(json.loads(trial.user_attrs["engine_config"]))).history
    assert math.isclose(trial.user_attrs["kl_final"], whole[-1][K.KL], rel_tol=1e-4, abs_tol=1e-6)
    assert math.isclose(trial.user_attrs["reward_final"], whole[-1][K.SCORES], rel_tol=1e-4, abs_tol=1e-6)
    client = MlflowClient(spec.tracking_uri())
    (run,) = sweep_runs(client, spec.experiment_name(), "trial")
    coef = {m.step: m.value for m in sorted(client.get_metric_history(run.info.run_id, K.KL_COEF),
                                              key=lambda m: m.timestamp)}  # a step logged twice: the retry's
    assert sorted(coef) == list(range(1, ITERATIONS + 1))
    assert math.isclose(coef[ITERATIONS], whole[-1][K.KL_COEF], rel_tol=1e-6)
    assert coef[ITERATIONS] != PPOConfig().kl_coef  # the adaptive coefficient moved


@pytest.mark.slow  # a sweep stopped by Ctrl-C and resumed: about 90 s
def test_a_resumed_sweep_reruns_an_interrupted_trial_from_its_checkpoint(tmp_path, demo_model, monkeypatch):
    monkeypatch.setenv("FAULT_SLOW", "0.3")  # slow rewards: Ctrl-C comes before the trial's end
    path = _spec(tmp_path, "ckptresume")
    spec = load_spec(path)
    log = tmp_path / "run.log"
    proc = start_tuner("run", path, cwd=tmp_path, log=log)
    interrupted = spec.sweep_dir() / "trials" / "0" / CHECKPOINTS / CHECKPOINT_FILE
    code, out, _ = stop_sweep(proc, log, ready=interrupted.is_file)
    assert code == 130, out[-3000:]
    saved_at = torch.load(interrupted, weights_only=False)["iteration"]  # what the re-run finds

    resumed = tuner("resume", spec.sweep_dir(), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    trials = optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage_url())).trials
    rerun = [t for t in trials if t.user_attrs.get("run_again_of") == 0]
    assert len(rerun) == 1 and rerun[0].state == optuna.trial.TrialState.COMPLETE, [t.user_attrs for t in trials]
    assert rerun[0].user_attrs["resumed_after"] == saved_at >= 2
    assert not interrupted.exists()  # the re-run took the checkpoint over into its own folder, and ended
    whole = train(PPOConfig.from_dict(json.loads(rerun[0].user_attrs["engine_config"]))).history
    assert math.isclose(rerun[0].user_attrs["kl_final"], whole[-1][K.KL], rel_tol=1e-4, abs_tol=1e-6)
