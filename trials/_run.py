"""A run's state: what `prepare` builds once (models, optimizer, prompts, rewards, generation) and
each iteration reads and updates (`_Run`), and one iteration's rollout (`_Rollout`). Its own module so
that the engine and the checkpoint that saves and restores it both read it from here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from trials import _math as M
from trials._chat import ChatFormat
from trials._config import PPOConfig
from trials._reward import RewardFunction
from trials._vllm import VLLMRollouts

__all__ = ["_Rollout", "_Run"]


@dataclass
class _Rollout:
    """One iteration's experience. B samples, P prompt tokens (left-padded), T response tokens."""

    sequences: torch.Tensor  # (B, P + T) prompt + response ids
    attention_mask: torch.Tensor  # (B, P + T) 0 on left padding and after the EOS
    position_ids: torch.Tensor  # (B, P + T)
    mask: torch.Tensor  # (B, T) 1.0 on response tokens up to and including the EOS
    logprobs: torch.Tensor  # (B, T) under the policy that sampled them
    ref_logprobs: torch.Tensor  # (B, T)
    values: torch.Tensor  # (B, T)
    scores: torch.Tensor  # (B,)
    prompt_len: int


@dataclass
class _Run:
    config: PPOConfig
    device: torch.device
    autocast: Callable[[], Any]
    tokenizer: Any
    policy: torch.nn.Module  # a PeftModel when lora_rank > 0
    ref: torch.nn.Module | None  # None under LoRA: the policy's base with the adapter disabled
    value: torch.nn.Module
    policy_params: list[torch.nn.Parameter]  # what the policy trains (its adapter under LoRA)
    value_params: list[torch.nn.Parameter]
    reward: RewardFunction
    eval_reward: RewardFunction | None  # the held-out reward, scored on the held-out prompts only
    train_prompts: list[str]
    eval_prompts: list[str]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    kl_ctl: M.FixedKLController | M.AdaptiveKLController
    generation_config: Any
    prompt_gen: torch.Generator
    sampler_logprobs: bool  # the policy's rollout log-probs come from the sampling pass (see _rollout)
    chat: ChatFormat | None  # wraps plain prompts in the chat template (chat_template)
    stop_ids: list[int]  # tokens that end a response: EOS and the chat template's end-of-turn
    vllm: VLLMRollouts | None  # generates the responses where rollout_engine is vllm
    history: list[dict[str, float]] = field(default_factory=list)
    _order: list[int] = field(default_factory=list)
