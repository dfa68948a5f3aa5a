"""The model calls that make and score a rollout: sampling responses (with the log-probs of the
sampled tokens when they come for free), and the forwards that predict response tokens.

Shapes: B samples, P prompt tokens (left-padded), T response tokens, V vocabulary entries.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["decode", "forward_logits", "generate", "logprobs_of", "response_mask", "sampler_logprobs_fit"]

# Largest (B, T, V) float32 logits that generation may keep so that the log-probs of the sampled tokens
# come from the sampling pass (saving a policy forward); bigger rollouts recompute them with a forward.
SAMPLER_LOGITS_BYTES = 256 * 2**20


def sampler_logprobs_fit(batch: int, response_length: int, vocab: int, autocast_bf16: bool) -> bool:
    """Whether the policy's log-probs can be taken from the sampling pass: in float32 they equal a
    separate forward's to ~1e-6 (bf16 incremental decoding differs from a full forward by ~1e-2, so
    there the forward stays, and the first PPO ratio stays exactly 1); and the logits must be small."""
    return not autocast_bf16 and batch * response_length * vocab * 4 <= SAMPLER_LOGITS_BYTES


def logprobs_of(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature) over the full vocabulary. (..., V) -> (...)"""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def generate(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
             generation_config: Any, temperature: float,
             with_logprobs: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Sampled responses (B, T), T <= max_new_tokens, and, if asked, their log-probs (B, T) at
    `temperature` from the raw logits of each sampling step (before top-k/top-p: the same
    distribution a forward's log-probs use)."""
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config,
                         return_dict_in_generate=True, output_logits=with_logprobs)
    responses = out.sequences[:, input_ids.shape[1]:]
    if not with_logprobs:
        return responses, None
    steps = [logprobs_of(logits, responses[:, t], temperature) for t, logits in enumerate(out.logits)]  # T x (B,)
    return responses, torch.stack(steps, 1)


def response_mask(responses: torch.Tensor, eos_id: int | Sequence[int] | None) -> torch.Tensor:
    """1.0 up to and including the first stop token (EOS, or any of `eos_id`'s ids: a chat template's
    end-of-turn) of each response, 0.0 after it. (B, T)"""
    if eos_id is None or (not isinstance(eos_id, int) and not eos_id):
        return torch.ones_like(responses, dtype=torch.float32)
    stops = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=responses.device)
    is_eos = torch.isin(responses, stops).int()
    after_eos = (is_eos.cumsum(1) - is_eos) > 0
    return (~after_eos).float()


@functools.cache
def _keeps_logits(model_type: type) -> bool:
    return "logits_to_keep" in inspect.signature(model_type.forward).parameters


def forward_logits(model: torch.nn.Module, ids: torch.Tensor, attn: torch.Tensor, pos: torch.Tensor,
                   prompt_len: int) -> torch.Tensor:
    """Logits that predict each response token. (B, P + T) -> (B, T, V)"""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model's
    if _keeps_logits(type(inner)):  # the LM head runs on the last T + 1 positions only
        T = ids.shape[1] - prompt_len
        return model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False,
                     logits_to_keep=T + 1).logits[:, :-1]
    return model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=False).logits[:, prompt_len - 1:-1]


def decode(tokenizer: Any, responses: torch.Tensor, mask: torch.Tensor) -> list[str]:
    """Each response's text, up to and including its EOS (which skip_special_tokens drops)."""
    lengths = mask.sum(1).long().tolist()
    return [tokenizer.decode(r[:n].tolist(), skip_special_tokens=True) for r, n in zip(responses, lengths, strict=True)]
