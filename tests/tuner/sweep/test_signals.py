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


def test_outside_a_fit_a_first_stop_is_noted_and_a_second_raises():
    """stops_noted, around a sweep: the first SIGINT or SIGTERM outside Ray Tune's fit is noted, not
    raised (the sweep then ends as stopped); a second raises KeyboardInterrupt; the handlers found are
    put back."""
    from tuner.sweep import _signals

    found_int, found_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        for first in (signal.SIGINT, signal.SIGTERM):
            _signals.stop_on_sigterm()
            with _signals.stops_noted():
                assert _signals.stop_signal() is None
                os.kill(os.getpid(), first)
                time.sleep(0.1)
                assert _signals.stop_signal() == first
                with pytest.raises(KeyboardInterrupt):
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.5)
            assert signal.getsignal(signal.SIGINT) is found_int
    finally:
        _signals._received.clear()
        signal.signal(signal.SIGTERM, found_term)


class _StopWhenRayIsUp:
    """A sweep callback that sends this process SIGINT, as Ctrl-C does, once Ray is up: after Ray
    starts and before Ray Tune's fit takes over Ctrl-C."""

    def __init__(self):
        self.sent = False

    def phase(self, message: str) -> None:
        if message.startswith("Ray is up") and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, in this thread

    def __getattr__(self, name):  # the other events: nothing to do
        return lambda *args, **kwargs: None


def test_a_stop_before_the_fit_ends_the_sweep_as_stopped_with_nothing_left_running(tmp_path, demo_model):
    """A Ctrl-C that comes while Ray starts, outside Ray Tune's fit, stops the sweep as one inside it
    does: run_sweep returns its summary (no KeyboardInterrupt), no trial runs to its end, none and no
    MLflow run is left RUNNING, and the summary counts the budget as still to run."""
    from tuner.sweep import _signals, run_sweep

    spec = load_spec(write_spec(tmp_path, "early-stop", budget={"trials": 4, "iterations": 6}))
    found_int, found_term = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    callback = _StopWhenRayIsUp()
    try:
        try:
            summary = run_sweep(spec, callbacks=[callback])
        except KeyboardInterrupt:
            pytest.fail("a first Ctrl-C outside the fit was raised, not noted")
        assert callback.sent and _signals.stop_signal() == signal.SIGINT
    finally:
        _signals._received.clear()
        signal.signal(signal.SIGTERM, found_term)
    assert signal.getsignal(signal.SIGINT) is found_int
    assert summary.missing == 4, summary
    study = optuna.load_study(study_name=spec.name, storage=open_storage(spec.storage_url()))
    assert not [t for t in study.trials if t.state in (TrialState.RUNNING, TrialState.COMPLETE)]
    runs = sweep_runs(MlflowClient(spec.tracking_uri()), spec.name)
    assert runs and all(r.info.status != "RUNNING" for r in runs)
