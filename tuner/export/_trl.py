"""Export to TRL: a Python snippet that builds `trl.experimental.ppo.PPOConfig` (trl 1.12, the last TRL
that ships PPO).

Every keyword it writes (`tuner.engines.trl.KWARGS`, `LORA_KWARGS`, `FIXED`) was checked against
huggingface/trl `trl/experimental/ppo/ppo_config.py` in the trl
1.12.0 wheel (PPO's own fields) and `transformers/training_args.py` of transformers 5.24 (the
`TrainingArguments` fields PPOConfig inherits). Semantics checked in `trl/experimental/ppo/ppo_trainer.py`:
one optimizer and one learning rate for policy and value; a rollout batch of
per_device_train_batch_size x gradient_accumulation_steps x processes samples split into num_mini_batches
(accelerate accumulates gradients over gradient_accumulation_steps micro-batches, so only
gradient_accumulation_steps=1 gives one optimizer step per mini-batch); the LR schedule steps once per
PPO iteration; `optimizer.step()` without gradient clipping; sampling with top_k 0 and top_p 1.0;
advantages always whitened; a fixed kl_coef; no entropy bonus.
LoRA: PPOTrainer takes `peft_config` (a peft `LoraConfig`, keywords checked against peft 0.21.2
`peft/tuners/lora/config.py`) and wraps the policy alone with it; the reference is then the policy with
its adapter switched off, and `disable_dropout_in_model` sets every dropout of the wrapped policy to 0.
`gradient_checkpointing` is a field of trl's `_BaseConfig` (`trl/trainer/base_config.py`, default True;
transformers 5.24 keeps it as an alias of `activation_checkpointing`), but PPOTrainer runs neither
`Trainer.__init__` nor `Trainer.train`, where transformers would act on it.
"""

from __future__ import annotations

from typing import Any

from trials import PPOConfig, RewardRef
from tuner.engines.trl import FIXED, KWARGS, LORA_KWARGS, VERIFIED_LORA_KWARGS
from tuner.export._common import Out, check_demo, comment_lines, lora_targets, micro
from tuner.export._skeleton import Exporter

# Where the units differ, how a value is converted.
CONVERSIONS: dict[str, str] = {
    "rollout_batch_size": ("per_device_train_batch_size = rollout_batch_size (one process),"
                           " gradient_accumulation_steps = 1"),
    "mini_batch_size": "num_mini_batches = rollout_batch_size / mini_batch_size",
    "micro_batch_size": "local_rollout_forward_batch_size = micro_batch_size, empty -> mini_batch_size",
    "num_iterations": "total_episodes = num_iterations * rollout_batch_size",
    "optimizer": "adamw -> adamw_torch",
    "lr_schedule": "constant -> constant (constant_with_warmup with warmup); linear, cosine as they are",
    "warmup_steps": "in PPO iterations = warmup_steps / (ppo_epochs * num_mini_batches)",
    "device": "cpu -> use_cpu=True",
    "precision": "fp32 -> bf16=False, bf16 -> bf16=True",
    "lora_target_modules": "all-linear as it is; 'q_proj,v_proj' -> ['q_proj', 'v_proj']",
}


