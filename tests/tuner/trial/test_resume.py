"""One checkpoint folder per trial: verl's and OpenRLHF's checkpoints go to the trial's own folder,
and a trial killed mid-run (a preempted node) resumes from its own last checkpoint on its retry,
which runs in the same folder. Real trainer processes (tests/fake_verl.py, verl's checkpointing and
file logger), no Ray."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from trials import metrics as K
from tuner.trial import read_result
from tuner.trial._external import TrainerError, run_command
from tuner.trial._launch import launch
from tuner.trial._task import TrialTask

FAKE_VERL = Path(__file__).resolve().parents[2] / "fake_verl.py"
STEPS = 6


def verl_task(number: int, lr: float, *command: str, kill_at: int = 0) -> TrialTask:
    return TrialTask(number=number, engine={"num_iterations": STEPS, "policy_lr": lr}, params={"policy_lr": lr},
                     kl_limit=1e9, objective={"metric": K.SCORES, "direction": "maximize", "score": "final",
                                              "last_k": 3},
                     engine_kind="verl",
                     external={"command": [sys.executable, str(FAKE_VERL), "trainer.save_freq=2", *command],
                               "env": {"KILL_AT_STEP": str(kill_at)}, "report_timeout": 20.0, "stop_grace": 0.5})


def run(task: TrialTask, workdir: Path) -> list:
    reports: list = []
    run_command(task, lambda result: reports.append(read_result(result)), workdir)
    return reports


def words(argv: list[str], key: str) -> list[str]:
    return [w.split("=", 1)[1] for w in argv if w.split("=", 1)[0] == key]


def test_each_verl_trial_saves_its_checkpoints_in_its_own_folder(tmp_path):
    argv = launch("verl", ["python", "-m", "verl.trainer.main_ppo"], {"num_iterations": 3}, tmp_path / "7", 7)[0]
    assert words(argv, "trainer.default_local_dir") == [str(tmp_path / "7" / "checkpoints")]


def test_the_users_own_checkpoint_folder_is_kept_and_takes_the_trial_placeholders(tmp_path):
    command = ["python", "-m", "verl.trainer.main_ppo", "trainer.default_local_dir=/ckpt/run-{trial_number}",
               "trainer.experiment_name=t{trial_number}", "hydra.run.dir={trial_dir}/hydra"]
    argv = launch("verl", command, {"num_iterations": 3}, tmp_path / "7", 7)[0]
    assert words(argv, "trainer.default_local_dir") == ["/ckpt/run-7"]
    assert words(argv, "trainer.experiment_name") == ["t7"]
    assert words(argv, "hydra.run.dir") == [f"{tmp_path / '7'}/hydra"]


def test_each_openrlhf_trial_saves_its_checkpoints_in_its_own_folder(tmp_path):
    argv = launch("openrlhf", ["python", "-m", "openrlhf.cli.train_ppo_ray", "--ckpt.load_enable"],
                  {"num_iterations": 3}, tmp_path / "3", 3)[0]
    assert argv[argv.index("--ckpt.path") + 1] == str(tmp_path / "3" / "checkpoints")
    mine = launch("openrlhf", ["python", "--ckpt.path", "/ckpt/{trial_number}"], {"num_iterations": 3},
                  tmp_path / "3", 3)[0]
    assert mine.count("--ckpt.path") == 1 and mine[mine.index("--ckpt.path") + 1] == "/ckpt/3"


def test_a_killed_verl_trial_resumes_from_its_own_checkpoint_and_reports_every_iteration(tmp_path):
    lr = 1e-5
    with pytest.raises(TrainerError, match="exited with code -9 after 3 reports") as killed:
        run(verl_task(0, lr, kill_at=3), tmp_path)
    assert killed.value.retryable  # Ray Tune retries it, in the same folder
    reports = run(verl_task(0, lr, kill_at=3), tmp_path)
    log = (tmp_path / "trainer.log").read_text()
    assert f"resumed-from 0 {lr!r}" in log and f"resumed-from 2 {lr!r}" in log  # its own step-2 checkpoint
    # steps 1-2 from the killed attempt, 3-6 run again from the checkpoint: one report per iteration
    assert [r.kl for r in reports] == pytest.approx([lr * 1e3 * s * 10 for s in range(1, STEPS + 1)])
    assert [r.trainer["step"] for r in reports] == [float(s) for s in range(1, STEPS + 1)]
    assert reports[-1].stop_reason == "completed" and math.isclose(reports[-1].metrics[K.SCORES], 0.6)
    assert (tmp_path / "verl_metrics.jsonl.1").is_file()  # the killed attempt's reports, set aside


def test_a_retried_trial_never_resumes_from_another_trials_checkpoint(tmp_path):
    """Two trials of one sweep, each in its own folder: the first runs to its end (checkpoints at 2, 4
    and 6); the second is killed and resumes from its own step 2, not the first's step 6."""
    first, second = tmp_path / "trials" / "0", tmp_path / "trials" / "1"
    for folder in (first, second):
        folder.mkdir(parents=True)
    assert len(run(verl_task(0, 1e-5), first)) == STEPS
    with pytest.raises(TrainerError):
        run(verl_task(1, 2e-5, kill_at=3), second)
    reports = run(verl_task(1, 2e-5, kill_at=3), second)
    assert "resumed-from 2 2e-05" in (second / "trainer.log").read_text()
    assert [r.kl for r in reports] == pytest.approx([2e-5 * 1e3 * s * 10 for s in range(1, STEPS + 1)])


