"""The MLflow server killed mid-sweep (SIGKILL) and started again 20 s later, for real: within the
client's retries the sweep rides through; past them (no retries), nothing is dropped silently and
`tuner sync` writes from the study what MLflow lacks."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.conftest import free_port
from tests.sweep_helpers import start_tuner, sweep_runs, tuner, write_spec
from tuner.cli._inspect import mlflow_server_command
from tuner.spec import load_spec


def _server(tmp_path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(mlflow_server_command(f"sqlite:///{tmp_path / 'server.db'}", "127.0.0.1", port,
                                                  tmp_path / "artifacts"), env=env, start_new_session=True,
                            stdout=(tmp_path / "server.log").open("a"), stderr=subprocess.STDOUT)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    raise AssertionError((tmp_path / "server.log").read_text()[-3000:])


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)  # the server and its worker
    proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("retries", ["default", "none"])
def test_the_mlflow_server_killed_mid_sweep(tmp_path, demo_model, retries):
    port = free_port()
    server = _server(tmp_path, port)
    path = write_spec(tmp_path, "mlkill", mlflow={"tracking_uri": f"http://127.0.0.1:{port}"},
                      scheduler={"type": "none"},
                      budget={"trials": 8, "iterations": 4}, sampler={"type": "random"},
                      search_space={"policy_lr": {"low": 1.0e-5, "high": 1.0e-4, "log": True}})
    spec = load_spec(path)
    log = tmp_path / "run.log"
    if retries == "none":
        os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    try:
        proc = start_tuner("run", path, cwd=tmp_path, log=log)
    finally:
        os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        os.environ.pop("MLFLOW_HTTP_REQUEST_TIMEOUT", None)
    try:
        deadline = time.time() + 300
        while not re.search(r"^trial \d+: (?!started)", log.read_text(), re.M):  # a trial ended (its table line)
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        _kill(server)
        time.sleep(20)
        server = _server(tmp_path, port)
        assert proc.wait(timeout=600) == 0, log.read_text()[-3000:]
        text = log.read_text()
        if retries == "none":  # writes failed: said so, with the repair
            assert "tuner sync mlkill" in text, text[-3000:]
            synced = tuner("sync", spec.sweep_dir(), cwd=tmp_path)
            assert synced.returncode == 0, synced.stderr[-3000:]
            print(synced.stdout.strip())
        trials = optuna.load_study(study_name="mlkill", storage=spec.storage_url()).trials
        ran = [t for t in trials if "duplicate_of" not in t.user_attrs]
        assert len(ran) == 8 and all(t.state == TrialState.COMPLETE for t in ran)
        client = MlflowClient(f"http://127.0.0.1:{port}")
        children = {int(r.data.tags["ppo_tuner.trial_number"]): r
                    for r in sweep_runs(client, "mlkill", "trial")}
        assert sorted(children) == [t.number for t in ran]
        assert all(r.info.status != "RUNNING" for r in children.values())
        for t in ran:  # the study's record of every iteration is in the run (from the writer or from sync)
            history = client.get_metric_history(children[t.number].info.run_id, "objective")
            assert sorted(m.step for m in history) == sorted(t.intermediate_values)
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill(server)


def test_an_mlflow_server_that_does_not_answer_at_the_start_is_one_line_and_nothing_is_written(tmp_path):
    port = free_port()  # a port nothing listens on
    path = write_spec(tmp_path, "no-mlflow", mlflow={"tracking_uri": f"http://me:hunter22@127.0.0.1:{port}"})
    done = tuner("run", path, cwd=tmp_path, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert lines[-1].startswith("error: mlflow.tracking_uri: no MLflow server answers there"), done.stderr
    assert f"http://me:***@127.0.0.1:{port}" in lines[-1] and "hunter22" not in done.stderr
    assert not (tmp_path / "sweeps").exists()  # no study, no sweep folder


def test_a_server_that_answers_passes_the_check_with_credentials_in_its_address(tmp_path):
    import http.server
    import threading

    from tuner.sweep._tracking import check_tracking_server

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        check_tracking_server(load_spec(write_spec(tmp_path, "up", mlflow={"tracking_uri": f"http://me:hunter22@127.0.0.1:{port}"})))
        check_tracking_server(load_spec(write_spec(tmp_path, "up2", mlflow={"tracking_uri": f"http://127.0.0.1:{port}/"})))
    finally:
        server.shutdown()
