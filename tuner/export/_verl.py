"""Export to verl: Hydra overrides for `python -m verl.trainer.main_ppo`.

Every key below was checked against volcengine/verl `verl/trainer/config/_generated_ppo_trainer.yaml`
(the fully resolved `ppo_trainer.yaml` with its actor/critic/rollout/data/reward/optim sub-configs) as
released in verl 0.9.1 (the PyPI wheel). Semantics checked in the same release:
`trainer/ppo/ray_trainer.py:apply_kl_penalty` feeds the adaptive controller the KL averaged over
response tokens; `trainer/ppo/core_algos.py` always whitens GAE advantages, maps `low_var_kl` (or
`k3`) to the k3 estimator and reads `clip_ratio_low`/`clip_ratio_high` before `clip_ratio`;
`workers/config/optimizer.py` (FSDPOptimizerConfig) takes `lr_scheduler_type` constant or cosine only,
`optimizer` as a torch.optim class name and `clip_grad` (the actor's `grad_clip` is no longer read);
`workers/engine_workers.py` steps the LR schedule once per PPO iteration.
"""

from __future__ import annotations

from typing import Any

from trials import PPOConfig, parse_reward
from tuner.export._common import (
    Out,
    check_demo,
    comment_lines,
    header,
    micro,
    not_applicable,
    per_token_kl_target,
    render_bash_array,
    warmup_iterations,
    warmup_per_iteration,
)

SOURCE = "volcengine/verl verl/trainer/config/_generated_ppo_trainer.yaml (release 0.9.1)"

_ACTOR, _OPTIM, _ROLLOUT = "actor_rollout_ref.actor", "actor_rollout_ref.actor.optim", "actor_rollout_ref.rollout"

# Every key this export may write, as defined in SOURCE.
VERIFIED_KEYS = frozenset({
    "actor_rollout_ref.model.path", "critic.model.path",
    "reward.reward_model.enable", "reward.reward_model.model_path", "reward.reward_model.rollout.name",
    "reward.custom_reward_function.path", "reward.custom_reward_function.name",
    "data.train_files", "data.val_files", "data.prompt_key", "data.max_prompt_length", "data.truncation",
    "data.max_response_length", "data.train_batch_size", "data.seed",
    f"{_OPTIM}.lr", f"{_OPTIM}.optimizer", f"{_OPTIM}.weight_decay", f"{_OPTIM}.lr_scheduler_type",
    f"{_OPTIM}.lr_warmup_steps", f"{_OPTIM}.clip_grad",
    "critic.optim.lr", "critic.optim.optimizer", "critic.optim.weight_decay", "critic.optim.lr_scheduler_type",
    "critic.optim.lr_warmup_steps", "critic.optim.clip_grad",
    f"{_ACTOR}.ppo_mini_batch_size", "critic.ppo_mini_batch_size", f"{_ACTOR}.ppo_micro_batch_size_per_gpu",
    "critic.ppo_micro_batch_size_per_gpu", "critic.forward_micro_batch_size_per_gpu",
    f"{_ROLLOUT}.log_prob_micro_batch_size_per_gpu", "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu",
    f"{_ACTOR}.ppo_epochs", "critic.ppo_epochs", f"{_ACTOR}.shuffle", "critic.shuffle",
    "algorithm.kl_ctrl.type", "algorithm.kl_ctrl.kl_coef", "algorithm.kl_ctrl.target_kl",
    "algorithm.kl_ctrl.horizon", "algorithm.kl_penalty", "algorithm.use_kl_in_reward", f"{_ACTOR}.use_kl_loss",
    f"{_ACTOR}.clip_ratio", f"{_ACTOR}.clip_ratio_low", f"{_ACTOR}.clip_ratio_high", "critic.cliprange_value",
    "algorithm.adv_estimator", "algorithm.lam", "algorithm.gamma", f"{_ACTOR}.entropy_coeff",
    f"{_ROLLOUT}.name", f"{_ROLLOUT}.n", f"{_ROLLOUT}.temperature", f"{_ROLLOUT}.top_k", f"{_ROLLOUT}.top_p",
    f"{_ROLLOUT}.seed", f"{_ACTOR}.data_loader_seed", "critic.data_loader_seed",
    "trainer.total_training_steps", "trainer.total_epochs", "trainer.test_freq",
})

# Our field -> the verl keys that carry it. Fields missing here are explained in a comment (and a
# warning when a value is lost): vf_coef, whiten_advantages, whiten_rewards.
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
    "micro_batch_size": (f"{_ACTOR}.ppo_micro_batch_size_per_gpu", "critic.ppo_micro_batch_size_per_gpu",
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
    "seed": ("data.seed", f"{_ACTOR}.data_loader_seed", "critic.data_loader_seed", f"{_ROLLOUT}.seed"),
}

