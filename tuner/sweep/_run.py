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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from trials import ConfigError, Problem
from trials import metrics as K
from tuner.spec import CompiledSpec, make_sampler
from tuner.sweep import _plots
from tuner.sweep._callback import SweepCallback
from tuner.sweep._diagnose import write_diagnosis
from tuner.sweep._outage import StudyOutage
from tuner.sweep._promotion import (
    PROMOTION,
    Choice,
    PromotedConfig,
    choose,
    missing_runs,
    plan,
    promoted_configs,
    promotion_metrics,
    promotion_missing,
    promotion_study,
    write_table,
)
from tuner.sweep._ray_logs import RAY_LOG, route_ray_logs
from tuner.sweep._signals import noting_tune_stops, stop_on_sigterm, stop_signal
from tuner.sweep._study import (
    ATTR,
    TrialRow,
    best_feasible,
    count_states,
    interrupted,
    mark_interrupted,
    open_storage,
    redact,
    requeue_interrupted,
    trial_rows,
)
from tuner.trial import SCHEDULER_SCORE, Outcome

__all__ = ["SweepSummary", "load_study", "open_study", "preflight", "remaining_trials", "run_sweep", "sync_tracking",
           "trials_to_run"]

log = logging.getLogger(__name__)


@dataclass
class SweepSummary:
    """What `run_sweep` returns: the study's counts and best trial, this run's timings, the trials."""

    name: str
    sweep_dir: Path
    counts: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_kl: float | None
    wall_seconds: float
    trial_compute_seconds: float  # the sum of this run's trials' iteration seconds
    concurrency: int
    ran: int
    parent_run_id: str
    missing: int = 0  # trials of the budget still to run (interrupted, or the wall-clock budget ran out)
    artifacts: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)  # this run's trials, as they ended
    trials: list[TrialRow] = field(default_factory=list)  # every trial of the study, as it holds them
    diagnosis: str = ""  # the diagnosis section (tuner.diagnosis.render); empty where MLflow could not be read
    promotion_ran: int = 0  # promotion runs this run ran
    promoted: list[PromotedConfig] = field(default_factory=list)  # the promotion's configs and their runs so far
    promotion_missing: int = 0  # promotion runs still to run (interrupted, or the wall-clock budget ran out)
    promotion_note: str = ""  # why the promotion did not run where it was due
    choice: Choice | None = None  # the config `tuner export` exports
    failed_alike: str = ""  # the error's last line, where the first trials all failed with it
    overoptimized: list[int] = field(default_factory=list)  # trials whose training reward rose while the held-out fell

    @property
    def ideal_seconds(self) -> float:
        """The sum of trial compute divided by the concurrency."""
        return self.trial_compute_seconds / max(1, min(self.concurrency, self.ran + self.promotion_ran))

    @property
    def overhead(self) -> float:
        """Sweep wall time over the ideal."""
        ideal = self.ideal_seconds
        return self.wall_seconds / ideal if ideal > 0 else float("nan")


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


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts toward the budget: it ended, and not because its controller stopped."""
    alive = trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    copy = ATTR["duplicate"] in trial.user_attrs or ATTR["unlaunched"] in trial.user_attrs  # never run
    return not alive and not copy and not interrupted(trial)


def remaining_trials(study: optuna.Study, wanted: int, storage: optuna.storages.BaseStorage) -> int:
    """Trials still to run. Trials left RUNNING by a dead controller are marked FAIL (interrupted)
    and run again (`requeue_interrupted`); every other finished trial counts toward the budget."""
    mark_interrupted(study, storage)
    return max(0, wanted - sum(map(_counts, study.get_trials(deepcopy=False))))


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
        return
    from trials import PPOTrainer, TunerError

    try:  # loads and checks the model, tokenizer, prompts, reward
        PPOTrainer(dataclasses.replace(spec.base, num_iterations=1))
    except TunerError as exc:
        raise spec.in_spec_terms(exc) from None


def quiet_libraries() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("ray", "ray.tune", "ray.tune.analysis.experiment_analysis"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _ray_init(spec: CompiledSpec) -> bool:
    """Join `ray.address`, else the cluster RAY_ADDRESS names (as in a Ray job's driver), else start a
    local Ray. A jobs-API address (http://HEAD:8265) is for `tuner submit`: never joined."""
    import socket

    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if ray.is_initialized():
        return False
    field, address = "ray.address", (spec.ray.address if spec.ray else None) or None
    env_address = os.environ.get("RAY_ADDRESS", "").strip()
    if address in (None, "auto") and env_address and not (address is None and env_address.startswith("http")):
        field, address = "RAY_ADDRESS", env_address
    if address and address.startswith(("http://", "https://")):
        raise ConfigError([Problem(field, address, "is a Ray jobs API address, which 'tuner run' cannot join",
                                   f"submit the sweep there with 'tuner submit SPEC --address {address}', or give "
                                   "the cluster's address: 'auto' on a cluster node, 'HOST:6379' or 'ray://HOST:10001'")])
    host, _, port = (address or "").rpartition(":")
    if host and port.isdigit() and "://" not in address:  # a GCS address: Ray would retry it for minutes
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except OSError:
            raise ConfigError([Problem(field, address, "no Ray cluster answers there",
                                       "start the cluster, or fix the address (empty: a local Ray)")]) from None
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR, "log_to_driver": False}
    if not address:
        kwargs["num_cpus"] = (spec.ray.num_cpus if spec.ray and spec.ray.num_cpus else None) or os.cpu_count()
    try:
        ray.init(address=address or "local", **kwargs)  # "local": a new Ray, never one found on this machine
    except ConnectionError as exc:  # 'auto' found no cluster
        raise ConfigError([Problem(field, address, f"no Ray cluster found ({str(exc).splitlines()[0][:200]})",
                                   "start one (ray start --head), or fix the address (empty: a local Ray)")]) from None
    return True


def run_sweep(spec: CompiledSpec, callbacks: Sequence[SweepCallback] = ()) -> SweepSummary:
    """Run the trials the budget still wants; returns the summary record (nothing is printed here:
    the CLI renders it, and its live table is one of `callbacks`)."""
    from tuner.sweep._searcher import StudySearcher
    from tuner.sweep._tracking import SweepTracker, TrialLogger

    quiet_libraries()
    spec.sweep_dir().mkdir(parents=True, exist_ok=True)
    route_ray_logs(spec.sweep_dir() / RAY_LOG)
    saved = {**spec.resolved(), "workdir": str(Path(spec.workdir).resolve())}
    spec.spec_file().write_text(yaml.safe_dump(saved, sort_keys=False))
    _tell(callbacks, f"opening the study and the MLflow store in {spec.sweep_dir()}")
    study, storage = open_study(spec, create=True)
    todo = remaining_trials(study, spec.budget.trials, storage)
    requeue_interrupted(study, todo)  # their configs run first
    tracker = SweepTracker(spec, study)
    searcher = StudySearcher(study, spec, storage)
    logger = TrialLogger(tracker)
    logger.reconcile(study)
    ray_use = RayUse(spec, callbacks)
    started = time.perf_counter()
    try:
        try:
            if todo:
                ray_use.ensure(f"{todo} trial{'s' if todo != 1 else ''}")
                fit(spec, todo, searcher, logger, callbacks, _scheduler(spec), spec.budget.wall_clock)
            outcomes = searcher.outcomes()
            # after Ctrl-C the trials it stopped may read alike: the signal is the reason then
            alike = searcher.failing_alike() if stop_signal() is None else None
            ran = searcher.ran()
            stage = Promotion()
            if stop_signal() is None and alike is None and not searcher.writes.wait(
                    lambda: _missing(spec, study)):
                # the search is done and was not stopped: its best configs run again
                stage = _promote(spec, study, storage, tracker, callbacks, ray_use, started)
        finally:
            ray_use.close()
        # the study's reads retried likewise through an outage
        summary = searcher.writes.wait(
            lambda: _summarise(spec, study, storage, tracker, outcomes,
                               time.perf_counter() - started, ran=ran, stage=stage))
        summary.failed_alike = alike or ""
        return summary
    except StudyOutage as exc:  # stopped as on Ctrl-C; what the study could not be told runs again on resume
        tracker.finish({}, None, status="KILLED")
        held = len(searcher.writes.pending)
        raise StudyOutage(f"{exc}; the sweep stopped ({held} study writes not made: their trials run again "
                          "on resume)") from None


@dataclass
class Promotion:
    """What the promotion stage did in this run: its runs' outcomes, and the runs it had to do."""

    outcomes: list[Outcome] = field(default_factory=list)
    todo: int = 0
    ran: int = 0  # runs started (a Ctrl-C also records the runs it kept from starting)
    skipped: str = ""  # why it did not run, where it was due


def _promote(spec: CompiledSpec, search: optuna.Study, storage: optuna.storages.BaseStorage, tracker: Any,
             callbacks: Sequence[SweepCallback], ray_use: RayUse, started: float) -> Promotion:
    """Run the promotion runs the promotion study does not hold yet (see _promotion)."""
    from ray.tune.schedulers import FIFOScheduler

    from tuner.sweep._searcher import PromotionSearcher
    from tuner.sweep._tracking import TrialLogger

    planned = plan(spec, search)
    if not planned:
        return Promotion()
    study = promotion_study(spec, storage, create=True)
    todo = missing_runs(planned, study, storage)
    logger = TrialLogger(tracker, kind=PROMOTION)
    logger.reconcile(study)
    if not todo:
        return Promotion()
    left = spec.budget.wall_clock - (time.perf_counter() - started) if spec.budget.wall_clock else None
    if left is not None and left <= 0:
        return Promotion(todo=len(todo), skipped="the wall-clock budget was spent by the search")
    configs = len({run.source for run in planned})
    for callback in callbacks:
        seeds = spec.budget.promote.seeds
        callback.stage_started(PROMOTION, f"promotion: the best {configs} config{'s' if configs != 1 else ''} x "
                                          f"{seeds} fresh seed{'s' if seeds != 1 else ''}, {spec.promote_iterations()} "
                                          f"iterations each ({len(todo)} run{'s' if len(todo) != 1 else ''} to do)")
    ray_use.ensure(f"{len(todo)} promotion run{'s' if len(todo) != 1 else ''}")
    searcher = PromotionSearcher(study, spec, storage, todo)
    fit(spec, len(todo), searcher, logger, callbacks, FIFOScheduler(), left, name=PROMOTION)
    return Promotion(outcomes=searcher.outcomes(), todo=len(todo), ran=searcher.ran())


def _missing(spec: CompiledSpec, study: optuna.Study) -> int:
    """Trials of the search's budget still to run."""
    return max(0, spec.budget.trials - sum(map(_counts, study.get_trials(deepcopy=False))))


def _tell(callbacks: Sequence[SweepCallback], message: str) -> None:
    for callback in callbacks:
        callback.phase(message)


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


def _scheduler(spec: CompiledSpec) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    mode = "max" if spec.objective.direction == "maximize" else "min"
    sched = spec.scheduler
    grace = min(sched.grace_period, spec.iterations())  # past the last iteration: nothing is cut (the spec warns)
    if sched.type == "asha":
        return ASHAScheduler(metric=SCHEDULER_SCORE, mode=mode, max_t=spec.iterations(),
                             grace_period=grace, reduction_factor=sched.reduction_factor)
    if sched.type == "median":
        return MedianStoppingRule(metric=SCHEDULER_SCORE, mode=mode, grace_period=grace, min_samples_required=2)
    return FIFOScheduler()


class RayUse:
    """Ray for the sweep's stages: started (or joined) by the first stage that runs trials, shut down at
    the end of the sweep if this sweep started it."""

    def __init__(self, spec: CompiledSpec, callbacks: Sequence[SweepCallback]):
        self.spec, self.callbacks, self.started, self.up = spec, callbacks, False, False

    def ensure(self, what: str) -> None:
        if self.up:
            return
        address = (self.spec.ray.address if self.spec.ray else None) or os.environ.get("RAY_ADDRESS")
        _tell(self.callbacks, (f"joining the Ray cluster at {address}" if address else "starting a local Ray")
              + f" for {what}, {self.spec.resources.max_concurrent} at a time")
        self.started = _ray_init(self.spec)
        self.up = True
        _tell(self.callbacks, "Ray is up: starting the trials' workers (each loads torch and its model before its "
                              "first report)")
        stop_on_sigterm()  # after ray.init: its native handler would abort on SIGTERM

    def close(self) -> None:
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def fit(spec: CompiledSpec, todo: int, searcher: Any, logger: Any, callbacks: Sequence[SweepCallback],
        scheduler: Any, time_budget: float | None, name: str = "tune") -> None:
    """Run `todo` trials of `searcher` through Ray Tune (Ray is up), each logged by `logger`."""
    from ray import tune

    from tuner.sweep._events import RayEvents
    from tuner.sweep._searcher import OutageStop
    from tuner.trial._trainable import run_trial

    res = spec.resources
    stopper = OutageStop(searcher)
    trainable = tune.with_resources(run_trial, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=todo,
                                    max_concurrent_trials=res.max_concurrent, reuse_actors=True,
                                    trial_dirname_creator=_trial_dirname, time_budget_s=time_budget),
        run_config=tune.RunConfig(name=name, storage_path=str((spec.sweep_dir() / "ray").resolve()), verbose=0,
                                  callbacks=[RayEvents(searcher, logger, callbacks)], stop=stopper,
                                  failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures)),
    )
    try:
        with noting_tune_stops():
            tuner.fit()
    finally:
        stopper.close()
        try:  # while their Optuna trials can still be written
            logger.close_abandoned([t for t in map(searcher.task, searcher.running()) if t is not None])
        finally:
            searcher.abandon_live()
    if searcher.writes.expired:
        searcher.writes.drain(force=True)  # one last try
        if searcher.writes.pending:
            raise StudyOutage(searcher.writes.describe())
    searcher.writes.wait()  # every result held through an outage is written


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.config.get('number', trial.trial_id)}_{trial.trial_id}"