def test_a_trainer_that_resumes_from_a_checkpoint_this_trial_never_reported_fails_with_why(tmp_path):
    """A checkpoint folder shared by the user (trial.command names one without '{trial_dir}'): the
    second trial starts after the first one's checkpoint at step 2, steps it never reported."""
    shared = f"trainer.default_local_dir={tmp_path / 'shared'}"
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    with pytest.raises(TrainerError, match="code -9"):
        run(verl_task(0, 1e-5, shared, kill_at=3), tmp_path / "a")
    with pytest.raises(TrainerError, match="resumed at step 3, but this trial's earlier attempts reported no "
                                           "step 1: was its checkpoint folder another trial's"):
        run(verl_task(1, 2e-5, shared), tmp_path / "b")


def test_openrlhfs_earlier_steps_are_read_from_the_trials_log(tmp_path):
    """OpenRLHF reports on its output, which every attempt appends to trainer.log: a later attempt's
    report of a step replaces an earlier one's, and lines that are no report are left out."""
    from tuner.engines import engine
    from tuner.trial._external import earlier_steps

    line = "(PPOTrainer pid=7) ✨ Global step {}: {{'kl': {}, 'rollout/response_length_mean': 10.0}}"
    (tmp_path / "trainer.log").write_text("\n".join([
        line.format(1, 0.1), line.format(2, 0.2), "Global step 3 saving checkpoint", line.format(3, 0.3),
        "attempt 2", line.format(3, 0.35), "(PPOTrainer pid=9) ✨ Global step 4: {'kl': 0.4, 'rollout/resp"]))
    found = earlier_steps(engine("openrlhf"), tmp_path)
    assert {step: raw["kl"] for step, raw in found.items()} == {1: 0.1, 2: 0.2, 3: 0.35}
    assert (tmp_path / "trainer.log").is_file()  # the log stays: this attempt appends to it


def test_a_verl_trial_retried_twice_reads_the_steps_of_every_earlier_attempt(tmp_path):
    """verl starts a new metrics file each attempt: the set-aside files of every attempt are read in order (a
    later attempt's report of a step replacing an earlier one's), then the last one is set aside too."""
    from tuner.engines import engine
    from tuner.trial._external import earlier_steps

    def record(step: int, kl: float) -> str:
        return json.dumps({"step": step, "data": {"actor/reward_kl_penalty": kl, "response_length/mean": 10.0}})

    (tmp_path / "verl_metrics.jsonl.1").write_text("\n".join([record(1, 0.1), record(2, 0.2), record(3, 0.3)]))
    (tmp_path / "verl_metrics.jsonl").write_text("\n".join([record(3, 0.35), record(4, 0.4)]))
    found = earlier_steps(engine("verl"), tmp_path)
    assert {step: raw["actor/reward_kl_penalty"] for step, raw in found.items()} == {1: 0.1, 2: 0.2, 3: 0.35,
                                                                                      4: 0.4}
    assert not (tmp_path / "verl_metrics.jsonl").exists() and (tmp_path / "verl_metrics.jsonl.2").is_file()
    assert earlier_steps(engine("verl"), tmp_path) == found  # a third attempt that wrote nothing: the same steps