# Where the units differ, how a value is converted.
CONVERSIONS: dict[str, str] = {
    "eval_prompts": "empty -> the training prompts (verl needs a validation file)",
    "max_prompt_length": "with data.truncation=left, as ppo-tuner",
    "optimizer": "adamw -> AdamW, adam -> Adam (torch.optim class names)",
    "lr_schedule": "constant and cosine as they are; linear -> cosine (verl has no linear schedule)",
    "warmup_steps": "lr_warmup_steps in PPO iterations = warmup_steps / (ppo_epochs * rollout_batch_size / mini_batch_size)",
    "micro_batch_size": "empty -> mini_batch_size; verl's are per GPU",
    "kl_estimator": "k1 -> kl, k3 -> low_var_kl",
    "kl_target": "per response token: kl_target / response_length",
    "kl_horizon": "rounded to an integer (samples, as ours)",
    "cliprange": "clip_ratio, clip_ratio_low and clip_ratio_high all set (verl reads low/high first)",
    "top_k": "0 -> -1 (verl's 'no top-k')",
    "num_iterations": "trainer.total_training_steps; trainer.total_epochs set as high so the steps decide",
}

# Settings that make verl run the algorithm of ppo-tuner's engine (its defaults differ).
FIXED: dict[str, tuple[Any, str]] = {
    "algorithm.adv_estimator": ("gae", "PPO with a critic and GAE"),
    "algorithm.use_kl_in_reward": (True, "KL penalty in the per-token reward, as ppo-tuner"),
    f"{_ACTOR}.use_kl_loss": (False, "no KL loss term (GRPO-style)"),
    f"{_ROLLOUT}.n": (1, "one response per prompt"),
    f"{_ROLLOUT}.name": ("vllm", "the rollout engine (or sglang)"),
    f"{_ACTOR}.shuffle": (True, "fresh mini-batch order each epoch, as ppo-tuner"),
    "critic.shuffle": (True, ""),
}

_ESTIMATORS = {"k1": "kl", "k3": "low_var_kl"}
_OPTIMIZERS = {"adamw": "AdamW", "adam": "Adam"}


def export_verl(config: PPOConfig, source: dict | None = None) -> tuple[str, list[str]]:
    """A bash script that runs verl's PPO with this config; and the values verl cannot take."""
    out = Out("verl")
    _models_and_data(out, config)
    _optimisation(out, config)
    _batches(out, config)
    _kl(out, config)
    _losses(out, config)
    _generation(out, config)
    _run(out, config)
    lines = comment_lines(header("verl PPO, `python -m verl.trainer.main_ppo` with Hydra overrides (keys of verl 0.9.1)",
                                 source))
    lines += comment_lines([
        "Add your cluster layout and logging: trainer.n_gpus_per_node, trainer.nnodes, "
        "actor_rollout_ref.rollout.tensor_model_parallel_size, trainer.logger, ...",
        not_applicable(config, ("device", "precision", "num_threads", "output_dir", "num_eval_prompts")),
    ])
    lines += render_bash_array(out, "overrides", "hydra")
    lines.append('python -m verl.trainer.main_ppo "${overrides[@]}"')
    return "\n".join(lines) + "\n", out.warnings


def _models_and_data(out: Out, c: PPOConfig) -> None:
    check_demo(out, "model_path", c.model_path)
    out.put(KEYS["model_path"], c.model_path, "policy and reference")
    check_demo(out, "value_model_path", c.value_model_path)
    out.put(KEYS["value_model_path"], c.value_model_path or c.model_path,
            "" if c.value_model_path else "value_model_path empty: the critic starts from model_path")
    ref = parse_reward(c.reward)
    if ref.kind == "model":
        out.put(("reward.reward_model.enable",), True)
        out.put(("reward.reward_model.model_path",), c.reward, "sequence-classification reward model")
        out.put(("reward.reward_model.rollout.name",), "vllm", "the engine that serves the reward model")
    else:
        out.lost("reward", c.reward, "calls compute_score(data_source, solution_str, ground_truth, extra_info) "
                 "once per response (solution_str) from the file in reward.custom_reward_function.path; the prompt "
                 "reaches it only through the dataset's extra_info column: write a compute_score there that calls "
                 f"{ref.function}([extra_info['prompt']], [solution_str])[0]")
        out.put(("reward.custom_reward_function.path",), ref.target if ref.kind == "file" else "reward_fn.py")
        out.put(("reward.custom_reward_function.name",), ref.function if ref.kind == "file" else "compute_score")
    for name in ("prompts", "eval_prompts"):
        _prompt_file(out, name, getattr(c, name))
    out.put(KEYS["prompts"][:1], c.prompts)
    out.put(KEYS["prompts"][1:], "prompt")
    out.put(KEYS["eval_prompts"], c.eval_prompts or c.prompts, "" if c.eval_prompts else
            "eval_prompts empty: the training prompts (verl cannot hold out num_eval_prompts of them)")
    out.put(KEYS["max_prompt_length"][:1], c.max_prompt_length, "tokens")
    out.put(KEYS["max_prompt_length"][1:], "left", "cut long prompts on the left, as ppo-tuner")


