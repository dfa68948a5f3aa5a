"""The sweep spec through its public API: the shipped spec files, defaults, warnings, paths, schema."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trials import ConfigError, PPOConfig
from tuner.cli import main
from tuner.spec import SweepSpec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[3]
SPEC_FILES = sorted((ROOT / "search_spaces").glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_spec_files_are_all_there():
    assert {p.name for p in SPEC_FILES} >= {"ppo_default.yaml", "demo.yaml", "kl_focus.yaml", "gpu_example.yaml"}


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_shipped_spec_validates_in_process(path, capsys):
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    resolved = yaml.safe_load(out)
    assert resolved["name"] == load_spec(path).name
    assert all(line.startswith("warning: ") for line in err.splitlines())


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_shipped_spec_starts_with_comments(path):
    assert path.read_text().startswith("#")


def test_validate_through_the_installed_command():
    command = [shutil.which("tuner")] if shutil.which("tuner") else [sys.executable, "-m", "tuner.cli"]
    done = subprocess.run([*command, "validate", str(ROOT / "search_spaces" / "demo.yaml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout)["budget"]["trials"] == 8
    assert "Traceback" not in done.stderr
    assert all(line.startswith("warning: ") for line in done.stderr.splitlines())


def test_demo_spec_matches_its_purpose():
    spec = load_spec(ROOT / "search_spaces" / "demo.yaml")
    assert (spec.trial.model, spec.trial.reward, spec.trial.prompts) == ("demo", "trials.demo:reward", "demo")
    assert spec.budget.trials == 8 and spec.iterations() == 12 and spec.kl_limit == 15
    assert spec.resources.max_concurrent == 2 and spec.scheduler.grace_period == 3


def test_gpu_example_is_postgres_and_mlflow_server_without_checking_model_paths(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "from-the-environment")
    spec = load_spec(ROOT / "search_spaces" / "gpu_example.yaml")
    assert spec.storage_url() == "postgresql+psycopg://tuner:from-the-environment@db-host:5432/optuna"
    assert spec.tracking_uri().startswith("http://")
    assert spec.trial.model == "/models/my-sft-model" and not Path(spec.trial.model).exists()
    assert spec.resources.gpus_per_trial == 1 and spec.budget.wall_clock == 24 * 3600


def test_minimal_spec_gets_every_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = parse_spec({"name": "tiny"})
    assert spec.sweep_dir() == Path("sweeps") / "tiny"
    assert spec.storage_url() == f"sqlite:///{tmp_path / 'sweeps' / 'tiny' / 'study.db'}"
    assert spec.tracking_uri() == f"sqlite:///{tmp_path / 'sweeps' / 'tiny' / 'mlflow.db'}"
    assert spec.experiment_name() == "tiny"
    assert spec.directions() == ["maximize"]
    assert spec.iterations() == PPOConfig().num_iterations
    assert spec.warnings() == []
    resolved = spec.resolved()
    assert resolved["sampler"]["type"] == "tpe" and resolved["sampler"]["seed"] == 0
    assert resolved["budget"]["iterations"] == PPOConfig().num_iterations
    assert resolved["storage"] == spec.storage_url()
    assert resolved["mlflow"] == {"tracking_uri": spec.tracking_uri(), "experiment": "tiny"}
    assert resolved["objective"] == {"metric": "eval/scores", "direction": "maximize", "score": "final", "last_k": 3}


@pytest.mark.parametrize("path", SPEC_FILES, ids=lambda p: p.name)
def test_resolved_spec_is_plain_yaml_that_validates_to_the_same_spec(path):
    spec = load_spec(path)
    text = yaml.safe_dump(spec.resolved(), sort_keys=False)
    again = parse_spec(yaml.safe_load(text))
    assert again.resolved() == spec.resolved()


def test_nsga2_adds_minimizing_kl():
    spec = parse_spec({"name": "mo", "sampler": {"type": "nsga2"}, "objective": {"direction": "minimize"}})
    assert spec.directions() == ["minimize", "minimize"]


def test_iterations_come_from_budget_then_base():
    assert parse_spec({"name": "a", "budget": {"iterations": 7}}).iterations() == 7
    assert parse_spec({"name": "a", "base": {"num_iterations": 9}}).iterations() == 9


@pytest.mark.parametrize(("raw", "seconds"),
                         [(90, 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0),
                          ("1.5h", 5400.0)])
def test_wall_clock_accepts_seconds_and_units(raw, seconds):
    assert parse_spec({"name": "a", "budget": {"wall_clock": raw}}).budget.wall_clock == seconds


def test_value_outside_documented_range_is_a_warning_naming_the_range(tmp_path, capsys):
    path = write(tmp_path, "name: w\nsearch_space:\n  policy_lr: {low: 1.0e-6, high: 1.0e-3, log: true}\n")
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert "warning: search_space.policy_lr.high = 0.001 is outside the documented range 1e-06..5e-05" in err
    assert "error" not in err


def test_base_and_choices_outside_documented_range_warn_in_one_line():
    data = {"name": "w", "trial": {"model": "/models/mine"}, "base": {"ppo_epochs": 20},
            "search_space": {"cliprange": {"choices": [0.2, 0.5]}}}
    assert parse_spec(data).warnings() == [
        "2 values outside the documented ranges: base.ppo_epochs = 20 (2..10); "
        "search_space.cliprange.choices[1] = 0.5 (0.1..0.3)"]


def test_the_demo_models_range_warnings_say_why_they_are_expected():
    from trials.demo import RANGES_NOTE

    spec = load_spec(ROOT / "search_spaces" / "demo.yaml")
    warnings = spec.warnings()
    ranges = [w for w in warnings if "documented range" in w]
    assert len(ranges) == 1 and ranges[0].startswith("5 values outside the documented ranges: ")
    assert ranges[0].endswith(f": expected, {RANGES_NOTE}")
    assert "search_space.policy_lr.high = 0.001 (1e-06..5e-05)" in ranges[0]


def test_batch_ranges_whose_every_pair_divides_are_accepted():
    space = {"rollout_batch_size": {"low": 64, "high": 1024, "step": 64},
             "mini_batch_size": {"choices": [8, 16, 32, 64]},
             "micro_batch_size": {"choices": [2, 4, 8]}}
    assert parse_spec({"name": "b", "search_space": space}).search_space


def test_log_int_batch_range_counts_every_integer_in_it():
    space = {"rollout_batch_size": {"low": 64, "high": 1024, "log": True}, "mini_batch_size": 8}
    with pytest.raises(ConfigError, match="search_space.rollout_batch_size: mini_batch_size 8 does "
                                          "not divide rollout_batch_size 65"):
        parse_spec({"name": "b", "search_space": space})


def test_kl_horizon_searched_needs_adaptive_mode_too():
    with pytest.raises(ConfigError, match="search_space.kl_horizon: is sampled only when kl_mode is adaptive"):
        parse_spec({"name": "k", "search_space": {"kl_horizon": {"choices": [5000, 10000]}}})
    assert parse_spec({"name": "k", "base": {"kl_mode": "adaptive"},
                       "search_space": {"kl_horizon": {"choices": [5000, 10000]}}})


def test_kl_limit_far_from_the_guidance_warns():
    assert any("kl_limit" in w for w in parse_spec({"name": "k", "kl_limit": 100}).warnings())


def test_kl_limit_is_a_number_or_a_mapping_with_forecast_and_grace():
    plain = parse_spec({"name": "k", "kl_limit": 12})
    assert plain.kl_limit == 12 and not plain.kl_rule.forecast and plain.kl_rule.grace_iterations == 0
    full = parse_spec({"name": "k", "kl_limit": {"nats": 10, "forecast": True, "grace_iterations": 3}})
    assert full.kl_limit == 10 and full.kl_rule.forecast and full.kl_rule.grace_iterations == 3
    again = parse_spec(full.resolved())  # the saved spec reads back the same
    assert again.kl_rule == full.kl_rule
    blind = parse_spec({"name": "k", "kl_limit": {"grace_iterations": 12}, "budget": {"iterations": 12}})
    assert any("kl_limit.grace_iterations = 12" in w for w in blind.warnings())


def test_yaml_exponents_without_a_dot_are_numbers(tmp_path):
    spec = load_spec(write(tmp_path, "name: e\nbase: {value_lr: 5e-5}\nsearch_space:\n"
                                     "  policy_lr: {choices: [1e-5, 3e-5]}\n"))
    resolved = spec.resolved()
    assert resolved["base"]["value_lr"] == 5e-5
    assert resolved["search_space"]["policy_lr"] == {"choices": [1e-5, 3e-5]}


def test_relative_trial_files_resolve_against_the_spec_folder(tmp_path):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n')
    (tmp_path / "my_reward.py").write_text("def score(prompts, responses):\n    return [0.0] * len(prompts)\n")
    text = "name: p\ntrial:\n  prompts: prompts.jsonl\n  reward: my_reward.py:score\n  eval_prompts: missing.jsonl\n"
    spec = load_spec(write(tmp_path, text))
    assert spec.trial.prompts == str(tmp_path / "prompts.jsonl")
    assert spec.trial.reward == f"{tmp_path / 'my_reward.py'}:score"
    assert spec.trial.eval_prompts == "missing.jsonl"  # not there: left for the pre-launch check
    assert spec.trial.model == "demo"


def test_module_rewards_stay_as_written(tmp_path):
    spec = load_spec(write(tmp_path, "name: m\ntrial:\n  reward: trials.demo:reward\n"))
    assert spec.trial.reward == "trials.demo:reward"


def test_an_empty_section_means_its_defaults():
    spec = parse_spec({"name": "e", "budget": None, "search_space": None})
    assert spec.budget.trials == 8 and spec.search_space == {}


def test_schema_to_stdout_is_json_with_the_top_level_keys(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(SweepSpec.model_fields) <= set(schema["properties"])
    assert schema["required"] == ["name"]
    assert "policy_lr" in schema["properties"]["search_space"]["properties"]
    assert "num_mini_batches" in schema["properties"]["search_space"]["properties"]
    assert schema["properties"]["kl_limit"]["description"]


def test_schema_to_a_file(tmp_path):
    out = tmp_path / "spec.schema.json"
    assert main(["schema", "-o", str(out)]) == 0
    assert "search_space" in json.loads(out.read_text())["properties"]


def test_schema_to_an_unwritable_place_is_one_error_line(tmp_path, capsys):
    assert main(["schema", "-o", str(tmp_path / "no" / "such" / "dir" / "s.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1
