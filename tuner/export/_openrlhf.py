"""Export to OpenRLHF's PPO command line: `python -m openrlhf.cli.train_ppo_ray` with flags.

Every flag name it writes (`tuner.engines.openrlhf.FLAGS`, `FIXED`) was checked against the
argparse definitions in OpenRLHF/OpenRLHF
`openrlhf/cli/train_ppo_ray.py` as released in openrlhf 0.11.2 (the PyPI wheel). OpenRLHF moved its
flags into dotted groups in 0.10.2 (`--actor_learning_rate` became `--actor.adam.lr`, `--init_kl_coef`
became `--algo.kl.init_coef`, `--pretrain` became `--actor.model_name_or_path`); releases before
0.10.2 take the old flat names and reject these.

Semantics checked in the same release: `--rollout.batch_size` is prompts per rollout,
`--train.batch_size` the global samples per optimizer step, `--train.micro_batch_size` per GPU;
the adaptive KL controller (`openrlhf/trainer/ppo_utils/kl_controller.py`) is fed the KL averaged over
response tokens (`experience_maker.py`); GAE advantages are always normalised over the rollout batch;
the critic has its own optimizer and an unweighted 0.5 * max(...) value loss (`models/loss.py`);
Adam exempts biases and norm weights from weight decay (`utils/deepspeed/deepspeed_utils.py`).
LoRA: `--ds.lora.rank/alpha/target_modules/dropout` reach peft's LoraConfig for the actor
(`trainer/ray/ppo_actor.py` -> `models/actor.py`) and the critic alike (`trainer/ray/ppo_critic.py` ->
`models/model.py`); `--ds.lora.alpha` is an int; `--ds.lora.target_modules` takes `nargs="*"`, so any
value given on the command line becomes a list, and peft reads only the string "all-linear" (the flag's
default) as all linear layers. `--actor.gradient_checkpointing_enable` checkpoints actor and critic;
every model is loaded in `--ds.param_dtype` (bf16 or fp16).
"""

from __future__ import annotations

from trials import PPOConfig, RewardRef
from tuner.engines.openrlhf import FIXED, FLAGS
from tuner.export._common import (
    NOT_APPLICABLE,
    Out,
    check_demo,
    launch_args,
    lora_targets,
    optimizer_steps,
    render_bash_array,
    warmup_ratio,
)
from tuner.export._skeleton import Exporter

# Where the units differ, how a value is converted.
CONVERSIONS: dict[str, str] = {
    "max_prompt_length": "--data.max_len = max_prompt_length + response_length (OpenRLHF caps prompt + response)",
    "optimizer": "always 'adam' (OpenRLHF's adam is AdamW)",
    "lr_schedule": "constant -> constant_with_warmup; linear and cosine keep their (transformers) names",
    "warmup_steps": ("lr_warmup_ratio = warmup_steps"
                     " / (num_iterations * ppo_epochs * rollout_batch_size / mini_batch_size)"),
    "micro_batch_size": "empty -> mini_batch_size; OpenRLHF's is per GPU",
    "kl_target": ("per response token: kl_target / the trial's logged mean response length, else / response_length"
                  " (a launch: the mean is not known before the run)"),
    "kl_horizon": "rounded to an integer (samples, as ours)",
    "ent_coef": "written only when > 0 (OpenRLHF computes entropy whenever the flag is set)",
    "num_iterations": "--data.max_samples = num_iterations * rollout_batch_size, with --train.num_episodes 1",
    "lora_alpha": "rounded to an integer",
    "lora_target_modules": "all-linear -> the flag unset (its default); 'q_proj,v_proj' -> q_proj v_proj",
    "gradient_checkpointing": "true -> the bare flag; false -> unset",
    "chat_template": "true -> the bare flag; auto and false -> unset (auto: add it where the tokenizer has a template)",
}

_SCHEDULES = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}


