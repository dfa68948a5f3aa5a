"""Running a sweep: Ray Tune schedules trials, the Optuna study samples and records them, MLflow logs.

`run_sweep(spec)` creates the study or loads it (then only the trials still missing run: that is
how `tuner resume` continues an interrupted sweep), runs the trials, and ends with a summary,
plots, and the best feasible config on the parent MLflow run.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml

from trials import ConfigError, Problem
from tuner.spec import SweepSpec, make_sampler
from tuner.sweep import _plots
from tuner.sweep._study import (
    ATTR,
    best_feasible,
    count_states,
    engine_config_of,
    open_storage,
    redact,
    state_of,
)

__all__ = ["SweepSummary", "run_sweep", "remaining_trials", "load_study", "preflight"]

log = logging.getLogger(__name__)
SPEC_FILE = "spec.yaml"  # the resolved spec, kept in the sweep's directory for resume/status/export


@dataclass
class SweepSummary:
    name: str
    sweep_dir: Path
    counts: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_kl: float | None
    wall_seconds: float
    trial_compute_seconds: float
    trial_wall_seconds: float
    concurrency: int
    ran: int
    parent_run_id: str
    missing: int = 0  # trials of the budget still to run (interrupted, or the wall-clock budget ran out)
    artifacts: list[str] = field(default_factory=list)

    @property
    def overhead(self) -> float:
        """Sweep wall time over the ideal: the sum of trial compute divided by the concurrency."""
        ideal = self.trial_compute_seconds / max(1, min(self.concurrency, self.ran))
        return self.wall_seconds / ideal if ideal > 0 else float("nan")


def load_study(spec: SweepSpec, create: bool = False) -> optuna.Study:
    """The sweep's study. A continued one (resume, or a spec run again) gets its sampler seeded with the
    spec's seed plus its number of trials: with the spec's seed alone, a resumed sweep's first samples
    would repeat the first sweep's."""
    storage = open_storage(spec.storage_url())
    try:
        done = storage.get_n_trials(storage.get_study_id_from_name(spec.name))
    except KeyError:
        done = 0
    if create:
        return optuna.create_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec, done),
                                   directions=spec.directions(), load_if_exists=True)
    try:
        return optuna.load_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec, done))
    except KeyError:
        raise ConfigError([Problem("sweep", spec.name, f"has no study in {redact(spec.storage_url())}",
                                   "start it with 'tuner run SPEC'")]) from None


