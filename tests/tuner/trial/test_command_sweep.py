"""A real sweep of an external trainer (trial.engine: command): local Ray, the study, MLflow, and a
user-style script that speaks the JSON-lines protocol; one trial passes the KL limit, one crashes,
one hangs."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from tests.sweep_helpers import start_tuner, stop_sweep, sweep_runs, tuner
from trials import metrics as K
from tuner.spec import load_spec
from tuner.sweep import load_study, trial_rows

SCRIPT = Path(__file__).resolve().parents[2] / "external_trainer.py"
LRS = {1e-5: "COMPLETE", 2e-5: "FAIL", 3e-5: "FAIL", 1e-3: "INFEASIBLE"}  # 2e-5 crashes, 3e-5 hangs

pytestmark = pytest.mark.slow  # one real `tuner run` of external trainers: about 45 s


def processes_under(folder: Path) -> list[int]:
    """Processes whose argv or environment names `folder` (the trainers and their helpers)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            text = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except (OSError, IndexError):
            continue
        if state != "Z" and str(folder).encode() in text:
            found.append(int(proc.name))
    return found


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    folder = tmp_path_factory.mktemp("command")
    spec = {"name": "byot",
            "trial": {"engine": "command", "report_timeout": "4s", "stop_grace": 1,
                      "command": [sys.executable, str(SCRIPT), "--lr", "{policy_lr}", "--steps", "{num_iterations}",
                                  "--step-seconds", "0.1", "--crash-if-lr", "2e-5", "--hang-if-lr", "3e-5",
                                  "--linger-helper", "15"],
                      "env": {"MARKER": str(folder)}},
            "search_space": {"policy_lr": {"choices": list(LRS)}}, "kl_limit": 15,
            "budget": {"trials": 4, "iterations": 4, "max_failures": 0, "promote": {"top_k": 0}},
            "scheduler": {"type": "none"},
            "sampler": {"type": "grid"}, "resources": {"max_concurrent": 2}, "ray": {"num_cpus": 2},
            "workdir": str(folder / "sweeps")}
    return {**run_spec(folder, spec, timeout=300), "left": processes_under(folder / "sweeps")}


