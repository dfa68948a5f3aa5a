"""TRL's side of bench/engine_vs_trl.py: trl 1.12's `trl.experimental.ppo.PPOTrainer` on the same
work, run with bench/.venv-trl's python in a process of its own.

    .venv-trl/bin/python bench/_engine_trl.py speed  WORKLOAD_JSON ITERATIONS WARMUP
    .venv-trl/bin/python bench/_engine_trl.py speed-no-gc WORKLOAD_JSON ITERATIONS WARMUP
    .venv-trl/bin/python bench/_engine_trl.py parity WORKLOAD_JSON REPLAY.pt OUT_DIR
    .venv-trl/bin/python bench/_engine_trl.py versions

The same models and weights as our engine, as a TRL user loads them: the workload's policy, reference
(none under LoRA: TRL's own peft_config, the policy with its adapter disabled, as ours) and value
backbone with from_pretrained, and a linear value head with our engine's initial weights (same
code, same seed), under the names TRL reads (`backbone`, `score`). The reward is the demo reward on
the decoded responses, wrapped as the module TRL expects. TRL's loop is timed from outside: its
generation, its no-grad scoring forwards, its gc.collect() calls; the update is the rest. speed-no-gc:
the same, with TRL's gc.collect() calls made no-ops (what TRL's iteration costs without them).
"""

from __future__ import annotations

import copy
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _common import Workload, grad_norm, load, model_path, peak_rss_mib, serve

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tuner" / "engines" / "launchers"))
from trl_ppo import RewardModel, ValueModel, pass_context_length  # noqa: E402  (TRL trials' own launcher)


