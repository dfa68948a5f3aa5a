"""Export to verl: Hydra overrides for `python -m verl.trainer.main_ppo`.

Every key it writes (`tuner.engines.verl.KEYS`, `FIXED`) was checked against volcengine/verl
`verl/trainer/config/_generated_ppo_trainer.yaml`
(the fully resolved `ppo_trainer.yaml` with its actor/critic/rollout/data/reward/optim sub-configs) as
released in verl 0.9.1 (the PyPI wheel). Semantics checked in the same release:
`trainer/ppo/ray_trainer.py:apply_kl_penalty` feeds the adaptive controller the KL averaged over
response tokens; `trainer/ppo/core_algos.py` always whitens GAE advantages, maps `low_var_kl` (or
`k3`) to the k3 estimator and reads `clip_ratio_low`/`clip_ratio_high` before `clip_ratio`;
`workers/config/optimizer.py` (FSDPOptimizerConfig) takes `lr_scheduler_type` constant or cosine only,
`optimizer` as a torch.optim class name and `clip_grad` (verl 0.9.1 ignores the actor's
`grad_clip`); `workers/engine_workers.py` steps the LR schedule once per PPO iteration.
LoRA (FSDP engine, `workers/config/model.py` HFModelConfig, used for `actor_rollout_ref.model` and
`critic.model`): `lora_rank` (0 = full fine-tuning), `lora_alpha` (an int), `target_modules`
("all-linear" or a list of names) and `enable_gradient_checkpointing` (default True);
`workers/engine/fsdp/transformer_impl.py` builds peft's LoraConfig from these with no dropout, and loads
each model in its `fsdp_config.model_dtype` (fp32 by default).
"""

from __future__ import annotations

from trials import PPOConfig, RewardRef
from tuner.engines.verl import FIXED, KEYS, ROLLOUT_MEMORY, ROLLOUT_NAME
from tuner.export._common import (
    Out,
    check_demo,
    launch_args,
    lora_alpha_int,
    lora_targets,
    render_bash_array,
)
from tuner.export._skeleton import Exporter

# Where the units differ, how a value is converted.
CONVERSIONS: dict[str, str] = {
    "eval_prompts": "empty -> the training prompts (verl needs a validation file)",
    "max_prompt_length": "with data.truncation=left, as ppo-tuner",
    "optimizer": "adamw -> AdamW, adam -> Adam (torch.optim class names)",
    "lr_schedule": "constant and cosine as they are; linear -> cosine (verl has no linear schedule)",
    "warmup_steps": ("lr_warmup_steps in PPO iterations"
                     " = warmup_steps / (ppo_epochs * rollout_batch_size / mini_batch_size)"),
    "micro_batch_size": "empty -> mini_batch_size; verl's are per GPU",
    "kl_estimator": "k1 -> kl, k3 -> low_var_kl",
    "kl_target": ("per response token: kl_target / the trial's logged mean response length, else / response_length"
                  " (a launch: the mean is not known before the run)"),
    "kl_horizon": "rounded to an integer (samples, as ours)",
    "cliprange": "clip_ratio, clip_ratio_low and clip_ratio_high all set (verl reads low/high first)",
    "top_k": "0 -> -1 (verl's 'no top-k')",
    "num_iterations": "trainer.total_training_steps; trainer.total_epochs set as high so the steps decide",
    "lora_alpha": "rounded to an integer",
    "lora_target_modules": "all-linear as it is; 'q_proj,v_proj' -> [q_proj,v_proj]",
    "value_backbone": "shared -> the critic, from model_path, gets the policy's LoRA settings (critic.model.*)",
}



