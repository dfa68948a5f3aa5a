"""The Ray Tune function that runs one trial: the engine, the KL limit as a stopper, the score; or,
for `trial.engine: command`, the user's trainer process under the same limit and score (`_external`).

It runs in a Ray worker. Workers are reused between trials (reuse_actors), and the engine caches
loaded checkpoints per process, so a warm worker pays for imports and model loading once.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from tuner.trial._result import StopReason, TrialFailure, TrialReport
from tuner.trial._scoring import Scorer, scheduler_score, worst
from tuner.trial._task import TrialTask

__all__ = ["retryable", "run_trial", "sweep_stopped", "working_folder"]


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable. `config` is a TrialTask's (StudySearcher.suggest)."""
    from ray import tune

    started = time.perf_counter()
    task = TrialTask.from_config(config)
    if sweep_stopped(task):  # Ctrl-C came as Ray Tune started this trial: it never starts its work
        _wait_for_tune_stop()
        return
    if task.engine_kind != "ppo-tuner":
        _run_external(task)
        return
    for path in task.sys_path:
        if path not in sys.path:
            sys.path.append(path)
    from trials import PPOConfig, PPOTrainer, checkpoints_cached
    from trials import metrics as K

    warm = checkpoints_cached() > 0  # this worker ran a trial before: checkpoints are cached
    limit = task.kl_stopper()
    objective = task.objective
    direction = objective["direction"]
    try:
        trainer = PPOTrainer(PPOConfig.from_dict(own_checkpoints(task)))
        resumed = trainer.resumed.iteration if trainer.resumed else 0  # a retry continues after its checkpoint
        evaluated = objective["metric"] in K.EVALUATED or trainer.state.config.eval_reward
        initial = trainer.initial_evals() if evaluated else {}  # the curves start before any update
        scorer = Scorer(objective["metric"], direction, objective["score"], objective["last_k"],
                        initial.get(objective["metric"], math.nan))
        start_cost = time.perf_counter() - started
        last = trainer.state.config.num_iterations

        def report(iteration: int, metrics: dict[str, float]) -> bool:
            over = limit(iteration, metrics)
            score = scorer.update(metrics)
            done = over or iteration == last
            reason = (StopReason.of_kl(limit) if over else StopReason.COMPLETED) if done else None
            tune.report(TrialReport(metrics=metrics, objective=score,
                                    scheduler_score=scheduler_score(score, over, direction),
                                    kl_max=limit.kl_max, stop_reason=reason, start_seconds=start_cost,
                                    warm_start=warm, pid=os.getpid(), initial_eval=initial.get(K.EVAL_SCORES, math.nan),
                                    initial_gold=initial.get(K.EVAL_GOLD, math.nan),
                                    resumed_after=resumed).to_result())
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


def own_checkpoints(task: TrialTask) -> dict[str, Any]:
    """Our engine's config for the trial: its checkpoints go to the trial's own folder (CHECKPOINTS in it),
    where a retry of the same trial finds them and no other trial does. A re-run of an interrupted trial's
    config (`tuner resume`) first takes over that trial's checkpoint, which the engine loads only if it is of
    the same config (its fingerprint)."""
    from trials import CHECKPOINT_FILE
    from tuner.engines import CHECKPOINTS

    if task.engine.get("checkpoint_dir") or not task.folder:
        return task.engine
    own = Path(task.folder) / CHECKPOINTS
    earlier = Path(task.rerun_of) / CHECKPOINTS / CHECKPOINT_FILE if task.rerun_of else None
    if earlier is not None and earlier.is_file() and not (own / CHECKPOINT_FILE).exists():
        own.mkdir(parents=True, exist_ok=True)
        os.replace(earlier, own / CHECKPOINT_FILE)
    return {**task.engine, "checkpoint_dir": str(own)}


def remove_own_checkpoints(task: TrialTask) -> None:
    """The controller's cleanup of a trial of our engine that ended for good (not FAIL: a failed or
    interrupted trial's checkpoint is what its retry or re-run resumes from): its own checkpoint folder
    goes, with a checkpoint a cut (ASHA, the median rule) left in it, since the engine runs no further
    once Ray Tune stops it. An external trainer's folder (its model) and a folder the user named stay."""
    from tuner.engines import CHECKPOINTS

    if task.engine_kind == "ppo-tuner" and task.folder and not task.engine.get("checkpoint_dir"):
        shutil.rmtree(Path(task.folder) / CHECKPOINTS, ignore_errors=True)


def _run_external(task: TrialTask) -> None:
    """An external trainer's trial: its reports as our records; a fault reported as run_trial's are."""
    import ray
    from ray import tune

    from tuner.trial._admission import trial_admission
    from tuner.trial._external import LOG_FILE, TrainerError, run_command

    gpus = {"CUDA_VISIBLE_DEVICES": ",".join(map(str, ray.get_gpu_ids()))}  # what Ray Tune reserved for it
    workdir = working_folder(task, tune.get_context().get_trial_dir() or os.getcwd())

    def stop() -> bool:
        return _stop_requested() or sweep_stopped(task)

    try:
        run_command(task, tune.report, workdir, stop_requested=stop, env=gpus,
                    ray_address=ray.get_runtime_context().gcs_address,
                    admission=trial_admission(task, workdir / LOG_FILE, stop))
        if sweep_stopped(task):  # stopped by the sweep before Ray Tune stopped it: Tune's stop ends it
            _wait_for_tune_stop()
    except TrainerError as exc:
        tune.report(TrialFailure(error=str(exc), retryable=exc.retryable,
                                 scheduler_score=worst(task.objective["direction"]),
                                 pid=os.getpid()).to_result())
        if exc.retryable:
            raise


def working_folder(task: TrialTask, fallback: str) -> Path:
    """Where an external trainer runs: the trial's own folder under the sweep (task.folder), made
    here. On a cluster node without the sweep's disk the same absolute path is made on the node's
    own disk; where it cannot be made, Ray's folder for the trial (`fallback`) is used instead."""
    for folder in (task.folder, fallback):
        if not folder:
            continue
        try:
            Path(folder).mkdir(parents=True, exist_ok=True)
            return Path(folder)
        except OSError:
            continue
    raise RuntimeError(f"no folder for trial {task.number}: neither {task.folder!r} nor "
                       f"{fallback!r} can be made")


def sweep_stopped(task: TrialTask) -> bool:
    """Whether the controller was stopped (Ctrl-C, SIGTERM): it sets task.stop_key in Ray's KV
    store at once, before Ray Tune stops each trial."""
    if not task.stop_key:
        return False
    try:
        from ray.experimental import internal_kv

        return internal_kv._internal_kv_get(task.stop_key) is not None
    except Exception:  # no Ray here (a trial run outside a sweep)
        return False


def _wait_for_tune_stop(limit: float = 60.0) -> None:
    """Wait (at most `limit` seconds) for Ray Tune to stop this trial, so that a trial the sweep's
    stop kept from its work ends as stopped, not as finished."""
    deadline = time.monotonic() + limit
    while not _stop_requested() and time.monotonic() < deadline:
        time.sleep(0.05)


def _stop_requested() -> bool:
    """Whether Ray Tune asked this trial to stop (ASHA, the sweep's end) while it waits for its trainer.
    Ray's function trainable sees it only at the next tune.report; its session's stop event says it now."""
    try:
        from ray.train._internal.session import get_session

        session = get_session()
        return bool(session is not None and session.stop_event.is_set())
    except Exception:  # another Ray: the next tune.report stops the trial instead
        return False


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
