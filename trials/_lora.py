"""The models of a trial: a full or LoRA policy, its reference, the value model; and saving the result.

With lora_rank > 0 the policy is the base model, frozen in frozen_dtype, with a peft LoRA adapter
named "default" (fp32, the only part of the policy that trains). The reference is the same base with
the adapter disabled (no second copy). value_backbone 'shared' adds a second adapter, "value", on
the same base and a scalar head: one base in memory serves policy, reference and value.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from trials._config import PPOConfig
from trials._errors import ConfigError, Problem
from trials._models import ValueModel, load_causal_lm, load_value_model

__all__ = ["POLICY", "VALUE", "Models", "SharedValueModel", "frozen_dtype", "load_models", "reference",
           "save_policy"]

POLICY = "default"  # the policy's adapter: peft's default name, so AutoPeftModelForCausalLM loads it
VALUE = "value"


@dataclass
class Models:
    policy: nn.Module  # a PreTrainedModel, or a peft PeftModel when lora_rank > 0
    ref: nn.Module | None  # None under LoRA: the reference is the policy with its adapter disabled
    value: nn.Module  # ValueModel or SharedValueModel: (B, L) -> (B, L) values
    policy_params: list[nn.Parameter]  # what the policy trains (the adapter under LoRA)
    value_params: list[nn.Parameter]


def frozen_dtype(config: PPOConfig, device: torch.device) -> torch.dtype:
    """The dtype of frozen weights: auto is bf16 on a CUDA device that supports it, else fp32."""
    if config.frozen_dtype == "bf16" or (
            config.frozen_dtype == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported()):
        return torch.bfloat16
    return torch.float32


def load_models(config: PPOConfig, model_path: str, value_path: str, device: torch.device) -> Models:
    """The policy, the reference and the value model of a trial, on `device`."""
    frozen = frozen_dtype(config, device)
    if config.lora_rank == 0:
        policy = load_causal_lm(model_path).to(device)
        ref = load_causal_lm(model_path, frozen).to(device).requires_grad_(False)
    else:
        policy, ref = lora_policy(load_causal_lm(model_path, frozen).to(device), config), None
    policy_params = [p for p in policy.parameters() if p.requires_grad]
    if config.value_backbone == "shared":
        value: nn.Module = SharedValueModel(policy, config).to(device)
    else:
        value = load_value_model(value_path).to(device)
    if config.gradient_checkpointing:
        _checkpointing(policy.get_base_model() if ref is None else policy)
        if isinstance(value, ValueModel):
            _checkpointing(value.backbone)
    return Models(policy, ref, value, policy_params, list(value.parameters()))


def _checkpointing(model: nn.Module) -> None:
    # Non-reentrant checkpointing: gradients reach the adapters of a frozen base. It applies in
    # training mode, which the update sets. (transformers 5 renamed gradient_checkpointing_enable.)
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _lora_config(config: PPOConfig, base: nn.Module):
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    targets = config.lora_target_modules.strip()
    modules = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=modules, bias="none", task_type="CAUSAL_LM",
                      fan_in_fan_out=any(isinstance(m, Conv1D) for m in base.modules()))  # GPT-2 style


def linear_modules(model: nn.Module) -> list[str]:
    """The full names of the model's linear layers but the LM head: what LoRA can adapt."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D)) and m is not head]


def target_matches(name: str, targets: str) -> bool:
    """Whether the linear layer `name` gets an adapter under lora_target_modules = `targets` (as peft
    matches: 'all-linear', or a comma-separated name equal to the module's name or a suffix of it)."""
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    return targets.strip() == "all-linear" or any(name == t or name.endswith("." + t) for t in wanted)


def target_problems(config: PPOConfig, base: nn.Module) -> list[Problem]:
    """lora_target_modules names that match no linear layer of the model (peft matches name suffixes)."""
    if config.lora_target_modules.strip() == "all-linear":
        return []
    names = linear_modules(base)
    wanted = [t.strip() for t in config.lora_target_modules.split(",") if t.strip()]
    missing = [t for t in wanted if not any(target_matches(n, t) for n in names)]
    if wanted and not missing:
        return []
    known = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in names}))
    return [Problem("lora_target_modules", config.lora_target_modules,
                    f"no linear layer of the model is named {', '.join(missing) or '(no names given)'}",
                    f"use 'all-linear' or comma-separated names among {known}")]


