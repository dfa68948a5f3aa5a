"""The engine configs at the extremes of a compiled spec's space, for the memory check: each
memory-relevant field's range ends and choices (`tuner validate` shows their predicted peaks)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

from trials import PPOConfig
from tuner.spec._compile import CompiledSpec, trial_config

__all__ = ["MEMORY_FIELDS", "extreme_configs"]

# engine fields that change a trial's memory: their extremes bound the space's predictions
MEMORY_FIELDS = ("rollout_batch_size", "mini_batch_size", "num_mini_batches", "micro_batch_size",
                 "response_length", "max_prompt_length", "lora_rank", "lora_target_modules",
                 "value_backbone", "gradient_checkpointing", "frozen_dtype", "precision")
_MAX_EXTREMES = 256


def extreme_configs(spec: CompiledSpec) -> Iterator[PPOConfig]:
    """Engine configs at the extremes of the searched memory-relevant fields (each range's ends,
    every choice), at most 256, skipping pairs the engine refuses (a mini-batch that does not
    divide)."""
    axes = []
    for name in MEMORY_FIELDS:
        param = spec.space.get(name)
        if param is None or not param.searched:
            continue
        values = param.choices if param.kind == "categorical" else (param.low, param.high)
        axes.append([(name, v) for v in dict.fromkeys(values)])
    for combo in itertools.islice(itertools.product(*axes), _MAX_EXTREMES):
        config = trial_config(spec, dict(combo))
        if not config.problems():
            yield config