class Timers:
    """Wraps TRL's module-level functions to split each iteration into phases."""

    def __init__(self, P: Any, no_gc: bool = False):
        self.totals = {"generate": 0.0, "score": 0.0, "gc": 0.0}
        self.stamps: list[float] = []
        self._wrap(P, "batch_generation", "generate", always=True)
        for name in ("forward", "get_reward", "selective_log_softmax"):
            self._wrap(P, name, "score", always=False)
        collect = gc.collect

        def timed_collect(*args: Any) -> int:
            t = time.perf_counter()
            try:
                return 0 if no_gc else collect(*args)
            finally:
                self.totals["gc"] += time.perf_counter() - t

        P.gc.collect = timed_collect

    def _wrap(self, module: Any, name: str, phase: str, always: bool) -> None:
        original = getattr(module, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not always and torch.is_grad_enabled():  # a training forward: part of the update
                return original(*args, **kwargs)
            t = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.totals[phase] += time.perf_counter() - t

        setattr(module, name, timed)


def build(w: Workload, iterations: int, prompts: list[str] | None = None) -> tuple[Any, Any, Any]:
    """(trainer, our run, TRL's ppo_trainer module) for `iterations` iterations of the workload."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as P

    from trials._engine import prepare
    from trials._models import resolve_model_path
    from trials.demo import reward

    path = resolve_model_path(model_path(w.model))
    # our value head and prompts
    run = prepare(w.engine_config(rollout_batch_size=w.rollout, num_iterations=iterations))
    tokenizer = AutoTokenizer.from_pretrained(path, padding_side="left")
    rows = prompts if prompts is not None else run.train_prompts
    dataset = Dataset.from_dict({"input_ids": [tokenizer(p, add_special_tokens=False)["input_ids"] for p in rows]})
    args = PPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=w.rollout,
                     gradient_accumulation_steps=1,
                     num_mini_batches=w.rollout // w.mini, num_ppo_epochs=w.epochs, response_length=w.response,
                     local_rollout_forward_batch_size=w.rollout, total_episodes=w.rollout * iterations,
                     stop_token="eos", temperature=w.temperature, kl_coef=w.kl_coef, vf_coef=w.vf_coef,
                     gamma=w.gamma, lam=w.lam, cliprange=w.cliprange, cliprange_value=w.cliprange_value,
                     kl_estimator=w.kl_estimator,
                     learning_rate=w.lr, lr_scheduler_type="constant", bf16=False, gradient_checkpointing=False,
                     num_sample_generations=0, report_to="none", save_strategy="no", logging_steps=1,
                     disable_tqdm=True, use_cpu=True, seed=w.seed)
    lora = None
    if w.lora:  # our engine's adapter: every linear layer but the LM head, alpha 16, no dropout
        from peft import LoraConfig

        c = run.config
        lora = LoraConfig(r=c.lora_rank, lora_alpha=c.lora_alpha, lora_dropout=c.lora_dropout,
                          target_modules=c.lora_target_modules, task_type="CAUSAL_LM")
    trainer = PPOTrainer(args=args, processing_class=tokenizer,
                         model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                         ref_model=None if lora else AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                         reward_model=RewardModel(tokenizer, reward, prompts=False), train_dataset=dataset,
                         value_model=ValueModel(path, copy.deepcopy(run.value.head)), peft_config=lora)
    trainer.remove_callback(PrinterCallback)
    pass_context_length(P)
    return trainer, run, P


def speed(w: Workload, iterations: int, warmup: int, no_gc: bool = False) -> dict[str, Any]:
    from transformers import TrainerCallback

    trainer, _, P = build(w, warmup + iterations)
    timers = Timers(P, no_gc)
    rows: list[dict[str, float]] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            self.last, self.seen = time.perf_counter(), dict(timers.totals)

        def on_step_end(self, args: Any, state: Any, *rest: Any, **kwargs: Any) -> None:
            now = time.perf_counter()
            row = {k: timers.totals[k] - self.seen[k] for k in timers.totals}
            row.update(iteration=now - self.last, update=now - self.last - sum(row.values()))
            if state.global_step > warmup:
                rows.append(row)
            self.last, self.seen = time.perf_counter(), dict(timers.totals)

    trainer.add_callback(Clock())
    load_before = load()
    trainer.train()
    return {"side": "trl, no gc" if no_gc else "trl", "rows": rows, "load": [load_before, load()],
            "peak_rss_mib": peak_rss_mib()}


def parity(w: Workload, replay_path: str, out_dir: str) -> dict[str, Any]:
    """The replayed rollout's iterations, in its order (see bench/_parity.py): per optimizer step TRL's own
    per-step statistics and both models' gradient norms before the step; per iteration its logged
    metrics and the per-token rewards that go into GAE."""
    import inspect

    import numpy as np
    from torch.utils.data import DataLoader
    from transformers import TrainerCallback

    replay = torch.load(replay_path)
    prompts, responses, orders = replay["prompts"], replay["responses"], iter(replay["orders"])
    trainer, _, P = build(w, replay["iterations"], prompts=prompts)
    trainer.dataloader = DataLoader(trainer.train_dataset, batch_size=len(prompts), shuffle=False,
                                    collate_fn=trainer.data_collator, drop_last=True)

    @torch.no_grad()
    def replayed(model: Any, queries: torch.Tensor, chunk: int, pad: int, generation_config: Any) -> Any:
        seq = torch.cat([queries, responses], 1)
        logits = P.forward(model, seq, pad).logits[:, queries.shape[1] - 1:-1]
        return seq, logits / (w.temperature + 1e-7)  # what generate's output_scores hold: logits / temperature

    P.batch_generation = replayed
    np.random.permutation = lambda n: np.array(next(orders))  # each epoch's mini-batch order: the replay's
    model = trainer.accelerator.unwrap_model(trainer.model)
    grads: list[dict[str, float]] = []

    def grad_norms(optimizer: Any, *_: Any) -> None:
        grads.append({"grad_norm_policy": grad_norm(model.policy.parameters()),
                      "grad_norm_value": grad_norm(model.value_model.parameters())})

    trainer.optimizer.optimizer.register_step_pre_hook(grad_norms)
    steps: list[dict[str, float]] = []
    iterations: list[dict[str, Any]] = []
    stats = {"policy_loss": "pg_loss_stats", "value_loss": "vf_loss_stats", "clipfrac": "pg_clipfrac_stats",
             "value_clipfrac": "vf_clipfrac_stats", "approxkl": "approxkl_stats"}

    class Record(TrainerCallback):
        """At each iteration's log, reads TRL's per-step statistics and its rewards from train()'s frame."""

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if "objective/kl" not in (logs or {}):
                return
            frame = inspect.currentframe()
            while frame.f_code is not P.PPOTrainer.train.__code__:
                frame = frame.f_back
            local = frame.f_locals
            per_step = {key: local[name].flatten().tolist() for key, name in stats.items()}  # (epochs, mini-batches, 1)
            for i in range(len(per_step["policy_loss"])):
                steps.append({key: values[i] for key, values in per_step.items()})
            iterations.append({**logs, "rewards": local["rewards"].tolist()})

    trainer.add_callback(Record())
    trainer.train()
    steps = [{**s, **g} for s, g in zip(steps, grads, strict=True)]
    return {"side": "trl", "steps": steps, "iterations": iterations}


if __name__ == "__main__":
    serve(sys.argv[1:], parity, speed, {"speed-no-gc": {"no_gc": True}})
