"""One trial of `trial.engine: trl`: trl 1.12's `trl.experimental.ppo.PPOTrainer`, run by the python
of an environment with trl (trial.command), e.g. bench/.venv-trl/bin/python (bench/setup_trl.sh).

    PYTHON trl_ppo.py        # the trial's config in the JSON file $PPO_TUNER_TRIAL_CONFIG names

The trial's hyperparameters arrive as PPOConfig and LoraConfig keyword arguments (`launch`, made by
ppo-tuner's TRL export mapping); the models, prompts and reward are the trial's engine config
(`engine`: model_path, prompts, reward), loaded as a TRL user loads them: the policy and the
reference with from_pretrained, the value model as a backbone with a linear head, the reward (a
Python callable or a reward model folder) wrapped as the module TRL scores with. TRL is not changed:
a TrainerCallback prints each of its logs as a report line (`@ppo-tuner {...}`), with TRL's own
names; its `objective/kl` is the KL to the reference summed over the response, our unit
(ppo_trainer.py: `kl.sum(1).mean()`).

Imports only trl, transformers, torch and the engine package `trials` (never ray, optuna or mlflow).
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

PREFIX = "@ppo-tuner "  # tuner.engines.PREFIX (this script runs outside the tuner package)


class _Hidden:
    def __init__(self, hidden: torch.Tensor):
        self.hidden_states = (hidden,)


class _RewardBackbone(nn.Module):
    """Puts each sequence's reward at every position; TRL then reads it at the last response
    token."""

    def __init__(self, tokenizer: Any, reward: Any, prompts: bool):
        super().__init__()
        self.tokenizer, self.reward, self.prompts = tokenizer, reward, prompts
        self.context_length = 0

    def _texts(self, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(i[m.bool()].tolist(), skip_special_tokens=True)
                for i, m in zip(ids, mask, strict=True)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **_: Any) -> _Hidden:
        P = self.context_length
        responses = self._texts(input_ids[:, P:], attention_mask[:, P:])
        prompts = (self._texts(input_ids[:, :P], attention_mask[:, :P]) if self.prompts
                   else [""] * len(responses))
        scores = torch.as_tensor(self.reward(prompts, responses), dtype=torch.float32)
        return _Hidden(scores[:, None, None].expand(-1, input_ids.shape[1], 1))


class RewardModel(nn.Module):
    """A reward callable (prompts, responses) -> scores as the module TRL scores with (`backbone`,
    `score`). prompts=False: the callable gets empty prompts (no decoding of them, for a reward of
    the response alone)."""

    base_model_prefix = "backbone"

    def __init__(self, tokenizer: Any, reward: Any, prompts: bool = True):
        super().__init__()
        self.backbone, self.score = _RewardBackbone(tokenizer, reward, prompts), nn.Identity()


class ValueModel(nn.Module):
    """A value model as a TRL user builds it: the backbone from from_pretrained and a linear head,
    under the attribute names TRL reads."""

    base_model_prefix = "backbone"

    def __init__(self, path: str, head: nn.Module):
        from transformers import AutoModel

        super().__init__()
        self.backbone = AutoModel.from_pretrained(path, dtype=torch.float32)
        self.score = head


def pass_context_length(P: Any) -> None:
    """TRL's get_reward knows where the response starts; the wrapped reward needs it to split
    prompt and response."""
    get_reward = P.get_reward

    def get_reward_with_context(model: Any, query_responses: Any, pad: int,
                                context_length: int) -> Any:
        if isinstance(model, RewardModel):
            model.backbone.context_length = context_length
        return get_reward(model, query_responses, pad, context_length)

    P.get_reward = get_reward_with_context


def build(trial: dict[str, Any], output_dir: str) -> Any:
    """TRL's PPOTrainer for the trial: its keyword arguments, its models, prompts and reward."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as P

    from trials import PPOConfig as Ours
    from trials._models import resolve_model_path
    from trials._prompts import load_prompts, split_prompts
    from trials._reward import RewardFunction

    ours = Ours.from_dict(trial["engine"])
    cpu = not torch.cuda.is_available()
    kwargs = {"use_cpu": cpu, "bf16": False if cpu else ours.precision == "bf16",
              **trial["launch"]["ppo"]}
    args = PPOConfig(output_dir=output_dir, report_to="none", save_strategy="no", logging_steps=1,
                     disable_tqdm=True, num_sample_generations=0, **kwargs)
    path = resolve_model_path(ours.model_path)
    value_path = (resolve_model_path(ours.value_model_path, "value_model_path")
                  if ours.value_model_path else path)
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train, _ = split_prompts(load_prompts(ours.prompts), ours.eval_prompts, ours.num_eval_prompts,
                             ours.seed)
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in train]
    dataset = Dataset.from_dict({"input_ids": ids})
    reward = RewardFunction(ours.reward, torch.device("cpu" if cpu else "cuda"))
    torch.manual_seed(ours.seed)
    value = ValueModel(value_path, _head(value_path))
    peft = None
    if trial["launch"]["lora"]:
        from peft import LoraConfig

        peft = LoraConfig(**trial["launch"]["lora"])
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ref = None if peft else AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=policy, ref_model=ref,
                         reward_model=RewardModel(tokenizer, reward), train_dataset=dataset,
                         value_model=value, peft_config=peft)
    trainer.remove_callback(PrinterCallback)
    pass_context_length(P)
    return trainer


def _head(path: str) -> nn.Module:
    from transformers import AutoConfig

    hidden = AutoConfig.from_pretrained(path).hidden_size
    head = nn.Linear(hidden, 1)
    nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
    nn.init.zeros_(head.bias)
    return head


def reports() -> Any:
    """A TrainerCallback that prints each PPO update's logs as a report line, TRL's names and
    numbers as they are."""
    from transformers import TrainerCallback

    class Reports(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None,
                   **kwargs: Any) -> None:
            logs = {k: v for k, v in (logs or {}).items()
                    if isinstance(v, (int, float)) and math.isfinite(v)}
            if "objective/kl" in logs:  # a PPO update's metrics (not a summary at the end)
                sys.stdout.write(PREFIX + json.dumps({"step": state.global_step, **logs}) + "\n")
                sys.stdout.flush()

    return Reports()


def main() -> int:
    trial = json.loads(Path(os.environ["PPO_TUNER_TRIAL_CONFIG"]).read_text())
    threads = trial["engine"].get("num_threads")
    if threads:
        torch.set_num_threads(int(threads))
    trainer = build(trial, str(Path.cwd() / "trl_output"))
    trainer.add_callback(reports())
    trainer.train()
    return 0


if __name__ == "__main__":
    sys.exit(main())
