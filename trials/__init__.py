"""ppo-tuner's PPO engine: PPO for any Hugging Face causal LM. Knows nothing of the sweep controller."""

from __future__ import annotations

from trials import metrics
from trials._builtin import BUILTIN_MODELS, is_builtin_model
from trials._config import OUTSIDE_RANGE, FieldSpec, PPOConfig, field_specs, path_fields
from trials._errors import (
    ConfigError,
    ModelError,
    NonFiniteError,
    Problem,
    RewardError,
    TunerError,
    did_you_mean,
)
from trials._memory import MemoryEstimate, estimate_memory, model_config_of
from trials._refs import REWARD_FIELDS, RewardRef, looked_in, parse_reward, resolve_relative
from trials._stop import KLLimit, chain, forecast_kl, passes_kl_limit
from trials._threads import reserved_threads

__all__ = [
    "BUILTIN_MODELS",
    "CHECKPOINT_FILE",
    "OUTSIDE_RANGE",
    "REWARD_FIELDS",
    "ConfigError",
    "FieldSpec",
    "KLLimit",
    "MemoryEstimate",
    "ModelError",
    "NonFiniteError",
    "PPOConfig",
    "PPOTrainer",
    "RewardRef",
    "Problem",
    "Reporter",
    "RewardError",
    "TrainResult",
    "TunerError",
    "chain",
    "check_vllm_python",
    "checkpoints_cached",
    "did_you_mean",
    "estimate_memory",
    "field_specs",
    "forecast_kl",
    "load_checkpoint",
    "is_builtin_model",
    "looked_in",
    "metrics",
    "model_config_of",
    "parse_reward",
    "passes_kl_limit",
    "path_fields",
    "reserved_threads",
    "resolve_relative",
    "save_checkpoint",
    "train",
]


def __getattr__(name: str):
    # The engine pulls in torch and transformers; keep `import trials` cheap for the spec tools.
    if name in ("train", "PPOTrainer", "Reporter", "TrainResult"):
        from trials import _engine

        return getattr(_engine, name)
    if name in ("CHECKPOINT_FILE", "load_checkpoint", "save_checkpoint"):
        from trials import _checkpoint

        return getattr(_checkpoint, name)
    if name == "check_vllm_python":
        from trials import _vllm

        return _vllm.check_vllm_python
    if name == "checkpoints_cached":
        from trials import _models

        return _models.checkpoints_cached
    raise AttributeError(name)
