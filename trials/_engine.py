"""One PPO run on a causal LM: `train(config, reporter)`.

The iteration reads top to bottom in `_iteration`: generate, score, shape rewards, GAE, PPO epochs,
KL controller. Everything the run holds lives in `_Run`, built by `prepare`, which loads and checks
every input (models, tokenizer, prompts, reward) before the first iteration.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from trials import _math as M
from trials import metrics as K
from trials._chat import chat_format, stop_token_ids
from trials._checkpoint import checkpoint_due, load_checkpoint, remove_checkpoint, save_checkpoint
from trials._config import PPOConfig
from trials._errors import ConfigError, Problem
from trials._lora import frozen_dtype, load_models, reference, save_policy
from trials._models import load_tokenizer, resolve_model_path
from trials._prompts import load_prompts, split_prompts
from trials._reward import RewardFunction
from trials._rollout import (
    decode,
    forward_logits,
    generate,
    logprobs_of,
    response_mask,
    sampler_logprobs_fit,
)
from trials._run import _Rollout, _Run
from trials._threads import reserved_threads
from trials._update import explained_variance, update
from trials._vllm import VLLMRollouts

__all__ = ["PPOTrainer", "Reporter", "TrainResult", "evaluate", "train"]

log = logging.getLogger(__name__)


class Reporter(Protocol):
    def report(self, iteration: int, metrics: dict[str, float]) -> bool:
        """Called after every iteration (1-based); True asks the run to stop there."""


ReportFn = Callable[[int, dict[str, float]], bool]


@dataclass
class TrainResult:
    iterations: int  # iterations completed
    stopped: bool  # True when the reporter asked to stop before num_iterations
    metrics: dict[str, float]  # the last iteration's metrics
    history: list[dict[str, float]]
    initial_eval: float  # eval/scores before any update
    output_dir: str | None = None


def _device(config: PPOConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError([Problem("device", "cuda", "no CUDA device is available", "use device: auto or cpu")])
    return torch.device("cuda" if config.device != "cpu" and torch.cuda.is_available() else "cpu")


def _autocast(config: PPOConfig, device: torch.device) -> Callable[[], Any]:
    bf16 = config.precision == "bf16" or (
        config.precision == "auto" and device.type == "cuda" and torch.cuda.is_bf16_supported())
    if bf16:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def _lr_lambda(config: PPOConfig) -> Callable[[int], float]:
    total = config.num_iterations * config.ppo_epochs * config.num_mini_batches

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        if config.lr_schedule == "linear":
            return max(0.0, 1.0 - progress)
        if config.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def prepare(config: PPOConfig) -> _Run:
    """Load and check every input; raises the project's errors before any training happens."""
    problems = config.problems()
    if problems:
        raise ConfigError(problems)
    train_prompts = load_prompts(config.prompts, "prompts")
    train_prompts, eval_prompts = split_prompts(train_prompts, config.eval_prompts,
                                                config.num_eval_prompts, config.seed)
    device = _device(config)
    threads = config.num_threads or reserved_threads()
    torch.set_num_threads(threads)
    log.info("torch uses %d CPU threads%s", threads,
             "" if config.num_threads else " (num_threads empty: the cores not already busy)")
    model_path = resolve_model_path(config.model_path)
    value_path = (resolve_model_path(config.value_model_path, "value_model_path")
                  if config.value_model_path else model_path)
    frozen = frozen_dtype(config, device)
    reward = RewardFunction(config.reward, device, frozen)
    reward(train_prompts[:2], train_prompts[:2])  # fails now, not after the first rollout, if the reward is broken
    eval_reward = RewardFunction(config.eval_reward, device, frozen, "eval_reward") if config.eval_reward else None
    if eval_reward is not None:
        eval_reward(eval_prompts[:2], eval_prompts[:2])
    torch.manual_seed(config.seed)
    tokenizer = load_tokenizer(model_path)
    chat = chat_format(tokenizer, config.chat_template)
    models = load_models(config, model_path, value_path, device)
    policy = models.policy
    optimizer = _optimizer(config, models.policy_params, models.value_params, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config))
    kl_ctl = (M.AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
              if config.kl_mode == "adaptive" else M.FixedKLController(config.kl_coef))
    autocast = _autocast(config, device)
    vocab = policy.get_output_embeddings().weight.shape[0]
    bf16 = autocast is not contextlib.nullcontext or (config.lora_rank > 0 and frozen == torch.bfloat16)
    stop_ids = stop_token_ids(tokenizer, getattr(policy, "generation_config", None))
    vllm = (VLLMRollouts(config, model_path, torch.bfloat16 if bf16 else torch.float32, threads, stop_ids,
                         tokenizer.pad_token_id, cuda=device.type == "cuda") if config.rollout_engine == "vllm"
            else None)
    return _Run(config=config, device=device, autocast=autocast, tokenizer=tokenizer, policy=policy,
                ref=models.ref, value=models.value, policy_params=models.policy_params,
                value_params=models.value_params, reward=reward, eval_reward=eval_reward, train_prompts=train_prompts,
                eval_prompts=eval_prompts, optimizer=optimizer, scheduler=scheduler, kl_ctl=kl_ctl,
                generation_config=_generation_config(config, tokenizer, stop_ids), chat=chat, stop_ids=stop_ids,
                vllm=vllm, prompt_gen=torch.Generator().manual_seed(config.seed),
                sampler_logprobs=sampler_logprobs_fit(config.rollout_batch_size, config.response_length, vocab,
                                                      autocast_bf16=bf16) and vllm is None)


