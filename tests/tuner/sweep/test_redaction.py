"""Secrets in URLs are redacted everywhere ppo-tuner writes or prints, and its servers stay on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.sweep_helpers import sweep_runs, tuner, unrun_sweep, write_spec


@pytest.mark.slow  # a sweep on a private PostgreSQL: 45 s (the one-line check stays fast)
def test_a_storage_password_never_leaves_the_url(tmp_path, demo_model, postgres):
    url = postgres.create_db("secret_sweep")
    path = write_spec(tmp_path, "secret", storage=url, budget={"trials": 2, "iterations": 2},
                      search_space={"policy_lr": {"choices": [3.0e-5]}, "kl_coef": {"choices": [0.05, 0.1]}})
    proc = tuner("run", path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert postgres.password not in proc.stdout + proc.stderr
    tracking = f"sqlite:///{tmp_path / 'sweeps' / 'secret' / 'mlflow.db'}"
    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name("secret")
    runs = client.search_runs([experiment.experiment_id], max_results=50)
    assert len(runs) == 3
    for run in runs:
        stored = " ".join(f"{k}={v}" for k, v in {**run.data.params, **run.data.tags}.items())
        assert postgres.password not in stored
    parent = sweep_runs(client, "secret", "sweep")[0]
    assert "***" in parent.data.params["storage"]
    artifacts = Path(client.download_artifacts(parent.info.run_id, "", str(tmp_path / "artifacts")))
    for file in artifacts.rglob("*"):
        if file.is_file() and file.suffix in (".yaml", ".json", ".txt"):
            assert postgres.password not in file.read_text()
    for fmt in ("yaml", "json", "openrlhf", "verl", "trl"):
        exported = tuner("export", "secret", "--workdir", tmp_path / "sweeps", "--format", fmt, cwd=tmp_path)
        assert exported.returncode == 0 and postgres.password not in exported.stdout + exported.stderr


def test_an_unreachable_database_is_one_redacted_line(tmp_path, demo_model):
    path = write_spec(tmp_path, "down", storage="postgresql+psycopg://tuner:hunter2hunter2@127.0.0.1:9/optuna")
    proc = tuner("run", path, cwd=tmp_path)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: storage:"), proc.stderr
    assert "hunter2hunter2" not in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def _listening(port: int) -> list[str]:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
    return [line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()]


def test_tuner_ui_listens_on_loopback_only(tmp_path):
    unrun_sweep(tmp_path, "lo")  # `tuner ui` serves a sweep's store: no trial needs to have run
    port = 5000 + os.getpid() % 1000
    ui = subprocess.Popen([sys.executable, "-m", "tuner.cli", "ui", "lo", "--workdir", tmp_path / "sweeps",
                           "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, start_new_session=True)
    try:
        deadline = time.time() + 90
        while not _listening(port) and time.time() < deadline:
            time.sleep(0.5)
        addresses = _listening(port)
        assert addresses and set(addresses) <= {"127.0.0.1", "[::1]"}, addresses
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        ui.wait(timeout=30)
