"""A real sweep whose trials are trl 1.12's `trl.experimental.ppo.PPOTrainer` (trial.engine: trl) on the
demo model, in TRL's own virtualenv (bench/setup_trl.sh): local Ray, the study, MLflow. The large
learning rate drives TRL's objective/kl past the limit at its second update: that trial is stopped there
and recorded INFEASIBLE; TRL's own metrics are in the trials' MLflow child runs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.sweep_helpers import sweep_runs
from tests.tuner.trial.test_command_sweep import processes_under, run_spec
from trials import metrics as K
from tuner.sweep import trial_rows

ROOT = Path(__file__).resolve().parents[3]
VENV_PYTHON = ROOT / "bench" / ".venv-trl" / "bin" / "python"
LRS = {1e-5: "COMPLETE", 3e-3: "INFEASIBLE"}  # TRL's KL on the demo model: < 1 nat, then about 95 nats at update 2

pytestmark = pytest.mark.slow  # two TRL trials on 2 cores, with TRL's imports: 2-4 minutes


@pytest.fixture(scope="module")
def trl_python() -> Path:
    """bench/.venv-trl's python (made by bench/setup_trl.sh, which installs trl 1.12 from the package registry)."""
    try:
        proc = subprocess.run(["bash", str(ROOT / "bench" / "setup_trl.sh")], capture_output=True,
                              text=True, timeout=900)
    except subprocess.TimeoutExpired:
        pytest.skip("bench/setup_trl.sh did not finish in 15 minutes (is the package registry reachable?)")
    if proc.returncode != 0:
        pytest.skip(f"bench/setup_trl.sh could not make TRL's virtualenv (package registry unreachable?): "
                    f"{proc.stderr.strip()[-300:]}")
    return VENV_PYTHON


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, trl_python):
    folder = tmp_path_factory.mktemp("trl")
    spec = {"name": "trl", "trial": {"engine": "trl", "command": [str(trl_python)], "report_timeout": "5m",
                                     "stop_grace": 5, "env": {"TRL_EXPERIMENTAL_SILENCE": "1", "MARKER": str(folder)}},
            "base": {"rollout_batch_size": 16, "mini_batch_size": 8, "ppo_epochs": 2, "response_length": 16,
                     "device": "cpu", "num_threads": 1},
            "search_space": {"policy_lr": {"choices": list(LRS)}, "value_lr": 1e-5},
            "objective": {"metric": K.SCORES}, "kl_limit": 15,
            "budget": {"trials": 2, "iterations": 3, "max_failures": 0}, "scheduler": {"type": "none"},
            "sampler": {"type": "grid"}, "resources": {"max_concurrent": 2}, "ray": {"num_cpus": 2},
            "workdir": str(folder / "sweeps")}
    return run_spec(folder, spec, timeout=900)


def test_trl_trials_follow_the_kl_limit(sweep):
    rows = {r.params["policy_lr"]: r for r in trial_rows(sweep["study"])}
    assert {lr: r.state for lr, r in rows.items()} == LRS, [(r.number, r.state, r.stop_reason) for r in rows.values()]
    drifted = rows[3e-3]
    assert drifted.stop_reason == "kl_limit" and drifted.iterations < 3 and drifted.kl_max > 15
    assert rows[1e-5].iterations == 3 and rows[1e-5].kl_max < 15
    frozen = {t.number: t for t in sweep["study"].trials}
    assert frozen[drifted.number].constraints["kl"] > 0
    assert processes_under(sweep["folder"]) == []  # TRL's processes are gone


def test_mlflow_child_runs_hold_trls_metrics(sweep):
    spec = sweep["spec"]
    client = MlflowClient(spec.tracking_uri())
    children = sweep_runs(client, spec.experiment_name(), "trial")
    done = next(c for c in children if c.data.tags["ppo_tuner.state"] == "COMPLETE")
    assert [m.step for m in client.get_metric_history(done.info.run_id, K.KL)] == [1, 2, 3]
    # TRL's names: ours where they mean the same, its own under trainer/ (its entropy is summed over the response)
    assert {K.SCORES, K.APPROXKL, K.VALUE_LOSS, "trainer/objective/entropy", "trainer/policy/entropy_avg",
            "trainer/episode"} <= set(done.data.metrics)
    assert K.ENTROPY not in done.data.metrics
