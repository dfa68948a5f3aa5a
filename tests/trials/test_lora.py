"""LoRA policies, the shared-base value model and gradient checkpointing, on tiny Llama, Qwen2, Mistral
and GPT-NeoX models (random weights, saved and loaded by path) and on the demo model."""

from __future__ import annotations

import pytest
import torch

from tests.trials.conftest import ARCHITECTURES
from trials import ConfigError, PPOConfig, PPOTrainer, train
from trials import metrics as K
from trials._lora import reference
from trials._rollout import forward_logits, logprobs_of

FAST = dict(value_lr=3e-3, rollout_batch_size=32, mini_batch_size=16, ppo_epochs=4, response_length=8,
            num_threads=1, kl_coef=0.01, num_eval_prompts=64, eval_interval=100, device="cpu", seed=0)
MODES = {"full": dict(policy_lr=3e-3), "lora": dict(lora_rank=8, policy_lr=1e-2),
         "lora-shared": dict(lora_rank=8, policy_lr=1e-2, value_backbone="shared")}


def config(path, mode="lora", **changes) -> PPOConfig:
    return PPOConfig.from_dict({**FAST, "model_path": str(path), **MODES[mode], **changes})


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("kind", ARCHITECTURES)
def test_ppo_raises_the_reward_on_each_architecture(tiny_model, kind, mode):
    # the demo reward (fraction of positive adjectives): 0.11 to 0.15 for these random models, 0.04
    # for Qwen2 (its byte-level vocabulary is three times larger)
    result = train(config(tiny_model(kind), mode, num_iterations=14 if kind == "qwen2" else 10))
    initial, final = result.initial_eval, result.metrics[K.EVAL_SCORES]
    assert final > 1.5 * initial and final > initial + 0.04, (initial, final)


@pytest.mark.parametrize("mode", ["lora", "lora-shared"])
def test_lora_raises_the_reward_on_the_demo_model(demo_model, mode):
    result = train(config(demo_model, mode, policy_lr=3e-3, num_iterations=10, response_length=16))
    assert result.metrics[K.EVAL_SCORES] > result.initial_eval + 0.02, (result.initial_eval,
                                                                         result.metrics[
                                                                             K.EVAL_SCORES])


def _fixed_batch(trainer: PPOTrainer, n: int = 8, length: int = 12):
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, len(trainer.state.tokenizer), (n, length), generator=gen)
    attn = torch.ones_like(ids)
    return ids, attn, (attn.cumsum(1) - 1)


@torch.no_grad()
def _logprobs(model, batch, prompt_len: int = 4) -> torch.Tensor:
    ids, attn, pos = batch
    return logprobs_of(forward_logits(model.eval(), ids, attn, pos, prompt_len), ids[:, prompt_len:], 1.0)


@pytest.mark.parametrize("mode", ["lora", "lora-shared"])
def test_the_lora_reference_is_the_base_model_and_never_changes(tiny_model, mode):
    from transformers import AutoModelForCausalLM

    path = tiny_model("qwen2")
    trainer = PPOTrainer(config(path, mode, num_iterations=2))
    assert trainer.ref is None  # no second copy of the model
    batch = _fixed_batch(trainer)
    base = _logprobs(AutoModelForCausalLM.from_pretrained(path), batch)
    with reference(trainer.policy, trainer.ref) as ref:
        before = _logprobs(ref, batch)
    trainer.train()
    with reference(trainer.policy, trainer.ref) as ref:
        after = _logprobs(ref, batch)
    assert torch.allclose(before, base, atol=1e-5) and torch.equal(before, after)
    assert not torch.allclose(_logprobs(trainer.policy, batch), base, atol=1e-3)  # the policy did move


