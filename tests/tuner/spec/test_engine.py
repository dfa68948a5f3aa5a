"""trial.engine and an external trainer's launch keys: checked like the rest, one line each, exit 2."""

from __future__ import annotations

import pytest

from tuner.cli import main
from tuner.spec import load_spec

CASES = [
    ("no-command", "trial: {engine: command}", "trial.command", "is needed with engine: command"),
    ("placeholder", "trial: {engine: command, command: [python, t.py, '--lr={policy_lrr}']}", "trial.command[2]",
     "'{policy_lrr}' is not an engine field"),
    ("not-yet", "trial: {engine: verl}", "trial.engine", "has no backend yet"),
    ("ours-with-command", "trial: {command: [python, t.py]}", "trial.command", "applies only to an external engine"),
    ("timeout", "trial: {engine: command, command: [t], report_timeout: soon}", "trial.report_timeout", "duration"),
    ("unknown-engine", "trial: {engine: deepspeed}", "trial.engine", ""),
]


@pytest.mark.parametrize(("text", "path", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_engine_key_is_one_line_and_exit_2(tmp_path, capsys, text, path, message):
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"name: x\n{text}\n")
    assert main(["validate", str(spec)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: ") and message in lines[0], lines


def test_an_external_trainer_is_launched_from_the_spec(tmp_path):
    (tmp_path / "train.py").write_text("")
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\ntrial: {engine: command, command: [python, train.py, --lr, '{policy_lr}'], "
                    "env: {WANDB_MODE: offline}, report_timeout: 2m}\nsearch_space: {policy_lr: {low: 1.0e-6, high: 1.0e-5}}\n")
    launch = load_spec(spec).trial.launch()
    assert launch["command"] == ["python", str(tmp_path / "train.py"), "--lr", "{policy_lr}"]
    assert launch["env"] == {"WANDB_MODE": "offline"} and launch["report_timeout"] == 120.0
    assert load_spec(spec).trial.engine == "command"
