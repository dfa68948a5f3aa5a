"""Memory as a constraint of the search: the engine's memory model (`trials.estimate_memory`) asked
before a trial is launched, against the memory a trial may use (`resources.trial_memory_gb`).

The prediction is for the device the trial will run on: CUDA where the spec gives trials GPUs, else
the CPU. The model's config.json is read once; no weights are loaded.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

from trials import PPOConfig
from tuner.trial._verdict import memory_constraint

__all__ = ["GIB", "MemoryCheck", "extreme_configs"]

GIB = 2**30
# engine fields that change a trial's memory: their extremes bound the space's predictions
MEMORY_FIELDS = ("rollout_batch_size", "mini_batch_size", "num_mini_batches", "micro_batch_size", "response_length",
                 "max_prompt_length", "lora_rank", "lora_target_modules", "value_backbone", "gradient_checkpointing",
                 "frozen_dtype", "precision")
_MAX_EXTREMES = 256


class MemoryCheck:
    """Predicted peak memory of a trial's config against the budget (GiB over it: > 0 does not fit)."""

    def __init__(self, budget_gb: float, gpus_per_trial: float):
        self.budget_gb = budget_gb
        self.device = "cuda" if gpus_per_trial > 0 else "cpu"
        self._configs: dict[str | None, Any] = {}  # model path -> its transformers config

    def _model_config(self, path: str | None) -> Any:
        if path not in self._configs:
            from trials import model_config_of

            self._configs[path] = model_config_of(path) if path else None
        return self._configs[path]

    def predict_gb(self, config: PPOConfig) -> float:
        """The trial's predicted peak, in GiB, on the device it will run on."""
        from trials import estimate_memory

        config = dataclasses.replace(config, device=self.device)
        value = self._model_config(config.value_model_path) if config.value_model_path else None
        return estimate_memory(config, self._model_config(config.model_path), value).peak / GIB

    def violation(self, config: PPOConfig) -> float:
        """The constraint's value: predicted GiB minus the budget (<= 0: it fits)."""
        return memory_constraint(self.predict_gb(config), self.budget_gb)


def extreme_configs(spec: Any) -> Iterator[PPOConfig]:
    """Engine configs at the extremes of the searched memory-relevant fields (each range's ends, every
    choice), at most 256, skipping pairs the engine refuses (a mini-batch that does not divide)."""
    axes = []
    for name in MEMORY_FIELDS:
        param = spec.space.get(name)
        if param is None or not param.searched:
            continue
        values = param.choices if param.kind == "categorical" else (param.low, param.high)
        axes.append([(name, v) for v in dict.fromkeys(values)])
    from tuner.spec import trial_config

    for combo in itertools.islice(itertools.product(*axes), _MAX_EXTREMES):
        config = trial_config(spec, dict(combo))
        if not config.problems():
            yield config