def run_spec(folder: Path, spec: dict, timeout: float) -> dict:
    """`tuner run` of the spec, written to folder/NAME.yaml; its compiled spec, study and seconds."""
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.perf_counter()
    proc = tuner("run", path, cwd=folder, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    compiled = load_spec(path)
    return {"folder": folder, "spec": compiled, "study": load_study(compiled), "seconds": time.perf_counter() - started,
            "output": proc.stdout + proc.stderr}


def test_states_follow_the_kl_limit_and_the_faults(sweep):
    rows = {r.params["policy_lr"]: r for r in trial_rows(sweep["study"])}
    assert {lr: r.state for lr, r in rows.items()} == LRS, [(r.number, r.state, r.stop_reason) for r in rows.values()]
    assert rows[1e-3].stop_reason == "kl_limit" and rows[1e-3].iterations == 2 and rows[1e-3].kl_max == 20
    frozen = {t.number: t for t in sweep["study"].trials}
    assert frozen[rows[1e-3].number].constraints["kl"] > 0 and frozen[rows[1e-5].number].constraints["kl"] < 0
    crash, hang = (frozen[rows[lr].number].user_attrs["error"] for lr in (2e-5, 3e-5))
    assert "exited with code 1" in crash and "illegal memory access" in crash  # the log's tail
    assert "no report for 4 s" in hang
    assert "after 1 reports" in crash and rows[2e-5].iterations == 1  # as many as its error says
    assert processes_under(sweep["folder"]) == []


def test_no_process_of_a_trial_outlives_the_sweep(sweep):
    """Each trainer left a helper in a session of its own that ends 15 s after the trainer: `tuner run`
    returned only once the last of them had ended (without killing it: they end within the wait)."""
    assert sweep["left"] == []
    assert "were killed" not in sweep["output"], sweep["output"][-3000:]


def test_each_trial_runs_in_its_own_folder_under_the_sweep(sweep):
    """sweeps/NAME/trials/N: the trainer's working folder, with its log (the crashed and the hung
    trials' too) and what it saved there."""
    trials = sweep["spec"].sweep_dir() / "trials"
    numbers = sorted(t.number for t in sweep["study"].trials)
    assert sorted(int(p.name) for p in trials.iterdir()) == numbers
    for number in numbers:
        log = (trials / str(number) / "trainer.log").read_text()
        assert log.startswith(f"trial {number}: training with lr"), log[:300]
        assert (trials / str(number) / "checkpoint-1.txt").read_text() == f"{number} 1\n"
    crashed = next(r.number for r in trial_rows(sweep["study"]) if r.params["policy_lr"] == 2e-5)
    assert "illegal memory access" in (trials / str(crashed) / "trainer.log").read_text()


def test_the_documented_optuna_snippet_reads_the_study(sweep):
    """docs/own-trainer.md's snippet, run as written (the sweep's name put in) from the folder the
    sweep ran in, prints each trial's state, stop reason and feasibility as the study holds them."""
    doc = (Path(__file__).resolve().parents[3] / "docs" / "own-trainer.md").read_text()
    code = re.search(r"<!-- optuna-snippet -->\n```python\n(.*?)```", doc, re.S).group(1)
    proc = subprocess.run([sys.executable, "-c", code.replace("my-sweep", "byot")],
                          cwd=sweep["folder"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    printed = [line.split(" ", 1)[0:2] for line in proc.stdout.splitlines()]
    rows = trial_rows(sweep["study"])
    assert [int(n) for n, _ in printed] == [r.number for r in rows]
    by_lr = {r.params["policy_lr"]: line for r, (_, line) in zip(rows, printed, strict=True)}
    assert by_lr[1e-3].startswith("COMPLETE kl_limit infeasible ")  # past the KL limit
    assert by_lr[1e-5].startswith("COMPLETE completed feasible ")
    assert by_lr[2e-5].startswith("FAIL failed: TrainerExited")


def test_export_gives_your_command_line_and_the_searched_values(sweep):
    """`tuner export` of a command sweep: by default the user's trial.command with the best trial's
    values, as its trial launched it; --format yaml/json the searched values; an engine's format is
    refused."""
    workdir = str(sweep["spec"].workdir)
    script = tuner("export", "byot", "--workdir", workdir, cwd=sweep["folder"])
    assert script.returncode == 0, script.stderr[-2000:]
    best = trial_rows(sweep["study"])
    best = next(r for r in best if r.params["policy_lr"] == 1e-5)
    folder = sweep["spec"].sweep_dir() / "trials" / str(best.number)
    lr = json.loads((folder / "trial_config.json").read_text())["engine"]["policy_lr"]
    argv = [sys.executable, str(SCRIPT), "--lr", str(lr), "--steps", "4", "--step-seconds", "0.1",
            "--crash-if-lr", "2e-5", "--hang-if-lr", "3e-5", "--linger-helper", "15"]
    assert script.stdout.splitlines()[-1] == shlex.join(argv) and "model_path" not in script.stdout
    as_yaml = tuner("export", "byot", "--workdir", workdir, "--format", "yaml", cwd=sweep["folder"])
    assert yaml.safe_load(as_yaml.stdout) == {"policy_lr": 1e-5}, as_yaml.stdout
    as_json = tuner("export", "byot", "--workdir", workdir, "--format", "json", cwd=sweep["folder"])
    assert json.loads(as_json.stdout)["params"] == {"policy_lr": 1e-5}
    artifact = sweep["spec"].sweep_dir() / "artifacts" / "best_config.yaml"  # the sweep's copy
    assert yaml.safe_load(artifact.read_text()) == {"policy_lr": 1e-5}
    refused = tuner("export", "byot", "--workdir", workdir, "--format", "openrlhf",
                    cwd=sweep["folder"])
    assert refused.returncode == 2 and refused.stdout == "", refused.stdout
    [line] = refused.stderr.strip().splitlines()
    assert "--format" in line and "'openrlhf'" in line and "trial.engine command" in line, line
    assert "use one of command, yaml, json" in line, line


def test_mlflow_child_runs_carry_our_names_and_the_trainers(sweep):
    spec = sweep["spec"]
    client = MlflowClient(spec.tracking_uri())
    children = sweep_runs(client, spec.experiment_name(), "trial")
    assert len(children) == 4
    by_state = {c.data.tags["ppo_tuner.state"]: c for c in children}
    done = by_state["COMPLETE"].info.run_id
    assert [m.step for m in client.get_metric_history(done, K.KL)] == [1, 2, 3, 4]
    assert {K.SCORES, K.EVAL_SCORES, "trainer/kl_per_token", "trainer/loss"} <= set(by_state["COMPLETE"].data.metrics)
    errors = [c.data.tags.get("ppo_tuner.error", "") for c in children if c.data.tags["ppo_tuner.state"] == "FAIL"]
    assert (len(errors) == 2 and any("illegal memory access" in e for e in errors)
            and any("no report" in e for e in errors))


def test_ctrl_c_stops_external_trainers_and_resume_finishes_the_budget(tmp_path):
    """Ctrl-C (SIGINT) while two trainers run: exit 130, their process trees gone, nothing RUNNING in the
    study or MLflow; `tuner resume` then runs what the budget still wants and keeps what finished."""
    folder = tmp_path
    spec = {"name": "byot-ctrl-c",
            "trial": {"engine": "command", "report_timeout": "60s", "stop_grace": 2,
                      "command": [sys.executable, str(SCRIPT), "--lr", "{policy_lr}", "--steps", "{num_iterations}",
                                  "--step-seconds", "1.0"],
                      "env": {"MARKER": str(folder / "sweeps")}},
            "search_space": {"policy_lr": {"choices": [1e-6, 2e-6, 3e-6, 4e-6]}}, "kl_limit": 15,
            "budget": {"trials": 4, "iterations": 6, "promote": {"top_k": 0}}, "scheduler": {"type": "none"},
            "sampler": {"type": "grid"}, "resources": {"max_concurrent": 2}, "ray": {"num_cpus": 2},
            "workdir": str(folder / "sweeps")}
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    log = folder / "run.log"
    proc = start_tuner("run", path, cwd=folder, log=log)
    code, text, took = stop_sweep(proc, log,
                                  ready=lambda: len(processes_under(folder / "sweeps")) >= 2,
                                  settle=1.5)  # a report or two, so the trials are mid-way
    sent = time.time() - took  # when the SIGINT was sent
    assert code == 130, text[-3000:]
    assert "tuner resume" in text and "Traceback" not in text, text[-3000:]
    assert processes_under(folder / "sweeps") == []  # every trainer and its helper process gone
    logs = sorted((folder / "sweeps" / spec["name"] / "trials").glob("*/trainer.log"))
    starts = [float(re.search(r"started at ([0-9.]+)", p.read_text()).group(1)) for p in logs]
    assert len(starts) == 2 and max(starts) < sent, (starts, sent)  # none started after the Ctrl-C
    assert "sweep byot-ctrl-c: 2 trials run in" in text, text[-3000:]  # those that ran: not 4

    compiled = load_spec(path)
    study = load_study(compiled)
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in study.trials if t.user_attrs.get("stop_reason") == "interrupted"]
    assert interrupted, [(t.number, t.state, t.user_attrs) for t in study.trials]
    done_before = {t.number for t in study.trials if t.state == TrialState.COMPLETE}
    client = MlflowClient(compiled.tracking_uri())
    experiment = client.get_experiment_by_name(compiled.experiment_name())
    assert all(r.info.status != "RUNNING" for r in client.search_runs([experiment.experiment_id]))

    resumed = tuner("resume", compiled.sweep_dir(), cwd=folder, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    study = load_study(compiled)
    counted = [t for t in study.trials if t.user_attrs.get("stop_reason") != "interrupted"]
    assert len(counted) == 4 and all(t.state == TrialState.COMPLETE for t in counted)
    assert done_before <= {t.number for t in counted}
    assert sorted(t.params["policy_lr"] for t in counted) == [1e-6, 2e-6, 3e-6, 4e-6]
    reruns = {t.user_attrs.get("run_again_of"): t.params for t in counted}
    assert all(reruns[t.number] == t.params for t in interrupted)  # their configs ran again
    assert processes_under(folder / "sweeps") == []
