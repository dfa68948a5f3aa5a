"""The Ray Tune function that runs one trial: the engine, the KL limit as a stopper, the score.

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

from tuner.trial._result import StopReason, TrialFailure, TrialReport
from tuner.trial._scoring import Scorer, scheduler_score, worst
from tuner.trial._task import TrialTask

__all__ = ["retryable", "run_trial"]


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable. `config` is a TrialTask's (StudySearcher.suggest)."""
    from ray import tune

    started = time.perf_counter()
    task = TrialTask.from_config(config)
    for path in task.sys_path:
        if path not in sys.path:
            sys.path.append(path)
    from trials import KLLimit, PPOConfig, PPOTrainer, checkpoints_cached
    from trials import metrics as K

    warm = checkpoints_cached() > 0  # this worker ran a trial before: checkpoints are cached
    limit = KLLimit(task.kl_limit)
    objective = task.objective
    direction = objective["direction"]
    try:
        trainer = PPOTrainer(PPOConfig.from_dict(task.engine))
        initial = trainer.initial_eval() if objective["metric"] == K.EVAL_SCORES else math.nan
        scorer = Scorer(objective["metric"], direction, objective["score"], objective["last_k"], initial)
        start_cost = time.perf_counter() - started
        last = trainer.state.config.num_iterations

        def report(iteration: int, metrics: dict[str, float]) -> bool:
            over = limit(iteration, metrics)
            score = scorer.update(metrics)
            done = over or iteration == last
            reason = (StopReason.KL_LIMIT if over else StopReason.COMPLETED) if done else None
            tune.report(TrialReport(metrics=metrics, objective=score, scheduler_score=scheduler_score(score, over, direction),
                                    kl_max=limit.kl_max, stop_reason=reason, start_seconds=start_cost,
                                    warm_start=warm, pid=os.getpid(), initial_eval=initial).to_result())
            return over

        trainer.train(report)
    except Exception as exc:
        # Reported as the trial's last result. A cause that can pass (out of memory, a reward that
        # crashed, an unknown error) is raised again so that Ray retries the trial up to the spec's
        # max_failures; a deterministic one (NaN/inf loss, bad reward output, bad config) ends it now.
        retry = retryable(exc)
        tune.report(TrialFailure(error=f"{type(exc).__name__}: {exc}", retryable=retry,
                                 traceback=traceback.format_exc()[-4000:], scheduler_score=worst(direction),
                                 kl_max=limit.kl_max if math.isfinite(limit.kl_max) else None,
                                 pid=os.getpid()).to_result())
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