def _optimizer(config: PPOConfig, policy_params: list[torch.nn.Parameter], value_params: list[torch.nn.Parameter],
               device: torch.device) -> torch.optim.Optimizer:
    """Adam(W) over what both models train, one param group each; the fused kernel where torch has one
    (one call per step instead of a dozen per tensor: about 8x faster for the demo model on a CPU)."""
    groups = [{"params": policy_params, "lr": config.policy_lr, "name": "policy"},
              {"params": value_params, "lr": config.value_lr, "name": "value"}]
    fused = True if device.type in ("cpu", "cuda") else None
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=config.weight_decay, eps=1e-8, fused=fused)
    return torch.optim.Adam(groups, weight_decay=config.weight_decay, eps=1e-8, fused=fused)


def _generation_config(config: PPOConfig, tokenizer: Any, stop_ids: list[int]) -> Any:
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=True, temperature=config.temperature, top_k=config.top_k or None,
                            top_p=config.top_p, max_new_tokens=config.response_length,
                            pad_token_id=tokenizer.pad_token_id, eos_token_id=stop_ids or None,
                            use_cache=True)


class PPOTrainer:
    """A PPO run, loaded and checked: `PPOTrainer(config)` raises the project's errors for bad input
    (model path, prompts, reward) before any training; `.train(reporter)` runs it."""

    def __init__(self, config: PPOConfig):
        self.state = prepare(config)
        # a run started again with its checkpoint_dir holding this config's checkpoint continues after it
        self.resumed = load_checkpoint(self.state) if config.checkpoint_dir else None
        self._initial = dict(self.resumed.initial) if self.resumed else None

    def initial_evals(self) -> dict[str, float]:
        """The evaluation before any update (computed once): eval/scores, and eval/gold_scores where
        eval_reward is set."""
        if self._initial is None:
            self._initial = evaluate(self.state)
        return dict(self._initial)

    def initial_eval(self) -> float:
        """eval/scores before any update (computed once)."""
        return self.initial_evals()[K.EVAL_SCORES]

    @property
    def policy(self) -> torch.nn.Module:
        return self.state.policy

    @property
    def ref(self) -> torch.nn.Module | None:
        """The frozen reference copy; None under LoRA, where the reference is the policy's base."""
        return self.state.ref

    @property
    def value(self) -> torch.nn.Module:
        return self.state.value

    def train(self, reporter: Reporter | ReportFn | None = None) -> TrainResult:
        """Run config.num_iterations iterations, or until the reporter asks to stop."""
        run, config = self.state, self.state.config
        report = _report_fn(reporter)
        initial_evals = self.initial_evals()
        initial_eval = initial_evals[K.EVAL_SCORES]
        stopped, iteration, done = False, 0, self.resumed.iteration if self.resumed else 0
        saved = done > 0  # its checkpoint is this run's: deleted at its end
        # iterations restored from the checkpoint are reported again from its metrics (not run again), so
        # the reporter counts every iteration from 1, as the run's first attempt did
        for iteration in range(1, config.num_iterations + 1):
            metrics = run.history[iteration - 1] if iteration <= done else _iteration(run, iteration)
            if iteration > done:
                run.history.append(metrics)
                if checkpoint_due(config, iteration):
                    save_checkpoint(run, iteration, initial_evals)
                    saved = True
            if saved and iteration == config.num_iterations:
                # before the last report: a sweep may end the trial at that report, and nothing runs after it
                remove_checkpoint(config)
                saved = False
            if report(iteration, metrics):
                stopped = iteration < config.num_iterations
                break
        if saved:
            remove_checkpoint(config)  # the run ended: nothing will resume from it
        if config.output_dir:
            save_policy(run.policy, run.tokenizer, config.output_dir, merged=config.save_merged)
        history = run.history[:iteration]  # a run resumed that stops among its restored iterations ends there
        return TrainResult(iterations=iteration, stopped=stopped, metrics=history[-1] if history else {},
                           history=history, initial_eval=initial_eval, output_dir=config.output_dir)


