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

from tests.conftest import ROOT, free_port
from tests.sweep_helpers import tuner, write_spec
from tests.sweep_helpers import unrun_sweep as make_unrun_sweep
from tuner._mlflow_ui import open_link
from tuner.sweep import sweep_page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1920,1000", "--virtual-time-budget=20000"]
ASSISTANT = "Ask questions about your experiments"  # the text of MLflow 3.17's assistant panel


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


@pytest.fixture(scope="module")
def ui_sweep(tmp_path_factory, demo_model):
    """One finished sweep for the browser tests: a grid with KL-infeasible and completed trials."""
    folder = tmp_path_factory.mktemp("ui")
    spec_path = write_spec(folder, "ui4", budget={"trials": 4, "iterations": 4},
                           search_space={"policy_lr": {"choices": [3.0e-5, 3.0e-3]},
                                         "kl_coef": {"choices": [0.05, 0.005]}})
    proc = tuner("run", spec_path, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return folder


def _screenshot(name: str, url: str, *flags: str) -> None:
    """A screenshot of the page, kept in test-artifacts/ to be looked at."""
    out = ROOT / "test-artifacts"
    out.mkdir(exist_ok=True)
    shot = out / name
    _chromium(*flags, f"--screenshot={shot}", url)
    assert shot.is_file() and shot.stat().st_size > 10_000


def _serve(command: str, folder) -> tuple[subprocess.Popen, int]:
    """`tuner COMMAND ui4` (ui or dashboard) on a free port, its output read line by line."""
    port = free_port()
    return subprocess.Popen([sys.executable, "-m", "tuner.cli", command, "ui4", "--workdir", folder / "sweeps",
                             "--port", str(port)], cwd=folder, stdout=subprocess.PIPE, text=True,
                            start_new_session=True), port


def _stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _text(dom: str) -> str:
    """The page's visible words, in order, one space apart."""
    dom = re.sub(r"<(style|script)[^>]*>.*?</\1>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


@pytest.mark.slow  # a sweep, an MLflow server and headless Chromium: about 90 s (130 s on heavily loaded cores)
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_the_dashboard_shows_the_sweeps_runs(ui_sweep):
    tmp_path = ui_sweep
    ui, port = _serve("ui", tmp_path)
    try:
        line = ui.stdout.readline()
        url = f"http://127.0.0.1:{port}"
        assert url in line, line
        _wait_healthy(url, ui)
        client = MlflowClient(f"sqlite:///{tmp_path / 'sweeps' / 'ui4' / 'mlflow.db'}")
        experiment_id = client.get_experiment_by_name("ui4").experiment_id
        page = sweep_page(url, experiment_id)
        link = open_link(page)
        assert f"MLflow UI for sweep ui4: {link} " in line  # the sweep's trials in the model-training layout
        assert "workflowType=machine_learning" in link
        assert ui.stdout.readline().startswith("the server's log: ")  # and nothing of the server's after it
        assert ui.stdout.readline().startswith("the Optuna study: tuner dashboard ui4 "
                                               "(optuna-dashboard), storage sqlite:///")
        for _ in range(3):  # page loads: the server's requests go to its log file, not the terminal
            _chromium("--dump-dom", f"{url}/")
        log = tmp_path / "sweeps" / "ui4" / "mlflow-ui.log"
        assert log.is_file() and log.stat().st_size > 0
        text = _text(_chromium("--dump-dom", link).stdout)  # a first visit: each run has a fresh profile
        for name in ("INFEASIBLE", "COMPLETE"):  # the trials, each a row with its state, without a click
            assert re.search(rf"trial-\d {name}", text), name
        for column in ("ppo_tuner.state", "objective", "objective/kl", "kl_max",
                       "ppo_tuner.stop_reason", "policy_lr", "kl_coef"):
            assert column in text, column
        assert "Model training" in text and "Judges" not in text
        assert ASSISTANT not in text  # MLflow's assistant panel stays closed
        assert ASSISTANT in _text(_chromium("--dump-dom", page).stdout)  # a first visit to the page itself opens it
        _screenshot("mlflow_dashboard.png", link)
        infeasible = next(r for r in client.search_runs([experiment_id], "tags.`ppo_tuner.state` = 'INFEASIBLE'"))
        assert infeasible.info.status == "FAILED"
        trial_page = f"{url}/#/experiments/{experiment_id}/runs/{infeasible.info.run_id}?workflowType=machine_learning"
        text = _text(_chromium("--dump-dom", trial_page).stdout)
        assert infeasible.info.run_name in text and "kl_limit" in text
        _screenshot("mlflow_trial.png", trial_page)
    finally:
        _stop(ui)


@pytest.mark.slow  # a sweep and an MLflow server: 42 s
def test_a_sweep_on_an_mlflow_server_gets_the_servers_page(tmp_path, demo_model):
    """No second server: `tuner ui` prints the page on the server the sweep logged to, and returns."""
    from tuner.cli._inspect import mlflow_server_command

    port = free_port()
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


@pytest.mark.slow  # with the sweep of ui_sweep; optuna-dashboard and headless Chromium: 56 s on heavily loaded cores
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package (.ci/run installs it)")
def test_optuna_dashboard_shows_the_kl_infeasible_trials_and_the_best_feasible(ui_sweep):
    import optuna

    from tuner.sweep import best_feasible
    from tuner.sweep.study import state_of

    pytest.importorskip("optuna_dashboard")
    study = optuna.load_study(study_name="ui4", storage=f"sqlite:///{ui_sweep / 'sweeps' / 'ui4' / 'study.db'}")
    best = best_feasible(study)
    infeasible = [t.number for t in study.trials if state_of(t) == "INFEASIBLE"]
    assert best is not None and infeasible
    proc, port = _serve("dashboard", ui_sweep)
    try:
        line = proc.stdout.readline()
        page = f"http://127.0.0.1:{port}/dashboard/studies/{study._study_id}"
        assert line.startswith(f"optuna-dashboard for sweep ui4: {page} "), line
        text = _text(_chromium("--dump-dom", page).stdout)
        assert f"Best Trial (number={best.number})" in text, text[-3000:]  # the card: the best feasible trial
        for number in infeasible:  # the intermediate-values plot's legend
            assert f"trial #{number} (infeasible)" in text
        assert "Complete Infeasible" in text  # the timeline's legend: COMPLETE trials past the KL limit apart
        _screenshot("optuna_dashboard.png", page, "--window-size=1920,2000")  # tall: the best-trial card too
        trials_page = f"{page}/trials?numbers={infeasible[0]}"  # the trial list, an infeasible trial open
        text = _text(_chromium("--dump-dom", trials_page).stdout)
        assert (re.search(rf"Trial {best.number} Complete Best Trial", text)
                and text.count("Best Trial") == 1), text[:2000]
        assert "stop_reason kl_limit" in text
        _screenshot("optuna_dashboard_trials.png", trials_page)
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def unrun_sweep(tmp_path_factory):
    """A sweep folder with its spec and an empty study, as `tuner run` leaves it before its first trial."""
    return make_unrun_sweep(tmp_path_factory.mktemp("serve"), "ui4")


def _descendants(pid: int) -> set[int]:
    """The live processes below `pid`, from the process table."""
    parents = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    below, grew = set(), True
    while grew:
        found = {p for p, parent in parents.items() if parent == pid or parent in below}
        grew, below = found != below, found
    return below


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


# an MLflow server starts in about 10 s (30 s on heavily loaded cores): two of its signals run with -m slow
SERVERS = [pytest.param(command, sig, id=f"{command}-{sig.name}",
                        marks=[pytest.mark.slow] if command == "ui" and sig in (signal.SIGINT, signal.SIGHUP) else [])
           for command in ("ui", "dashboard") for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)]
SERVERS.append(pytest.param("ui", signal.SIGKILL, id="ui-SIGKILL"))


@pytest.mark.parametrize(("command", "sig"), SERVERS)
def test_the_server_answers_when_its_link_is_printed_and_dies_with_tuner(unrun_sweep, command, sig):
    """The link is printed once the server answers; after SIGTERM, SIGINT or SIGHUP to `tuner ui` (or
    SIGKILL) nothing of its server is left: no process below it, none naming the sweep, no listener."""
    from tests.tuner.trial.test_command_sweep import processes_under

    if command == "dashboard":
        pytest.importorskip("optuna_dashboard")
    proc, port = _serve(command, unrun_sweep)
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in line, line
        assert _listening(port)  # it answers at once
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert response.status == 200
        server = _descendants(proc.pid)
        assert (len(server) >= 1) == (command == "ui")  # the MLflow server and its uvicorn; the dashboard is in-process
        os.kill(proc.pid, sig)  # the process only, as a terminal or an orchestrator does
        proc.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and (any(map(_alive, server)) or _listening(port)):
            time.sleep(0.2)
        assert [p for p in server if _alive(p)] == []
        assert processes_under(unrun_sweep / "sweeps" / "ui4") == []
        assert not _listening(port)
    finally:
        if proc.poll() is None:
            _stop(proc)