class Verl(Exporter):
    """A bash script that runs verl's PPO with a config; and the values verl cannot take."""

    target, names, fixed = "verl", KEYS, FIXED
    title = "verl PPO, `python -m verl.trainer.main_ppo` with Hydra overrides (keys of verl 0.9.1)"
    notes = ("Add your cluster layout and logging: trainer.n_gpus_per_node, trainer.nnodes, "
             "actor_rollout_ref.rollout.tensor_model_parallel_size, trainer.logger, ...",)
    plumbing = ("device", "precision", "num_threads", "output_dir", "save_merged", "num_eval_prompts", "eval_reward",
                "vllm_python", "checkpoint_every", "checkpoint_dir")
    optimizers = {"adamw": "AdamW", "adam": "Adam"}
    kl_estimators = {"k1": "kl", "k3": "low_var_kl"}
    shared_value = ("its critic is a model of its own: exported from model_path, with a LoRA adapter of the "
                    "policy's settings (critic.model.lora_rank, lora_alpha, target_modules), so the base is held twice")
    frozen_dtypes = ("loads each model in its worker's fsdp_config.model_dtype (fp32 by default; the reference's "
                     "is actor_rollout_ref.ref.fsdp_config.model_dtype)")

    def args(self, out: Out) -> list[str]:
        return launch_args(out, "hydra")

    def body(self, out: Out, c: PPOConfig) -> list[str]:
        return render_bash_array(out, "overrides", "hydra") + ['python -m verl.trainer.main_ppo "${overrides[@]}"']

    def reward(self, out: Out, c: PPOConfig, ref: RewardRef) -> None:
        if ref.kind == "model":
            out.put(("reward.reward_model.enable",), True)
            out.put(("reward.reward_model.model_path",), c.reward, "sequence-classification reward model")
            out.put(("reward.reward_model.rollout.name",), "vllm", "the engine that serves the reward model")
            return
        out.lost("reward", c.reward, "calls compute_score(data_source, solution_str, ground_truth, extra_info) "
                 "once per response (solution_str) from the file in reward.custom_reward_function.path; the prompt "
                 "reaches it only through the dataset's extra_info column: write a compute_score there that calls "
                 f"{ref.function}([extra_info['prompt']], [solution_str])[0]")
        out.put(("reward.custom_reward_function.path",), ref.target if ref.kind == "file" else "reward_fn.py")
        out.put(("reward.custom_reward_function.name",), ref.function if ref.kind == "file" else "compute_score")

    def data(self, out: Out, c: PPOConfig) -> None:
        for name in ("prompts", "eval_prompts"):
            _prompt_file(out, name, getattr(c, name))
        out.put(KEYS["prompts"][:1], c.prompts)
        out.put(KEYS["prompts"][1:], "prompt")
        out.set("eval_prompts", c.eval_prompts or c.prompts, "" if c.eval_prompts else
                "eval_prompts empty: the training prompts (verl cannot hold out num_eval_prompts of them)")
        out.put(KEYS["max_prompt_length"][:1], c.max_prompt_length, "tokens")
        out.put(KEYS["max_prompt_length"][1:], "left", "cut long prompts on the left, as ppo-tuner")

    def optimizer(self, out: Out, c: PPOConfig) -> None:
        out.set("optimizer", self.optimizers[c.optimizer])
        out.set("weight_decay", c.weight_decay, "on every parameter, as ppo-tuner")

    def schedule(self, out: Out, c: PPOConfig) -> None:
        schedule = c.lr_schedule
        if schedule == "linear":
            out.lost("lr_schedule", schedule, "has constant and cosine schedules only; exported cosine, which also "
                     "decays to 0 over the run")
            schedule = "cosine"
        out.set("lr_schedule", schedule, "stepped once per PPO iteration")

    def kl(self, out: Out, c: PPOConfig) -> None:
        out.set("kl_mode", c.kl_mode)
        super().kl(out, c)

    def whitening(self, out: Out, c: PPOConfig) -> None:
        if c.whiten_advantages:
            out.note("whiten_advantages true: verl always whitens GAE advantages over the rollout batch")
        else:
            out.lost("whiten_advantages", False, "always whitens GAE advantages over the rollout batch (no switch)")
        if c.whiten_rewards:
            out.lost("whiten_rewards", True, "has no whitening of per-token rewards before GAE; rewards stay as "
                     "they are")
        else:
            out.note("whiten_rewards false: verl does not whiten rewards")

    def sampling(self, out: Out, c: PPOConfig) -> None:
        out.set("top_k", c.top_k or -1, "" if c.top_k else "top_k 0: no top-k cut")
        out.set("top_p", c.top_p)

    def adapter(self, out: Out, c: PPOConfig) -> None:
        out.set("lora_rank", c.lora_rank, "LoRA on the policy")
        out.set("lora_alpha", self.whole_alpha(out, c))
        out.set("lora_target_modules", lora_targets(c))
        if c.lora_dropout:
            out.lost("lora_dropout", c.lora_dropout, "builds its FSDP LoRA adapters without dropout "
                     "(workers/engine/fsdp/transformer_impl.py passes none to peft)")
        else:
            out.note("lora_dropout 0: verl's FSDP LoRA has no dropout, the same")

    def value_backbone(self, out: Out, c: PPOConfig) -> None:
        if c.value_backbone == "shared":
            names = KEYS["value_backbone"]
            out.put(names[:1], c.lora_rank, "value_backbone shared: a LoRA adapter of its own on the critic")
            out.put(names[1:2], lora_alpha_int(c))
            out.put(names[2:], lora_targets(c))
        super().value_backbone(out, c)

    def chat(self, out: Out, c: PPOConfig) -> None:
        if c.chat_template is False:
            out.lost("chat_template", False, "applies the tokenizer's chat template to every prompt (RLHFDataset); "
                     "it has no setting to pass prompts as written")
        else:
            out.note(f"chat_template {c.chat_template}: verl's RLHFDataset applies the tokenizer's chat template to "
                     "the prompt column, which holds a list of messages: [{role: user, content: ...}]")

    def rollout(self, out: Out, c: PPOConfig) -> None:
        if c.rollout_engine == "vllm":
            out.put((ROLLOUT_NAME,), "vllm", "rollout_engine vllm: vLLM generates, as in the sweep",
                    of="rollout_engine")
            out.put((ROLLOUT_MEMORY,), c.vllm_gpu_memory_utilization, "vllm_gpu_memory_utilization: the share of "
                    "each GPU vLLM takes beside the actor (verl's default is 0.5)", of="vllm_gpu_memory_utilization")
        else:
            out.note(f"vllm_gpu_memory_utilization {c.vllm_gpu_memory_utilization}: unused by the sweep "
                     f"(rollout_engine hf); {ROLLOUT_MEMORY} keeps verl's default")
            # workers/rollout/replica.py registers vllm, sglang and trtllm; rollout.yaml's 'hf' has no replica
            out.put((ROLLOUT_NAME,), "vllm", "rollout_engine hf: verl 0.9.1's PPO generates only through a "
                    "server (vllm, sglang or trtllm); the sampling settings above are the same", of="rollout_engine")

    def checkpointing(self, out: Out, c: PPOConfig) -> None:
        out.set("gradient_checkpointing", c.gradient_checkpointing, "actor and critic (verl's default is True)")

    def run(self, out: Out, c: PPOConfig) -> None:
        out.put(KEYS["num_iterations"][:1], c.num_iterations, "PPO iterations")
        out.put(KEYS["num_iterations"][1:], c.num_iterations, "an upper bound: total_training_steps ends the run")
        out.set("eval_interval", c.eval_interval, "iterations between evaluations")
        out.set("seed", c.seed)


def _prompt_file(out: Out, name: str, path: str | None) -> None:
    if path is None:
        return
    check_demo(out, name, path)
    if path != "demo" and not path.endswith(".parquet"):
        out.lost(name, path, "reads .parquet/.json/.jsonl rows whose 'prompt' column holds chat messages (it "
                 "applies the chat template, which changes the text the policy sees) next to 'data_source', "
                 "'reward_model' ({\"ground_truth\": ...}) and 'extra_info' columns; convert each prompt to such a "
                 "row with [{\"role\": \"user\", \"content\": prompt}]")


export_verl = Verl()
