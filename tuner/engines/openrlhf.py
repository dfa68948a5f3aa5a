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
from collections.abc import Callable
from typing import Any

from trials import metrics as K
from tuner.engines._base import Engine, Units, numbers
from tuner.engines._placement import PACK, Layout, whole

__all__ = ["FIXED", "FLAGS", "NEEDS", "OPENRLHF", "RAY_PIN", "SOURCE", "VERIFIED_FLAGS"]

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
    "--vllm.num_engines", "--vllm.tensor_parallel_size",
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


RAY_PIN = "2.55.0"  # its release's requirement: ray[default]==2.55.0
_ROLES = ("actor", "ref", "critic", "reward")


def _layout(setting: Callable[[str], str | None]) -> Layout | None:
    """The GPUs train_ppo_ray.py reserves (SOURCE, `train`): each role's --ROLE.num_nodes x
    --ROLE.num_gpus_per_node (defaults 1 x 8) and the vLLM engines' --vllm.num_engines x
    --vllm.tensor_parallel_size, in placement groups of their own unless colocated:
    --train.colocate_all puts every role (and, unless --train.async_enable, vLLM) on the actor's GPUs;
    --train.colocate_actor_ref the reference on the actor's, --train.colocate_critic_reward the reward
    model on the critic's. The reference is counted (PPO with a KL penalty), the critic where
    --critic.model_name_or_path is given, the reward model unless --reward.remote_url is."""
    sizes = {}
    for role in _ROLES:
        nodes, per_node = whole(setting(f"--{role}.num_nodes"), 1), whole(setting(f"--{role}.num_gpus_per_node"), 8)
        if nodes is None or per_node is None:
            return None
        sizes[role] = (nodes, per_node)
    engines, tp = whole(setting("--vllm.num_engines"), 0), whole(setting("--vllm.tensor_parallel_size"), 1)
    if engines is None or tp is None:
        return None
    flag = {name: setting(f"--train.{name}") is not None
            for name in ("colocate_all", "colocate_actor_ref", "colocate_critic_reward", "async_enable")}
    used = {"actor": True, "ref": not (flag["colocate_all"] or flag["colocate_actor_ref"]),
            "critic": setting("--critic.model_name_or_path") is not None and not flag["colocate_all"],
            "reward": setting("--reward.remote_url") is None and not flag["colocate_all"]}
    if flag["colocate_critic_reward"] and setting("--critic.model_name_or_path") is not None:
        used["reward"] = False
    parts = [(f"{role} {sizes[role][0]}x{sizes[role][1]}", sizes[role][0] * sizes[role][1])
             for role in _ROLES if used[role]]
    if engines and (not flag["colocate_all"] or flag["async_enable"]):
        parts.append((f"vLLM {engines}x{tp}", engines * tp))
    roles = " + ".join(p for p, _ in parts) + (" (colocated: --train.colocate_all)" if flag["colocate_all"] else "")
    fix = ("make the roles' GPUs add up to {gpus}: each --ROLE.num_gpus_per_node (default 8) and "
           "--vllm.num_engines x --vllm.tensor_parallel_size, or share the actor's with --train.colocate_all")
    error, mend = _refused(sizes, engines * tp, flag, setting("--critic.model_name_or_path") is not None)
    return Layout(sum(n for _, n in parts), max(n for n, _ in sizes.values()), roles, fix, error, mend)


def _refused(sizes: dict[str, tuple[int, int]], vllm: int, flag: dict[str, bool], critic: bool
             ) -> tuple[str, str]:
    """(what, fix): what train_ppo_ray.py asserts of a colocated layout before it reserves anything (SOURCE,
    `train`); ("", "") where it holds."""
    actor = sizes["actor"][0] * sizes["actor"][1]
    if flag["colocate_all"] and not flag["async_enable"] and vllm and vllm != actor:
        return (f"colocates vLLM with the actor (--train.colocate_all), so the engines' GPUs ({vllm}) must equal "
                f"the actor's ({actor}), as OpenRLHF asserts",
                f"set --vllm.num_engines x --vllm.tensor_parallel_size to {actor}")
    if (flag["colocate_all"] or flag["colocate_actor_ref"]) and sizes["ref"] != sizes["actor"]:
        return ("colocates the reference with the actor, so its nodes and GPUs per node must be the actor's, "
                "as OpenRLHF asserts", f"set --ref.num_nodes {sizes['actor'][0]} --ref.num_gpus_per_node "
                                       f"{sizes['actor'][1]}")
    if critic and flag["colocate_critic_reward"] and sizes["reward"] != sizes["critic"]:
        return ("colocates the reward model with the critic (--train.colocate_critic_reward), so its nodes and "
                "GPUs per node must be the critic's, as OpenRLHF asserts",
                f"set --reward.num_nodes {sizes['critic'][0]} --reward.num_gpus_per_node {sizes['critic'][1]}")
    return "", ""


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
    ray=True, gpu_args=("--actor.num_gpus_per_node", "--actor.num_nodes"), layout=_layout, gpu_strategy=PACK,
    ray_pin=RAY_PIN, user_choice=("--rollout.n_samples_per_prompt",), needs=NEEDS,
    export_only=("--actor.adam.betas", "--critic.adam.betas", "--reward.clip_range",
                 "--vllm.num_engines", "--vllm.tensor_parallel_size"),  # the engines: the cluster layout's
    checkpoint="--ckpt.path")  # --ckpt.load_enable resumes from the latest there
