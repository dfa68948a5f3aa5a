"""Running a sweep: Ray Tune schedules trials, the Optuna study samples and records them, MLflow logs.

`run_sweep(spec)` creates the study or loads it (then only the trials still missing run: that is
how `tuner resume` continues an interrupted sweep), runs the trials, and ends with a summary,
plots, and the best feasible config on the parent MLflow run.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml

from trials import ConfigError, Problem
from tuner.spec import CompiledSpec, make_sampler
from tuner.sweep._callback import SweepCallback, tell
from tuner.sweep._fit import RayUse
from tuner.sweep._outage import StudyOutage
from tuner.sweep._promotion import PROMOTION, promoted_configs, promotion_missing, promotion_study
from tuner.sweep._ray_logs import RAY_LOG, route_ray_logs
from tuner.sweep._signals import stop_signal, stops_noted
from tuner.sweep._stage import (
    Stage,
    StageRun,
    missing_trials,
    promotion_stage,
    remaining_trials,
    search_stage,
)
from tuner.sweep._study import open_storage, redact, requeue_interrupted
from tuner.sweep._summary import SweepSummary, finish_sweep, summarise

__all__ = ["SweepSummary", "load_study", "open_study", "preflight", "run_sweep", "sync_tracking",
           "trials_to_run"]

log = logging.getLogger(__name__)


def open_study(spec: CompiledSpec, create: bool = False) -> tuple[optuna.Study, optuna.storages.BaseStorage]:
    """The sweep's study and its storage. A continued one (resume, or a spec run again) gets its sampler
    seeded with the spec's seed plus its number of trials: with the spec's seed alone, a resumed sweep's
    first samples would repeat the first sweep's."""
    storage = open_storage(spec.storage_url())
    try:
        done = storage.get_n_trials(storage.get_study_id_from_name(spec.name))
    except KeyError:
        done = 0
    if create:
        return optuna.create_study(study_name=spec.name, storage=storage,
                                   sampler=make_sampler(spec, done), directions=spec.directions(),
                                   load_if_exists=True), storage
    try:
        sampler = make_sampler(spec, done)
        return optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler), storage
    except KeyError:
        raise ConfigError([Problem("sweep", spec.name, f"has no study in {redact(spec.storage_url())}",
                                   "start it with 'tuner run SPEC'")]) from None


def load_study(spec: CompiledSpec, create: bool = False) -> optuna.Study:
    """The sweep's study (see open_study)."""
    return open_study(spec, create)[0]


def sync_tracking(spec: CompiledSpec) -> dict[str, int]:
    """Write to MLflow what the study holds and MLflow lacks (`TrialLogger.reconcile`): after an outage of
    the tracking server longer than its client's retries, or a controller that died. Returns the counts."""
    from tuner.sweep._tracking import SweepTracker, TrialLogger

    quiet_libraries()
    study = load_study(spec)  # a sweep still running keeps its runs: only those of finished trials are closed
    tracker = SweepTracker(spec, study, reopen=False)
    counts = TrialLogger(tracker).reconcile(study)
    promotion = promotion_study(spec, open_storage(spec.storage_url()))
    if promotion is not None:
        for key, value in TrialLogger(tracker, kind=PROMOTION).reconcile(promotion).items():
            counts[key] += value
    alive = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING))
    if not alive and tracker.client.get_run(tracker.parent_id).info.status == "RUNNING":
        tracker.client.set_terminated(tracker.parent_id, status="FINISHED")
        counts["closed"] += 1
    return counts


def preflight(spec: CompiledSpec) -> None:
    """Check, before anything is written, that the MLflow server (where the spec names one) answers, and,
    once before any trial is launched, what every trial needs: our engine's model, prompts and
    reward; an external trainer's program (and, for trl, that its interpreter imports trl, torch and
    transformers), where the trials run on this machine (on a cluster, where Ray puts them)."""
    from tuner.sweep._tracking import check_tracking_server

    check_tracking_server(spec)
    if spec.trial.engine != "ppo-tuner":
        if not (spec.ray and spec.ray.address) and not os.environ.get("RAY_ADDRESS"):
            from tuner.trial import check_trainer

            check_trainer(spec.trial.engine, list(spec.trial.command or ()), dict(spec.trial.env))
        else:
            _check_shared_folder(spec)
        return
    from trials import ConfigError, PPOTrainer, TunerError, check_vllm_python

    base = dataclasses.replace(spec.base, num_iterations=1)
    try:  # loads and checks the model, tokenizer, prompts, reward
        if base.rollout_engine == "vllm":  # its python imports vllm; the server itself starts in the trials
            problem = check_vllm_python(base.vllm_python)
            if problem:
                raise ConfigError([problem])
            base = dataclasses.replace(base, rollout_engine="hf")
        PPOTrainer(base)
    except TunerError as exc:
        raise spec.in_spec_terms(exc) from None


