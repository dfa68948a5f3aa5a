"""OpenRLHF 0.11: `python -m openrlhf.cli.train_ppo_ray` with flags.

Its names for our fields (`FLAGS`, and `FIXED`, the settings that make it run our algorithm)
serve the export (`tuner export --format openrlhf`) and the launch of a trial alike; each was
checked against SOURCE. Its metrics are read from its per-step log line (`✨ Global step N: {...}`,
trainer/ppo_trainer.py, the same dict its TensorBoard and W&B loggers get, printed before them and
with no flush delay). KL: `kl` (per-token mean to the reference, experience_maker.py) x
`rollout/response_length_mean`. Reward: `rollout/reward_mean`.
"""

from __future__ import annotations

import ast
import re
from typing import Any

from trials import metrics as K
from tuner.engines._base import Engine, Units, numbers
from tuner.engines._placement import PACK

__all__ = ["FIXED", "FLAGS", "NEEDS", "OPENRLHF", "SOURCE", "VERIFIED_FLAGS"]

SOURCE = ("OpenRLHF/OpenRLHF openrlhf/cli/train_ppo_ray.py (release 0.11.2; these names since "
          "0.10.2)")

# Every flag this export may write, as defined in SOURCE.
VERIFIED_FLAGS = frozenset({
    "--actor.model_name_or_path", "--critic.model_name_or_path", "--reward.model_name_or_path",
    "--reward.remote_url", "--reward.clip_range", "--data.prompt_dataset", "--data.input_key",
    "--data.max_len", "--data.max_samples",
    "--actor.optim", "--critic.optim", "--actor.adam.lr", "--critic.adam.lr",
    "--actor.adam.weight_decay", "--critic.adam.weight_decay", "--actor.adam.betas",
    "--critic.adam.betas",
    "--actor.lr_scheduler", "--critic.lr_scheduler", "--actor.lr_warmup_ratio",
    "--critic.lr_warmup_ratio",
    "--actor.max_norm", "--critic.max_norm",
    "--rollout.batch_size", "--rollout.n_samples_per_prompt", "--train.batch_size",
    "--train.micro_batch_size", "--rollout.micro_batch_size", "--train.max_epochs",
    "--algo.kl.init_coef", "--algo.kl.target", "--algo.kl.horizon", "--algo.kl.estimator",
    "--actor.eps_clip", "--critic.value_clip", "--algo.advantage.estimator",
    "--algo.advantage.lambd",
    "--algo.advantage.gamma", "--algo.advantage.no_std_norm", "--actor.entropy_coef",
    "--rollout.max_new_tokens", "--rollout.temperature", "--rollout.top_p",
    "--train.num_episodes", "--train.seed",
    "--ds.lora.rank", "--ds.lora.alpha", "--ds.lora.target_modules", "--ds.lora.dropout",
    "--actor.gradient_checkpointing_enable", "--data.apply_chat_template",
})

# Our field -> the OpenRLHF flags that carry it. Fields missing here are explained in the export's
# comments (and a warning when a value is lost): vf_coef, whiten_advantages, whiten_rewards, top_k,
# value_backbone, frozen_dtype.
FLAGS: dict[str, tuple[str, ...]] = {
    "model_path": ("--actor.model_name_or_path",),
    "value_model_path": ("--critic.model_name_or_path",),
    "reward": ("--reward.model_name_or_path", "--reward.remote_url"),
    "prompts": ("--data.prompt_dataset", "--data.input_key"),
    "max_prompt_length": ("--data.max_len",),
    "policy_lr": ("--actor.adam.lr",),
    "value_lr": ("--critic.adam.lr",),
    "optimizer": ("--actor.optim", "--critic.optim"),
    "weight_decay": ("--actor.adam.weight_decay", "--critic.adam.weight_decay"),
    "lr_schedule": ("--actor.lr_scheduler", "--critic.lr_scheduler"),
    "warmup_steps": ("--actor.lr_warmup_ratio", "--critic.lr_warmup_ratio"),
    "max_grad_norm": ("--actor.max_norm", "--critic.max_norm"),
    "rollout_batch_size": ("--rollout.batch_size",),
    "mini_batch_size": ("--train.batch_size",),
    "micro_batch_size": ("--train.micro_batch_size", "--rollout.micro_batch_size"),
    "ppo_epochs": ("--train.max_epochs",),
    "kl_mode": ("--algo.kl.target",),  # adaptive exactly when --algo.kl.target is given
    "kl_coef": ("--algo.kl.init_coef",),
    "kl_target": ("--algo.kl.target",),
    "kl_horizon": ("--algo.kl.horizon",),
    "kl_estimator": ("--algo.kl.estimator",),
    "cliprange": ("--actor.eps_clip",),
    "cliprange_value": ("--critic.value_clip",),
    "gae_lambda": ("--algo.advantage.lambd",),
    "gamma": ("--algo.advantage.gamma",),
    "ent_coef": ("--actor.entropy_coef",),
    "response_length": ("--rollout.max_new_tokens",),
    "temperature": ("--rollout.temperature",),
    "top_p": ("--rollout.top_p",),
    "chat_template": ("--data.apply_chat_template",),
    "lora_rank": ("--ds.lora.rank",),
    "lora_alpha": ("--ds.lora.alpha",),
    "lora_dropout": ("--ds.lora.dropout",),
    "lora_target_modules": ("--ds.lora.target_modules",),
    "gradient_checkpointing": ("--actor.gradient_checkpointing_enable",),
    "num_iterations": ("--data.max_samples", "--train.num_episodes"),
    "seed": ("--train.seed",),
}

