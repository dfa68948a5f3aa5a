"""A Ray Tune Searcher over an Optuna study that records what really happened to each trial.

Ray's OptunaSearch tells Optuna that a trial stopped by the KL limit or cut by ASHA is COMPLETE
with its last value. Here, in the driver (the only process that writes the study), each finished
trial is told its verdict (`tuner.trial.verdict`):
- a trial that ran all its iterations: COMPLETE with its score, constraint kl = kl_max - limit;
- a trial stopped by the KL limit: COMPLETE with its score and a positive constraint, so that it
  is infeasible (never the best) and constraint-aware samplers learn to avoid its region;
- a trial cut by the scheduler (or the wall-clock budget): PRUNED, with its constraint;
- a trial that raised: FAIL, with its error;
- a sampled config that a finished trial already ran (discrete spaces; see `ask_trial`):
  that trial's outcome, at once, with user attribute duplicate_of; it is not run and does not
  count toward budget.trials;
- where resources.trial_memory_gb is set, every trial gets the constraint memory = predicted peak
  minus that budget (GiB); a sampled config predicted not to fit is PRUNED with it (infeasible, so
  the samplers learn), never launched and not counted toward budget.trials; a trial that ran out of
  memory after its retries is recorded the same way.
Each finished trial becomes an `Outcome` record, with its timings, which `outcome()` hands out.
Sampling lives in `_sampling`, the study writes of a trial in `_record`.

Every study write of a trial that was launched goes through `HeldWrites`: while the study database is
unreachable, the writes are held (and the trial's attributes read back from `LiveTrial`, never from
the database), no new trial is suggested, and the running trials go on; `stop_all` tells Ray Tune
to stop the sweep once the outage outlasts the spec's storage_outage.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import optuna
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from tuner.spec import CompiledSpec
from tuner.sweep._locate import trial_folder
from tuner.sweep._outage import HeldWrites, Unavailable
from tuner.sweep._promotion import PROMOTION, PlannedRun
from tuner.sweep._record import LiveTrial, Rules, TrialLedger, abandon, record
from tuner.sweep._sampling import DUPLICATE_TRIES, ask_trial, next_search_trial
from tuner.sweep._study import mark_interrupted, redact
from tuner.trial import (
    ITERATION,
    OBJECTIVE,
    Attr,
    MemoryCheck,
    State,
    StopReason,
    TrialFailure,
    TrialReport,
    TrialTask,
    failing_alike,
    remove_own_checkpoints,
)

__all__ = ["DUPLICATE_TRIES", "OutageStop", "PromotionSearcher", "StudySearcher", "ask_trial"]

SAME_FAILURE_TRIALS = 3  # a sweep whose first 3 trials (fewer in a smaller budget) fail alike stops
log = logging.getLogger(__name__)

Next = tuple[optuna.trial.Trial, dict[str, Any], dict[str, Any], int | None]


def _put_stop(key: str) -> None:
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_put(key, b"1")
    except Exception as exc:  # Ray going down: Ray Tune's own stop still reaches each trial
        log.debug("the trials could not be told of the stop: %s", exc)


class StudySearcher(TrialLedger, Searcher):
    """Ray Tune's Searcher over the sweep's Optuna study, in the driver: `suggest` hands Ray the
    next trial's `TrialTask` (`_sampling`), `on_trial_result` and `on_trial_complete` record what
    it reported and its verdict (`_record`), and every write of a launched trial goes through
    `HeldWrites`, so that a study database outage holds the sweep instead of failing it. What the
    sweep's callbacks ask of its trials (outcomes, tasks, each result decoded once) is
    `TrialLedger`'s. The study itself is the checkpoint: `save` and `restore` keep nothing.
    """

    def __init__(self, study: optuna.Study, spec: CompiledSpec,
                 storage: optuna.storages.BaseStorage | None = None):
        mode = "max" if spec.objective.direction == "maximize" else "min"
        Searcher.__init__(self, metric=OBJECTIVE, mode=mode)
        TrialLedger.__init__(self)
        self.study, self.spec, self.storage = study, spec, storage
        self.writes = HeldWrites(spec.storage_outage, redact(spec.storage_url()) or "")
        self._launched: set[int] = set()  # numbers of the trials handed to Ray Tune
        self._strays = False  # whether closing the trials an ask left behind is held
        self.stop_key = f"ppo-tuner-stop-{uuid.uuid4().hex}"  # in Ray's KV store once stopped
        self.multi = len(spec.directions()) > 1
        self.iterations = spec.iterations()  # a trial that ended before this many iterations was cut
        budget = spec.resources.trial_memory_gb
        self.memory = MemoryCheck(budget, spec.resources.gpus_per_trial) if budget else None
        # the first trials that, failing alike, stop the sweep (failing_alike; 0: never)
        self.alike_after = min(SAME_FAILURE_TRIALS, spec.budget.trials)

    def stop_trials(self) -> None:
        """The sweep is stopped (Ctrl-C, SIGTERM): tell every trial through Ray's KV store, so that
        none starts its trainer or engine from now on. Called from a signal handler: the write runs
        in a thread."""
        threading.Thread(target=_put_stop, args=(self.stop_key,), daemon=True,
                         name="stop-trials").start()

    def failing_alike(self) -> str | None:
        """The last line of the error with which this run's first trials all failed, if they did."""
        return failing_alike(self.outcomes(), self.alike_after)

    def stop_all(self) -> bool:
        """Whether the sweep must stop: the study database has been unreachable longer than
        storage_outage, or the first trials all failed the same way (every trial would). Asked by
        Ray Tune at every step, so held writes are retried even while no trial reports."""
        self.writes.drain()
        return self.writes.expired or self.failing_alike() is not None

    # -- Ray Tune's Searcher interface -----------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict,
                              **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        # Ray Tune waits here, not in stop_all, while no trial runs
        if self.writes.expired or self.failing_alike() is not None:
            return Searcher.FINISHED
        try:  # None: Ray Tune asks again later
            return self.writes.call(lambda: self._suggest(trial_id))
        except Unavailable:  # a trial asked for as the connection dropped: closed once it is back
            if self.storage is not None and not self._strays:
                self._strays = True
                self.writes.submit(self._close_strays)
            return None

    def _close_strays(self) -> None:
        """Mark FAIL (interrupted) the trials left RUNNING by an ask that the database cut off:
        never launched."""
        assert self.storage is not None
        mark_interrupted(self.study, self.storage, keep=self._launched)
        self._strays = False

    def _next(self) -> Next | None:
        """The next trial to launch: (trial, searched values, engine config, the search trial it
        repeats), or None when no more are to run."""
        found = next_search_trial(self.study, self.spec, self.memory, self.multi)
        return (*found, None) if found is not None else None

    def _suggest(self, trial_id: str) -> dict[str, Any] | None:
        found = self._next()
        if found is None:
            return Searcher.FINISHED
        trial, params, engine, source = found
        trial.set_user_attr(Attr.RAY_TRIAL, trial_id)
        spec = self.spec
        task = TrialTask(number=trial.number, engine=engine, params=params,
                         kl_limit=spec.kl_limit, kl_forecast=spec.kl_rule.forecast,
                         kl_grace_iterations=spec.kl_rule.grace_iterations,
                         objective=spec.objective.model_dump(), engine_kind=spec.trial.engine,
                         external=spec.launch(),
                         source=source, folder=str(self.trial_folder(trial.number)),
                         rerun_of=str(self.trial_folder(trial.user_attrs[Attr.RERUN]))
                         if Attr.RERUN in trial.user_attrs else "",
                         stop_key=self.stop_key,
                         sys_path=[p for p in [os.getcwd(), *sys.path] if p])
        self._live[trial_id] = LiveTrial(trial, task, self.writes)
        self._launched.add(trial.number)
        return task.to_config()

    def trial_folder(self, number: int) -> Path:
        return trial_folder(self.spec, number)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        live = self._live.get(trial_id)
        if live is None:
            return
        live.last = found = self.decode(trial_id, result)
        if isinstance(found, TrialFailure):
            live.failed(found)
        else:
            live.take(found, int(result.get(ITERATION, 0) or 0), self.multi)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                          error: bool = False) -> None:
        live = self._live.get(trial_id)
        if live is None:
            return
        if result:
            live.last = self.decode(trial_id, result)
            if isinstance(live.last, TrialReport):
                live.take(live.last, int(result.get(ITERATION, 0) or 0), self.multi)
        del self._live[trial_id]
        budget = self.memory.budget_gb if self.memory is not None else None
        rules = Rules(planned=self.iterations, kl_limit=self.spec.kl_limit,
                      memory_budget_gb=budget, multi=self.multi)
        outcome = self._outcomes[trial_id] = record(self.study, live, error, rules)
        if outcome.state != State.FAIL:
            remove_own_checkpoints(live.task)
        self.forget(trial_id)

    def on_retry(self, trial_id: str) -> int:
        """Ray restarts a trial after a failure (an exception that can pass, or its worker died);
        returns how many retries the trial has had."""
        live = self._live.get(trial_id)
        self.forget(trial_id)
        return live.retried() if live is not None else 0

    def abandon_live(self, reason: str = StopReason.INTERRUPTED) -> list[str]:
        """Mark trials still running or pending (the sweep was interrupted) as FAIL, so a resume
        re-runs them; returns their ray trial ids."""
        abandoned = list(self._live)
        for trial_id in abandoned:
            self._outcomes[trial_id] = abandon(self.study, self._live.pop(trial_id), reason)
            self.forget(trial_id)
        return abandoned

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles its search algorithm into the experiment state; the study is our checkpoint.
        return {"_metric": self._metric, "_mode": self._mode}

    def save(self, checkpoint_path: str) -> None:  # the study itself is the checkpoint
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


