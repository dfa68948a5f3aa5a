"""The Ray Tune function that runs one trial: the engine, its reporter, the KL limit, the score.

It runs in a Ray worker. Workers are reused between trials (reuse_actors), and the engine caches
loaded checkpoints per process, so a warm worker pays for imports and model loading once.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from typing import Any

from trials import metrics as K

__all__ = ["SCHEDULER_SCORE", "Scorer", "run_trial"]

# What ASHA ranks trials by: the score, or the worst possible value once a trial passed the KL limit,
# so that a run that drifted (and often scores high) never raises the bar for the feasible ones.
SCHEDULER_SCORE = "scheduler_score"
WORST = 1e30


class Scorer:
    """The trial's score from its evaluations: the final one, the best one, or the mean of the last k."""

    def __init__(self, metric: str, direction: str, score: str, last_k: int, initial: float):
        self.metric, self.score, self.last_k = metric, score, last_k
        self.better = max if direction == "maximize" else min
        self.values: list[float] = [initial] if metric == K.EVAL_SCORES else []

    def update(self, metrics: dict[str, float]) -> float:
        if self.metric in metrics and math.isfinite(metrics[self.metric]):
            self.values.append(metrics[self.metric])
        if not self.values:
            return math.nan
        if self.score == "best":
            return self.better(self.values)
        if self.score == "mean_last":
            tail = self.values[-self.last_k:]
            return sum(tail) / len(tail)
        return self.values[-1]


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable. `config` comes from StudySearcher.suggest."""
    from ray import tune

    started = time.perf_counter()
    for path in config.get("sys_path", []):
        if path not in sys.path:
            sys.path.append(path)
    from trials import PPOConfig, PPOTrainer
    from trials._models import _cached

    warm = _cached.cache_info().currsize > 0  # this worker ran a trial before: checkpoints are cached
    kl_limit = float(config["kl_limit"])
    objective = config["objective"]
    state = {"kl_max": -math.inf, "iteration": 0}
    worst = -WORST if objective["direction"] == "maximize" else WORST
    try:
        trainer = PPOTrainer(PPOConfig.from_dict(config["engine"]))
        initial = trainer.initial_eval() if objective["metric"] == K.EVAL_SCORES else math.nan
        scorer = Scorer(objective["metric"], objective["direction"], objective["score"], objective["last_k"], initial)
        start_cost = time.perf_counter() - started

        def report(iteration: int, metrics: dict[str, float]) -> bool:
            state["iteration"] = iteration
            state["kl_max"] = max(state["kl_max"], metrics[K.KL])
            over = not math.isfinite(metrics[K.KL]) or metrics[K.KL] > kl_limit
            done = over or iteration == trainer.state.config.num_iterations
            score = scorer.update(metrics)
            result = {**metrics, "objective": score, "kl_max": state["kl_max"],
                      SCHEDULER_SCORE: worst if over or not math.isfinite(score) else score,
                      "perf/trial_start_seconds": start_cost, "perf/warm_start": float(warm), "pid": os.getpid()}
            if done:
                result["stop_reason"] = "kl_limit" if over else "completed"
            tune.report(result)
            return over

        trainer.train(report)
    except Exception as exc:
        # Reported as the trial's last result. A cause that can pass (out of memory, a reward that
        # crashed, an unknown error) is raised again so that Ray retries the trial up to the spec's
        # max_failures; a deterministic one (NaN/inf loss, bad reward output, bad config) ends it now.
        message = f"{type(exc).__name__}: {exc}"
        retry = retryable(exc)
        tune.report({"error": message, "retryable": float(retry), "traceback": traceback.format_exc()[-4000:],
                     "objective": math.nan, SCHEDULER_SCORE: worst, "pid": os.getpid(),
                     "kl_max": state["kl_max"] if math.isfinite(state["kl_max"]) else None})
        if retry:
            raise


def retryable(exc: BaseException) -> bool:
    """Whether running the same trial again may succeed."""
    import torch

    from trials import NonFiniteError, RewardError, TunerError

    if isinstance(exc, torch.OutOfMemoryError):
        return True  # memory may be free on the next attempt or another worker
    if isinstance(exc, NonFiniteError):
        return False  # the same config and seed diverge the same way
    if isinstance(exc, RewardError):
        return exc.__cause__ is not None  # the reward raised (a service down?) vs returned bad values
    return not isinstance(exc, TunerError)
