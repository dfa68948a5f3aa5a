"""A real sweep of verl trials on a real Ray cluster (this process's Ray, joined by `tuner run
--address`), with tests/fake_verl.py as the trainer (verl's overrides, checkpointing and file
logger): each trial is killed at step 3 on its first attempt, as a preempted node would kill it,
retried by Ray Tune in its own folder and resumed from its own step-2 checkpoint; then `tuner export`
gives the best trial's launch as a script that runs it again."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.sweep_helpers import tuner
from tuner.spec import load_spec
from tuner.sweep import load_study, trial_rows

FAKE_VERL = Path(__file__).resolve().parents[2] / "fake_verl.py"
LRS = (1e-5, 2e-5)
STEPS = 6

pytestmark = pytest.mark.slow  # one real `tuner run` of 2 trials with a retry each: about 60 s


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    import ray

    folder = tmp_path_factory.mktemp("verl")
    temp = Path(tempfile.mkdtemp(prefix="ray-v-", dir="/tmp"))  # Ray's socket paths stay short
    # GPUs it declares, not has: each trial is admitted (its trainer's 1 GPU placed) before its launch
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, _temp_dir=str(temp))
    try:
        spec = {"name": "verl-resume",
                "trial": {"engine": "verl", "report_timeout": "20s", "stop_grace": 1,
                          "command": [sys.executable, str(FAKE_VERL), "trainer.n_gpus_per_node=1",
                                      "trainer.save_freq=2", "trainer.experiment_name=t{trial_number}"],
                          "env": {"KILL_AT_STEP": "3", "STEP_SECONDS": "0.2"}},
                "base": {"micro_batch_size": 1},
                "search_space": {"policy_lr": {"choices": list(LRS)}},
                "objective": {"metric": "objective/scores", "score": "final"}, "kl_limit": 15,
                "budget": {"trials": 2, "iterations": STEPS, "max_failures": 1, "promote": {"top_k": 0}},
                "scheduler": {"type": "none"}, "sampler": {"type": "grid"},
                "resources": {"max_concurrent": 2, "gpus_per_trial": 0},
                "workdir": str(folder / "sweeps")}
        path = folder / "verl.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        gcs = ray.get_runtime_context().gcs_address
        done = tuner("run", path, "--address", gcs, cwd=folder, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        compiled = load_spec(path, ray_address=gcs)
        yield {"folder": folder, "spec": compiled, "study": load_study(compiled), "path": path}
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_each_killed_trial_resumes_from_its_own_checkpoint_and_completes(sweep):
    rows = trial_rows(sweep["study"])
    assert sorted(r.params["policy_lr"] for r in rows) == list(LRS)
    for row in rows:
        assert (row.state, row.iterations) == ("COMPLETE", STEPS), row
        frozen = sweep["study"].trials[row.number]
        assert frozen.user_attrs["retries"] == 1
        folder = sweep["spec"].sweep_dir() / "trials" / str(row.number)
        log = (folder / "trainer.log").read_text()
        lr = row.params["policy_lr"]
        # the first attempt found no checkpoint; its retry, in the same folder, found its own at step 2
        assert re.findall(r"resumed-from (\d+) (\S+)", log) == [("0", repr(lr)), ("2", repr(lr))], log[-2000:]
        assert (folder / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == str(STEPS)
        # the final score is the last step's (0.1 x step): steps 3-6 ran again after the resume
        assert row.value == pytest.approx(0.1 * STEPS)


def test_export_gives_the_best_trials_full_launch_as_a_script_that_runs(sweep, tmp_path):
    # the spec file, which a local check refuses (gpus_per_trial 0): the sweep's saved copy is the one that ran
    done = tuner("export", sweep["path"], cwd=sweep["folder"], timeout=300)
    assert done.returncode == 0, done.stderr
    script = tmp_path / "best.sh"
    script.write_text(done.stdout)
    text = done.stdout
    assert "model.path=demo" not in text and "max_prompt_length=64" not in text
    best = max(trial_rows(sweep["study"]), key=lambda r: r.value)
    assert f"  actor_rollout_ref.actor.optim.lr={best.params['policy_lr']!r}" in text
    assert f"  trainer.experiment_name=t{best.number}" in text  # the user's command, placeholders filled
    assert "  trainer.save_freq=2" in text and "  trainer.total_training_steps=6" in text
    out = tmp_path / "run"

    def run() -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin", "OUT": str(out)},
                              capture_output=True, text=True, timeout=120)

    lr = repr(best.params["policy_lr"])
    killed = run()  # trial.env comes along: KILL_AT_STEP=3 kills a run that did not resume
    assert killed.returncode == -9 and killed.stdout == f"resumed-from 0 {lr}\n", killed.stdout + killed.stderr
    ran = run()  # run again: it resumes from its own checkpoint in $OUT, as a retried trial would
    assert ran.returncode == 0 and ran.stdout == f"resumed-from 2 {lr}\n", ran.stdout + ran.stderr
    assert (out / "checkpoints" / "latest_checkpointed_iteration.txt").read_text() == str(STEPS)
    steps = [line for line in (out / "verl_metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert len(steps) == 1 + STEPS - 2  # the validation record, then steps 3-6
