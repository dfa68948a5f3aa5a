"""The exports carry the sweep's rollout engine where the target has a setting for it: OpenRLHF's vLLM
engines (`--vllm.*`), verl's `actor_rollout_ref.rollout.name`; elsewhere it is run plumbing."""

from __future__ import annotations

import dataclasses

import pytest

from tests.export_helpers import TUNED, openrlhf_flags, verl_overrides
from tuner.engines import openrlhf as openrlhf_engine
from tuner.engines import verl as verl_engine
from tuner.export import export_config
from tuner.trial import launch

VLLM = dataclasses.replace(TUNED, rollout_engine="vllm", vllm_python="/envs/vllm/bin/python")


def line_of(text: str, name: str) -> str:
    (line,) = [line for line in text.splitlines() if line.strip().startswith(name)]
    return line


def not_applicable(text: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith("# not applicable")]
    return line


@pytest.mark.parametrize(("config", "why"), [(VLLM, "rollout_engine vllm: one vLLM engine generates"),
                                             (TUNED, "rollout_engine hf: OpenRLHF generates only with vLLM")])
def test_openrlhf_gets_one_vllm_engine_and_says_which_rollout_engine_the_sweep_ran(config, why):
    text, warnings = export_config(config, "openrlhf")
    flags = openrlhf_flags(text)
    assert flags["--vllm.num_engines"] == ["1"] and flags["--vllm.tensor_parallel_size"] == ["1"]
    assert why in line_of(text, "--vllm.num_engines")
    assert {"--vllm.num_engines", "--vllm.tensor_parallel_size"} <= openrlhf_engine.VERIFIED_FLAGS
    # the sampling vLLM does there is the sweep's
    assert flags["--rollout.temperature"] == [str(config.temperature)]
    assert flags["--rollout.max_new_tokens"] == [str(config.response_length)]
    assert "rollout_engine" not in not_applicable(text) and "vllm_python=" in not_applicable(text)
    assert "vllm_gpu_memory_utilization=0.3" in not_applicable(text)  # its engines' GPUs are the cluster layout's
    assert not [w for w in warnings if "rollout" in w]


@pytest.mark.parametrize(("config", "why"), [(VLLM, "rollout_engine vllm: vLLM generates"),
                                             (TUNED, "rollout_engine hf: verl 0.9.1's PPO generates only through")])
def test_verl_names_its_rollout_engine_once_with_the_sweeps_choice(config, why):
    text, _ = export_config(config, "verl")
    overrides = verl_overrides(text)  # asserts no key is written twice (the fixed table's rollout.name too)
    assert overrides[verl_engine.ROLLOUT_NAME] == "vllm"
    assert why in line_of(text, verl_engine.ROLLOUT_NAME)
    if config.rollout_engine == "vllm":  # vLLM's share of each GPU beside the actor, as in the sweep
        assert float(overrides[verl_engine.ROLLOUT_MEMORY]) == config.vllm_gpu_memory_utilization == 0.3
    else:  # verl's own default: the sweep never used the setting
        assert verl_engine.ROLLOUT_MEMORY not in overrides
    assert "rollout_engine" not in not_applicable(text) and "vllm_python=" in not_applicable(text)


@pytest.mark.parametrize("fmt", ["trl", "yaml"])
def test_targets_without_a_rollout_engine_setting_list_it_as_plumbing(fmt):
    text, _ = export_config(VLLM, fmt)
    if fmt == "trl":
        assert "rollout_engine='vllm'" in not_applicable(text) and "vllm" not in text.split("PPOConfig(", 1)[1]
    else:  # our own engine's config carries it as it is
        assert "rollout_engine: vllm" in text and "vllm_python: /envs/vllm/bin/python" in text


def test_a_trial_launch_leaves_the_vllm_engines_to_the_users_command(tmp_path):
    engine = {**VLLM.to_dict(), "model_path": "demo", "reward": "sentiment", "prompts": "demo"}
    argv, _, _ = launch("openrlhf", ["python", "--vllm.num_engines", "4"], engine, tmp_path, 1,
                        fields={"rollout_engine", "policy_lr"})
    assert [a for a in argv if a.startswith("--vllm.")] == ["--vllm.num_engines"]  # the user's, once
    assert argv[argv.index("--vllm.num_engines") + 1] == "4"
    argv, _, _ = launch("verl", ["python"], engine, tmp_path, 1, fields={"rollout_engine", "policy_lr"})
    assert [a for a in argv if a.startswith(verl_engine.ROLLOUT_NAME)] == [f"{verl_engine.ROLLOUT_NAME}=vllm"]
    argv, _, _ = launch("verl", ["python", f"{verl_engine.ROLLOUT_NAME}=sglang"], engine, tmp_path, 1,
                        fields={"rollout_engine", "policy_lr"})
    assert [a for a in argv if a.startswith(verl_engine.ROLLOUT_NAME)] == [f"{verl_engine.ROLLOUT_NAME}=sglang"]
