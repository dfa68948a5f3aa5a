"""The memory a trial needs at its peak, predicted from the model's config.json and the trial's fields.

`estimate_memory(config, model_config)` is pure: it builds the model on PyTorch's meta device (shapes
only, no weights, no memory) to count parameters and linear layers, then adds up what each phase of an
iteration holds. The peak is that of the phase that holds the most:

    static      weights (trainable fp32 + frozen in frozen_dtype), gradients (fp32), Adam's two states
    generate    + KV cache (2 x layers x B x (P + T) x kv width) and the logits of sampling
    update      + one micro-batch's activations kept for the backward (one layer's with checkpointing
                  plus each layer's input), and its logits (B_micro x T x V, a few fp32 copies)

On CUDA the prediction is for torch.cuda.max_memory_allocated; on a CPU for the process's peak RSS above
that of a process that imported torch and transformers, where loading the weights also counts (a
checkpoint's file pages are resident while from_pretrained reads them).
"""

from __future__ import annotations

import functools
import os
from dataclasses import asdict, dataclass
from typing import Any

from trials._config import PPOConfig

__all__ = ["MemoryEstimate", "estimate_memory", "model_config_of"]

FP32 = 4
# Calibration (CPU, measured by bench/memory_lora.py): elements kept per token and layer for the backward
# = ACT_PER_LINEAR_ELEMENT x (sum over the layer's linears of in + out features) + ACT_PER_HIDDEN x width.
ACT_PER_LINEAR_ELEMENT = 1.0
ACT_PER_HIDDEN = 4.0
LOGIT_COPIES = 4  # the update's logits: the model's, / temperature, log_softmax, its gradient
# Training on a CPU holds a fixed amount beyond the tensors counted here (torch's autograd engine, thread pools and
# allocator slack, the tokenizer and prompts): fitted on the generate and update phases of the 0.36B model of
# bench/memory_lora.py (248-284 MiB in 3 configurations) and the 25M model of tests/trials/test_memory.py (about 290
# MiB with full fine-tuning, 190 with LoRA + the shared value), each measured as the peak RSS over the high-water mark
# of a process that imported torch, transformers and peft. Loading peaks before any of it exists.
CPU_OVERHEAD = 220 * 2**20
CUDA_OVERHEAD = 0


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes at a trial's peak, and what makes them up (each component as held at the peak phase)."""

    peak: int
    phase: str  # "generate", "score", "update" or "load": which phase sets the peak
    weights_trainable: int  # fp32: the full policy, or its LoRA adapter(s) and the shared value head
    weights_frozen: int  # frozen_dtype: the reference copy, or the LoRA base
    gradients: int
    optimizer_states: int  # Adam: two fp32 states per trained parameter
    value_model: int  # a separate value model: weights, gradients and Adam states
    update_activations: int  # kept for the backward of one micro-batch, and its logits
    generation: int  # KV cache and the logits of sampling
    overhead: int
    parameters: int  # of the policy model

    def breakdown(self) -> dict[str, int | str]:
        return asdict(self)

    @property
    def gib(self) -> float:
        return self.peak / 2**30


def model_config_of(model_path: str) -> Any:
    """The transformers config of a model folder ('demo' builds the demo model), from its config.json only."""
    from transformers import AutoConfig

    from trials._models import resolve_model_path

    return AutoConfig.from_pretrained(resolve_model_path(model_path))


@dataclass(frozen=True)
class _Shape:
    parameters: int
    backbone: int  # parameters without the LM head (a value model's)
    layers: int
    hidden: int
    kv_width: int  # key (= value) features per token and layer
    vocab: int
    linear_features: int  # per layer: sum of in + out features of its linears (what LoRA adapts, 'all-linear')
    lora_per_rank: int  # LoRA parameters per unit of rank over the whole model, for the configured targets


def _shape(model_config: Any, targets: str) -> _Shape:
    return _shape_of(model_config.to_json_string(), targets)


