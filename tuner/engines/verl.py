"""verl 0.9: `python -m verl.trainer.main_ppo` with Hydra overrides.

Its names for our fields (`KEYS`, and `FIXED`, the settings that make it run our algorithm) serve
the export (`tuner export --format verl`) and the launch of a trial alike; each was checked against
SOURCE.
Its metrics are read from its `file` logger (verl/utils/tracking.py FileLogger: one
`{"step": n, "data": {...}}` line per step, unbuffered, at $VERL_FILE_LOGGER_PATH). KL:
`actor/reward_kl_penalty` (the KL to the reference in the reward, per-token mean averaged over the
batch; ray_trainer.apply_kl_penalty), else `actor/kl_loss`; never `actor/ppo_kl` (the policy against
its own rollout). x `response_length/mean`. Reward: `critic/score/mean`.
"""

from __future__ import annotations

import json
from typing import Any

from trials import metrics as K
from tuner.engines._base import Engine, TrainerError, Units, numbers

__all__ = ["FIXED", "KEYS", "NEEDS", "SOURCE", "VERIFIED_KEYS", "VERL"]

SOURCE = "volcengine/verl verl/trainer/config/_generated_ppo_trainer.yaml (release 0.9.1)"

_ACTOR, _ROLLOUT = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
_OPTIM = f"{_ACTOR}.optim"

# Every key this export may write, as defined in SOURCE.
VERIFIED_KEYS = frozenset({
    "actor_rollout_ref.model.path", "critic.model.path",
    "reward.reward_model.enable", "reward.reward_model.model_path",
    "reward.reward_model.rollout.name",
    "reward.custom_reward_function.path", "reward.custom_reward_function.name",
    "data.train_files", "data.val_files", "data.prompt_key", "data.max_prompt_length",
    "data.truncation",
    "data.max_response_length", "data.train_batch_size", "data.seed",
    f"{_OPTIM}.lr", f"{_OPTIM}.optimizer", f"{_OPTIM}.weight_decay", f"{_OPTIM}.lr_scheduler_type",
    f"{_OPTIM}.lr_warmup_steps", f"{_OPTIM}.clip_grad",
    "critic.optim.lr", "critic.optim.optimizer", "critic.optim.weight_decay",
    "critic.optim.lr_scheduler_type",
    "critic.optim.lr_warmup_steps", "critic.optim.clip_grad",
    f"{_ACTOR}.ppo_mini_batch_size", "critic.ppo_mini_batch_size",
    f"{_ACTOR}.ppo_micro_batch_size_per_gpu",
    "critic.ppo_micro_batch_size_per_gpu", "critic.forward_micro_batch_size_per_gpu",
    f"{_ROLLOUT}.log_prob_micro_batch_size_per_gpu",
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
    f"{_ACTOR}.ppo_epochs", "critic.ppo_epochs", f"{_ACTOR}.shuffle", "critic.shuffle",
    "algorithm.kl_ctrl.type", "algorithm.kl_ctrl.kl_coef", "algorithm.kl_ctrl.target_kl",
    "algorithm.kl_ctrl.horizon", "algorithm.kl_penalty", "algorithm.use_kl_in_reward",
    f"{_ACTOR}.use_kl_loss",
    f"{_ACTOR}.clip_ratio", f"{_ACTOR}.clip_ratio_low", f"{_ACTOR}.clip_ratio_high",
    "critic.cliprange_value",
    "algorithm.adv_estimator", "algorithm.lam", "algorithm.gamma", f"{_ACTOR}.entropy_coeff",
    f"{_ROLLOUT}.name", f"{_ROLLOUT}.n", f"{_ROLLOUT}.temperature", f"{_ROLLOUT}.top_k",
    f"{_ROLLOUT}.top_p",
    f"{_ROLLOUT}.seed", f"{_ACTOR}.data_loader_seed", "critic.data_loader_seed",
    "trainer.total_training_steps", "trainer.total_epochs", "trainer.test_freq",
    "actor_rollout_ref.model.lora_rank", "actor_rollout_ref.model.lora_alpha",
    "actor_rollout_ref.model.target_modules",
    "critic.model.lora_rank", "critic.model.lora_alpha", "critic.model.target_modules",
    "actor_rollout_ref.model.enable_gradient_checkpointing",
    "critic.model.enable_gradient_checkpointing",
})

