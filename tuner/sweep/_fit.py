"""Ray for a sweep's stages, and one stage's trials through Ray Tune.

`RayUse` joins the cluster the spec or RAY_ADDRESS names, else starts a local Ray, once, for the
first stage that has trials to run, and shuts down only a Ray it started; then it waits for every
process that Ray's workers started (a trial's vLLM server, a trainer) to end, and kills what outlives
the wait (trials.process.end_descendants): when a sweep returns, nothing it started runs. `fit` builds the Tuner
(the stage's searcher and scheduler, the outage stopper, the one Ray callback that feeds the logger
and the `SweepCallback`s, each trial's folder) and runs it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from trials import ConfigError, Problem
from trials.process import adopt_orphans, descendants, end_descendants
from tuner.spec import CompiledSpec
from tuner.sweep._callback import SweepCallback, tell
from tuner.sweep._outage import StudyOutage
from tuner.sweep._signals import noting_tune_stops, stop_on_sigterm
from tuner.trial import SCHEDULER_SCORE

__all__ = ["RayUse", "fit", "join_ray", "search_scheduler"]

ORPHAN_GRACE = 30.0  # seconds for a local Ray's processes to end after its shutdown before they are killed


def join_ray(spec: CompiledSpec) -> bool:
    """Join `ray.address`, else the cluster RAY_ADDRESS names (as in a Ray job's driver), else start
    a local Ray. A jobs-API address (http://HEAD:8265) is for `tuner submit`: never joined."""
    import socket

    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if ray.is_initialized():
        return False
    field, address = "ray.address", (spec.ray.address if spec.ray else None) or None
    env_address = os.environ.get("RAY_ADDRESS", "").strip()
    if (address in (None, "auto") and env_address
            and not (address is None and env_address.startswith("http"))):
        field, address = "RAY_ADDRESS", env_address
    if address and address.startswith(("http://", "https://")):
        raise ConfigError([Problem(
            field, address, "is a Ray jobs API address, which 'tuner run' cannot join",
            f"submit the sweep there with 'tuner submit SPEC --address {address}', or give "
            "the cluster's address: 'auto' on a cluster node, 'HOST:6379' or 'ray://HOST:10001'")])
    host, _, port = (address or "").rpartition(":")
    # a GCS address: Ray would retry it for minutes
    if host and port.isdigit() and "://" not in address:
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except OSError:
            raise ConfigError([Problem(
                field, address, "no Ray cluster answers there",
                "start the cluster, or fix the address (empty: a local Ray)")]) from None
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR,
                              "log_to_driver": False}
    if not address:
        kwargs["num_cpus"] = ((spec.ray.num_cpus if spec.ray and spec.ray.num_cpus else None)
                              or os.cpu_count())
    try:  # "local": a new Ray, never one found on this machine
        ray.init(address=address or "local", **kwargs)
    except ConnectionError as exc:  # 'auto' found no cluster
        raise ConfigError([Problem(
            field, address, f"no Ray cluster found ({str(exc).splitlines()[0][:200]})",
            "start one (ray start --head), or fix the address (empty: a local Ray)")]) from None
    return True


class RayUse:
    """Ray for the sweep's stages: started (or joined) by the first stage that runs trials, shut
    down at the end of the sweep if this sweep started it, and then the processes its trials left waited
    for (this process is their subreaper from `ensure` to `close`)."""

    def __init__(self, spec: CompiledSpec, callbacks: Sequence[SweepCallback]):
        self.spec, self.callbacks, self.started, self.up = spec, callbacks, False, False
        self.before: set[tuple[int, int]] = set()  # this process's descendants before Ray started
        self.adopting = False  # this made the process a subreaper (undone at close)

    def ensure(self, what: str) -> None:
        if self.up:
            return
        address = ((self.spec.ray.address if self.spec.ray else None)
                   or os.environ.get("RAY_ADDRESS"))
        where = f"joining the Ray cluster at {address}" if address else "starting a local Ray"
        tell(self.callbacks,
             f"{where} for {what}, {self.spec.resources.max_concurrent} at a time")
        # a trial's process tree, orphaned when Ray's workers end, stays below this process until close
        self.adopting = adopt_orphans() is False
        self.before = descendants()
        self.started = join_ray(self.spec)
        self.up = True
        tell(self.callbacks, "Ray is up: starting the trials' workers (each loads torch and its "
                             "model before its first report)")
        stop_on_sigterm()  # after ray.init: its native handler would abort on SIGTERM

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False
            killed = end_descendants(self.before, ORPHAN_GRACE)
            if killed:
                tell(self.callbacks, f"{len(killed)} processes of the sweep's trials outlived Ray's shutdown by "
                                     f"{ORPHAN_GRACE:g} s and were killed (pids {', '.join(map(str, killed))})")
        if self.adopting:
            adopt_orphans(False)
            self.adopting = False


def search_scheduler(spec: CompiledSpec) -> Any:
    """The search's trial scheduler: ASHA, the median stopping rule, or none (FIFO)."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    mode = "max" if spec.objective.direction == "maximize" else "min"
    sched = spec.scheduler
    # past the last iteration: nothing is cut (the spec warns)
    grace = min(sched.grace_period, spec.iterations())
    if sched.type == "asha":
        return ASHAScheduler(metric=SCHEDULER_SCORE, mode=mode, max_t=spec.iterations(),
                             grace_period=grace, reduction_factor=sched.reduction_factor)
    if sched.type == "median":
        return MedianStoppingRule(metric=SCHEDULER_SCORE, mode=mode, grace_period=grace,
                                  min_samples_required=2)
    return FIFOScheduler()


def fit(spec: CompiledSpec, todo: int, searcher: Any, logger: Any,
        callbacks: Sequence[SweepCallback], scheduler: Any, time_budget: float | None,
        name: str = "tune") -> None:
    """Run `todo` trials of `searcher` through Ray Tune (Ray is up), each logged by `logger`."""
    from ray import tune

    from tuner.sweep._events import RayEvents
    from tuner.sweep._searcher import OutageStop
    from tuner.trial import run_trial

    res = spec.resources
    stopper = OutageStop(searcher)
    trainable = tune.with_resources(run_trial,
                                    {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=todo,
                                    max_concurrent_trials=res.max_concurrent, reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname,
                                    time_budget_s=time_budget),
        run_config=tune.RunConfig(name=name, storage_path=str((spec.sweep_dir() / "ray").resolve()),
                                  verbose=0, callbacks=[RayEvents(searcher, logger, callbacks)],
                                  stop=stopper,
                                  failure_config=tune.FailureConfig(
                                      max_failures=spec.budget.max_failures)),
    )
    try:
        with noting_tune_stops():
            tuner.fit()
    finally:
        stopper.close()
        try:  # while their Optuna trials can still be written
            logger.close_abandoned([t for t in map(searcher.task, searcher.running())
                                    if t is not None])
        finally:
            searcher.abandon_live()
    if searcher.writes.expired:
        searcher.writes.drain(force=True)  # one last try
        if searcher.writes.pending:
            raise StudyOutage(searcher.writes.describe())
    searcher.writes.wait()  # every result held through an outage is written


def _trial_dirname(trial: Any) -> str:
    """A trial's folder under the stage's Ray folder: trial_<study number>_<Ray's trial id>."""
    return f"trial_{trial.config.get('number', trial.trial_id)}_{trial.trial_id}"
