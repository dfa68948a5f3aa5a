"""The configs the export tests export, and readers that parse each target's export back into its settings."""

from __future__ import annotations

import ast
import dataclasses
import re
import shlex

from trials import PPOConfig
from tuner.engines import openrlhf as openrlhf_engine
from tuner.engines import trl as trl_engine
from tuner.engines import verl as verl_engine

SOURCE = {"sweep": "kl-sweep", "trial": 7, "objective": 0.42, "kl": 5.5}

# A tuned config: adaptive KL, k3, cosine schedule with warmup, micro-batches, a reward model folder.
TUNED = PPOConfig(
    model_path="/models/policy", value_model_path="/models/value", reward="/models/rm", prompts="/data/p.jsonl",
    eval_prompts="/data/eval.jsonl", max_prompt_length=128, policy_lr=2e-6, value_lr=3e-5, weight_decay=0.0,
    lr_schedule="cosine", warmup_steps=16, max_grad_norm=0.5, rollout_batch_size=128, mini_batch_size=16,
    micro_batch_size=8, ppo_epochs=2, kl_mode="adaptive", kl_coef=0.1, kl_target=8.0, kl_horizon=20000.0,
    kl_estimator="k3", cliprange=0.15, cliprange_value=0.3, gae_lambda=0.9, gamma=0.99, vf_coef=0.5,
    ent_coef=0.0, response_length=64, temperature=0.9, top_k=0, top_p=1.0, num_iterations=50, seed=3,
)
# Values most targets cannot take: top-k/top-p cuts, no advantage whitening, L2 Adam, linear schedule, ...
AWKWARD = PPOConfig(
    reward="rewards.py:score", prompts="prompts.txt", optimizer="adam", weight_decay=0.1, lr_schedule="linear",
    warmup_steps=5, value_lr=1e-5, policy_lr=1e-5, rollout_batch_size=32, mini_batch_size=4, vf_coef=1.0,
    ent_coef=0.01, whiten_advantages=False, whiten_rewards=True, top_k=40, top_p=0.9, kl_horizon=12345.6,
    kl_mode="adaptive", device="cpu", precision="fp32", output_dir="/tmp/out",
)
CONFIGS = {"default": PPOConfig(), "tuned": TUNED, "awkward": AWKWARD}
# LoRA on the policy (rank 16, alpha 32 = scale 2, two modules) with gradient checkpointing; and a value
# head of its own adapter on the policy's base.
LORA = dataclasses.replace(TUNED, lora_rank=16, lora_alpha=32.0, lora_target_modules="q_proj, v_proj",
                           gradient_checkpointing=True)
SHARED = dataclasses.replace(LORA, value_backbone="shared", lora_dropout=0.05, lora_target_modules="all-linear",
                             frozen_dtype="bf16")
LORA_CONFIGS = {"lora": LORA, "lora-shared": SHARED}
TABLES = {"openrlhf": openrlhf_engine.FLAGS, "verl": verl_engine.KEYS, "trl": trl_engine.KWARGS}


# -- reading the exports back ----------------------------------------------------------------------

def openrlhf_flags(text: str) -> dict[str, list[str]]:
    """{flag: its values} from the exported `args=( ... )` bash array."""
    tokens = shlex.split(text, comments=True)
    assert tokens[-4:] == ["python", "-m", "openrlhf.cli.train_ppo_ray", "${args[@]}"]
    args = tokens[tokens.index("args=(") + 1:tokens.index(")")]
    flags: dict[str, list[str]] = {}
    for token in args:
        if token.startswith("--"):
            assert token not in flags, f"{token} written twice"
            flags[token] = []
        else:
            flags[list(flags)[-1]].append(token)
    return flags


def verl_overrides(text: str) -> dict[str, str]:
    tokens = shlex.split(text, comments=True)
    assert tokens[-4:] == ["python", "-m", "verl.trainer.main_ppo", "${overrides[@]}"]
    pairs = [t.split("=", 1) for t in tokens[tokens.index("overrides=(") + 1:tokens.index(")")]]
    assert len({k for k, _ in pairs}) == len(pairs), "a key written twice"
    return dict(pairs)


def trl_kwargs(text: str) -> dict[str, object]:
    tree = ast.parse(text)
    imports = [n for n in tree.body if isinstance(n, ast.ImportFrom)]
    assert [(n.module, [a.name for a in n.names]) for n in imports] == [("trl.experimental.ppo", ["PPOConfig"])]
    (call,) = [n.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)]
    assert call.func.id == "PPOConfig" and not call.args
    return {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}


def trl_calls(text: str) -> dict[str, dict[str, object]]:
    """{class: its keyword arguments} for each `name = Class(...)` of a TRL export that may hold a LoraConfig."""
    tree = ast.parse(text)
    imports = {(n.module, a.name) for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names}
    assert imports <= {("trl.experimental.ppo", "PPOConfig"), ("peft", "LoraConfig")}
    calls = [n.value for n in tree.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Call)]
    return {call.func.id: {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords} for call in calls}


def settings(fmt: str, text: str) -> dict:
    return {"openrlhf": openrlhf_flags, "verl": verl_overrides, "trl": trl_kwargs}[fmt](text)


def comments(text: str) -> str:
    return "\n".join(m.group(1) for line in text.splitlines() if (m := re.search(r"(?:^|\s)# ?(.*)$", line)))


def names(words: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", words))
