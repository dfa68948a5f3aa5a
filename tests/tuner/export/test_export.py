"""Exporting a PPOConfig through the public API: ppo-tuner's YAML and JSON, OpenRLHF, verl and TRL.

The name tables of each engine (`tuner.engines.openrlhf.FLAGS`, `verl.KEYS`, `trl.KWARGS` and the
verified name sets next to them) are read here so that an export can only use names checked against the target.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import shlex

import pytest
import yaml

from tests.export_helpers import (
    CONFIGS,
    SOURCE,
    TABLES,
    TUNED,
    comments,
    names,
    openrlhf_flags,
    settings,
    trl_kwargs,
    verl_overrides,
)
from trials import ConfigError, PPOConfig, RewardError, field_specs
from tuner.engines import openrlhf as openrlhf_engine
from tuner.engines import trl as trl_engine
from tuner.engines import verl as verl_engine
from tuner.export import FORMATS, export_config

# -- ppo-tuner's own formats -------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
def test_yaml_round_trips_through_from_dict(name):
    config = CONFIGS[name]
    text, warnings = export_config(config, "yaml", source=SOURCE)
    data = yaml.safe_load(text)
    assert list(data) == list(field_specs())  # a flat mapping of every field, provenance only as comments
    assert PPOConfig.from_dict(data) == config
    assert warnings == []
    assert "sweep=kl-sweep" in comments(text) and "kl-sweep" not in str(data)


def test_the_yaml_export_runs_with_tuner_train(run_cli, demo_model, tmp_path):
    config = PPOConfig(rollout_batch_size=8, mini_batch_size=4, num_iterations=1, num_threads=2, seed=1)
    path = tmp_path / "trial.yaml"
    path.write_text(export_config(config, "yaml", source=SOURCE)[0])
    code, _, err = run_cli("train", path, "--quiet")
    assert code == 0, err


@pytest.mark.parametrize("name", CONFIGS)
def test_json_round_trips_with_its_source(name):
    text, warnings = export_config(CONFIGS[name], "json", source=SOURCE)
    record = json.loads(text)
    assert set(record) == {"config", "source"} and record["source"] == SOURCE
    assert PPOConfig.from_dict(record["config"]) == CONFIGS[name]
    assert warnings == []


def test_json_without_source_and_with_a_non_finite_objective():
    assert json.loads(export_config(TUNED, "json")[0])["source"] == {}
    record = json.loads(export_config(TUNED, "json", source={"objective": math.nan, "trial": 1})[0])
    assert record["source"] == {"objective": None, "trial": 1}


# -- the targets' names ------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt,verified", [("openrlhf", openrlhf_engine.VERIFIED_FLAGS),
                                          ("verl", verl_engine.VERIFIED_KEYS),
                                          ("trl", trl_engine.VERIFIED_KWARGS)])
def test_the_name_tables_use_only_verified_names(fmt, verified):
    table_names = {n for names_ in TABLES[fmt].values() for n in names_}
    fixed = {"openrlhf": openrlhf_engine.FIXED, "verl": verl_engine.FIXED,
             "trl": trl_engine.FIXED}[fmt]
    assert table_names | set(fixed) <= verified
    assert set(TABLES[fmt]) <= set(field_specs())


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("fmt,verified", [("openrlhf", openrlhf_engine.VERIFIED_FLAGS),
                                          ("verl", verl_engine.VERIFIED_KEYS),
                                          ("trl", trl_engine.VERIFIED_KWARGS)])
def test_every_written_name_is_verified(fmt, verified, name):
    written = settings(fmt, export_config(CONFIGS[name], fmt)[0])
    assert set(written) <= verified, set(written) - verified


def test_openrlhf_values():
    flags = openrlhf_flags(export_config(TUNED, "openrlhf")[0])
    one = {flag: values[0] for flag, values in flags.items() if len(values) == 1}
    assert float(one["--actor.adam.lr"]) == TUNED.policy_lr
    assert float(one["--critic.adam.lr"]) == TUNED.value_lr
    assert (one["--actor.model_name_or_path"] == "/models/policy"
            and one["--critic.model_name_or_path"] == "/models/value")
    assert one["--reward.model_name_or_path"] == "/models/rm" and "--reward.remote_url" not in flags
    assert int(one["--rollout.batch_size"]) == 128 and int(one["--train.batch_size"]) == 16
    assert int(one["--train.micro_batch_size"]) == 8 and int(one["--train.max_epochs"]) == 2
    assert float(one["--algo.kl.init_coef"]) == 0.1 and one["--algo.kl.estimator"] == "k3"
    assert float(one["--algo.kl.target"]) == pytest.approx(8.0 / 64)  # per response token
    assert int(one["--algo.kl.horizon"]) == 20000
    assert float(one["--actor.eps_clip"]) == 0.15 and float(one["--critic.value_clip"]) == 0.3
    assert float(one["--algo.advantage.lambd"]) == 0.9 and float(one["--algo.advantage.gamma"]) == 0.99
    assert one["--actor.lr_scheduler"] == "cosine" and float(one["--actor.max_norm"]) == 0.5
    assert int(one["--rollout.max_new_tokens"]) == 64 and float(one["--rollout.temperature"]) == 0.9
    assert int(one["--data.max_samples"]) == 50 * 128 and int(one["--train.num_episodes"]) == 1
    assert one["--algo.advantage.estimator"] == "gae" and int(one["--rollout.n_samples_per_prompt"]) == 1
    assert flags["--actor.adam.betas"] == ["0.9", "0.999"]
    total = 50 * 2 * (128 // 16)  # optimizer steps; OpenRLHF warms up for ceil(total * ratio)
    assert math.ceil(total * float(one["--actor.lr_warmup_ratio"])) == 16


@pytest.mark.parametrize("warmup", [0, 1, 7, 16, 333, 800])
def test_openrlhf_warmup_ratio_gives_back_the_warmup_steps(warmup):
    config = dataclasses.replace(TUNED, warmup_steps=warmup)
    one = openrlhf_flags(export_config(config, "openrlhf")[0])
    total = 50 * 2 * 8
    assert math.ceil(total * float(one["--critic.lr_warmup_ratio"][0])) == warmup


def test_verl_values():
    keys = verl_overrides(export_config(TUNED, "verl")[0])
    assert float(keys["actor_rollout_ref.actor.optim.lr"]) == 2e-6 and float(keys["critic.optim.lr"]) == 3e-5
    assert keys["actor_rollout_ref.model.path"] == "/models/policy" and keys["critic.model.path"] == "/models/value"
    assert keys["reward.reward_model.enable"] == "True" and keys["reward.reward_model.model_path"] == "/models/rm"
    assert keys["data.train_files"] == "/data/p.jsonl" and keys["data.val_files"] == "/data/eval.jsonl"
    assert int(keys["data.train_batch_size"]) == 128 and int(keys["actor_rollout_ref.actor.ppo_mini_batch_size"]) == 16
    assert int(keys["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu"]) == 8
    assert keys["algorithm.kl_ctrl.type"] == "adaptive" and float(keys["algorithm.kl_ctrl.kl_coef"]) == 0.1
    assert float(keys["algorithm.kl_ctrl.target_kl"]) == pytest.approx(8.0 / 64)
    assert keys["algorithm.kl_penalty"] == "low_var_kl" and keys["algorithm.use_kl_in_reward"] == "True"
    for key in ("clip_ratio", "clip_ratio_low", "clip_ratio_high"):
        assert float(keys[f"actor_rollout_ref.actor.{key}"]) == 0.15
    assert float(keys["algorithm.lam"]) == 0.9 and float(keys["algorithm.gamma"]) == 0.99
    assert keys["actor_rollout_ref.actor.optim.lr_scheduler_type"] == "cosine"
    assert int(keys["actor_rollout_ref.actor.optim.lr_warmup_steps"]) == 1  # 16 steps = 1 iteration of 2 x 8
    assert float(keys["actor_rollout_ref.actor.optim.clip_grad"]) == 0.5
    assert int(keys["data.max_response_length"]) == 64 and int(keys["data.max_prompt_length"]) == 128
    assert keys["data.truncation"] == "left" and int(keys["actor_rollout_ref.rollout.top_k"]) == -1
    assert int(keys["trainer.total_training_steps"]) == 50 and int(keys["actor_rollout_ref.rollout.n"]) == 1


def test_trl_values():
    kwargs = trl_kwargs(export_config(TUNED, "trl")[0])
    assert kwargs["learning_rate"] == 2e-6 and kwargs["sft_model_path"] == "/models/policy"
    assert kwargs["reward_model_path"] == "/models/rm"
    assert kwargs["per_device_train_batch_size"] == 128 and kwargs["gradient_accumulation_steps"] == 1
    assert kwargs["num_mini_batches"] == 128 // 16 and kwargs["local_rollout_forward_batch_size"] == 8
    assert kwargs["total_episodes"] == 50 * 128 and kwargs["num_ppo_epochs"] == 2
    assert kwargs["kl_coef"] == 0.1 and kwargs["kl_estimator"] == "k3" and kwargs["lam"] == 0.9
    assert kwargs["cliprange"] == 0.15 and kwargs["cliprange_value"] == 0.3 and kwargs["vf_coef"] == 0.5
    assert kwargs["lr_scheduler_type"] == "cosine" and kwargs["warmup_steps"] == 1
    assert kwargs["response_length"] == 64 and kwargs["temperature"] == 0.9 and kwargs["stop_token"] == "eos"


REWARD_MODEL_NAMES = {"openrlhf": "--reward.model_name_or_path", "verl": "reward.reward_model.model_path",
                      "trl": "reward_model_path"}


@pytest.mark.parametrize("fmt", REWARD_MODEL_NAMES)
def test_a_reward_model_folder_is_exported_as_a_reward_model(fmt, tmp_path):
    missing = "/no/such/reward-model"  # a folder of the machine that will run the export, not of this one
    folder = tmp_path / "rm:score"  # an existing folder wins over the 'module:function' reading
    folder.mkdir()
    for reward in (missing, str(folder)):
        text, warnings = export_config(dataclasses.replace(TUNED, reward=reward), fmt)
        assert reward in str(settings(fmt, text)[REWARD_MODEL_NAMES[fmt]])  # as it is, or Hydra-quoted
        assert not [w for w in warnings if w.startswith("reward = ")]


def test_values_with_spaces_and_quotes_survive_the_shell_and_python():
    config = dataclasses.replace(TUNED, model_path="/models/my 'odd' model", reward="/models/r m")
    assert openrlhf_flags(export_config(config, "openrlhf")[0])["--actor.model_name_or_path"] == [config.model_path]
    keys = verl_overrides(export_config(config, "verl")[0])
    assert keys["actor_rollout_ref.model.path"] == "'/models/my \\'odd\\' model'"  # Hydra's quoted string
    assert trl_kwargs(export_config(config, "trl")[0])["sft_model_path"] == config.model_path


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl (1.12, the last with PPO) is not installed")
@pytest.mark.parametrize("name", ["tuned", "awkward"])
def test_the_trl_snippet_builds_a_real_trl_ppo_config(name, tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    config = dataclasses.replace(CONFIGS[name], device="cpu", output_dir=str(tmp_path))
    namespace: dict = {}
    exec(compile(export_config(config, "trl")[0], "exported.py", "exec"), namespace)
    built = namespace["config"]
    from trl.experimental.ppo import PPOConfig as TrlPPOConfig

    assert isinstance(built, TrlPPOConfig)
    assert {f.name for f in dataclasses.fields(TrlPPOConfig)} >= trl_engine.VERIFIED_KWARGS
    assert built.learning_rate == config.policy_lr and built.num_ppo_epochs == config.ppo_epochs
    assert built.num_mini_batches == config.num_mini_batches and built.use_cpu and not built.bf16


# -- nothing dropped silently ------------------------------------------------------------------------

@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_field_is_expressed_or_named_in_a_comment(fmt, name):
    config = CONFIGS[name]
    text, warnings = export_config(config, fmt, source=SOURCE)
    if fmt in ("yaml", "json"):
        data = yaml.safe_load(text) if fmt == "yaml" else json.loads(text)["config"]
        assert PPOConfig.from_dict(data) == config
        return
    written, said = set(settings(fmt, text)), names(comments(text))
    for field in field_specs():
        expressed = bool(written & set(TABLES[fmt].get(field, ())))
        assert expressed or field in said, f"{fmt}: {field} is neither written nor named in a comment"
    for warning in warnings:  # each names a field and its value, and stands in the file as a comment too
        field = warning.split(" = ", 1)[0]
        assert field in field_specs() and warning in comments(text)


@pytest.mark.parametrize("fmt,changes,field", [
    ("openrlhf", {"top_k": 40}, "top_k"),
    ("openrlhf", {"whiten_advantages": False}, "whiten_advantages"),
    ("openrlhf", {"whiten_rewards": True}, "whiten_rewards"),
    ("openrlhf", {"optimizer": "adam", "weight_decay": 0.1}, "optimizer"),
    ("openrlhf", {"vf_coef": 0.5}, "vf_coef"),
    ("openrlhf", {"kl_mode": "adaptive"}, "kl_target"),
    ("openrlhf", {"reward": "rewards.py:score"}, "reward"),
    ("verl", {"lr_schedule": "linear"}, "lr_schedule"),
    ("verl", {"whiten_advantages": False}, "whiten_advantages"),
    ("verl", {"kl_mode": "adaptive"}, "kl_target"),
    ("verl", {"kl_mode": "adaptive", "kl_horizon": 12345.6}, "kl_horizon"),
    ("verl", {"warmup_steps": 5}, "warmup_steps"),
    ("verl", {"prompts": "/data/p.jsonl"}, "prompts"),
    ("trl", {"value_lr": 9e-5}, "value_lr"),
    ("trl", {"kl_mode": "adaptive"}, "kl_mode"),
    ("trl", {"ent_coef": 0.01}, "ent_coef"),
    ("trl", {"top_k": 40}, "top_k"),
    ("trl", {"top_p": 0.9}, "top_p"),
    ("trl", {"micro_batch_size": 4}, "micro_batch_size"),
    ("trl", {"whiten_advantages": False}, "whiten_advantages"),
    ("trl", {"whiten_rewards": True, "mini_batch_size": 4, "micro_batch_size": None}, "whiten_rewards"),
    ("trl", {}, "max_grad_norm"),
    ("trl", {"reward": "my_rewards:score"}, "reward"),
    ("openrlhf", {"lora_rank": 16, "lora_alpha": 16.5}, "lora_alpha"),
    ("openrlhf", {"lora_rank": 16}, "value_backbone"),  # its --ds.lora gives the critic an adapter too
    ("openrlhf", {"frozen_dtype": "fp32"}, "frozen_dtype"),
    ("verl", {"lora_rank": 16, "lora_dropout": 0.1}, "lora_dropout"),
    ("verl", {"lora_rank": 16, "value_backbone": "shared"}, "value_backbone"),
    ("verl", {"frozen_dtype": "bf16"}, "frozen_dtype"),
    ("trl", {"lora_rank": 16, "lora_dropout": 0.1}, "lora_dropout"),
    ("trl", {"lora_rank": 16, "value_backbone": "shared"}, "value_backbone"),
    ("trl", {"gradient_checkpointing": True}, "gradient_checkpointing"),
    ("trl", {"frozen_dtype": "bf16"}, "frozen_dtype"),
])
def test_a_value_the_target_cannot_take_gives_a_warning(fmt, changes, field):
    config = dataclasses.replace(TUNED, **changes)
    text, warnings = export_config(config, fmt)
    (warning,) = [w for w in warnings if w.startswith(f"{field} = ")]
    assert repr(getattr(config, field)) in warning and warning in comments(text)


@pytest.mark.parametrize("fmt,field", [("openrlhf", "top_k"), ("openrlhf", "whiten_advantages"),
                                       ("verl", "lr_schedule"), ("trl", "value_lr"), ("trl", "kl_mode")])
def test_no_warning_when_the_target_can_take_the_value(fmt, field):
    config = dataclasses.replace(TUNED, value_lr=TUNED.policy_lr, kl_mode="fixed")
    assert not [w for w in export_config(config, fmt)[1] if w.startswith(f"{field} = ")]


def test_the_demo_model_and_prompts_are_flagged_for_the_targets():
    for fmt in ("openrlhf", "verl", "trl"):
        fields = {w.split(" = ")[0] for w in export_config(PPOConfig(), fmt)[1]}
        assert {"model_path", "prompts"} <= fields, fmt


@pytest.mark.parametrize("fmt", ["yaml", "openrlhf", "verl", "trl"])
def test_the_source_is_a_header_comment(fmt):
    text = export_config(TUNED, fmt, source=SOURCE)[0]
    assert "source: sweep=kl-sweep, trial=7, objective=0.42, kl=5.5" in comments("\n".join(text.splitlines()[:3]))


# -- errors ------------------------------------------------------------------------------------------

def test_an_unknown_format_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError) as info:
        export_config(TUNED, "deepspeed-chat")
    (line,) = info.value.lines()
    assert line.startswith("--format:") and "'deepspeed-chat'" in line
    assert all(fmt in line for fmt in FORMATS)


def test_a_malformed_reward_is_a_reward_error():
    with pytest.raises(RewardError, match="reward"):
        export_config(dataclasses.replace(TUNED, reward="not a module:score"), "verl")


def test_an_impossible_config_is_a_config_error():
    with pytest.raises(ConfigError, match="mini_batch_size"):
        export_config(PPOConfig(rollout_batch_size=64, mini_batch_size=7), "verl")


@pytest.mark.parametrize(("engine", "default", "refused"), [
    ("ppo-tuner", "yaml", "command"), ("command", "command", "openrlhf"), ("verl", "verl", "trl"),
    ("openrlhf", "openrlhf", "verl"), ("trl", "trl", "openrlhf")])
def test_each_engines_sweep_exports_in_its_own_format_only(engine, default, refused):
    from tuner.export import check_format, formats_for

    assert formats_for(engine)[0] == default
    assert check_format(default.upper(), engine) == default
    with pytest.raises(ConfigError) as info:
        check_format(refused, engine)
    assert "--format" in str(info.value) and refused in str(info.value)
    if engine != "ppo-tuner":  # the searched values, not our engine's full config
        assert check_format("yaml", engine) == "yaml" and check_format("json", engine) == "json"


def test_the_searched_values_and_your_command_line():
    from tuner.export import export_command, export_searched

    values = {"policy_lr": 1e-5, "kl_coef": 0.05}
    text, lost = export_searched(values, "yaml", {"sweep": "s", "trial": 3})
    assert yaml.safe_load(text) == values and lost == [] and "trial=3" in text
    text, _ = export_searched({"policy_lr": 1e-5}, "json", {"sweep": "s"})
    assert json.loads(text) == {"params": {"policy_lr": 1e-5}, "source": {"sweep": "s"}}
    argv = ["python", "train.py", "--name", "a b", "--lr", "1e-05"]
    lines = export_command(argv, "/sweeps/s/trials/3")[0].splitlines()
    assert lines[0] == "#!/usr/bin/env bash" and lines[-1] == "python train.py --name 'a b' --lr 1e-05"


@pytest.mark.parametrize(("mean", "divisor", "said"), [(None, 64, "/ response_length, the maximum"),
                                                      (40.0, 40.0, "/ 40, the trial's mean response length")])
def test_an_adaptive_kl_target_is_per_token_over_the_logged_mean_length_where_there_is_one(mean, divisor, said):
    text, warnings = export_config(TUNED, "verl", mean_length=mean)
    assert float(verl_overrides(text)["algorithm.kl_ctrl.target_kl"]) == pytest.approx(8.0 / divisor)
    assert any(said in w for w in warnings if w.startswith("kl_target"))
    text, _ = export_config(TUNED, "openrlhf", mean_length=mean)
    args = shlex.split(text[text.index("args=("):], comments=True)
    assert float(args[args.index("--algo.kl.target") + 1]) == pytest.approx(8.0 / divisor)