# Our field -> the fields its OpenRLHF value is computed from (a launch passes it only with them).
NEEDS: dict[str, tuple[str, ...]] = {
    "num_iterations": ("rollout_batch_size",),  # --data.max_samples = num_iterations x rollout_batch_size
    "warmup_steps": ("ppo_epochs", "rollout_batch_size", "mini_batch_size"),  # a ratio of all optimizer steps
    "kl_target": ("kl_mode", "response_length"),  # per token: kl_target / response_length
    # adaptive is --algo.kl.target given: without kl_target OpenRLHF would run its fixed controller (its
    # default, which a spec gets by leaving kl_mode unset)
    "kl_mode": ("kl_target", "response_length"),
    "kl_horizon": ("kl_mode",),
    "lora_alpha": ("lora_rank",), "lora_target_modules": ("lora_rank",), "lora_dropout": ("lora_rank",),
}

# Settings that make OpenRLHF run the algorithm of ppo-tuner's engine (its defaults differ). A
# launch always writes the advantage estimator; one response per prompt unless trial.command sets
# it; the betas and the score clip only in an export (a launch leaves OpenRLHF's own).
FIXED: dict[str, tuple[Any, str]] = {
    "--algo.advantage.estimator": ("gae", "PPO with a critic and GAE"),
    "--rollout.n_samples_per_prompt": (1, "one response per prompt"),
    "--actor.adam.betas": ((0.9, 0.999),
                           "torch's Adam betas, as ppo-tuner (OpenRLHF's default is 0.9 0.95)"),
    "--critic.adam.betas": ((0.9, 0.999), ""),
    "--reward.clip_range": ((-1000000.0, 1000000.0),
                            "ppo-tuner does not clip scores (OpenRLHF clips to -10..10 by "
                            "default)"),
}


_STEP = re.compile(r"Global step (\d+): (\{.*\})\s*$")
# a value of the step's dict that is not a literal (np.float64(...)): its plain number
_NUMBER = re.compile(r"'([^']+)': (?:\w+\.\w+\()?(-?[0-9.]+(?:e[-+]?\d+)?|nan|inf)")


def _openrlhf_line(line: str) -> dict[str, float] | None:
    """OpenRLHF's `✨ Global step N: {...}` (a Python dict's repr) after its logger's prefix."""
    match = _STEP.search(line)
    if match is None:  # another line naming a global step
        return None
    try:
        status = ast.literal_eval(match.group(2))
    except (ValueError, SyntaxError):  # a value that is not a literal: take the plain numbers
        status = {k: float(v) for k, v in _NUMBER.findall(match.group(2))}
    return {"step": float(match.group(1)), **numbers(status)}


OPENRLHF = Engine(
    "openrlhf",
    Units(kl_per_token=("kl",), length=("rollout/response_length_mean", "response_length"),
          names={"rollout/reward_mean": K.SCORES, "reward": K.SCORES,
                 "rollout/reward_std": K.SCORES_STD,
                 "rollout/response_length_mean": K.RESPONSE_LENGTH, "policy_loss": K.POLICY_LOSS,
                 "critic_loss": K.VALUE_LOSS, "actor_lr": K.LR_POLICY, "critic_lr": K.LR_VALUE}),
    "Global step ", _openrlhf_line, names=FLAGS, fixed=FIXED, style="flag",
    example="command: [/opt/openrlhf/bin/python, -m, openrlhf.cli.train_ppo_ray, "
            "--actor.model_name_or_path, ...]",
    ray=True, gpu_args=("--actor.num_gpus_per_node", "--actor.num_nodes"), gpu_strategy=PACK,
    user_choice=("--rollout.n_samples_per_prompt",), needs=NEEDS,
    export_only=("--actor.adam.betas", "--critic.adam.betas", "--reward.clip_range"))
