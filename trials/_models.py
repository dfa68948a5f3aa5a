"""Loading the policy, the frozen reference and the value model, through `from_pretrained`.

Small checkpoints (up to CACHE_MAX_BYTES on disk) are cached per process (on the CPU), so a worker
that runs several trials reads and builds each once; every trial still gets its own fresh copy.
Larger ones are read afresh for each trial: a cached copy would cost as much memory as the model.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from functools import lru_cache

import torch
from torch import nn

from trials._builtin import BUILTIN_MODELS, builtin_model_path, is_builtin_model
from trials._errors import ModelError, Problem

__all__ = ["ValueModel", "load_causal_lm", "load_tokenizer", "load_value_model", "resolve_model_path"]

log = logging.getLogger(__name__)

CACHE_MAX_BYTES = 64 * 2**20  # checkpoints larger than this on disk are not kept in the process cache


def _quiet_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def resolve_model_path(path: str, field: str = "model_path") -> str:
    """A local model directory (a built-in name such as 'demo' is built on first use); a clear error if
    there is none."""
    if is_builtin_model(path):
        return str(builtin_model_path(path, field))
    if not os.path.isdir(path):
        raise ModelError([Problem(field, path, "no such model directory",
                                  "give the folder a model was saved to with save_pretrained, or one of "
                                  + ", ".join(BUILTIN_MODELS))])
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelError([Problem(field, path, "the folder has no config.json, so it holds no Hugging Face model",
                                  "give the folder a model was saved to with save_pretrained")])
    return path


def _weights_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path)
               if f.endswith((".safetensors", ".bin", ".pt")))


def _load(path: str, kind: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A fresh copy of the model at `path`: from the process cache for small checkpoints."""
    if _weights_bytes(path) <= CACHE_MAX_BYTES:
        return copy.deepcopy(_cached(path, kind, dtype))
    return _from_pretrained(path, kind, dtype)


@lru_cache(maxsize=4)
def _cached(path: str, kind: str, dtype: torch.dtype) -> nn.Module:
    return _from_pretrained(path, kind, dtype)


def _from_pretrained(path: str, kind: str, dtype: torch.dtype) -> nn.Module:
    import transformers

    _quiet_transformers()
    auto = {"causal": transformers.AutoModelForCausalLM, "backbone": transformers.AutoModel,
            "classifier": transformers.AutoModelForSequenceClassification}[kind]
    try:
        model = auto.from_pretrained(path, dtype=dtype)
    except (ValueError, KeyError, OSError) as exc:
        what = {"causal": "a causal language model", "backbone": "a transformer backbone",
                "classifier": "a sequence-classification reward model"}[kind]
        field = "reward" if kind == "classifier" else "model_path"
        raise ModelError([Problem(field, path, f"cannot be loaded as {what} "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})",
                                  f"give the folder of {what} saved with save_pretrained")]) from None
    _disable_dropout(model)
    _fuse_tanh_gelu(model)
    return model.eval()


def _disable_dropout(model: nn.Module) -> None:
    # Dropout would make the PPO ratio != 1 before any update; RLHF trainers turn it off (also the
    # attention dropout that some attention modules keep as a float and apply in training mode).
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0


def _fuse_tanh_gelu(model: nn.Module) -> None:
    """GPT-2's tanh-approximate GELU, written in Python (8 elementwise ops forward, more backward), becomes
    torch's fused kernel of the same function (transformers' own GELUTanh; outputs agree to ~1e-6): the
    demo model's forward plus backward gets about 20% faster on a CPU. The saved config is unchanged."""
    from transformers.activations import FastGELUActivation, GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) in (NewGELUActivation, FastGELUActivation):
                setattr(module, name, GELUTanh())


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A fresh copy of the causal LM at `path` (fp32 master weights unless `dtype` says otherwise)."""
    return _load(path, "causal", dtype)


def load_tokenizer(path: str):
    """The model's tokenizer, left-padded for generation, with a pad token."""
    from transformers import AutoTokenizer

    _quiet_transformers()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (ValueError, OSError) as exc:
        raise ModelError([Problem("model_path", path, f"has no usable tokenizer ({str(exc).splitlines()[0][:160]})",
                                  "save the tokenizer next to the model with tokenizer.save_pretrained")]) from None
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ModelError([Problem("model_path", path, "the tokenizer has neither a pad nor an EOS token",
                                      "add a pad token to the tokenizer and save it again")])
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


class ValueModel(nn.Module):
    """A transformer backbone with a scalar head: one value per position. (B, L) -> (B, L)"""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.config.hidden_size, 1)
        nn.init.normal_(self.head.weight, std=1.0 / (backbone.config.hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.head.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               use_cache=False).last_hidden_state  # (B, L, H)
        return self.head(hidden.to(self.head.weight.dtype)).squeeze(-1).float()

    def active(self) -> contextlib.AbstractContextManager:
        """The scope of the value's forwards and backwards (see trials._lora.SharedValueModel)."""
        return contextlib.nullcontext()


def load_value_model(path: str) -> ValueModel:
    return ValueModel(_load(path, "backbone"))


def load_reward_model(path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    model = (_cached(path, "classifier", dtype) if _weights_bytes(path) <= CACHE_MAX_BYTES
             else _from_pretrained(path, "classifier", dtype))
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def checkpoints_cached() -> int:
    """How many loaded checkpoints this process holds in its cache (> 0: a later run skips loading them)."""
    return _cached.cache_info().currsize