class OpenRLHF(Exporter):
    """A bash script that runs OpenRLHF's PPO with a config; and the values OpenRLHF cannot take."""

    target, names, fixed = "OpenRLHF", FLAGS, FIXED
    title = "OpenRLHF PPO, `python -m openrlhf.cli.train_ppo_ray` (flag names of openrlhf 0.11.2, valid since 0.10.2)"
    notes = ("Run as a bash script (on a Ray cluster: ray job submit ... -- python -m openrlhf.cli.train_ppo_ray ...).",
             "Add your cluster layout: --actor.num_gpus_per_node, --critic.num_gpus_per_node, --vllm.num_engines "
             "(1 below), ...")
    plumbing = tuple(name for name in NOT_APPLICABLE if name != "rollout_engine")  # exported as --vllm.*
    optimizers = {"adamw": "adam", "adam": "adam"}
    critic_default = " (OpenRLHF's default is the reward model)"
    kl_caveat = " (and a TODO in openrlhf/trainer/ppo_trainer.py calls its adaptive controller unsupported)"
    shared_value = ("its critic is a model of its own: exported from model_path, with a LoRA adapter of the same "
                    "--ds.lora settings as the policy's, so the base is held twice")
    frozen_dtypes = "loads every model, frozen or trained, in --ds.param_dtype (bf16, its default, or fp16)"
    frozen_default = "bf16"

    def args(self, out: Out) -> list[str]:
        return launch_args(out, "flag")

    def body(self, out: Out, c: PPOConfig) -> list[str]:
        return render_bash_array(out, "args", "flag") + ['python -m openrlhf.cli.train_ppo_ray "${args[@]}"']

    def reward(self, out: Out, c: PPOConfig, ref: RewardRef) -> None:
        if ref.kind == "model":
            out.put(("--reward.model_name_or_path",), c.reward, "sequence-classification reward model")
            return
        out.lost("reward", c.reward, "calls reward_func(queries, prompts, labels) from the .py file given as "
                 "--reward.remote_url (queries = prompt + response text) and expects {'rewards': tensor}; "
                 f"write a reward_func there that calls {ref.function}(prompts, responses)")
        out.put(("--reward.remote_url",), ref.target if ref.kind == "file" else "reward_func.py")

    def data(self, out: Out, c: PPOConfig) -> None:
        check_demo(out, "prompts", c.prompts)
        if c.prompts.endswith(".txt"):
            out.lost("prompts", c.prompts, "reads .json/.jsonl/.csv/.parquet datasets, not .txt; convert it to "
                     ".jsonl with one {\"prompt\": ...} per line")
        out.put(FLAGS["prompts"][:1], c.prompts)
        out.put(FLAGS["prompts"][1:], "prompt",
                "the prompt column (in the chat template under --data.apply_chat_template)")
        total = c.max_prompt_length + c.response_length
        out.lost("max_prompt_length", c.max_prompt_length, "has no prompt-length limit (since 0.10.2); "
                 f"--data.max_len {total} caps prompt + response and cuts the end of a long sequence, not the "
                 f"start of a long prompt: truncate prompts to {c.max_prompt_length} tokens beforehand")
        out.set("max_prompt_length", total)

    def schedule(self, out: Out, c: PPOConfig) -> None:
        out.set("lr_schedule", _SCHEDULES[c.lr_schedule], f"lr_schedule {c.lr_schedule}, per optimizer step")

    def warmup(self, out: Out, c: PPOConfig) -> None:
        out.set("warmup_steps", warmup_ratio(c),
                f"warmup_steps {c.warmup_steps} of {optimizer_steps(c)} optimizer steps")

    def entropy(self, out: Out, c: PPOConfig) -> None:
        if c.ent_coef > 0:
            out.set("ent_coef", c.ent_coef)
        else:
            out.note("ent_coef 0: no entropy bonus (--actor.entropy_coef unset, OpenRLHF's default)")

    def whitening(self, out: Out, c: PPOConfig) -> None:
        if c.whiten_advantages:
            out.note("whiten_advantages true: OpenRLHF normalises GAE advantages over the rollout batch (its default)")
        else:
            out.lost("whiten_advantages", False, "always subtracts the mean of the GAE advantages over the rollout "
                     "batch; --algo.advantage.no_std_norm only skips the division by their std")
            out.put(("--algo.advantage.no_std_norm",), True, of="whiten_advantages")
        if c.whiten_rewards:
            out.lost("whiten_rewards", True, "has no whitening of per-token rewards before GAE "
                     "(--reward.normalize_enable is a running normalisation of scores, not the same); rewards "
                     "stay as they are")
        else:
            out.note("whiten_rewards false: OpenRLHF does not whiten rewards (its default)")

    def sampling(self, out: Out, c: PPOConfig) -> None:
        if c.top_k:
            out.lost("top_k", c.top_k, "has no top-k flag; it samples without a top-k cut")
        else:
            out.note("top_k 0: no top-k cut (OpenRLHF has no top-k flag)")
        out.set("top_p", c.top_p)

    def rollout(self, out: Out, c: PPOConfig) -> None:
        # OpenRLHF 0.11.2 samples only through vLLM engines (trainer/ppo_utils/samples_generator.py), with the
        # --rollout.* settings above
        why = ("rollout_engine vllm: one vLLM engine generates, as the sweep's server" if c.rollout_engine == "vllm"
               else "rollout_engine hf: OpenRLHF generates only with vLLM engines, sampling as above")
        out.put(("--vllm.num_engines",), 1, f"{why} (more engines, or --vllm.tensor_parallel_size, for a larger "
                "cluster)", of="rollout_engine")
        out.put(("--vllm.tensor_parallel_size",), 1, "GPUs per engine", of="rollout_engine")

    def adapter(self, out: Out, c: PPOConfig) -> None:
        out.set("lora_rank", c.lora_rank, "LoRA on the policy and on the critic")
        out.set("lora_alpha", self.whole_alpha(out, c))
        out.set("lora_dropout", c.lora_dropout)
        targets = lora_targets(c)
        if targets == "all-linear":
            out.note("lora_target_modules all-linear: --ds.lora.target_modules left at its default, the only way "
                     "peft reads it as all linear layers (given on the command line it becomes a list)")
        else:
            out.set("lora_target_modules", targets)

    def value_backbone(self, out: Out, c: PPOConfig) -> None:
        if c.lora_rank and c.value_backbone == "separate":
            out.lost("value_backbone", c.value_backbone, "applies --ds.lora to the critic too "
                     "(trainer/ray/ppo_critic.py): the critic trains a LoRA adapter, not every weight")
        else:
            super().value_backbone(out, c)

    def chat(self, out: Out, c: PPOConfig) -> None:
        if c.chat_template is True:
            out.set("chat_template", True, "each prompt becomes a user turn of the tokenizer's chat template")
        else:
            out.note(f"chat_template {c.chat_template}: --data.apply_chat_template unset, prompts used as written "
                     "(with auto, give the flag where the model's tokenizer has a chat template)")

    def checkpointing(self, out: Out, c: PPOConfig) -> None:
        if c.gradient_checkpointing:
            out.set("gradient_checkpointing", True, "actor and critic")
        else:
            out.note("gradient_checkpointing false: OpenRLHF's default (--actor.gradient_checkpointing_enable unset)")

    def run(self, out: Out, c: PPOConfig) -> None:
        out.note(f"num_iterations {c.num_iterations}: OpenRLHF makes passes (episodes) over the prompt dataset; one "
                 f"pass over its first {c.num_iterations * c.rollout_batch_size} prompts is {c.num_iterations} "
                 "iterations when the file holds that many (else raise --train.num_episodes)")
        out.put(FLAGS["num_iterations"][:1], c.num_iterations * c.rollout_batch_size)
        out.put(FLAGS["num_iterations"][1:], 1)
        out.set("seed", c.seed)


export_openrlhf = OpenRLHF()