class TRL(Exporter):
    """A Python snippet that builds trl's PPOConfig for a config; and the values TRL cannot take."""

    target, names, fixed = "TRL", KWARGS, FIXED
    title = "trl 1.12 PPOConfig (trl.experimental.ppo, the last TRL with PPO)"
    plumbing = ("num_threads", "num_eval_prompts", "eval_interval", "eval_reward", "save_merged",
                "rollout_engine", "vllm_python", "vllm_gpu_memory_utilization", "checkpoint_every", "checkpoint_dir")
    optimizers = {"adamw": "adamw_torch", "adam": "adamw_torch"}
    shared_value = ("it takes a value_model of its own, trained whole; wrap that model in a LoRA adapter of its "
                    "own yourself (a second copy of the base)")
    frozen_dtypes = ("takes the models you build (load reward_model, and under LoRA the policy's base, with "
                     "from_pretrained(..., dtype=...))")

    def args(self, out: Out) -> dict[str, dict[str, Any]]:
        """{"ppo": PPOConfig's keyword arguments, "lora": LoraConfig's (empty without LoRA)}."""
        ppo, lora = _split(out)
        return {"ppo": {n: v for n, v, _ in ppo if n}, "lora": {n: v for n, v, _ in lora if n}}

    def body(self, out: Out, c: PPOConfig) -> list[str]:
        """`config = PPOConfig(...)`, and `peft_config = LoraConfig(...)` from the LoRA settings among the items."""
        ppo, lora = _split(out)
        lines = ["from peft import LoraConfig"] if lora else []
        lines += ["from trl.experimental.ppo import PPOConfig", "", *_call("config = PPOConfig(", ppo)]
        lines += _call("peft_config = LoraConfig(", lora) if lora else []
        return lines + comment_lines(_trainer_note(c, self.critic_start(c)[0]))

    def reward(self, out: Out, c: PPOConfig, ref: RewardRef) -> None:
        if ref.kind == "model":
            out.set("reward", c.reward, "sequence-classification reward model")
        else:
            out.lost("reward", c.reward, "scores responses with a sequence-classification reward model only "
                     "(PPOTrainer's reward_model); a Python reward function needs a reward model wrapper")

    def data(self, out: Out, c: PPOConfig) -> None:
        check_demo(out, "prompts", c.prompts)
        out.lost("max_prompt_length", c.max_prompt_length, "has no prompt-length setting; truncate the prompts "
                 f"on the left to {c.max_prompt_length} tokens when tokenising train_dataset")

    def value_lr(self, out: Out, c: PPOConfig) -> None:
        if c.value_lr != c.policy_lr:
            out.lost("value_lr", c.value_lr, "trains policy and value with one optimizer and one learning rate: "
                     f"both use learning_rate={c.policy_lr!r}")
        else:
            out.note("value_lr equals policy_lr: TRL's single learning rate serves both")

    def schedule(self, out: Out, c: PPOConfig) -> None:
        schedule = "constant_with_warmup" if c.lr_schedule == "constant" and c.warmup_steps else c.lr_schedule
        out.set("lr_schedule", schedule, f"lr_schedule {c.lr_schedule}, stepped once per PPO iteration")

    def max_grad_norm(self, out: Out, c: PPOConfig) -> None:
        out.lost("max_grad_norm", c.max_grad_norm, "steps the optimizer without clipping gradients (PPOTrainer "
                 "never calls clip_grad_norm_); max_grad_norm is passed but unused")
        out.set("max_grad_norm", c.max_grad_norm)

    def batches(self, out: Out, c: PPOConfig) -> None:
        out.put(KWARGS["rollout_batch_size"][:1], c.rollout_batch_size,
                "rollout_batch_size, one process (with N processes use rollout_batch_size / N)")
        out.put(KWARGS["rollout_batch_size"][1:], 1, "one optimizer step per mini-batch")
        out.set("mini_batch_size", c.num_mini_batches, f"mini-batches of {c.mini_batch_size} samples")
        if c.micro_batch_size and c.micro_batch_size < c.mini_batch_size:
            out.lost("micro_batch_size", c.micro_batch_size, "cannot split a mini-batch into micro-batches without "
                     "changing the mini-batch size (its gradient accumulation spans the rollout batch); each "
                     "mini-batch is one forward/backward pass, micro_batch_size sets only the rollout's forward passes")
        out.set("micro_batch_size", micro(c), "samples per no-grad forward pass in the rollout")
        out.set("ppo_epochs", c.ppo_epochs)

    def kl(self, out: Out, c: PPOConfig) -> None:
        if c.kl_mode == "adaptive":
            out.lost("kl_mode", c.kl_mode, f"has no adaptive KL controller: beta stays at kl_coef {c.kl_coef:g} "
                     f"(kl_target={c.kl_target!r} and kl_horizon={c.kl_horizon!r} are lost)")
        else:
            self.kl_unused(out, c)
        out.set("kl_coef", c.kl_coef)
        self.kl_estimator(out, c)

    def value_loss(self, out: Out, c: PPOConfig) -> None:
        out.set("vf_coef", c.vf_coef)

    def entropy(self, out: Out, c: PPOConfig) -> None:
        if c.ent_coef > 0:
            out.lost("ent_coef", c.ent_coef, "has no entropy bonus; the loss is policy + vf_coef * value")
        else:
            out.note("ent_coef 0: no entropy bonus, as TRL")

    def whitening(self, out: Out, c: PPOConfig) -> None:
        if c.whiten_advantages:
            out.note("whiten_advantages true: TRL always whitens advantages")
        else:
            out.lost("whiten_advantages", False, "always whitens advantages over the rollout batch (no switch)")
        if c.whiten_rewards and c.mini_batch_size < 8:
            out.lost("whiten_rewards", True, f"asserts at least 8 samples per mini-batch to whiten rewards; "
                     f"mini_batch_size is {c.mini_batch_size}, so PPOTrainer will refuse this config")
        out.set("whiten_rewards", c.whiten_rewards)

    def sampling(self, out: Out, c: PPOConfig) -> None:
        if c.top_k:
            out.lost("top_k", c.top_k, "samples with top_k 0 (no top-k cut); it has no setting for it")
        if c.top_p < 1:
            out.lost("top_p", c.top_p, "samples with top_p 1.0 (no nucleus cut); it has no setting for it")
        if not c.top_k and c.top_p == 1:
            out.note("top_k 0 and top_p 1.0: TRL samples the same way (it has no setting for either)")

    def adapter(self, out: Out, c: PPOConfig) -> None:
        out.put(("task_type",), "CAUSAL_LM", "the policy's adapter")
        out.put(LORA_KWARGS["lora_rank"], c.lora_rank)
        out.put(LORA_KWARGS["lora_alpha"], c.lora_alpha)
        if c.lora_dropout:
            out.lost("lora_dropout", c.lora_dropout, "sets every dropout of the policy to 0 after wrapping it "
                     "(disable_dropout_in_model), the adapter's too")
        out.put(LORA_KWARGS["lora_dropout"], c.lora_dropout)
        out.put(LORA_KWARGS["lora_target_modules"], lora_targets(c))

    def chat(self, out: Out, c: PPOConfig) -> None:
        if c.chat_template is True:
            out.lost("chat_template", True, "PPOTrainer takes tokenized prompts and has no chat-template setting: "
                     "tokenise train_dataset with tokenizer.apply_chat_template(messages, add_generation_prompt=True)")
        else:
            out.note(f"chat_template {c.chat_template}: PPOTrainer takes train_dataset tokenized as it is (with auto, "
                     "apply the tokenizer's chat template when tokenising where it has one)")

    def checkpointing(self, out: Out, c: PPOConfig) -> None:
        if c.gradient_checkpointing:
            out.lost("gradient_checkpointing", True, "never acts on its gradient_checkpointing keyword in PPO: call "
                     "policy.gradient_checkpointing_enable() and value_model.gradient_checkpointing_enable() before "
                     "building the PPOTrainer")
        out.set("gradient_checkpointing", c.gradient_checkpointing, "TRL's default is True")

    def run(self, out: Out, c: PPOConfig) -> None:
        out.set("num_iterations", c.num_iterations * c.rollout_batch_size,
                f"num_iterations {c.num_iterations} x rollout_batch_size")
        out.set("seed", c.seed)
        if c.device == "cpu":
            out.set("device", True, "device cpu")
        else:
            out.note(f"device {c.device}: TRL (accelerate) uses the GPU when there is one")
        bf16 = {"fp32": False, "bf16": True}.get(c.precision, False if c.device == "cpu" else None)
        if bf16 is None:
            out.note("precision auto: TRL's default bf16=True needs a bf16-capable GPU (ppo-tuner falls back to fp32)")
        else:
            out.set("precision", bf16, f"precision {c.precision}")
        if c.output_dir:
            out.set("output_dir", c.output_dir)
        else:
            out.note("output_dir empty: TRL writes to its default folder, trainer_output")


