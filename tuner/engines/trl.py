"""TRL 1.12: `trl.experimental.ppo.PPOTrainer`, built by our launcher (`launchers/trl_ppo.py`, run
by the user's interpreter, an environment with trl), which prints TRL's own logs as report lines.

Its names for our fields (`KWARGS` for PPOConfig, `LORA_KWARGS` for peft's LoraConfig, and `FIXED`)
serve the export (`tuner export --format trl`) and the launch of a trial alike; each was checked
against SOURCE. TRL's `objective/kl` is already summed over the response (ppo_trainer.py:
`mean_kl = kl.sum(1).mean()`); its `objective/entropy` is summed over the response too (ours: the
per-token mean), so it is kept under its own name.
"""

from __future__ import annotations

from typing import Any

from tuner.engines._base import Engine, Units
from tuner.engines.command import PREFIX, protocol_line

__all__ = ["FIXED", "KWARGS", "LORA_KWARGS", "SOURCE", "TRL", "VERIFIED_KWARGS",
           "VERIFIED_LORA_KWARGS"]

SOURCE = ("huggingface/trl trl/experimental/ppo/ppo_config.py and trl/trainer/base_config.py "
          "(trl 1.12.0), huggingface/transformers src/transformers/training_args.py "
          "(transformers 5.24), huggingface/peft src/peft/tuners/lora/config.py (peft 0.21.2)")

# Every keyword this export may write, as defined in SOURCE.
VERIFIED_KWARGS = frozenset({
    # trl/experimental/ppo/ppo_config.py
    "sft_model_path", "reward_model_path", "num_mini_batches", "total_episodes",
    "local_rollout_forward_batch_size",
    "response_length", "stop_token", "temperature", "num_ppo_epochs", "whiten_rewards", "kl_coef",
    "kl_estimator",
    "cliprange", "vf_coef", "cliprange_value", "gamma", "lam", "learning_rate",
    # transformers TrainingArguments
    "output_dir", "per_device_train_batch_size", "gradient_accumulation_steps", "optim",
    "weight_decay",
    "lr_scheduler_type", "warmup_steps", "max_grad_norm", "seed", "bf16", "use_cpu",
    # trl/trainer/base_config.py (_BaseConfig, the TrainingArguments of every trl trainer)
    "gradient_checkpointing",
})
# Every keyword of peft's LoraConfig this export may write, as defined in SOURCE.
VERIFIED_LORA_KWARGS = frozenset({"r", "lora_alpha", "lora_dropout", "target_modules", "task_type"})

# Our field -> the PPOConfig keywords that carry it. Fields missing here are explained in the
# export's comments (and a warning when a value is lost): value_model_path, prompts, eval_prompts
# (PPOTrainer arguments), max_prompt_length, value_lr, kl_mode, kl_target, kl_horizon, ent_coef,
# whiten_advantages, top_k, top_p, value_backbone, frozen_dtype; and the LoRA fields, which go to
# LoraConfig (LORA_KWARGS).
KWARGS: dict[str, tuple[str, ...]] = {
    "model_path": ("sft_model_path",),
    "reward": ("reward_model_path",),
    "policy_lr": ("learning_rate",),
    "optimizer": ("optim",),
    "weight_decay": ("weight_decay",),
    "lr_schedule": ("lr_scheduler_type",),
    "warmup_steps": ("warmup_steps",),
    "max_grad_norm": ("max_grad_norm",),
    "rollout_batch_size": ("per_device_train_batch_size", "gradient_accumulation_steps"),
    "mini_batch_size": ("num_mini_batches",),
    "micro_batch_size": ("local_rollout_forward_batch_size",),
    "ppo_epochs": ("num_ppo_epochs",),
    "kl_coef": ("kl_coef",),
    "kl_estimator": ("kl_estimator",),
    "cliprange": ("cliprange",),
    "cliprange_value": ("cliprange_value",),
    "gae_lambda": ("lam",),
    "gamma": ("gamma",),
    "vf_coef": ("vf_coef",),
    "whiten_rewards": ("whiten_rewards",),
    "response_length": ("response_length",),
    "temperature": ("temperature",),
    "num_iterations": ("total_episodes",),
    "seed": ("seed",),
    "device": ("use_cpu",),
    "precision": ("bf16",),
    "output_dir": ("output_dir",),
    "gradient_checkpointing": ("gradient_checkpointing",),
}

# Our field -> the keywords of `peft_config = LoraConfig(...)`, written when lora_rank > 0.
LORA_KWARGS: dict[str, tuple[str, ...]] = {
    "lora_rank": ("r",),
    "lora_alpha": ("lora_alpha",),
    "lora_dropout": ("lora_dropout",),
    "lora_target_modules": ("target_modules",),
}

# Settings that make TRL run the algorithm of ppo-tuner's engine (its defaults differ).
FIXED: dict[str, tuple[Any, str]] = {
    "stop_token": ("eos", "responses end at the EOS token, as ppo-tuner"),
}


TRL = Engine(
    "trl", Units(kl=("objective/kl",), foreign=("objective/entropy",)), PREFIX, protocol_line,
    names=KWARGS, fixed=FIXED,
    example="command: [bench/.venv-trl/bin/python] (an environment with trl 1.12)",
    launcher="trl_ppo.py", imports=("trl", "torch", "transformers"),
    setup="bash bench/setup_trl.sh makes bench/.venv-trl with trl 1.12")
