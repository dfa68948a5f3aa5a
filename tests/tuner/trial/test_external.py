"""The command backend without Ray: the protocol, and a real trainer process started, read, stopped."""

from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from pathlib import Path

import pytest

from trials import metrics as K
from tuner.trial import StopReason, TrialReport, read_result
from tuner.trial._external import TrainerError, parse_report, run_command
from tuner.trial._task import TrialTask

SCRIPT = Path(__file__).resolve().parents[2] / "external_trainer.py"


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie waiting to be reaped does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def left_running(workdir: Path) -> list[int]:
    """The trainer and its helper, where either still runs (pids from its log)."""
    log = (workdir / "trainer.log").read_text()
    pids = [int(p) for p in re.findall(r"helper (\d+)", log)]
    time.sleep(0.2)  # an orphaned helper is reaped by init
    return [p for p in pids if alive(p)]


def task(lr: float, steps: int = 4, timeout: float = 20.0, **args: float) -> TrialTask:
    extra = [x for k, v in args.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return TrialTask(number=0, engine={"num_iterations": steps, "policy_lr": lr}, params={"policy_lr": lr},
                     kl_limit=15.0, objective={"metric": K.EVAL_SCORES, "direction": "maximize", "score": "final",
                                               "last_k": 3},
                     engine_kind="command",
                     external={"command": [sys.executable, str(SCRIPT), "--lr", "{policy_lr}", "--steps",
                                           "{num_iterations}", "--step-seconds", "0.05", *extra],
                               "env": {}, "report_timeout": timeout, "stop_grace": 0.5})


def run(t: TrialTask, workdir: Path, stop_after: int | None = None) -> list[TrialReport]:
    reports: list[TrialReport] = []

    def emit(result: dict) -> None:
        reports.append(read_result(result))

    run_command(t, emit, workdir, stop_requested=lambda: stop_after is not None and len(reports) >= stop_after)
    return reports


def test_protocol_converts_per_token_kl_and_keeps_the_trainers_names():
    ours, own = parse_report('@ppo-tuner {"step": 1, "kl_per_token": 0.5, "response_length": 12, "reward": 0.3}')
    assert ours[K.KL] == 6.0 and ours[K.SCORES] == 0.3 and ours[K.RESPONSE_LENGTH] == 12
    assert own == {"step": 1.0, "kl_per_token": 0.5, "response_length": 12.0, "reward": 0.3}
    assert parse_report("epoch 1 loss 0.3") is None
    with pytest.raises(TrainerError, match="needs 'kl'"):
        parse_report('@ppo-tuner {"reward": 1}')


def test_a_trainer_runs_to_its_last_report(tmp_path):
    reports = run(task(1e-5), tmp_path)
    assert [r.stop_reason for r in reports] == [None, None, None, StopReason.COMPLETED]
    assert math.isclose(reports[-1].kl, 1e-5 * 1e3 * 4 * 10)  # per-token KL x response length
    assert reports[-1].trainer["loss"] == 0.25 and math.isfinite(reports[-1].objective)
    assert left_running(tmp_path) == []


def test_the_kl_limit_stops_the_trainer_at_the_crossing(tmp_path):
    reports = run(task(1e-3, steps=6), tmp_path)
    gone = time.time()
    assert len(reports) == 2 and reports[-1].stop_reason == StopReason.KL_LIMIT  # KL 20 > 15 at step 2
    assert left_running(tmp_path) == []
    assert gone - reports[-1].trainer["t"] < 2.0  # written -> read -> SIGTERM -> gone


def test_the_kl_forecast_stops_the_trainer_before_the_crossing(tmp_path):
    rising = dataclasses.replace(task(5e-4, steps=4), kl_forecast=True)  # KL 5, 10, 15, 20: crosses at step 4
    reports = run(rising, tmp_path)
    assert [r.kl for r in reports] == [5.0, 10.0]  # at step 2 the line through 5, 10 reads 20 at step 4
    assert reports[-1].stop_reason == StopReason.KL_FORECAST and reports[-1].kl_max == 10.0
    assert left_running(tmp_path) == []
    assert [r.stop_reason for r in run(task(5e-4, steps=4), tmp_path)][-1] == StopReason.KL_LIMIT  # without: at step 4


def test_a_stop_request_stops_the_trainer(tmp_path):
    reports = run(task(1e-5, steps=50), tmp_path, stop_after=2)
    assert len(reports) == 2 and left_running(tmp_path) == []


def test_a_crash_fails_with_the_log_tail(tmp_path):
    with pytest.raises(TrainerError, match="exited with code 1 after 1 reports") as info:
        run(task(1e-5, crash_if_lr=1e-5), tmp_path)
    assert "illegal memory access" in str(info.value) and info.value.retryable
    assert left_running(tmp_path) == []


def test_a_silent_trainer_fails_after_the_report_timeout_and_is_killed(tmp_path):
    started = time.perf_counter()
    with pytest.raises(TrainerError, match=r"no report for 1 s \(trial.report_timeout\) after 1 reports"):
        run(task(1e-5, timeout=1.0, hang_if_lr=1e-5), tmp_path)
    assert time.perf_counter() - started < 5  # ignores SIGTERM: killed after the grace period
    assert left_running(tmp_path) == []


def test_a_trial_stopped_before_its_trainer_starts_never_starts_it(tmp_path):
    """Ctrl-C while the trial was being set up: run_command returns without starting a trainer."""
    reports: list[dict] = []
    run_command(task(1e-5), reports.append, tmp_path, stop_requested=lambda: True)
    assert reports == []
    assert not (tmp_path / "trainer.log").exists()  # a started trainer's output would be there


def test_the_trainer_runs_in_the_trials_own_folder(tmp_path):
    """The folder the task names is made and is the trainer's working folder: its log and what it
    saves there (a checkpoint per step) stay; where it cannot be made, Ray's folder is used."""
    from tuner.trial._trainable import working_folder

    own = tmp_path / "sweeps" / "s" / "trials" / "0"
    t = dataclasses.replace(task(1e-5, steps=2), folder=str(own))
    folder = working_folder(t, str(tmp_path / "ray"))
    assert folder == own and folder.is_dir()
    assert len(run(t, folder)) == 2
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint-1.txt", "checkpoint-2.txt", "trainer.log", "trial_config.json"]
    (tmp_path / "file").write_text("")  # a folder that cannot be made (under a file): Ray's instead
    blocked = dataclasses.replace(t, folder=str(tmp_path / "file" / "trials" / "0"))
    assert working_folder(blocked, str(tmp_path / "ray")) == tmp_path / "ray"