def train(config: PPOConfig, reporter: Reporter | ReportFn | None = None) -> TrainResult:
    """Load, check and run one PPO training (see PPOTrainer)."""
    return PPOTrainer(config).train(reporter)


def _report_fn(reporter: Reporter | ReportFn | None) -> ReportFn:
    if reporter is None:
        return lambda iteration, metrics: False
    if hasattr(reporter, "report"):
        return reporter.report
    return reporter


def _iteration(run: _Run, iteration: int) -> dict[str, float]:
    """One PPO iteration; returns its metrics (names from trials.metrics)."""
    c = run.config
    t0 = time.perf_counter()
    beta = run.kl_ctl.value

    # 1. Sample prompts and generate responses (KV cache); in fp32 the policy's log-probs come with them.
    prompts = _next_prompts(run, c.rollout_batch_size)
    rollout_ids, responses, logprobs = _generate(run, prompts, with_logprobs=run.sampler_logprobs)
    t1 = time.perf_counter()

    # 2. Log-probs under the reference (and the policy, if not sampled with them), values, scores.
    ro = _score(run, prompts, rollout_ids, responses, logprobs)
    t2 = time.perf_counter()

    # 3. Per-token KL penalty, and the score on the last response token.
    kl = M.kl_per_token(ro.logprobs, ro.ref_logprobs, c.kl_estimator) * ro.mask  # (B, T) nats
    non_score = -beta * kl
    last = (ro.mask.sum(1).long() - 1).clamp(min=0)  # index of each response's last token
    rewards = non_score.clone()
    rewards[torch.arange(len(last)), last] += ro.scores
    if c.whiten_rewards:
        rewards = M.masked_whiten(rewards, ro.mask, shift_mean=False)

    # 4. GAE over each response.
    advantages, returns = M.compute_gae(rewards, ro.values, ro.mask, c.gamma, c.gae_lambda)
    if c.whiten_advantages:
        advantages = M.masked_whiten(advantages, ro.mask) * ro.mask

    # 5. ppo_epochs x mini-batches of the clipped surrogate, clipped value loss, entropy bonus.
    stats = update(run, ro, advantages, returns)
    t3 = time.perf_counter()

    # 6. The adaptive KL controller follows the batch's KL (summed over each response).
    kl_sum = kl.sum(1)  # (B,)
    run.kl_ctl.update(kl_sum.mean().item(), c.rollout_batch_size)

    tokens = ro.mask.sum().item()
    metrics = {
        K.KL: kl_sum.mean().item(),
        K.KL_COEF: beta,
        K.SCORES: ro.scores.mean().item(),
        K.SCORES_STD: ro.scores.std().item() if len(ro.scores) > 1 else 0.0,
        K.RLHF_REWARD: (ro.scores + non_score.sum(1)).mean().item(),
        K.NON_SCORE_REWARD: non_score.sum(1).mean().item(),
        K.RESPONSE_LENGTH: ro.mask.sum(1).mean().item(),
        K.EXPLAINED_VARIANCE: explained_variance(ro.values, returns, ro.mask),
        K.LR_POLICY: run.optimizer.param_groups[0]["lr"],
        K.LR_VALUE: run.optimizer.param_groups[1]["lr"],
        **stats,
    }
    if iteration % c.eval_interval == 0 or iteration == c.num_iterations:
        metrics.update(evaluate(run))
    elapsed = time.perf_counter() - t0
    metrics.update({K.ITERATION_SECONDS: elapsed, K.TOKENS_PER_SEC: tokens / elapsed,
                    K.GENERATE_SECONDS: t1 - t0, K.SCORE_SECONDS: t2 - t1, K.UPDATE_SECONDS: t3 - t2,
                    K.SYNC_SECONDS: run.vllm.take_sync_seconds() if run.vllm else 0.0})
    return metrics


