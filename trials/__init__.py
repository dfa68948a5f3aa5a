"""ppo-tuner's PPO engine: PPO for any Hugging Face causal LM. Knows nothing of the sweep controller."""

from __future__ import annotations

from trials import metrics
from trials._config import FieldSpec, PPOConfig, field_specs
from trials._errors import (
    ConfigError,
    ModelError,
    NonFiniteError,
    Problem,
    RewardError,
    TunerError,
    did_you_mean,
)

__all__ = [
    "ConfigError",
    "FieldSpec",
    "ModelError",
    "NonFiniteError",
    "PPOConfig",
    "PPOTrainer",
    "Problem",
    "Reporter",
    "RewardError",
    "TrainResult",
    "TunerError",
    "did_you_mean",
    "field_specs",
    "metrics",
    "train",
]


def __getattr__(name: str):
    # The engine pulls in torch and transformers; keep `import trials` cheap for the spec tools.
    if name in ("train", "PPOTrainer", "Reporter", "TrainResult"):
        from trials import _engine

        return getattr(_engine, name)
    raise AttributeError(name)
