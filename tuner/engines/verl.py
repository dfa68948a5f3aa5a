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
from collections.abc import Callable
from typing import Any

from trials import metrics as K
from tuner.engines._base import Engine, TrainerError, Units, numbers
from tuner.engines._placement import Layout, whole

__all__ = ["DEFAULTS", "FIXED", "KEYS", "NEEDS", "ROLLOUT_MEMORY", "ROLLOUT_NAME", "SOURCE", "VERIFIED_KEYS", "VERL"]

SOURCE = "volcengine/verl verl/trainer/config/_generated_ppo_trainer.yaml (release 0.9.1)"

_ACTOR, _ROLLOUT = "actor_rollout_ref.actor", "actor_rollout_ref.rollout"
ROLLOUT_NAME = f"{_ROLLOUT}.name"  # the rollout engine: vllm, sglang or trtllm in verl 0.9.1's PPO
ROLLOUT_MEMORY = f"{_ROLLOUT}.gpu_memory_utilization"  # the share of each GPU's memory the rollout engine takes
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
    f"{_ROLLOUT}.name", f"{_ROLLOUT}.gpu_memory_utilization", f"{_ROLLOUT}.n", f"{_ROLLOUT}.temperature",
    f"{_ROLLOUT}.top_k",
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

# verl's own defaults (SOURCE) of the keys its batch-size rules read, which a trial gets where the spec sets
# no value of them and trial.command none either: no micro-batch size (null), which verl refuses without
# use_dynamic_bsz; critic.forward_micro_batch_size_per_gpu takes the critic's
DEFAULTS: dict[str, int | None] = {
    "data.train_batch_size": 1024, f"{_ACTOR}.ppo_mini_batch_size": 256,
    f"{_ACTOR}.ppo_micro_batch_size_per_gpu": None, "critic.ppo_micro_batch_size_per_gpu": None,
    f"{_ROLLOUT}.log_prob_micro_batch_size_per_gpu": None,
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": None,
}


def _verl_line(line: str) -> dict[str, float]:
    """One line of verl's file logger: {"step": n, "data": {metric: value}}."""
    try:
        record = json.loads(line)
        return {"step": float(record["step"]), **numbers(record["data"])}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise TrainerError(f"verl's metrics file has a line we cannot read ({exc}): "
                           f"{line.strip()[:200]}") from None


def _layout(setting: Callable[[str], str | None]) -> Layout | None:
    """verl's roles (actor, rollout, reference, critic) share one resource pool of
    trainer.n_gpus_per_node x trainer.nnodes GPUs (defaults 8 and 1)."""
    count, spans = whole(setting("trainer.n_gpus_per_node"), 8), whole(setting("trainer.nnodes"), 1)
    if count is None or spans is None:
        return None
    roles = f"trainer.n_gpus_per_node={count} x trainer.nnodes={spans}"
    return Layout(count * spans, spans, roles, "add trainer.n_gpus_per_node={gpus} to trial.command")


def _launched(setting: Callable[[str], str | None], name: str, ours: int | None) -> tuple[int | None, str, bool] | None:
    """(value, how a message names it, whether the spec sets it) of the batch size verl gets for our field
    `name` (its first key): ours where the trial passes it, else trial.command's, else verl's default
    (None: null); None where trial.command's is no whole number (an interpolation: verl judges it)."""
    key = KEYS[name][0]
    if ours is not None:
        return ours, f"{name} {ours}", True
    text = setting(key)
    if text is None:
        return DEFAULTS[key], f"{key} {DEFAULTS[key]} (verl's default)", False
    if text.strip().lower() in ("null", "none", "~"):
        return None, f"{key} null (trial.command's)", False
    value = whole(text, 0)
    return None if value is None else (value, f"{key} {value} (trial.command's)", False)


