"""The memory model: what it predicts moves the right way with every field, and it matches a measured
peak (a fresh process's max RSS on the CPU)."""

from __future__ import annotations

import json
import sys

import pytest

from trials import MemoryEstimate, PPOConfig, estimate_memory, model_config_of

BASE = dict(rollout_batch_size=16, mini_batch_size=8, micro_batch_size=4, response_length=32, max_prompt_length=32,
            device="cpu")


def qwen2_shape(**changes):
    from transformers import Qwen2Config

    return Qwen2Config(**{**dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                 intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True), **changes})


def peak(shape=None, **fields) -> MemoryEstimate:
    return estimate_memory(PPOConfig.from_dict({**BASE, **fields}), shape or qwen2_shape())


def test_the_parameter_count_is_the_models():
    assert peak().parameters == 494_032_768  # Qwen2.5-0.5B's published count


@pytest.mark.parametrize("field,small,large,grows", [
    ("rollout_batch_size", 16, 64, "generation"), ("response_length", 16, 256, "update_activations"),
    ("max_prompt_length", 16, 256, "update_activations"), ("micro_batch_size", 2, 8, "update_activations"),
    ("lora_rank", 8, 64, "weights_trainable"),
])
def test_more_tokens_or_rank_need_more_memory(field, small, large, grows):
    lora = {"lora_rank": 16} if field != "lora_rank" else {}
    a, b = peak(**lora, **{field: small}), peak(**lora, **{field: large})
    assert getattr(a, grows) < getattr(b, grows) and a.peak <= b.peak


def test_lora_needs_less_than_full_fine_tuning_and_a_shared_value_less_still():
    full, lora = peak(), peak(lora_rank=16)
    shared = peak(lora_rank=16, value_backbone="shared")
    assert shared.peak < lora.peak < full.peak
    assert shared.peak < 0.5 * full.peak
    assert lora.gradients < 0.05 * full.gradients and shared.value_model == 0


def test_checkpointing_and_bf16_frozen_weights_save_memory():
    small_vocab = qwen2_shape(vocab_size=1000)  # the update's logits are not checkpointed
    assert (peak(small_vocab, gradient_checkpointing=True).update_activations
            < 0.2 * peak(small_vocab).update_activations)
    assert peak(lora_rank=16, frozen_dtype="bf16").weights_frozen == peak(lora_rank=16).weights_frozen // 2


def test_named_targets_adapt_fewer_parameters_than_all_linear():
    assert (peak(lora_rank=16, lora_target_modules="q_proj,v_proj").weights_trainable
            < peak(lora_rank=16).weights_trainable)


def test_on_cuda_weights_and_activations_default_to_bf16():
    gpu = peak(device="cuda", lora_rank=16, value_backbone="shared")
    assert gpu.weights_frozen == 2 * gpu.parameters and gpu.phase in ("generate", "update")


def test_the_breakdown_adds_up_to_the_peak():
    e = peak(lora_rank=16)
    static = e.weights_trainable + e.weights_frozen + e.gradients + e.optimizer_states + e.value_model
    phase = {"update": e.update_activations, "generate": e.generation}.get(e.phase)
    if phase is not None:
        assert e.peak == static + phase + e.overhead
    assert set(e.breakdown()) >= {"peak", "weights_trainable", "weights_frozen", "gradients", "optimizer_states",
                                  "update_activations", "generation", "value_model"}


def test_the_config_of_a_model_path_and_of_the_demo(demo_model, tmp_path):
    assert model_config_of("demo").model_type == "gpt2"
    qwen2_shape(num_hidden_layers=2).save_pretrained(tmp_path)  # a config.json alone: no weights are read
    assert estimate_memory(PPOConfig(), model_config_of(str(tmp_path))).parameters > 0


# Measured as bench/memory_small.py measures it (its model, its trials, bench/memory_lora.py's worker): peak RSS
# over the import's high-water mark (VmHWM), not getrusage's ru_maxrss: Linux carries ru_maxrss over the exec from
# the process that started this one, so under a large test process it would read that process's peak.
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "lora-shared"])
def test_the_prediction_is_within_15_percent_of_a_measured_peak(tmp_path, monkeypatch, mode):
    from bench._common import run_worker
    from bench.memory_small import build_model, fields

    trial = fields(mode, build_model(tmp_path / "model"))
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(2**20))  # as the bench's workers run
    measured = run_worker(sys.executable, "memory_lora.py", ["--worker", mode, json.dumps(trial)])["peak_bytes"]
    predicted = estimate_memory(PPOConfig.from_dict(trial), model_config_of(trial["model_path"])).peak
    print(f"predicted {predicted / 2**20:.0f} MiB, measured {measured / 2**20:.0f} MiB")
    assert abs(predicted / measured - 1) < 0.15, (predicted, measured)