def _summarise(spec: CompiledSpec, study: optuna.Study, storage: optuna.storages.BaseStorage, tracker: Any,
               outcomes: list[Outcome], wall: float, ran: int, stage: Promotion) -> SweepSummary:
    counts = count_states(study)
    best = best_feasible(study)
    configs = promoted_configs(spec, study, promotion_study(spec, storage))
    choice = choose(spec, study, configs)
    rows = trial_rows(study)
    from mlflow.exceptions import MlflowException

    diagnosis = ""
    try:
        artifacts = _artifacts(spec, study, rows, tracker, choice, configs)
        diagnosis, path = write_diagnosis(spec, study, tracker, spec.sweep_dir() / "artifacts")
        artifacts.append(str(path))
    except MlflowException as exc:  # the tracking server is away; the study has every outcome
        log.warning("MLflow: the sweep's plots could not be written (%s); 'tuner sync %s' closes the runs",
                    str(exc).splitlines()[0][:200], spec.name)
        artifacts = []
    done = [*outcomes, *stage.outcomes]
    summary = SweepSummary(
        name=spec.name, sweep_dir=spec.sweep_dir(), counts=counts, best_number=best.number if best else None,
        best_value=best.values[0] if best else None, best_kl=best.user_attrs.get(ATTR["kl_max"]) if best else None,
        wall_seconds=wall, trial_compute_seconds=sum(o.compute_seconds for o in done),
        concurrency=spec.resources.max_concurrent, ran=ran, promotion_ran=stage.ran,
        parent_run_id=tracker.parent_id,
        artifacts=artifacts, outcomes=outcomes, trials=rows, missing=_missing(spec, study),
        promoted=configs, promotion_missing=promotion_missing(configs), promotion_note=stage.skipped, choice=choice,
        overoptimized=[r.number for r in rows if r.overoptimized], diagnosis=diagnosis)
    metrics = {f"trials_{k.lower()}": float(v) for k, v in counts.items()}
    metrics.update({"sweep_wall_seconds": wall,
                    "trial_compute_seconds": summary.trial_compute_seconds})
    if summary.trial_compute_seconds > 0:  # no ratio where no trial computed anything
        metrics["sweep_overhead_ratio"] = summary.overhead
    if best:
        metrics.update({"best_value": best.values[0], "best_trial": float(best.number)})
    metrics.update(promotion_metrics(configs))
    if spec.trial.eval_reward:
        metrics["trials_overoptimized"] = float(len(summary.overoptimized))
    try:
        tracker.finish(metrics, choice.trial.number if choice else None)
    except MlflowException as exc:  # the tracking server is away: said, and repaired by tuner sync
        log.warning("MLflow: the parent run could not be closed (%s); 'tuner sync %s' closes it",
                    str(exc).splitlines()[0][:200], spec.name)
    return summary


