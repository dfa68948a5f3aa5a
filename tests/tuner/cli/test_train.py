"""`tuner train`: a real run from a config file, and bad input as one line with exit code 2."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

DEMO = ROOT / "configs" / "demo.yaml"


def test_train_runs_the_demo_config_and_saves_the_policy(run_cli, demo_model, tmp_path):
    code, out, err = run_cli("train", DEMO, "--set", "num_iterations=2", "--set", "num_threads=2",
                             "--save", tmp_path / "policy", "--quiet")
    assert code == 0, err
    assert "iterations: 2/2" in out and "eval/scores:" in out and "objective/kl:" in out
    assert re.search(r"eval/scores: -?\d\.\d{4} at start -> -?\d\.\d{4} at end", out), out
    assert (tmp_path / "policy" / "config.json").is_file()


def test_the_kl_limit_stops_the_aggressive_demo_with_its_own_exit_code(run_cli, demo_model):
    from tuner.cli._train import EXIT_KL_LIMIT

    code, out, err = run_cli("train", ROOT / "configs" / "demo_aggressive.yaml", "--kl-limit", "15",
                             "--set", "num_threads=2", "--quiet")
    assert code == EXIT_KL_LIMIT == 3, err
    assert "stopped: objective/kl" in out and "passed the limit 15" in out
    eval_line = next(line for line in out.splitlines() if line.startswith("eval/scores:"))
    assert "nan" not in eval_line and re.search(r"-> (-?\d\.\d{4}|not evaluated yet) at end", eval_line), eval_line


@pytest.mark.parametrize("args,field", [
    (["--set", "polcy_lr=1e-5"], "polcy_lr"),
    (["--set", "cliprange=0"], "cliprange"),
    (["--set", "mini_batch_size=7"], "mini_batch_size"),
    (["--set", "model_path=/no/such/model"], "model_path"),
    (["--set", "reward=no_such_module:score"], "reward"),
    (["--set", "oops"], "--set"),
])
def test_bad_input_is_one_line_and_exit_2(run_cli, args, field, tmp_path):
    code, out, err = run_cli("train", DEMO, *args, "--save", tmp_path / "out")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and errors[0].startswith(f"error: {field}:")
    assert "Traceback" not in err and not (tmp_path / "out").exists()


def test_a_missing_config_file_and_a_bad_yaml_file(run_cli, tmp_path):
    code, _, err = run_cli("train", tmp_path / "nope.yaml")
    assert code == 2 and "no such file" in err
    (tmp_path / "bad.yaml").write_text("policy_lr: [1,\n")
    code, _, err = run_cli("train", tmp_path / "bad.yaml")
    assert code == 2 and "not valid YAML at line" in err


def test_the_console_script_exits_2_without_a_traceback():
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "train", str(DEMO), "--set", "kl_mode=auto"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error: kl_mode: must be one of fixed, adaptive" in proc.stderr


def test_a_relative_path_in_the_config_names_the_folder_it_was_looked_for_in(run_cli, demo_model, tmp_path):
    config = tmp_path / "conf" / "run.yaml"
    config.parent.mkdir()
    config.write_text(DEMO.read_text().replace("reward: trials.demo:reward", "reward: my_rewards.py:score"))
    code, _, err = run_cli("train", config, "--save", tmp_path / "out")
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and errors == [
        "error: reward: file my_rewards.py does not exist (a relative path: looked for in the config's folder "
        f"{config.parent.resolve()}) (got 'my_rewards.py:score'); give the path of the Python file that defines "
        "the reward"], err
