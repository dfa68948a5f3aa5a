"""A sweep's stages: the search, then the promotion of its best configs, each the same `Stage`.

A stage is planned from its study (the trials the budget still wants; the promotion's runs its study
does not hold yet), then its searcher hands Ray Tune those trials (`fit`), and what the searcher
recorded is the stage's `StageRun`: its outcomes and how many it ran.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna

from tuner.spec import CompiledSpec
from tuner.sweep._callback import SweepCallback
from tuner.sweep._fit import RayUse, fit, search_scheduler
from tuner.sweep._promotion import PROMOTION, missing_runs, plan, promotion_study
from tuner.sweep._signals import stop_signal
from tuner.sweep._study import ATTR, interrupted, mark_interrupted
from tuner.trial import Outcome

__all__ = ["Stage", "StageRun", "counts_toward_budget", "missing_trials", "promotion_stage",
           "remaining_trials", "search_stage"]


@dataclass
class StageRun:
    """What a stage did in this run: its runs' outcomes, and the runs it had to do."""

    outcomes: list[Outcome] = field(default_factory=list)
    todo: int = 0
    ran: int = 0  # runs started (a Ctrl-C also records the runs it kept from starting)
    skipped: str = ""  # why it did not run, where it was due


@dataclass
class Stage:
    """`todo` trials of `searcher` through Ray Tune, each logged by `logger`."""

    name: str  # Ray Tune's run name, the folder of its trials: "tune" (the search) or PROMOTION
    what: str  # its trials, in words: "3 trials"
    todo: int
    searcher: Any  # a StudySearcher
    logger: Any  # its TrialLogger
    scheduler: Any
    time_budget: float | None  # seconds; None: no limit
    title: str = ""  # told to the callbacks as `stage_started` (a later stage)

    def run(self, spec: CompiledSpec, ray: RayUse, callbacks: Sequence[SweepCallback]) -> StageRun:
        if self.todo and stop_signal() is None:  # a sweep stopped before this stage runs none of it
            if self.title:
                for callback in callbacks:
                    callback.stage_started(self.name, self.title)
            ray.ensure(self.what)
            fit(spec, self.todo, self.searcher, self.logger, callbacks, self.scheduler,
                self.time_budget, name=self.name)
        return StageRun(outcomes=self.searcher.outcomes(), todo=self.todo, ran=self.searcher.ran())


def counts_toward_budget(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts toward the budget: it ended, and not because its controller
    stopped."""
    alive = trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)
    # a duplicate, or a config predicted not to fit in memory: never run
    copy = ATTR["duplicate"] in trial.user_attrs or ATTR["unlaunched"] in trial.user_attrs
    return not alive and not copy and not interrupted(trial)


def _still_wanted(study: optuna.Study, wanted: int) -> int:
    return max(0, wanted - sum(map(counts_toward_budget, study.get_trials(deepcopy=False))))


def missing_trials(spec: CompiledSpec, study: optuna.Study) -> int:
    """Trials of the search's budget still to run."""
    return _still_wanted(study, spec.budget.trials)


def remaining_trials(study: optuna.Study, wanted: int, storage: optuna.storages.BaseStorage) -> int:
    """Trials still to run. Trials left RUNNING by a dead controller are marked FAIL (interrupted)
    and run again (`requeue_interrupted`); every other finished trial counts toward the budget."""
    mark_interrupted(study, storage)
    return _still_wanted(study, wanted)


def _count(n: int, word: str) -> str:
    """'1 trial', '3 trials'."""
    return f"{n} {word}{'s' if n != 1 else ''}"


def search_stage(spec: CompiledSpec, study: optuna.Study, storage: optuna.storages.BaseStorage,
                 tracker: Any, todo: int) -> Stage:
    """The search: `todo` trials sampled by the study, cut early by the spec's scheduler; MLflow is
    first made to agree with the study (`TrialLogger.reconcile`)."""
    from tuner.sweep._searcher import StudySearcher
    from tuner.sweep._tracking import TrialLogger

    searcher = StudySearcher(study, spec, storage)
    logger = TrialLogger(tracker)
    logger.reconcile(study)
    return Stage("tune", _count(todo, "trial"), todo, searcher, logger,
                 search_scheduler(spec) if todo else None, spec.budget.wall_clock)


def promotion_stage(spec: CompiledSpec, search: optuna.Study, storage: optuna.storages.BaseStorage,
                    tracker: Any, started: float) -> Stage | StageRun:
    """The promotion: the runs of `plan` the promotion study does not hold yet, without early cuts,
    in what is left of the wall-clock budget (`started`: the search's start, perf_counter). A
    `StageRun` where there is nothing to run, or no time left to run it."""
    from ray.tune.schedulers import FIFOScheduler

    from tuner.sweep._searcher import PromotionSearcher
    from tuner.sweep._tracking import TrialLogger

    planned = plan(spec, search)
    if not planned:
        return StageRun()
    study = promotion_study(spec, storage, create=True)
    todo = missing_runs(planned, study, storage)
    logger = TrialLogger(tracker, kind=PROMOTION)
    logger.reconcile(study)
    if not todo:
        return StageRun()
    wall = spec.budget.wall_clock
    left = wall - (time.perf_counter() - started) if wall else None
    if left is not None and left <= 0:
        return StageRun(todo=len(todo), skipped="the wall-clock budget was spent by the search")
    configs, runs = len({run.source for run in planned}), len(todo)
    seeds = spec.budget.promote.seeds
    title = (f"promotion: the best {_count(configs, 'config')} x {_count(seeds, 'fresh seed')}, "
             f"{spec.promote_iterations()} iterations each ({_count(runs, 'run')} to do)")
    searcher = PromotionSearcher(study, spec, storage, todo)
    return Stage(PROMOTION, _count(runs, "promotion run"), runs, searcher,
                 logger, FIFOScheduler(), left, title=title)