def _artifacts(spec: CompiledSpec, study: optuna.Study, rows: list[TrialRow], tracker: Any, choice: Choice | None,
               configs: list[PromotedConfig]) -> list[str]:
    """The sweep's plots, promotion table and best config, in its folder and on the parent run. `rows`:
    trial_rows(study), in the study's order."""
    out_dir = spec.sweep_dir() / "artifacts"
    out_dir.mkdir(exist_ok=True)
    made: list[Path] = []
    curves, points = [], []
    runs = {r.info.run_id for r in tracker.child_runs()}
    for t, row in zip(study.get_trials(deepcopy=False), rows, strict=True):
        run_id = t.user_attrs.get(ATTR["mlflow_run"])
        if run_id not in runs:
            continue
        kl = tracker.metric_history(run_id, K.KL)
        curves.append({"number": t.number, "beta": row.beta, "kl": kl, "state": row.state})
        if kl and t.values:
            points.append({"number": t.number, "kl": kl[-1][1], "score": t.values[0], "state": row.state})
    made.append(_plots.kl_trajectories(curves, spec.kl_limit, out_dir / "kl_trajectories.png"))
    if points:
        made.append(_plots.reward_vs_kl(points, spec.kl_limit, out_dir / "reward_vs_kl.png", spec.objective.metric))
    heldout = [{"number": r.number, "kl": r.kl_final, "train": r.eval, "gold": r.gold, "overoptimized": r.overoptimized}
               for r in rows if None not in (r.kl_final, r.eval, r.gold)]
    if heldout:
        made.append(_plots.heldout_vs_kl(heldout, spec.kl_limit, out_dir / "heldout_vs_kl.png"))
    importance = _plots.param_importance(study, out_dir / "param_importance.png")
    if importance:
        made.append(importance)
    if configs:
        made.append(write_table(configs, out_dir / "promotion.csv"))
    if choice is not None:  # our engine's config; an external trainer's searched values
        from tuner.sweep._export import export_choice

        text, _ = export_choice(spec, choice, "yaml")
        (out_dir / "best_config.yaml").write_text(text)
        made.append(out_dir / "best_config.yaml")
    for path in made:
        tracker.log_file(path)
    return [str(p) for p in made]
