"""The one parser of a reward reference, and the one rule for relative paths."""

from __future__ import annotations

import pytest

from trials import RewardError, RewardRef, parse_reward, path_fields, resolve_relative


@pytest.mark.parametrize(("value", "expected"), [
    ("trials.demo:reward", RewardRef("module", "trials.demo", "reward")),
    ("rewards/score.py:judge", RewardRef("file", "rewards/score.py", "judge")),
    ("models/rm", RewardRef("model", "models/rm")),
    ("C:\\models\\rm", RewardRef("model", "C:\\models\\rm")),
])
def test_reward_references(value, expected):
    ref = parse_reward(value)
    assert ref == expected and str(ref) == value


def test_an_existing_folder_wins_over_the_module_form(tmp_path):
    folder = tmp_path / "rm:v2"
    folder.mkdir()
    assert parse_reward(str(folder)).kind == "model"


@pytest.mark.parametrize("value", ["mod:not-a-name", ":reward", "my module:reward", ""])
def test_malformed_references_name_the_field_and_the_fix(value):
    with pytest.raises(RewardError) as err:
        parse_reward(value, path="trial.reward")
    (problem,) = err.value.problems
    assert problem.path == "trial.reward" and problem.fix


def test_relative_paths_resolve_only_where_they_exist(tmp_path):
    (tmp_path / "r.py").write_text("def f(p, r): return [0.0] * len(r)\n")
    (tmp_path / "prompts.txt").write_text("a\n")
    assert resolve_relative("reward", "r.py:f", tmp_path) == f"{tmp_path / 'r.py'}:f"
    assert resolve_relative("reward", "trials.demo:reward", tmp_path) == "trials.demo:reward"
    assert resolve_relative("prompts", "prompts.txt", tmp_path) == str(tmp_path / "prompts.txt")
    assert resolve_relative("prompts", "missing.txt", tmp_path) == "missing.txt"
    assert resolve_relative("model_path", "demo", tmp_path) == "demo"
    assert resolve_relative("eval_prompts", None, tmp_path) is None
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    (tmp_path / "venv" / "bin" / "python").symlink_to("/usr/bin/python3")  # a venv's python: the link is kept
    assert resolve_relative("vllm_python", "venv/bin/python", tmp_path) == str(tmp_path / "venv" / "bin" / "python")


def test_the_path_valued_fields_are_listed_once():
    assert set(path_fields()) == {"model_path", "value_model_path", "reward", "eval_reward", "prompts", "eval_prompts",
                                  "output_dir", "checkpoint_dir", "vllm_python"}
