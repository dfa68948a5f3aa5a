"""The sweep's record: `SweepSummary`, built from one read of the study's trials, and what the
sweep leaves behind (plots, the promotion's table, the best config, the diagnosis, the parent run's
metrics)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from trials import metrics as K
from tuner.spec import CompiledSpec
from tuner.sweep import _plots
from tuner.sweep._diagnose import write_diagnosis
from tuner.sweep._promotion import (
    Choice,
    PromotedConfig,
    choose,
    promoted_configs,
    promotion_metrics,
    promotion_missing,
    promotion_study,
    write_table,
)
from tuner.sweep._stage import StageRun, counts_toward_budget
from tuner.sweep._study import ATTR, TrialRow, ranked_of, trial_rows
from tuner.trial import STATES, Outcome

__all__ = ["SweepSummary", "finish_sweep", "summarise"]

log = logging.getLogger(__name__)


@dataclass
class SweepSummary:
    """What `run_sweep` returns: the study's counts and best trial, this run's timings, the
    trials."""

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
    # trials of the budget still to run (interrupted, or the wall-clock budget ran out)
    missing: int = 0
    artifacts: list[str] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)  # this run's trials, as they ended
    # every trial of the study, as it holds them
    trials: list[TrialRow] = field(default_factory=list)
    # the diagnosis section (tuner.diagnosis.render); empty where MLflow could not be read
    diagnosis: str = ""
    promotion_ran: int = 0  # promotion runs this run ran
    # the promotion's configs and their runs so far
    promoted: list[PromotedConfig] = field(default_factory=list)
    # promotion runs still to run (interrupted, or the wall-clock budget ran out)
    promotion_missing: int = 0
    promotion_note: str = ""  # why the promotion did not run where it was due
    choice: Choice | None = None  # the config `tuner export` exports
    failed_alike: str = ""  # the error's last line, where the first trials all failed with it
    # trials whose training reward rose while the held-out fell
    overoptimized: list[int] = field(default_factory=list)

    @property
    def ideal_seconds(self) -> float:
        """The sum of trial compute divided by the concurrency."""
        ran = self.ran + self.promotion_ran
        return self.trial_compute_seconds / max(1, min(self.concurrency, ran))

    @property
    def overhead(self) -> float:
        """Sweep wall time over the ideal."""
        ideal = self.ideal_seconds
        return self.wall_seconds / ideal if ideal > 0 else float("nan")


def summarise(spec: CompiledSpec, study: optuna.Study, storage: optuna.storages.BaseStorage,
              parent_run_id: str, search: StageRun, promotion: StageRun,
              wall: float) -> SweepSummary:
    """The sweep's record: the search study's trials read once (with their rows, in the study's
    order) and tallied in one pass; the promotion's configs and the answer from the two studies."""
    trials, rows = study.get_trials(deepcopy=False), trial_rows(study)
    counts, done, flagged = dict.fromkeys(STATES, 0), 0, []
    for trial, row in zip(trials, rows, strict=True):
        counts[row.state] += 1
        done += counts_toward_budget(trial)
        if row.overoptimized:
            flagged.append(row.number)
    ranked = ranked_of(trials, study.directions[0])
    best = ranked[0] if ranked else None
    configs = promoted_configs(spec, study, promotion_study(spec, storage))
    return SweepSummary(
        name=spec.name, sweep_dir=spec.sweep_dir(), counts=counts,
        best_number=best.number if best else None, best_value=best.values[0] if best else None,
        best_kl=best.user_attrs.get(ATTR["kl_max"]) if best else None, wall_seconds=wall,
        trial_compute_seconds=sum(o.compute_seconds
                                  for o in [*search.outcomes, *promotion.outcomes]),
        concurrency=spec.resources.max_concurrent, ran=search.ran, promotion_ran=promotion.ran,
        parent_run_id=parent_run_id, outcomes=search.outcomes, trials=rows,
        missing=max(0, spec.budget.trials - done), promoted=configs,
        promotion_missing=promotion_missing(configs), promotion_note=promotion.skipped,
        choice=choose(spec, study, configs), overoptimized=flagged)