def _prompt_file(out: Out, name: str, path: str | None) -> None:
    if path is None:
        return
    check_demo(out, name, path)
    if path != "demo" and not path.endswith(".parquet"):
        out.lost(name, path, "reads .parquet/.json/.jsonl rows whose 'prompt' column holds chat messages (it "
                 "applies the chat template, which changes the text the policy sees) next to 'data_source', "
                 "'reward_model' ({\"ground_truth\": ...}) and 'extra_info' columns; convert each prompt to such a "
                 "row with [{\"role\": \"user\", \"content\": prompt}]")


def _optimisation(out: Out, c: PPOConfig) -> None:
    out.put(KEYS["policy_lr"], c.policy_lr)
    out.put(KEYS["value_lr"], c.value_lr)
    out.put(KEYS["optimizer"], _OPTIMIZERS[c.optimizer])
    out.put(KEYS["weight_decay"], c.weight_decay, "on every parameter, as ppo-tuner")
    schedule = c.lr_schedule
    if schedule == "linear":
        out.lost("lr_schedule", schedule, "has constant and cosine schedules only; exported cosine, which also "
                 "decays to 0 over the run")
        schedule = "cosine"
    out.put(KEYS["lr_schedule"], schedule, "stepped once per PPO iteration")
    iterations, exact = warmup_iterations(c)
    if not exact:
        out.lost("warmup_steps", c.warmup_steps, warmup_per_iteration(c, iterations))
    out.put(KEYS["warmup_steps"], iterations, "PPO iterations")
    out.put(KEYS["max_grad_norm"], c.max_grad_norm, "each model's gradient norm, as ppo-tuner")


def _batches(out: Out, c: PPOConfig) -> None:
    out.put(KEYS["rollout_batch_size"], c.rollout_batch_size, "prompts per iteration")
    out.put(KEYS["mini_batch_size"], c.mini_batch_size, "global samples per optimizer step")
    out.put(KEYS["micro_batch_size"], micro(c), "per GPU" if c.micro_batch_size else
            "micro_batch_size empty: mini_batch_size (per GPU in verl)")
    out.put(KEYS["ppo_epochs"], c.ppo_epochs)


def _kl(out: Out, c: PPOConfig) -> None:
    out.put(KEYS["kl_mode"], c.kl_mode)
    out.put(KEYS["kl_coef"], c.kl_coef, "initial beta" if c.kl_mode == "adaptive" else "fixed beta")
    if c.kl_mode == "adaptive":
        target = per_token_kl_target(c)
        out.lost("kl_target", c.kl_target, "compares the KL averaged over response tokens with its target; "
                 f"exported target_kl {target:g} = kl_target / response_length, exact only for full-length responses")
        out.put(KEYS["kl_target"], target)
        horizon = round(c.kl_horizon)
        if horizon != c.kl_horizon:
            out.lost("kl_horizon", c.kl_horizon, f"takes a whole number of samples; exported {horizon}")
        out.put(KEYS["kl_horizon"], horizon, "samples")
    else:
        out.note(f"kl_mode fixed: kl_target={c.kl_target!r} and kl_horizon={c.kl_horizon!r} are unused")
    out.put(KEYS["kl_estimator"], _ESTIMATORS[c.kl_estimator], f"kl_estimator {c.kl_estimator}")


def _losses(out: Out, c: PPOConfig) -> None:
    out.put(KEYS["cliprange"], c.cliprange)
    out.put(KEYS["cliprange_value"], c.cliprange_value)
    out.put(KEYS["gae_lambda"], c.gae_lambda)
    out.put(KEYS["gamma"], c.gamma)
    if c.vf_coef != 1.0:
        out.lost("vf_coef", c.vf_coef, "trains the critic with its own optimizer on the unweighted loss "
                 "0.5 * max(...), as vf_coef 1.0; under Adam a loss weight changes little beyond gradient clipping")
    else:
        out.note("vf_coef 1.0: verl's critic loss is unweighted, the same")
    out.put(KEYS["ent_coef"], c.ent_coef)
    if c.whiten_advantages:
        out.note("whiten_advantages true: verl always whitens GAE advantages over the rollout batch")
    else:
        out.lost("whiten_advantages", False, "always whitens GAE advantages over the rollout batch (no switch)")
    if c.whiten_rewards:
        out.lost("whiten_rewards", True, "has no whitening of per-token rewards before GAE; rewards stay as they are")
    else:
        out.note("whiten_rewards false: verl does not whiten rewards")


def _generation(out: Out, c: PPOConfig) -> None:
    out.put(KEYS["response_length"], c.response_length, "tokens")
    out.put(KEYS["temperature"], c.temperature, "also the temperature of the log-probs, as ppo-tuner")
    out.put(KEYS["top_k"], c.top_k or -1, "" if c.top_k else "top_k 0: no top-k cut")
    out.put(KEYS["top_p"], c.top_p)


def _run(out: Out, c: PPOConfig) -> None:
    out.put(KEYS["num_iterations"][:1], c.num_iterations, "PPO iterations")
    out.put(KEYS["num_iterations"][1:], c.num_iterations, "an upper bound: total_training_steps ends the run")
    out.put(KEYS["eval_interval"], c.eval_interval, "iterations between evaluations")
    out.put(KEYS["seed"], c.seed)
    for key, (value, why) in FIXED.items():
        out.put((key,), value, why)