class PromotionSearcher(StudySearcher):
    """Hands Ray Tune the planned promotion runs, one per suggestion, into the promotion study,
    and records each as StudySearcher records a search trial (same KL constraint, states and
    outcomes)."""

    def __init__(self, study: optuna.Study, spec: CompiledSpec,
                 storage: optuna.storages.BaseStorage, runs: list[PlannedRun]):
        super().__init__(study, spec, storage)
        self.queue = list(runs)
        self.iterations = spec.promote_iterations()
        self.memory = None  # the search checked these configs
        self.alike_after = 0  # these configs ran in the search

    def trial_folder(self, number: int) -> Path:
        return trial_folder(self.spec, number, PROMOTION)

    def _next(self) -> Next | None:
        if not self.queue:
            return None
        trial = self.study.ask()
        run = self.queue.pop(0)
        for key, value in ((Attr.ENGINE, json.dumps(run.engine)), (Attr.STAGE, PROMOTION),
                           (Attr.SOURCE, run.source), (Attr.SEED, run.seed),
                           (Attr.PARAMS, json.dumps(run.params))):
            trial.set_user_attr(key, value)
        return trial, run.params, run.engine, run.source


class OutageStop(Stopper):
    """A Ray Tune stopper: stop the sweep once the study database has been unreachable past
    storage_outage, or once its first trials all failed the same way (StudySearcher.stop_all).
    Ray Tune copies its stoppers (pickle, deepcopy): a copy finds the searcher by key in this
    process."""

    _searchers: dict[int, StudySearcher] = {}

    def __init__(self, searcher: StudySearcher):
        self.key = id(searcher)
        OutageStop._searchers[self.key] = searcher

    def __getstate__(self) -> dict:
        return {"key": self.key}  # the searcher holds live handles

    def __call__(self, trial_id: str, result: dict) -> bool:
        return False

    def stop_all(self) -> bool:
        searcher = OutageStop._searchers.get(self.key)
        return searcher.stop_all() if searcher is not None else False

    def close(self) -> None:
        OutageStop._searchers.pop(self.key, None)