@functools.lru_cache(maxsize=32)
def _shape_of(config_json: str, targets: str) -> _Shape:
    """Counts on the meta device (shapes only: no memory, no weights); about a second for an 8B model."""
    import json

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from trials._lora import linear_modules, target_matches

    model_config = AutoConfig.for_model(**json.loads(config_json))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(model_config)
    head = model.get_output_embeddings()
    parameters = sum(p.numel() for p in model.parameters())
    tied = head.weight is model.get_input_embeddings().weight
    linears = {n: m for n, m in model.named_modules() if n in set(linear_modules(model))}
    features = {n: sum(m.weight.shape) for n, m in linears.items()}
    layers = model_config.get_text_config().num_hidden_layers
    hidden = model_config.get_text_config().hidden_size
    heads = getattr(model_config, "num_attention_heads", None) or model_config.n_head
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    return _Shape(parameters=parameters, backbone=parameters - (0 if tied else head.weight.numel()),
                  layers=layers, hidden=hidden, kv_width=kv_heads * (hidden // heads), vocab=head.weight.shape[0],
                  linear_features=sum(features.values()) // layers,
                  lora_per_rank=sum(f for n, f in features.items() if target_matches(n, targets)))


def _device_facts(config: PPOConfig) -> tuple[bool, int, int]:
    """(cuda, bytes per frozen weight, bytes per activation element) for the trial's device and dtypes."""
    cuda = config.device == "cuda" or (config.device == "auto" and _cuda_available())
    bf16_ok = cuda  # the CUDA cards people run PPO on support bf16; auto follows the device
    frozen = 2 if config.frozen_dtype == "bf16" or (config.frozen_dtype == "auto" and bf16_ok) else FP32
    compute = 2 if config.precision == "bf16" or (config.precision == "auto" and bf16_ok) else FP32
    return cuda, frozen, compute


def _cuda_available() -> bool:
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "":
        return False
    import torch

    return torch.cuda.is_available()


def estimate_memory(config: PPOConfig, model_config: Any, value_model_config: Any | None = None) -> MemoryEstimate:
    """The peak memory of one trial of `config` on `model_config` (a transformers config; the value
    model's when value_model_path names another model). See the module's docstring for the phases."""
    cuda, frozen_b, act_b = _device_facts(config)
    s = _shape(model_config, config.lora_target_modules)
    v = s if value_model_config is None else _shape(value_model_config, "all-linear")
    lora = config.lora_rank > 0
    shared = config.value_backbone == "shared"
    adapters = s.lora_per_rank * config.lora_rank * (2 if shared else 1) if lora else 0
    trained = adapters + (s.hidden + 1 if shared else 0) if lora else s.parameters
    weights_trainable = trained * FP32
    weights_frozen = s.parameters * frozen_b  # the LoRA base, or the full-fine-tuning reference copy
    gradients, optimizer_states = trained * FP32, 2 * trained * FP32
    value_model = 0 if shared else 4 * v.backbone * FP32  # weights, gradients, Adam's two states
    static = weights_trainable + weights_frozen + gradients + optimizer_states + value_model

    B, P, T = config.rollout_batch_size, config.max_prompt_length, config.response_length
    micro = config.micro_batch_size or config.mini_batch_size
    L = P + T
    sampler_logits = B * T * s.vocab * FP32 if _sampler_logprobs(config, s.vocab, act_b, frozen_b, lora) else 0
    generation = 2 * s.layers * B * L * s.kv_width * act_b + sampler_logits + 3 * B * s.vocab * FP32
    policy_act = (_activations(s, micro * L, act_b, config.gradient_checkpointing)
                  + LOGIT_COPIES * micro * (T + 1) * s.vocab * FP32)
    value_act = _activations(v, micro * L, act_b, config.gradient_checkpointing and not shared)
    update = max(policy_act, value_act)
    training_overhead = CUDA_OVERHEAD if cuda else CPU_OVERHEAD
    phases = {"generate": static + generation + training_overhead, "update": static + update + training_overhead}
    if not cuda:  # loading: the checkpoint's file pages are resident while from_pretrained copies them
        file_bytes = s.parameters * _saved_bytes(model_config)
        phases["load"] = weights_frozen + weights_trainable + value_model // 4 + file_bytes
    phase = max(phases, key=phases.get)
    overhead = 0 if phase == "load" else training_overhead
    return MemoryEstimate(peak=int(phases[phase]), phase=phase, weights_trainable=weights_trainable,
                          weights_frozen=weights_frozen, gradients=gradients, optimizer_states=optimizer_states,
                          value_model=value_model, update_activations=int(update), generation=int(generation),
                          overhead=overhead, parameters=s.parameters)


def _saved_bytes(model_config: Any) -> int:
    dtype = str(getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None) or "float32")
    return 2 if dtype.endswith(("bfloat16", "float16")) else FP32


def _activations(s: _Shape, tokens: int, act_bytes: int, checkpointing: bool) -> float:
    """Bytes kept for the backward of one micro-batch of `tokens` tokens."""
    per_layer = ACT_PER_LINEAR_ELEMENT * s.linear_features + ACT_PER_HIDDEN * s.hidden  # elements per token
    if checkpointing:  # each layer's input, and one layer's activations while it is recomputed
        return tokens * (s.layers * s.hidden + per_layer) * act_bytes
    return tokens * s.layers * per_layer * act_bytes


def _sampler_logprobs(config: PPOConfig, vocab: int, act_b: int, frozen_b: int, lora: bool) -> bool:
    from trials._rollout import sampler_logprobs_fit

    bf16 = act_b == 2 or (lora and frozen_b == 2)
    return sampler_logprobs_fit(config.rollout_batch_size, config.response_length, vocab, autocast_bf16=bf16)