def _snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_only_the_adapters_and_the_value_head_train_with_a_shared_base(tiny_model):
    trainer = PPOTrainer(config(tiny_model("llama"), "lora-shared", num_iterations=2))
    policy, value = _snapshot(trainer.policy), _snapshot(trainer.value)
    trainer.train()
    after = trainer.policy.state_dict()
    changed = {k for k in after if not torch.equal(policy[k], after[k])}
    adapters = {k for k in after if "lora_" in k}
    assert changed == adapters  # the base is frozen; both adapters (policy's and value's) moved
    assert any(".default." in k for k in changed) and any(".value." in k for k in changed)
    value_after = trainer.value.state_dict()
    assert all(not torch.equal(value[k], value_after[k]) for k in ("head.weight", "head.bias"))
    names = {id(p): n for n, p in trainer.policy.named_parameters()}
    trained = [names.get(id(p), "head") for g in trainer.state.optimizer.param_groups for p in g["params"]]
    assert all("lora_" in n or n == "head" for n in trained)


def test_a_saved_adapter_loads_back_and_reproduces_the_policy(tiny_model, tmp_path):
    from peft import AutoPeftModelForCausalLM

    trainer = PPOTrainer(config(tiny_model("mistral"), "lora-shared", num_iterations=2,
                                output_dir=str(tmp_path / "out")))
    trainer.train()
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= files
    assert "model.safetensors" not in files and "value" not in files  # the policy's adapter only
    loaded = AutoPeftModelForCausalLM.from_pretrained(tmp_path / "out")
    batch = _fixed_batch(trainer)
    assert torch.allclose(_logprobs(loaded, batch), _logprobs(trainer.policy, batch), atol=1e-5)


def test_a_merged_save_loads_as_a_plain_model_and_reproduces_the_policy(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = PPOTrainer(config(tiny_model("gpt_neox"), num_iterations=2, save_merged=True,
                                output_dir=str(tmp_path / "out")))
    trainer.train()
    assert not (tmp_path / "out" / "adapter_config.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    batch = _fixed_batch(trainer)
    assert torch.allclose(_logprobs(loaded, batch), _logprobs(trainer.policy, batch), atol=1e-5)


def test_the_merged_demo_model_saves_gpt2_conv1d_weights(demo_model, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = PPOTrainer(config(demo_model, num_iterations=1, save_merged=True, output_dir=str(tmp_path / "out")))
    trainer.train()
    batch = _fixed_batch(trainer)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert torch.allclose(_logprobs(loaded, batch), _logprobs(trainer.policy, batch), atol=1e-4)


@pytest.mark.parametrize("mode", ["full", "lora-shared"])
def test_gradient_checkpointing_gives_the_same_losses_and_weights(tiny_model, mode):
    def run(checkpointing: bool):
        trainer = PPOTrainer(config(tiny_model("llama"), mode, num_iterations=2, gradient_checkpointing=checkpointing))
        result = trainer.train()
        layers = [m for m in trainer.policy.modules() if hasattr(m, "gradient_checkpointing")]
        assert any(m.gradient_checkpointing for m in layers) == checkpointing
        weights = [p.detach().clone() for p in trainer.state.policy_params + trainer.state.value_params]
        return [{k: v for k, v in h.items() if not k.startswith("perf/")} for h in result.history], weights

    (plain, w_plain), (ckpt, w_ckpt) = run(False), run(True)
    for a, b in zip(plain, ckpt, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
    for a, b in zip(w_plain, w_ckpt, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_frozen_weights_in_bf16_with_an_fp32_adapter(tiny_model):
    trainer = PPOTrainer(config(tiny_model("qwen2"), "lora-shared", num_iterations=1, frozen_dtype="bf16"))
    dtypes = {n: p.dtype for n, p in trainer.policy.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n)
    assert torch.isfinite(torch.tensor(trainer.train().metrics[K.POLICY_LOSS]))


def test_a_target_module_that_matches_nothing_is_a_config_error_before_training(tiny_model):
    with pytest.raises(ConfigError) as info:
        PPOTrainer(config(tiny_model("llama"), lora_target_modules="q_proj,attn_out"))
    (problem,) = info.value.problems
    assert problem.path == "lora_target_modules" and problem.value == "q_proj,attn_out"
    assert "attn_out" in problem.message and "q_proj" in problem.fix and "all-linear" in problem.fix


def test_named_target_modules_adapt_only_those(tiny_model):
    trainer = PPOTrainer(config(tiny_model("llama"), lora_target_modules="q_proj, v_proj", num_iterations=1))
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, _ in trainer.policy.named_parameters() if "lora_" in n}
    assert adapted == {"q_proj", "v_proj"}
