"""Memory as a constraint of the search: the engine's memory model (`trials.estimate_memory`) asked
before a trial is launched, against the memory a trial may use (`resources.trial_memory_gb`).

The prediction is for the device the trial will run on: CUDA where the spec gives trials GPUs, else
the CPU. The model's config.json is read once; no weights are loaded. On a GPU with rollout_engine
vllm, the vLLM server's share of the card (`vllm_gpu_memory_utilization` of it, a reservation vLLM
makes at its start and keeps) is added to the trial's own peak: both live on the trial's GPU. The card
is the budget's (trial_memory_gb / gpus_per_trial where trials share one).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trials import PPOConfig
from tuner.trial._verdict import memory_constraint

__all__ = ["GIB", "MemoryCheck"]

GIB = 2**30


class MemoryCheck:
    """Predicted peak memory of a trial's config against the budget (GiB over it: > 0 does not fit)."""

    def __init__(self, budget_gb: float, gpus_per_trial: float):
        self.budget_gb = budget_gb
        self.device = "cuda" if gpus_per_trial > 0 else "cpu"
        self.card_gb = budget_gb / min(gpus_per_trial, 1.0) if gpus_per_trial > 0 else 0.0
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
        own = estimate_memory(config, self._model_config(config.model_path), value).peak / GIB
        return own + self.vllm_gb(config)

    def vllm_gb(self, config: PPOConfig) -> float:
        """The vLLM server's share of the trial's GPU, in GiB: 0 on a CPU or with rollout_engine hf."""
        if config.rollout_engine != "vllm" or self.device != "cuda":
            return 0.0
        return config.vllm_gpu_memory_utilization * self.card_gb

    def violation(self, config: PPOConfig) -> float:
        """The constraint's value: predicted GiB minus the budget (<= 0: it fits)."""
        return memory_constraint(self.predict_gb(config), self.budget_gb)