def _split(out: Out) -> tuple[list, list]:
    """The items of PPOConfig and those of LoraConfig (the run of LoRA keywords among them)."""
    at = [i for i, (name, _, _) in enumerate(out.items) if name in VERIFIED_LORA_KWARGS]
    start, end = (at[0], at[-1] + 1) if at else (len(out.items),) * 2
    return out.items[:start] + out.items[end:], out.items[start:end]


def _call(opening: str, items: list[tuple[str, Any, str]]) -> list[str]:
    lines = [opening]
    for name, value, comment in items:
        if name:
            lines.append(f"    {name}={value!r}," + (f"  # {' '.join(comment.split())}" if comment else ""))
        else:
            lines += comment_lines([comment], "    ")
    return lines + [")"]


def _trainer_note(c: PPOConfig, value: str) -> list[str]:
    held_out = (f"tokenised prompts from {c.eval_prompts!r} (eval_prompts)" if c.eval_prompts else
                f"{c.num_eval_prompts} prompts held out of train_dataset (eval_prompts empty, num_eval_prompts)")
    models = (f"model=policy (from model_path {c.model_path!r}), ref_model=None (the policy with its adapter off)"
              if c.lora_rank else f"model=policy, ref_model=reference (both from model_path {c.model_path!r})")
    return [
        "PPOTrainer takes the models and data, e.g. PPOTrainer(args=config, processing_class=tokenizer,",
        f"  {models}, reward_model=...,",
        f"  value_model=AutoModelForSequenceClassification.from_pretrained({value!r}, num_labels=1)"
        " (value_model_path),",
        f"  train_dataset=tokenised prompts from {c.prompts!r} (prompts),",
        f"  eval_dataset={held_out}" + (", peft_config=peft_config)" if c.lora_rank else ")"),
    ]


export_trl = TRL()