def _required(setting: Callable[[str], str | None]) -> dict[str, tuple[str, str]]:
    """micro_batch_size, where trial.command leaves a micro-batch key verl needs null, as verl's defaults are
    (DEFAULTS), and does not turn on use_dynamic_bsz: verl refuses that at start-up (utils/config.py
    check_mutually_exclusive, workers/config/actor.py and critic.py)."""
    if (setting(f"{_ACTOR}.use_dynamic_bsz") or "").strip().lower() == "true":
        return {}
    unset = [k for k, v in DEFAULTS.items()
             if v is None and setting(k) is None and setting(k.removesuffix("_per_gpu")) is None]
    if not unset:
        return {}
    return {"micro_batch_size": (f"is unset, and trial.command leaves verl's {', '.join(unset)} at their default, "
                                 "null, which verl refuses unless actor_rollout_ref.actor.use_dynamic_bsz=True",
                                 "set base.micro_batch_size (per GPU), or search it")}


def _batches(setting: Callable[[str], str | None], rollout: int | None, mini: int | None, micro: int | None
             ) -> tuple[str, str]:
    """What verl 0.9.1 (FSDP, use_dynamic_bsz off) asserts of the batch sizes once its workers start, with the
    world size W = trainer.n_gpus_per_node x trainer.nnodes, n = rollout.n and the data-parallel size
    W / actor.ulysses_sequence_parallel_size: data.train_batch_size x n divisible by W
    (verl/utils/config.py check_config), ppo_mini_batch_size <= train_batch_size (workers/config/actor.py),
    ppo_mini_batch_size x n divisible by the data-parallel size (workers/engine_workers.py), and that
    per-GPU mini-batch divisible by ppo_micro_batch_size_per_gpu (workers/engine/utils.py; null: `_required`).
    A size the trial does not pass (None) is trial.command's, else verl's default (DEFAULTS)."""
    counts = [whole(setting(k), d) for k, d in (("trainer.n_gpus_per_node", 8), ("trainer.nnodes", 1),
                                                 (f"{_ROLLOUT}.n", FIXED[f"{_ROLLOUT}.n"][0]),
                                                 (f"{_ACTOR}.ulysses_sequence_parallel_size", 1))]
    sizes = [_launched(setting, name, ours) for name, ours in
             (("rollout_batch_size", rollout), ("mini_batch_size", mini), ("micro_batch_size", micro))]
    if None in counts or None in sizes:
        return "", ""  # a count that is no whole number: verl judges it
    (rollout, r_is, r_set), (mini, m_is, m_set), (micro, u_is, _) = (s for s in sizes if s is not None)
    if rollout is None or mini is None:
        return "", ""  # null in trial.command: verl judges it
    per_node, nodes, n, sp = (int(c) for c in counts if c is not None)
    world = per_node * nodes
    dp = max(world // sp, 1)
    layout = f"the world size {world} (trainer.n_gpus_per_node {per_node} x trainer.nnodes {nodes})"
    if rollout * n % world:
        return (f"{r_is} x rollout.n {n} is not divisible by {layout}",
                _use("rollout_batch_size", r_set, f"multiples of {world}"))
    if mini > rollout:
        return (f"{m_is} is above {r_is}", "keep every mini_batch_size at most the smallest rollout_batch_size"
                + ("" if m_set and r_set else " (set both in base: or search them)"))
    if mini * n % dp:
        return (f"{m_is} x rollout.n {n} is not divisible by the data-parallel size {dp}, {layout}",
                _use("mini_batch_size", m_set, f"multiples of {dp}"))
    if micro is not None and mini * n // dp % micro:
        return (f"the per-GPU mini-batch {mini * n // dp} ({m_is} x rollout.n {n} / {dp} GPUs) is "
                f"not divisible by {u_is} (per GPU)",
                f"use micro_batch_size values that divide every mini_batch_size / {dp}")
    return "", ""


def _use(name: str, passed: bool, values: str) -> str:
    """The fix of a batch size: the spec's values, or the one to set in base: where the spec sets none."""
    return f"use {name} values that are {values}" if passed else f"set base.{name} to one of the {values}"


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
    gpu_args=("trainer.n_gpus_per_node", "trainer.nnodes"), layout=_layout, batches=_batches, required=_required,
    user_choice=(f"{_ROLLOUT}.name", f"{_ROLLOUT}.n", f"{_ACTOR}.shuffle", "critic.shuffle"), needs=NEEDS,
    checkpoint="trainer.default_local_dir",  # resume_mode: auto (its default) resumes from the latest there
    path_setting="+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH")