def _check_shared_folder(spec: CompiledSpec) -> None:
    """On a cluster, for an engine whose Ray actors write a trial's metrics in its folder from any node
    (verl): the sweep's folder must be one storage on every node (tuner.cluster.unshared_nodes)."""
    from tuner.engines import engine

    if not engine(spec.trial.engine).path_setting:
        return
    import ray

    from tuner.cluster import unshared_nodes
    from tuner.sweep._fit import join_ray

    folder = spec.sweep_dir().resolve()
    made = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    started = join_ray(spec)
    try:
        unshared = unshared_nodes(folder)
    finally:
        if started:
            ray.shutdown()
        for made_here in made:  # nothing is left of the check
            made_here.rmdir()
    if unshared:
        raise ConfigError([Problem(
            "workdir", spec.spec.workdir,
            f"is not one storage on every node: {len(unshared)} of the cluster's nodes see another folder at "
            f"{folder} ({', '.join(unshared[:3])}), and verl's actors write each trial's metrics and "
            "checkpoints there from any node",
            "put workdir on storage every node mounts at the same path (NFS, a ReadWriteMany volume; "
            "docs/cluster.md, 'Shared storage')")])


def quiet_libraries() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("ray", "ray.tune", "ray.tune.analysis.experiment_analysis"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_sweep(spec: CompiledSpec, callbacks: Sequence[SweepCallback] = ()) -> SweepSummary:
    """Run the trials the budget still wants, then the promotion of the best configs; returns the
    summary record (nothing is printed here: the CLI renders it, and its live table is one of
    `callbacks`). The spec was checked by `preflight` before. A Ctrl-C or SIGTERM at any point stops
    it as one inside a trial's run does: no further trial starts, what ran is recorded, and the summary
    says what is missing (`stops_noted`)."""
    with stops_noted():
        return _run_sweep(spec, callbacks)


def _run_sweep(spec: CompiledSpec, callbacks: Sequence[SweepCallback]) -> SweepSummary:
    from tuner.sweep._tracking import SweepTracker

    study, storage = _open(spec, callbacks)
    todo = remaining_trials(study, spec.budget.trials, storage)
    requeue_interrupted(study, todo)  # their configs run first
    tracker = SweepTracker(spec, study)
    search = search_stage(spec, study, storage, tracker, todo)
    ray, started, writes = RayUse(spec, callbacks), time.perf_counter(), search.searcher.writes
    try:
        try:
            searched = search.run(spec, ray, callbacks)
            # after Ctrl-C the trials it stopped may read alike: the signal is the reason then
            alike = search.searcher.failing_alike() if stop_signal() is None else None
            promoted = StageRun()
            if stop_signal() is None and alike is None and not writes.wait(
                    lambda: missing_trials(spec, study)):  # the search is done and was not stopped
                promotion = promotion_stage(spec, study, storage, tracker, started)
                promoted = (promotion.run(spec, ray, callbacks) if isinstance(promotion, Stage)
                            else promotion)
        finally:
            ray.close()
        # the study's reads retried likewise through an outage
        summary = writes.wait(lambda: summarise(spec, study, storage, tracker.parent_id, searched,
                                                promoted, time.perf_counter() - started))
        writes.wait(lambda: finish_sweep(spec, study, tracker, summary))
        summary.failed_alike = alike or ""
        return summary
    except StudyOutage as exc:  # stopped as on Ctrl-C; what the study lacks runs again on resume
        tracker.finish({}, None, status="KILLED")
        raise StudyOutage(f"{exc}; the sweep stopped ({len(writes.pending)} study writes not made: "
                          "their trials run again on resume)") from None


def _open(spec: CompiledSpec, callbacks: Sequence[SweepCallback]) -> tuple[optuna.Study, Any]:
    """The sweep's folder, its Ray log and resolved spec written, then its study opened
    (created)."""
    quiet_libraries()
    spec.sweep_dir().mkdir(parents=True, exist_ok=True)
    route_ray_logs(spec.sweep_dir() / RAY_LOG)
    saved = {**spec.resolved(), "workdir": str(Path(spec.workdir).resolve())}
    spec.spec_file().write_text(yaml.safe_dump(saved, sort_keys=False))
    tell(callbacks, f"opening the study and the MLflow store in {spec.sweep_dir()}")
    return open_study(spec, create=True)


def trials_to_run(spec: CompiledSpec) -> int:
    """How many trials `run_sweep` would run now: the budget for a sweep without a study yet, else the
    trials still missing (see remaining_trials), plus the promotion runs still missing once the search is
    done. Writes nothing for a sweep that never started."""
    if not spec.spec_file().is_file():  # run_sweep writes it first: this sweep never started here
        return spec.budget.trials
    try:
        study, storage = open_study(spec)
    except ConfigError:  # no study yet
        return spec.budget.trials
    todo = remaining_trials(study, spec.budget.trials, storage)
    if todo:
        return todo
    configs = promoted_configs(spec, study, promotion_study(spec, storage))
    return promotion_missing(configs)