def _next_prompts(run: _Run, n: int) -> list[str]:
    """Prompts in a seeded random order, reshuffled after each pass over the training set."""
    out = []
    while len(out) < n:
        if not run._order:
            run._order = torch.randperm(len(run.train_prompts), generator=run.prompt_gen).tolist()
        out.append(run.train_prompts[run._order.pop()])
    return out


def _generate(run: _Run, prompts: list[str], with_logprobs: bool = False
              ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor | None]:
    """Left-padded prompt ids (in the chat template where run.chat), sampled responses (B, T),
    T <= response_length, and optionally their log-probs."""
    texts = [run.chat.wrap(p) for p in prompts] if run.chat else prompts
    enc = run.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                        max_length=run.config.max_prompt_length, add_special_tokens=False).to(run.device)
    if run.vllm:
        return enc, run.vllm.generate(run.policy, enc["input_ids"], enc["attention_mask"]), None
    with run.autocast():
        responses, logprobs = generate(run.policy, enc["input_ids"], enc["attention_mask"], run.generation_config,
                                       run.config.temperature, with_logprobs)
    return enc, responses, logprobs


@torch.no_grad()
def _score(run: _Run, prompts: list[str], enc: dict[str, torch.Tensor], responses: torch.Tensor,
           sampled_logprobs: torch.Tensor | None) -> _Rollout:
    c = run.config
    mask = response_mask(responses, run.stop_ids)
    P = enc["input_ids"].shape[1]
    sequences = torch.cat([enc["input_ids"], responses], 1)
    attn = torch.cat([enc["attention_mask"], mask.long()], 1)
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    chunk = c.micro_batch_size or len(prompts)
    logprobs, ref_logprobs, values = [], [], []
    with run.autocast():
        for s in range(0, len(prompts), chunk):
            sl = slice(s, s + chunk)
            if sampled_logprobs is None:
                logits = forward_logits(run.policy, sequences[sl], attn[sl], pos[sl], P)
                logprobs.append(logprobs_of(logits, responses[sl], c.temperature))
            with reference(run.policy, run.ref) as ref:
                ref_logits = forward_logits(ref, sequences[sl], attn[sl], pos[sl], P)
            ref_logprobs.append(logprobs_of(ref_logits, responses[sl], c.temperature))
            with run.value.active():
                values.append(run.value(sequences[sl], attn[sl], pos[sl])[:, P - 1:-1])
    texts = decode(run.tokenizer, responses, mask)
    scores = run.reward(prompts, texts)
    policy_logprobs = sampled_logprobs if sampled_logprobs is not None else torch.cat(logprobs)
    return _Rollout(sequences=sequences, attention_mask=attn, position_ids=pos, mask=mask,
                    logprobs=policy_logprobs * mask, ref_logprobs=torch.cat(ref_logprobs) * mask,
                    values=torch.cat(values) * mask, scores=scores, prompt_len=P)


@torch.no_grad()
def evaluate(run: _Run) -> dict[str, float]:
    """Mean score on the held-out prompts (eval/scores), and the held-out reward's mean score of the same
    responses (eval/gold_scores) where eval_reward is set: sampled at the training temperature from a
    fixed seed, so that evaluations differ only through the policy, and training's random stream is untouched."""
    scores, gold = [], []
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):
        torch.manual_seed(run.config.seed + 7919)
        for s in range(0, len(run.eval_prompts), run.config.rollout_batch_size):
            prompts = run.eval_prompts[s:s + run.config.rollout_batch_size]
            _, responses, _ = _generate(run, prompts)
            texts = decode(run.tokenizer, responses, response_mask(responses, run.stop_ids))
            scores.append(run.reward(prompts, texts))
            if run.eval_reward is not None:
                gold.append(run.eval_reward(prompts, texts))
    out = {K.EVAL_SCORES: torch.cat(scores).mean().item()}
    if gold:
        out[K.EVAL_GOLD] = torch.cat(gold).mean().item()
    return out
