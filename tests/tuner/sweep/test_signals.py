"""SIGTERM (Kubernetes, systemd, `ray job stop`) stops a sweep as Ctrl-C does: trials recorded, no
trial or run left RUNNING, exit code 143, no native stack dump, and `tuner resume` finishes the budget."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.sweep_helpers import start_tuner, stop_sweep, sweep_runs, tuner, write_spec
from tuner.spec import load_spec
from tuner.sweep.study import open_storage


def _finished(spec) -> int:
    if not Path(spec.storage_url().removeprefix("sqlite:///")).is_file():
        return 0
    try:
        study = optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage_url()))
    except KeyError:
        return 0
    return sum(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False))


@pytest.mark.slow  # about 100 s with the resume
def test_sigterm_stops_the_sweep_as_ctrl_c_does(tmp_path, demo_model):
    path = write_spec(tmp_path, "sigterm", scheduler={"type": "none"}, budget={"trials": 4, "iterations": 6},
                      search_space={"policy_lr": {"choices": [3.0e-5, 1.0e-4]},
                                    "kl_coef": {"choices": [0.05, 0.02, 0.1]}})
    spec = load_spec(path)
    log = tmp_path / "run.log"
    proc = start_tuner("run", path, cwd=tmp_path, log=log)
    code, text, seconds = stop_sweep(proc, log, ready=lambda: _finished(spec) >= 1, sig=signal.SIGTERM)
    assert code == 143, text[-3000:]
    assert "SIGTERM received" not in text and "PC: @" not in text and "Traceback" not in text, text[-3000:]
    assert "tuner resume" in text
    print(f"SIGTERM to exit: {seconds:.1f} s")

    study = optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage_url()))
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    stopped = [t for t in study.trials if t.user_attrs.get("stop_reason") == "interrupted"]
    done_before = {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    assert stopped and done_before
    client = MlflowClient(spec.tracking_uri())
    runs = sweep_runs(client, spec.name)
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    children = sweep_runs(client, spec.name, "trial")
    assert sorted(int(r.data.tags["ppo_tuner.trial_number"]) for r in children) == [t.number for t in study.trials]

    resumed = tuner("resume", spec.sweep_dir(), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    study = optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage_url()))
    counted = [t for t in study.trials if t.user_attrs.get("stop_reason") != "interrupted"]
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)
    assert done_before <= {t.number for t in counted}


def _fit(tmp_path, interrupt: bool) -> None:
    """A real Ray Tune fit of one trial that, if told to, sends SIGINT to this process (as Ctrl-C does)."""
    import os

    from ray import tune

    from tuner.sweep._signals import noting_tune_stops

    def trainable(config):
        if config["interrupt"]:
            os.kill(config["driver"], signal.SIGINT)
        for step in range(1, 30):  # 1.5 s: a Ctrl-C stops it on the way
            tune.report({"step": step})
            time.sleep(0.05)

    tuner = tune.Tuner(trainable, param_space={"interrupt": interrupt, "driver": os.getpid()},
                       run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0))
    with noting_tune_stops():
        tuner.fit()


def test_a_ctrl_c_taken_by_ray_tunes_handler_is_noted_and_the_handler_put_back(tmp_path):
    import ray

    from tuner.sweep import _signals

    handler = signal.getsignal(signal.SIGINT)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        _signals._received.clear()
        _fit(tmp_path / "a", interrupt=False)  # ends by itself: nothing noted, Tune's handler taken away
        assert _signals.stop_signal() is None and signal.getsignal(signal.SIGINT) is handler
        _fit(tmp_path / "b", interrupt=True)
        assert _signals.stop_signal() == signal.SIGINT and signal.getsignal(signal.SIGINT) is handler
    finally:
        _signals._received.clear()
        ray.shutdown()


def test_a_stop_tells_the_trials_before_ray_tune_stops_them():
    """before_tune_stop, installed over Ray Tune's SIGINT handler, runs its action first on a real
    SIGINT, then Tune's handler (which puts back the handler it found)."""
    from tuner.sweep._signals import before_tune_stop

    calls: list[str] = []
    found = signal.getsignal(signal.SIGINT)

    def tune_handler(signum, frame):  # as Ray Tune's: note the stop, put back the handler found
        calls.append("tune")
        signal.signal(signal.SIGINT, found)

    signal.signal(signal.SIGINT, tune_handler)
    try:
        before_tune_stop(lambda: calls.append("trials"))
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert calls == ["trials", "tune"]
        assert signal.getsignal(signal.SIGINT) is found
    finally:
        signal.signal(signal.SIGINT, found)