def _counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts toward the budget: it ended, and not because its controller stopped."""
    alive = trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    copy = ATTR["duplicate"] in trial.user_attrs  # told an earlier trial's outcome, never run
    return not alive and not copy and trial.user_attrs.get(ATTR["stop"]) != "interrupted"


def remaining_trials(study: optuna.Study, wanted: int) -> int:
    """Trials still to run. Trials left RUNNING by a dead controller are marked FAIL (interrupted)
    and run again; every other finished trial counts toward the budget."""
    for trial in study.get_trials(deepcopy=False):
        if trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
            study._storage.set_trial_user_attr(trial._trial_id, ATTR["stop"], "interrupted")
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
    return max(0, wanted - sum(map(_counts, study.get_trials(deepcopy=False))))


def preflight(spec: SweepSpec) -> None:
    """Check what every trial needs (model, prompts, reward) once, before any trial is launched."""
    from trials import PPOTrainer
    from tuner.spec import trial_config

    base = trial_config(spec, {}).replace(num_iterations=1)
    PPOTrainer(base)  # loads and checks the model, the tokenizer, the prompts and the reward


def quiet_libraries() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in ("ray", "ray.tune", "ray.tune.analysis.experiment_analysis"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _ray_init(spec: SweepSpec) -> bool:
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


def run_sweep(spec: SweepSpec, *, stream: Any = None) -> SweepSummary:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, MedianStoppingRule

    from tuner.sweep._searcher import StudySearcher
    from tuner.sweep._table import LiveTable, render_rows
    from tuner.sweep._tracking import SweepTracker, TrialLogger
    from tuner.sweep._trainable import SCHEDULER_SCORE, run_trial

    quiet_libraries()
    sweep_dir = spec.sweep_dir()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    saved = {**spec.resolved(), "workdir": str(Path(spec.workdir).resolve())}
    (sweep_dir / SPEC_FILE).write_text(yaml.safe_dump(saved, sort_keys=False))
    study = load_study(spec, create=True)
    todo = remaining_trials(study, spec.budget.trials)
    tracker = SweepTracker(spec, study)
    searcher = StudySearcher(study, spec)
    logger = TrialLogger(tracker, searcher)
    logger.reconcile(study)
    table = LiveTable(searcher, f"sweep {spec.name}", stream)
    started = time.perf_counter()
    if todo:
        mode = "max" if spec.objective.direction == "maximize" else "min"
        sched = spec.scheduler
        grace = min(sched.grace_period, spec.iterations())  # past the last iteration: nothing is cut (the spec warns)
        if sched.type == "asha":
            scheduler = ASHAScheduler(metric=SCHEDULER_SCORE, mode=mode, max_t=spec.iterations(),
                                      grace_period=grace, reduction_factor=sched.reduction_factor)
        elif sched.type == "median":
            scheduler = MedianStoppingRule(metric=SCHEDULER_SCORE, mode=mode, grace_period=grace,
                                           min_samples_required=2)
        else:
            scheduler = FIFOScheduler()
        started_ray = _ray_init(spec)
        res = spec.resources
        trainable = tune.with_resources(run_trial, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=todo,
                                        max_concurrent_trials=res.max_concurrent, reuse_actors=True,
                                        trial_dirname_creator=_trial_dirname,
                                        time_budget_s=spec.budget.wall_clock),
            run_config=tune.RunConfig(name="tune", storage_path=str((sweep_dir / "ray").resolve()), verbose=0,
                                      callbacks=[logger, table],
                                      failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures)),
        )
        try:
            tuner.fit()
        finally:
            table.stop()
            try:
                logger.close_abandoned(list(searcher.live))  # while their Optuna trials can still be written
            finally:
                searcher.abandon_live()
                if started_ray:
                    import ray

                    ray.shutdown()
    summary = _summarise(spec, study, tracker, table, time.perf_counter() - started, ran=todo)
    summary.missing = max(0, spec.budget.trials - sum(map(_counts, study.get_trials(deepcopy=False))))
    table.console.print(render_rows(_final_rows(study), f"sweep {spec.name}: all trials"))
    return summary


def _trial_dirname(trial: Any) -> str:
    return f"trial_{trial.config.get('number', trial.trial_id)}_{trial.trial_id}"


def _final_rows(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        engine = json.loads(t.user_attrs.get(ATTR["engine"], "{}"))
        rows.append({"number": t.number, "state": state_of(t), "iteration": t.user_attrs.get(ATTR["iterations"], "-"),
                     "score": t.values[0] if t.values else None, "kl": t.user_attrs.get(ATTR["kl_final"]),
                     "kl_max": t.user_attrs.get(ATTR["kl_max"]), "beta": engine.get("kl_coef"),
                     "stop": t.user_attrs.get(ATTR["stop"], "")})
    return rows


def _summarise(spec: SweepSpec, study: optuna.Study, tracker: Any, table: Any, wall: float, ran: int) -> SweepSummary:
    counts = count_states(study)
    best = best_feasible(study)
    artifacts = _artifacts(spec, study, tracker, best)
    summary = SweepSummary(
        name=spec.name, sweep_dir=spec.sweep_dir(), counts=counts, best_number=best.number if best else None,
        best_value=best.values[0] if best else None, best_kl=best.user_attrs.get(ATTR["kl_max"]) if best else None,
        wall_seconds=wall, trial_compute_seconds=sum(table.compute.values()),
        trial_wall_seconds=sum(table.wall.values()), concurrency=spec.resources.max_concurrent, ran=ran,
        parent_run_id=tracker.parent_id, artifacts=artifacts)
    metrics = {f"trials_{k.lower()}": float(v) for k, v in counts.items()}
    metrics.update({"sweep_wall_seconds": wall, "sweep_overhead_ratio": summary.overhead,
                    "trial_compute_seconds": summary.trial_compute_seconds})
    if best:
        metrics.update({"best_value": best.values[0], "best_trial": float(best.number)})
    tags = {"ppo_tuner.best_trial": str(best.number) if best else "none"}
    tracker.finish(metrics, tags)
    return summary


def _artifacts(spec: SweepSpec, study: optuna.Study, tracker: Any, best: Any) -> list[str]:
    out_dir = spec.sweep_dir() / "artifacts"
    out_dir.mkdir(exist_ok=True)
    made: list[Path] = []
    curves, points = [], []
    runs = {r.info.run_id: r for r in tracker.child_runs()}
    for t in study.get_trials(deepcopy=False):
        run_id = t.user_attrs.get(ATTR["mlflow_run"])
        if run_id not in runs:
            continue
        history = tracker.client.get_metric_history(run_id, "objective/kl")
        engine = json.loads(t.user_attrs.get(ATTR["engine"], "{}"))
        kl = sorted((m.step, m.value) for m in history)
        curves.append({"number": t.number, "beta": engine.get("kl_coef"), "kl": kl, "state": state_of(t)})
        if kl and t.values:
            points.append({"number": t.number, "kl": kl[-1][1], "score": t.values[0], "state": state_of(t)})
    made.append(_plots.kl_trajectories(curves, spec.kl_limit, out_dir / "kl_trajectories.png"))
    if points:
        made.append(_plots.reward_vs_kl(points, spec.kl_limit, out_dir / "reward_vs_kl.png", spec.objective.metric))
    importance = _plots.param_importance(study, out_dir / "param_importance.png")
    if importance:
        made.append(importance)
    if best is not None:
        from trials import PPOConfig
        from tuner.export import export_config

        text, _ = export_config(PPOConfig.from_dict(engine_config_of(best)), "yaml",
                                source={"sweep": spec.name, "trial": best.number, "objective": best.values[0]})
        (out_dir / "best_config.yaml").write_text(text)
        made.append(out_dir / "best_config.yaml")
    for path in made:
        tracker.log_file(path)
    return [str(p) for p in made]
