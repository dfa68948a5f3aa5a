"""Exporting LoRA and memory settings (adapters, a shared value backbone, frozen dtype, gradient checkpointing) to
OpenRLHF, verl and TRL, and building the TRL snippet's real peft config."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest

from tests.export_helpers import (
    LORA,
    LORA_CONFIGS,
    SHARED,
    TABLES,
    TUNED,
    comments,
    names,
    openrlhf_flags,
    settings,
    trl_calls,
    verl_overrides,
)
from trials import field_specs
from tuner.engines import openrlhf as openrlhf_engine
from tuner.engines import trl as trl_engine
from tuner.engines import verl as verl_engine
from tuner.export import export_config

# -- LoRA and memory ---------------------------------------------------------------------------------

def test_openrlhf_lora():
    flags = openrlhf_flags(export_config(LORA, "openrlhf")[0])
    assert flags["--ds.lora.rank"] == ["16"] and flags["--ds.lora.alpha"] == ["32"]
    assert flags["--ds.lora.dropout"] == ["0.0"] and flags["--ds.lora.target_modules"] == ["q_proj", "v_proj"]
    assert flags["--actor.gradient_checkpointing_enable"] == []  # a store_true flag


def test_openrlhf_leaves_all_linear_at_its_default():
    text = export_config(dataclasses.replace(LORA, lora_target_modules="all-linear"), "openrlhf")[0]
    assert "--ds.lora.target_modules" not in openrlhf_flags(text)  # as a list, peft would not read it as all-linear
    assert "lora_target_modules" in names(comments(text))


def test_verl_lora():
    keys = verl_overrides(export_config(LORA, "verl")[0])
    model = "actor_rollout_ref.model"
    assert keys[f"{model}.lora_rank"] == "16" and keys[f"{model}.lora_alpha"] == "32"
    assert keys[f"{model}.target_modules"] == "[q_proj,v_proj]"  # a Hydra list
    assert keys[f"{model}.enable_gradient_checkpointing"] == "True"
    assert keys["critic.model.enable_gradient_checkpointing"] == "True"
    assert "critic.model.lora_rank" not in keys  # value_backbone separate: the critic trains every weight


def test_verl_gives_a_shared_value_backbone_a_critic_adapter():
    keys = verl_overrides(export_config(SHARED, "verl")[0])
    assert keys["critic.model.path"] == SHARED.model_path  # the policy's base, not value_model_path
    assert keys["critic.model.lora_rank"] == "16" and keys["critic.model.lora_alpha"] == "32"
    assert keys["critic.model.target_modules"] == keys["actor_rollout_ref.model.target_modules"] == "all-linear"


def test_trl_lora_is_a_peft_config():
    text = export_config(LORA, "trl")[0]
    compile(text, "exported.py", "exec")
    calls = trl_calls(text)
    assert calls["LoraConfig"] == {"task_type": "CAUSAL_LM", "r": 16, "lora_alpha": 32.0, "lora_dropout": 0.0,
                                   "target_modules": ["q_proj", "v_proj"]}
    assert set(calls["LoraConfig"]) <= trl_engine.VERIFIED_LORA_KWARGS
    assert set(calls["PPOConfig"]) <= trl_engine.VERIFIED_KWARGS
    assert calls["PPOConfig"]["gradient_checkpointing"] is True
    assert "peft_config=peft_config" in comments(text)  # how PPOTrainer takes it


def test_the_trl_lora_config_builds_a_real_peft_lora_config():
    peft = pytest.importorskip("peft")
    for config in LORA_CONFIGS.values():
        built = peft.LoraConfig(**trl_calls(export_config(config, "trl")[0])["LoraConfig"])
        assert built.r == config.lora_rank and built.lora_alpha == config.lora_alpha


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="trl (1.12, the last with PPO) is not installed")
def test_the_trl_lora_snippet_builds_real_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("TRL_EXPERIMENTAL_SILENCE", "1")
    namespace: dict = {}
    config = dataclasses.replace(LORA, device="cpu", output_dir=str(tmp_path))
    exec(compile(export_config(config, "trl")[0], "exported.py", "exec"), namespace)
    assert namespace["peft_config"].r == 16 and namespace["peft_config"].target_modules == {"q_proj", "v_proj"}
    assert namespace["config"].gradient_checkpointing is True


def test_openrlhf_loads_frozen_weights_in_bf16_already():
    text, warnings = export_config(dataclasses.replace(TUNED, frozen_dtype="bf16"), "openrlhf")
    assert not [w for w in warnings if w.startswith("frozen_dtype")] and "frozen_dtype" in names(comments(text))


@pytest.mark.parametrize("fmt", ["openrlhf", "verl", "trl"])
def test_full_fine_tuning_writes_no_lora_setting(fmt):
    text, warnings = export_config(TUNED, fmt)
    written = set(settings(fmt, text))  # for TRL: one PPOConfig call, no peft import
    lora = {n for field in ("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules")
            for n in TABLES[fmt].get(field, ())}
    assert not written & lora
    assert "lora_rank 0: full fine-tuning" in comments(text)
    assert not [w for w in warnings if w.startswith(("lora_", "value_backbone", "frozen_dtype"))]


@pytest.mark.parametrize("name", LORA_CONFIGS)
@pytest.mark.parametrize("fmt", ["openrlhf", "verl", "trl"])
def test_lora_fields_are_expressed_or_named_in_a_comment(fmt, name):
    text, warnings = export_config(LORA_CONFIGS[name], fmt)
    if fmt == "trl":
        calls = trl_calls(text)
        written = set(calls["PPOConfig"]) | set(calls["LoraConfig"])
        table = {**trl_engine.KWARGS, **trl_engine.LORA_KWARGS}
        verified = trl_engine.VERIFIED_KWARGS | trl_engine.VERIFIED_LORA_KWARGS
    else:
        written, table = set(settings(fmt, text)), TABLES[fmt]
        verified = (openrlhf_engine.VERIFIED_FLAGS if fmt == "openrlhf"
                    else verl_engine.VERIFIED_KEYS)
    assert written <= verified, written - verified
    for field in field_specs():
        assert written & set(table.get(field, ())) or field in names(comments(text)), f"{fmt}: {field}"
    assert all(warning in comments(text) for warning in warnings)
