"""A sweep whose every trial would fail the same way: an external trainer's program or interpreter
checked once before any trial (one line, exit 2, nothing written), and a sweep whose first trials
all fail with the same error stopped, saying that error's last line (exit 4), Ray's tracebacks kept
off the terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.sweep_helpers import tuner
from tuner.spec import load_spec
from tuner.sweep import load_study

MISSING = "No module named 'no_such_trainer_module'"


def write(folder: Path, trial: dict, trials: int = 3) -> Path:
    spec = {"name": "broken", "trial": trial,
            "search_space": {"policy_lr": {"low": 1.0e-6, "high": 1.0e-5, "log": True}},
            "budget": {"trials": trials, "iterations": 2, "max_failures": 0,
                       "promote": {"top_k": 0}},
            "scheduler": {"type": "none"}, "resources": {"max_concurrent": 1},
            "ray": {"num_cpus": 1}, "workdir": str(folder / "sweeps")}
    (folder / "specs").mkdir(exist_ok=True)
    path = folder / "specs" / "broken.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def one_error(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    return errors[0]


def test_a_trl_interpreter_without_trl_is_one_line_before_any_trial(tmp_path):
    env = tmp_path / "env"  # a venv named relative to the spec: its python, not the base one
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True,
                   timeout=120)
    path = write(tmp_path, {"engine": "trl", "command": ["../env/bin/python"]})
    proc = tuner("run", path, cwd=tmp_path, timeout=300)
    line = one_error(proc)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert line.startswith("error: trial.command[0]: must import trl, torch, transformers for "
                           "engine: trl, and it failed with ModuleNotFoundError: No module named "
                           f"'trl' (got '{env / 'bin' / 'python'}')")
    assert "bench/setup_trl.sh" in line
    assert not (tmp_path / "sweeps").exists()  # nothing written


@pytest.mark.parametrize(("program", "why"), [("no-such-trainer", "not found on PATH"),
                                              ("./train.sh", "not an executable file")])
def test_a_command_that_cannot_start_is_one_line_before_any_trial(tmp_path, program, why):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "train.sh").write_text("#!/bin/sh\n")  # not executable
    path = write(tmp_path, {"engine": "command", "command": [program, "{policy_lr}"]})
    proc = tuner("run", path, cwd=tmp_path)
    assert proc.returncode == 2
    assert one_error(proc).startswith(f"error: trial.command[0]: cannot be started: {why}")
    assert not (tmp_path / "sweeps").exists()


def test_a_sweep_whose_first_trials_fail_alike_stops_with_the_errors_last_line(tmp_path):
    trainer = tmp_path / "specs" / "train.py"
    trainer.parent.mkdir()
    trainer.write_text("import sys\nprint('loading', sys.argv[1:])\n"
                       "import no_such_trainer_module\n")
    command = [sys.executable, "train.py", "{policy_lr}"]
    path = write(tmp_path, {"engine": "command", "command": command}, trials=6)
    proc = tuner("run", path, cwd=tmp_path, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out[-6000:]
    assert (f"its first trials all failed with the same error: ModuleNotFoundError: {MISSING}"
            in one_error(proc))
    study = load_study(load_spec(path))
    assert [t.state.name for t in study.trials] == ["FAIL"] * 3  # stopped after 3 of the budget's 6
    # the stop column (live lines, table) ends with the error's last line, not 'log tail:'
    assert out.count(MISSING) >= 4 and "log tail:" not in out, out[-6000:]
    assert "tune_controller" not in out  # Ray's tracebacks: in the sweep's ray.log
    assert "tune_controller" in (tmp_path / "sweeps" / "broken" / "ray.log").read_text()
    # no 'controller overhead: ... = nanx'
    assert "nan" not in proc.stdout.split("best feasible:")[1]