# Our field -> the verl keys that carry it. Fields missing here are explained in the export's
# comments (and a warning when a value is lost): vf_coef, whiten_advantages, whiten_rewards,
# lora_dropout, frozen_dtype.
KEYS: dict[str, tuple[str, ...]] = {
    "model_path": ("actor_rollout_ref.model.path",),
    "value_model_path": ("critic.model.path",),
    "reward": ("reward.reward_model.model_path", "reward.custom_reward_function.path"),
    "prompts": ("data.train_files", "data.prompt_key"),
    "eval_prompts": ("data.val_files",),
    "max_prompt_length": ("data.max_prompt_length", "data.truncation"),
    "policy_lr": (f"{_OPTIM}.lr",),
    "value_lr": ("critic.optim.lr",),
    "optimizer": (f"{_OPTIM}.optimizer", "critic.optim.optimizer"),
    "weight_decay": (f"{_OPTIM}.weight_decay", "critic.optim.weight_decay"),
    "lr_schedule": (f"{_OPTIM}.lr_scheduler_type", "critic.optim.lr_scheduler_type"),
    "warmup_steps": (f"{_OPTIM}.lr_warmup_steps", "critic.optim.lr_warmup_steps"),
    "max_grad_norm": (f"{_OPTIM}.clip_grad", "critic.optim.clip_grad"),
    "rollout_batch_size": ("data.train_batch_size",),
    "mini_batch_size": (f"{_ACTOR}.ppo_mini_batch_size", "critic.ppo_mini_batch_size"),
    "micro_batch_size": (f"{_ACTOR}.ppo_micro_batch_size_per_gpu",
                         "critic.ppo_micro_batch_size_per_gpu",
                         f"{_ROLLOUT}.log_prob_micro_batch_size_per_gpu",
                         "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
                         "critic.forward_micro_batch_size_per_gpu"),
    "ppo_epochs": (f"{_ACTOR}.ppo_epochs", "critic.ppo_epochs"),
    "kl_mode": ("algorithm.kl_ctrl.type",),
    "kl_coef": ("algorithm.kl_ctrl.kl_coef",),
    "kl_target": ("algorithm.kl_ctrl.target_kl",),
    "kl_horizon": ("algorithm.kl_ctrl.horizon",),
    "kl_estimator": ("algorithm.kl_penalty",),
    "cliprange": (f"{_ACTOR}.clip_ratio", f"{_ACTOR}.clip_ratio_low", f"{_ACTOR}.clip_ratio_high"),
    "cliprange_value": ("critic.cliprange_value",),
    "gae_lambda": ("algorithm.lam",),
    "gamma": ("algorithm.gamma",),
    "ent_coef": (f"{_ACTOR}.entropy_coeff",),
    "response_length": ("data.max_response_length",),
    "temperature": (f"{_ROLLOUT}.temperature",),
    "top_k": (f"{_ROLLOUT}.top_k",),
    "top_p": (f"{_ROLLOUT}.top_p",),
    "num_iterations": ("trainer.total_training_steps", "trainer.total_epochs"),
    "eval_interval": ("trainer.test_freq",),
    "lora_rank": ("actor_rollout_ref.model.lora_rank",),
    "lora_alpha": ("actor_rollout_ref.model.lora_alpha",),
    "lora_target_modules": ("actor_rollout_ref.model.target_modules",),
    "value_backbone": ("critic.model.lora_rank", "critic.model.lora_alpha",
                       "critic.model.target_modules"),
    "gradient_checkpointing": ("actor_rollout_ref.model.enable_gradient_checkpointing",
                               "critic.model.enable_gradient_checkpointing"),
    "seed": ("data.seed", f"{_ACTOR}.data_loader_seed", "critic.data_loader_seed",
             f"{_ROLLOUT}.seed"),
}

