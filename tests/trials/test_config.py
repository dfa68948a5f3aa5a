"""The engine config: every field documented, every mistake named."""

from __future__ import annotations

import pytest

from trials import ConfigError, PPOConfig, field_specs


def test_every_field_has_help_and_every_guidance_range_is_recorded():
    specs = field_specs()
    assert all(spec.help for spec in specs.values())
    documented = {name: spec.documented for name, spec in specs.items() if spec.documented}
    assert documented["policy_lr"] == (1e-6, 5e-5)
    assert documented["value_lr"] == (1e-5, 1e-4)
    assert documented["rollout_batch_size"] == (64, 1024)
    assert documented["mini_batch_size"] == (4, 64)
    assert documented["ppo_epochs"] == (2, 10)
    assert documented["kl_coef"] == (0.01, 0.2)
    assert documented["cliprange"] == (0.1, 0.3)


def test_defaults_are_valid_and_inside_the_documented_ranges():
    assert PPOConfig().problems() == []
    assert PPOConfig().warnings() == []


def test_unknown_key_gets_did_you_mean():
    with pytest.raises(ConfigError) as info:
        PPOConfig.from_dict({"clip_range": 0.2})
    assert "did you mean 'cliprange'" in str(info.value)


@pytest.mark.parametrize("key,value,path,text", [
    ("cliprange", 0, "cliprange", "must be > 0"),
    ("policy_lr", -1e-5, "policy_lr", "must be > 0"),
    ("mini_batch_size", 24, "mini_batch_size", "must divide rollout_batch_size"),
    ("ppo_epochs", 2.5, "ppo_epochs", "must be an integer"),
    ("kl_mode", "auto", "kl_mode", "must be one of fixed, adaptive"),
    ("whiten_advantages", "yes", "whiten_advantages", "true or false"),
    ("gae_lambda", 1.5, "gae_lambda", "must be <= 1"),
    ("model_path", "", "model_path", "non-empty"),
])
def test_impossible_values_name_the_field_the_value_and_the_fix(key, value, path, text):
    with pytest.raises(ConfigError) as info:
        PPOConfig.from_dict({key: value})
    (problem,) = info.value.problems
    assert problem.path == path and text in problem.message and problem.fix
    assert "\n" not in str(problem)


def test_all_problems_are_reported_at_once():
    with pytest.raises(ConfigError) as info:
        PPOConfig.from_dict({"cliprange": 0, "policy_lrr": 1, "top_p": 2})
    assert {p.path for p in info.value.problems} == {"cliprange", "policy_lrr", "top_p"}


def test_out_of_documented_range_is_a_warning_naming_the_range():
    cfg = PPOConfig.from_dict({"policy_lr": 1e-3})
    assert cfg.warnings() == ["policy_lr = 0.001 is outside the documented range 1e-06..5e-05"]


def test_replace_validates():
    assert PPOConfig().replace(policy_lr=2e-5).policy_lr == 2e-5
    with pytest.raises(ConfigError):
        PPOConfig().replace(mini_batch_size=7)


def test_under_lora_the_policy_lr_range_is_ten_times_higher():
    assert field_specs()["policy_lr"].documented_range(lora=True) == (1e-5, 5e-4)
    assert PPOConfig.from_dict({"policy_lr": 1e-4, "lora_rank": 16}).warnings() == []
    assert PPOConfig.from_dict({"policy_lr": 1e-3, "lora_rank": 16}).warnings() == [
        "policy_lr = 0.001 is outside the documented range under LoRA 1e-05..0.0005"]
    assert PPOConfig.from_dict({"policy_lr": 1e-4}).warnings() == [
        "policy_lr = 0.0001 is outside the documented range 1e-06..5e-05"]


def test_a_shared_value_backbone_needs_a_lora_policy():
    with pytest.raises(ConfigError) as info:
        PPOConfig.from_dict({"value_backbone": "shared"})
    (problem,) = info.value.problems
    assert problem.path == "value_backbone" and "lora_rank" in problem.fix
