"""`tuner ui`: a real MLflow server on loopback, opened by headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT
from tests.sweep_helpers import tuner, write_spec
from tuner.sweep._tracking import sweep_page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1920,1000", "--virtual-time-budget=20000"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        assert proc.poll() is None, "tuner ui exited early"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"no MLflow server at {url} after {seconds} s")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # a sweep, an MLflow server and headless Chromium: about 90 s
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_the_dashboard_shows_the_sweeps_runs(tmp_path, demo_model):
    spec_path = write_spec(tmp_path, "ui4", budget={"trials": 4, "iterations": 4},
                           search_space={"policy_lr": {"choices": [3.0e-5, 3.0e-3]}, "kl_coef": {"choices": [0.05, 0.005]}})
    proc = tuner("run", spec_path, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    port = _free_port()
    ui = subprocess.Popen([sys.executable, "-m", "tuner.cli", "ui", "ui4", "--workdir", tmp_path / "sweeps",
                           "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                          start_new_session=True)
    try:
        line = ui.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        assert url in line, line
        _wait_healthy(url, ui)
        client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'ui4' / 'mlflow.db'}")
        experiment_id = client.get_experiment_by_name("ui4").experiment_id
        page = sweep_page(url, experiment_id)
        assert page in line  # the printed link opens the sweep's trials in the model-training layout
        assert "workflowType=machine_learning" in page
        assert ui.stdout.readline().startswith("the server's log: ")  # and nothing of the server's after it
        for _ in range(3):  # page loads: the server's requests go to its log file, not the terminal
            _chromium("--dump-dom", f"{url}/")
        log = tmp_path / "sweeps" / "ui4" / "mlflow-ui.log"
        assert log.is_file() and log.stat().st_size > 0
        dom = _chromium("--dump-dom", page).stdout
        text = " ".join(re.sub(r"<[^>]+>", " ", dom).split())
        for name in ("INFEASIBLE", "COMPLETE"):  # the trials, each a row with its state, without a click
            assert re.search(rf"trial-\d {name}", text), name
        for column in ("ppo_tuner.state", "objective", "objective/kl", "kl_max", "ppo_tuner.stop_reason", "policy_lr", "kl_coef"):
            assert column in text, column
        assert "Model training" in text and "Judges" not in text
        out = ROOT / "test-artifacts"
        out.mkdir(exist_ok=True)
        shot = out / "mlflow_dashboard.png"
        _chromium(f"--screenshot={shot}", page)
        assert shot.is_file() and shot.stat().st_size > 10_000
        infeasible = next(r for r in client.search_runs([experiment_id], "tags.`ppo_tuner.state` = 'INFEASIBLE'"))
        assert infeasible.info.status == "FAILED"
        trial_page = f"{url}/#/experiments/{experiment_id}/runs/{infeasible.info.run_id}?workflowType=machine_learning"
        text = " ".join(re.sub(r"<[^>]+>", " ", _chromium("--dump-dom", trial_page).stdout).split())
        assert infeasible.info.run_name in text and "kl_limit" in text
        shot = out / "mlflow_trial.png"
        _chromium(f"--screenshot={shot}", trial_page)
        assert shot.is_file() and shot.stat().st_size > 10_000
    finally:
        os.killpg(ui.pid, signal.SIGINT)
        try:
            ui.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)


def test_a_sweep_on_an_mlflow_server_gets_the_servers_page(tmp_path, demo_model):
    """No second server: `tuner ui` prints the page on the server the sweep logged to, and returns."""
    from tuner.cli._sweep import mlflow_server_command

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(mlflow_server_command(f"sqlite:///{tmp_path / 'server.db'}", "127.0.0.1", port,
                                                    tmp_path / "artifacts"),
                              env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(url, server)
        spec_path = write_spec(tmp_path, "served", budget={"trials": 2, "iterations": 2}, scheduler={"type": "none"},
                               mlflow={"tracking_uri": url})
        proc = tuner("run", spec_path, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        ui = tuner("ui", "served", "--workdir", tmp_path / "sweeps", cwd=tmp_path, timeout=120)
        assert ui.returncode == 0, ui.stderr[-2000:]
        experiment_id = MlflowClient(url).get_experiment_by_name("served").experiment_id
        assert ui.stdout.strip() == f"MLflow UI for sweep served: {sweep_page(url, experiment_id)}"
        runs = MlflowClient(url).search_runs([experiment_id])
        assert len(runs) == 3  # the parent and two trials, on the server
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