# Our field -> the fields its verl value is computed from (a launch passes it only with them).
NEEDS: dict[str, tuple[str, ...]] = {
    "warmup_steps": ("ppo_epochs", "rollout_batch_size", "mini_batch_size"),  # in PPO iterations
    "kl_target": ("kl_mode", "response_length"),  # per token: kl_target / response_length
    "kl_horizon": ("kl_mode",),
    "lora_alpha": ("lora_rank",), "lora_target_modules": ("lora_rank",),
    "value_backbone": ("lora_rank", "lora_alpha", "lora_target_modules"),  # the critic's own adapter
}

# Settings that make verl run the algorithm of ppo-tuner's engine (its defaults differ). A launch
# always writes the first three (the critic, and the KL in the reward that the KL limit reads:
# actor/reward_kl_penalty); the others unless trial.command sets them (VERL.user_choice).
FIXED: dict[str, tuple[Any, str]] = {
    "algorithm.adv_estimator": ("gae", "PPO with a critic and GAE"),
    "algorithm.use_kl_in_reward": (True, "KL penalty in the per-token reward, as ppo-tuner"),
    f"{_ACTOR}.use_kl_loss": (False, "no KL loss term (GRPO-style)"),
    f"{_ROLLOUT}.n": (1, "one response per prompt"),
    f"{_ROLLOUT}.name": ("vllm", "the rollout engine (or sglang)"),
    f"{_ACTOR}.shuffle": (True, "fresh mini-batch order each epoch, as ppo-tuner"),
    "critic.shuffle": (True, ""),
}



def _verl_line(line: str) -> dict[str, float]:
    """One line of verl's file logger: {"step": n, "data": {metric: value}}."""
    try:
        record = json.loads(line)
        return {"step": float(record["step"]), **numbers(record["data"])}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise TrainerError(f"verl's metrics file has a line we cannot read ({exc}): "
                           f"{line.strip()[:200]}") from None


VERL = Engine(
    "verl",
    Units(kl_per_token=("actor/reward_kl_penalty", "actor/kl_loss"),
          length=("response_length/mean",),
          names={"critic/score/mean": K.SCORES, "response_length/mean": K.RESPONSE_LENGTH,
                 "actor/reward_kl_penalty_coeff": K.KL_COEF, "actor/entropy": K.ENTROPY,
                 "actor/pg_loss": K.POLICY_LOSS, "actor/pg_clipfrac": K.CLIPFRAC,
                 "critic/vf_loss": K.VALUE_LOSS, "critic/vf_clipfrac": K.VALUE_CLIPFRAC,
                 "critic/vf_explained_var": K.EXPLAINED_VARIANCE, "actor/lr": K.LR_POLICY,
                 "critic/lr": K.LR_VALUE},
          needs_kl=False),  # validation before training is logged alone, without KL
    None, _verl_line, names=KEYS, fixed=FIXED, style="hydra",
    example="command: [/opt/verl/bin/python, -m, verl.trainer.main_ppo, data.train_files=..., "
            "trainer.n_gpus_per_node=1]",
    metrics_file="verl_metrics.jsonl", metrics_env="VERL_FILE_LOGGER_PATH",
    extra=("trainer.logger=[console,file]",), ray=True,
    gpu_args=("trainer.n_gpus_per_node", "trainer.nnodes"),
    user_choice=(f"{_ROLLOUT}.name", f"{_ROLLOUT}.n", f"{_ACTOR}.shuffle", "critic.shuffle"), needs=NEEDS,
    path_setting="+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH")