@contextlib.contextmanager
def _quiet_peft() -> Iterator[None]:
    with warnings.catch_warnings():  # peft asks transformers 5 a deprecated is_gradient_checkpointing
        warnings.simplefilter("ignore", FutureWarning)
        yield


def lora_policy(base: nn.Module, config: PPOConfig) -> nn.Module:
    """The base, frozen, with the policy's adapter (and the value's, when value_backbone is shared)."""
    from peft import get_peft_model

    problems = target_problems(config, base)
    if problems:
        raise ConfigError(problems)
    base.requires_grad_(False)
    with _quiet_peft():
        policy = get_peft_model(base, _lora_config(config, base), adapter_name=POLICY, autocast_adapter_dtype=True)
        if config.value_backbone == "shared":
            policy.add_adapter(VALUE, _lora_config(config, base), autocast_adapter_dtype=True)
            policy.set_adapter(POLICY)
    return policy


class SharedValueModel(nn.Module):
    """A scalar head on the policy's base, seen through the policy's second LoRA adapter. (B, L) -> (B, L)

    Its parameters are the value adapter and the head; the base belongs to the policy. Every forward
    and backward runs inside `active()`, which switches the base to the value adapter (a backward that
    recomputes checkpointed activations must see the adapter its forward saw)."""

    def __init__(self, policy: nn.Module, config: PPOConfig):
        super().__init__()
        self._policy = (policy,)  # a tuple: not a submodule, its parameters are not the value's
        hidden = policy.get_base_model().config.hidden_size
        self.head = nn.Linear(hidden, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (hidden + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)
        self.adapter = nn.ParameterList([p for n, p in policy.named_parameters() if f".{VALUE}." in n])
        self._policy_adapter = [p for n, p in policy.named_parameters() if f".{POLICY}." in n]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        policy = self._policy[0]
        assert policy.active_adapter == VALUE, "SharedValueModel runs inside its active() scope"
        backbone = policy.get_base_model().base_model  # the transformer without its LM head
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).last_hidden_state  # (B, L, H)
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The base runs the value adapter inside, the policy's after. Both adapters stay trainable
        (peft's set_adapter freezes the inactive one; the inactive one simply gets no gradient)."""
        try:
            self._switch(VALUE)
            yield
        finally:
            self._switch(POLICY)

    def _switch(self, name: str) -> None:
        self._policy[0].set_adapter(name)
        for p in [*self.adapter, *self._policy_adapter]:
            p.requires_grad_(True)


@contextlib.contextmanager
def reference(policy: nn.Module, ref: nn.Module | None) -> Iterator[nn.Module]:
    """The model whose log-probs are the reference's: the frozen copy, or the LoRA policy's base."""
    if ref is not None:
        yield ref
        return
    with policy.disable_adapter():
        yield policy


def save_policy(policy: nn.Module, tokenizer, folder: str, merged: bool) -> None:
    """The trained policy (and the tokenizer, unless None) with save_pretrained: the adapter alone (a
    LoRA policy, unless `merged`), or a full model (the adapter merged into the base weights, assembled
    on the CPU: the policy is kept)."""
    from peft import PeftModel

    if not isinstance(policy, PeftModel):
        policy.save_pretrained(folder)
    elif merged:
        base = policy.get_base_model()
        base.save_pretrained(folder, state_dict=_merged_state_dict(base))
    else:
        with _quiet_peft():
            policy.save_pretrained(folder, selected_adapters=[POLICY])
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


@torch.no_grad()
def _merged_state_dict(base: nn.Module) -> dict[str, torch.Tensor]:
    """The base's weights with the policy adapter's update W + (alpha / r) B A added, as a plain
    model's state dict (no LoRA keys), on the CPU, in each weight's own dtype."""
    from peft.tuners.lora import LoraLayer

    merged = {}
    for name, module in base.named_modules():
        if isinstance(module, LoraLayer) and POLICY in module.lora_A:
            weight = module.get_base_layer().weight
            merged[f"{name}.weight"] = (weight.float() + module.get_delta_weight(POLICY).float()).to(weight.dtype).cpu()
    state = {}
    for key, tensor in base.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        state[key] = merged.get(key, tensor.cpu())
    return state