def finish_sweep(spec: CompiledSpec, study: optuna.Study, tracker: Any,
                 summary: SweepSummary) -> None:
    """The sweep's artifacts and diagnosis (into `summary`), then the parent run closed with the
    summary's metrics. MLflow away: said, and repaired by `tuner sync`."""
    from mlflow.exceptions import MlflowException

    try:
        summary.artifacts = write_artifacts(spec, study, summary, tracker)
        summary.diagnosis, path = write_diagnosis(spec, study, tracker,
                                                  spec.sweep_dir() / "artifacts")
        summary.artifacts.append(str(path))
    except MlflowException as exc:  # the tracking server is away; the study has every outcome
        log.warning("MLflow: the sweep's plots could not be written (%s); "
                    "'tuner sync %s' closes the runs", str(exc).splitlines()[0][:200], spec.name)
        summary.artifacts, summary.diagnosis = [], ""
    try:
        tracker.finish(parent_metrics(spec, summary),
                       summary.choice.trial.number if summary.choice else None)
    except MlflowException as exc:  # the tracking server is away: said, and repaired by tuner sync
        log.warning("MLflow: the parent run could not be closed (%s); 'tuner sync %s' closes it",
                    str(exc).splitlines()[0][:200], spec.name)


def parent_metrics(spec: CompiledSpec, summary: SweepSummary) -> dict[str, float]:
    """The parent run's metrics: the trials' states, timings, the best trial, the promotion."""
    metrics = {f"trials_{k.lower()}": float(v) for k, v in summary.counts.items()}
    metrics.update({"sweep_wall_seconds": summary.wall_seconds,
                    "trial_compute_seconds": summary.trial_compute_seconds})
    if summary.trial_compute_seconds > 0:  # no ratio where no trial computed anything
        metrics["sweep_overhead_ratio"] = summary.overhead
    if summary.best_number is not None:
        metrics.update({"best_value": summary.best_value, "best_trial": float(summary.best_number)})
    metrics.update(promotion_metrics(summary.promoted))
    if spec.trial.eval_reward:
        metrics["trials_overoptimized"] = float(len(summary.overoptimized))
    return metrics


def write_artifacts(spec: CompiledSpec, study: optuna.Study, summary: SweepSummary,
                    tracker: Any) -> list[str]:
    """The sweep's plots, promotion table and best config, in its folder and on the parent run."""
    out_dir = spec.sweep_dir() / "artifacts"
    out_dir.mkdir(exist_ok=True)
    made: list[Path] = []
    curves, points = [], []
    runs = {r.info.run_id for r in tracker.child_runs()}
    for t, row in zip(study.get_trials(deepcopy=False), summary.trials, strict=True):
        run_id = t.user_attrs.get(ATTR["mlflow_run"])
        if run_id not in runs:
            continue
        kl = tracker.metric_history(run_id, K.KL)
        curves.append({"number": t.number, "beta": row.beta, "kl": kl, "state": row.state})
        if kl and t.values:
            points.append({"number": t.number, "kl": kl[-1][1], "score": t.values[0],
                           "state": row.state})
    made.append(_plots.kl_trajectories(curves, spec.kl_limit, out_dir / "kl_trajectories.png"))
    if points:
        made.append(_plots.reward_vs_kl(points, spec.kl_limit, out_dir / "reward_vs_kl.png",
                                        spec.objective.metric))
    heldout = [{"number": r.number, "kl": r.kl_final, "train": r.eval, "gold": r.gold,
                "overoptimized": r.overoptimized}
               for r in summary.trials if None not in (r.kl_final, r.eval, r.gold)]
    if heldout:
        made.append(_plots.heldout_vs_kl(heldout, spec.kl_limit, out_dir / "heldout_vs_kl.png"))
    importance = _plots.param_importance(study, out_dir / "param_importance.png")
    if importance:
        made.append(importance)
    if summary.promoted:
        made.append(write_table(summary.promoted, out_dir / "promotion.csv"))
    if summary.choice is not None:  # our engine's config; an external trainer's searched values
        from tuner.sweep._export import export_choice

        text, _ = export_choice(spec, summary.choice, "yaml")
        (out_dir / "best_config.yaml").write_text(text)
        made.append(out_dir / "best_config.yaml")
    for path in made:
        tracker.log_file(path)
    return [str(p) for p in made]
