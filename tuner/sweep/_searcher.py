"""A Ray Tune Searcher over an Optuna study that records what really happened to each trial.

Ray's OptunaSearch tells Optuna that a trial stopped by the KL limit or cut by ASHA is COMPLETE
with its last value. Here, in the driver (the only process that writes the study):
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

Every study write of a trial that was launched goes through `HeldWrites`: while the study database is
unreachable, the writes are held (and the trial's attributes read back from `_Live`, never from the
database), no new trial is suggested, and the running trials go on; `stop_all` tells Ray Tune to stop
the sweep once the outage outlasts the spec's storage_outage.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.stopper import Stopper

from trials import PPOConfig
from trials import metrics as K
from tuner.spec import CompiledSpec, sample_params, trial_config
from tuner.sweep._locate import trial_folder
from tuner.sweep._outage import HeldWrites, Unavailable
from tuner.sweep._promotion import PROMOTION, PlannedRun
from tuner.sweep._study import ATTR, mark_interrupted, ran_configs, redact, tell_duplicate
from tuner.trial import (
    ITERATION,
    OBJECTIVE,
    Outcome,
    StopReason,
    TrialFailure,
    TrialReport,
    failing_alike,
    kl_constraint,
    read_result,
)
from tuner.trial._memory import MemoryCheck
from tuner.trial._task import TrialTask

__all__ = ["OutageStop", "PromotionSearcher", "StudySearcher", "ask_trial"]

DUPLICATE_TRIES = 25  # samples asked for one slot before a repeated config is run anyway (a space nearly used up)
OUT_OF_MEMORY = "OutOfMemoryError"  # the error of a trial that ran out of memory (torch.OutOfMemoryError)
SAME_FAILURE_TRIALS = 3  # a sweep whose first 3 trials (fewer in a smaller budget) fail alike stops
log = logging.getLogger(__name__)


def ask_trial(study: optuna.Study, spec: CompiledSpec, multi: bool = False) -> tuple[optuna.trial.Trial, dict[str, Any], dict[str, Any]]:
    """A new trial to run, its sampled params and its engine config (recorded on the trial). Unless
    the spec says otherwise, a sampled config that a trial already ran is told that trial's outcome
    (`tell_duplicate`) and the sampler asked again, DUPLICATE_TRIES times at most."""
    skip = spec.sampler.skip_duplicates and spec.sampler.type != "grid"  # a grid never repeats itself
    ran = ran_configs(study) if skip else {}
    for _ in range(DUPLICATE_TRIES - 1):
        trial, params, engine, text = _sample(study, spec)
        if text not in ran:
            return trial, params, engine
        tell_duplicate(study, trial, ran[text], multi)
    trial, params, engine, _ = _sample(study, spec)  # a space nearly used up: the repeat runs
    return trial, params, engine


def _sample(study: optuna.Study, spec: CompiledSpec) -> tuple[optuna.trial.Trial, dict[str, Any], dict[str, Any], str]:
    trial = study.ask()
    params = sample_params(trial, spec)
    engine = trial_config(spec, params).to_dict()
    text = json.dumps(engine)
    trial.set_user_attr(ATTR["engine"], text)
    return trial, params, engine, text


class _Live:
    """A trial the searcher suggested and has not recorded yet. Its writes go through `writes`; its user
    attributes are read back from `user_attrs` (what was written or is held), never from the database."""

    def __init__(self, trial: optuna.trial.Trial, task: TrialTask, writes: HeldWrites):
        self.trial, self.task, self.writes = trial, task, writes
        self.number = trial.number
        self.user_attrs: dict[str, Any] = dict(trial.user_attrs)
        self.started = time.perf_counter()
        self.compute = 0.0  # sum of its iterations' seconds
        self.last: dict[str, Any] = {}
        self.steps: set[int] = set()  # the iterations whose score the study was told (intermediate values)
        self.eval = math.nan  # the last eval/scores reported
        self.evals: list[list[float]] = []  # [iteration, eval/scores, eval/gold_scores] where both were reported

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value
        self.writes.submit(self.trial.set_user_attr, key, value)

    def set_constraint(self, key: str, value: float) -> None:
        self.writes.submit(self.trial.set_constraint, key, value)

    def report(self, value: float, step: int) -> None:
        self.writes.submit(self.trial.report, value, step=step)


def _put_stop(key: str) -> None:
    from ray.experimental import internal_kv

    try:
        internal_kv._internal_kv_put(key, b"1")
    except Exception as exc:  # Ray going down: Ray Tune's own stop still reaches each trial
        log.debug("the trials could not be told of the stop: %s", exc)


class StudySearcher(Searcher):
    def __init__(self, study: optuna.Study, spec: CompiledSpec, storage: optuna.storages.BaseStorage | None = None):
        super().__init__(metric=OBJECTIVE, mode="max" if spec.objective.direction == "maximize" else "min")
        self.study, self.spec, self.storage = study, spec, storage
        self.writes = HeldWrites(spec.storage_outage, redact(spec.storage_url()) or "")
        self._launched: set[int] = set()  # numbers of the trials handed to Ray Tune
        self._strays = False  # whether closing the trials an ask left behind is held
        self._live: dict[str, _Live] = {}  # ray trial id -> a trial not yet recorded
        self._outcomes: dict[str, Outcome] = {}  # ray trial id -> what was recorded
        self.stop_key = f"ppo-tuner-stop-{uuid.uuid4().hex}"  # in Ray's KV store once stopped
        self._started: set[str] = set()  # ray ids of the trials Ray Tune started (not only suggested)
        self.multi = len(spec.directions()) > 1
        self.iterations = spec.iterations()  # a trial that ended before this many iterations was cut
        budget = spec.resources.trial_memory_gb
        self.memory = MemoryCheck(budget, spec.resources.gpus_per_trial) if budget else None
        # the first trials that, failing alike, stop the sweep (failing_alike; 0: never)
        self.alike_after = min(SAME_FAILURE_TRIALS, spec.budget.trials)

    # -- what the sweep's callbacks may ask ------------------------------------------------------
    def outcome(self, trial_id: str) -> Outcome | None:
        """What was recorded for a finished trial (None while it runs)."""
        return self._outcomes.get(trial_id)

    def outcomes(self) -> list[Outcome]:
        return list(self._outcomes.values())

    def trial_started(self, trial_id: str) -> None:
        """Ray Tune started the trial (a suggested one may never start: the sweep stopped first)."""
        self._started.add(trial_id)

    def stop_trials(self) -> None:
        """The sweep is stopped (Ctrl-C, SIGTERM): tell every trial through Ray's KV store, so that
        none starts its trainer or engine from now on. Called from a signal handler: the write runs
        in a thread."""
        threading.Thread(target=_put_stop, args=(self.stop_key,), daemon=True,
                         name="stop-trials").start()

    def ran(self) -> int:
        """How many of the trials recorded were started: a sweep stopped by Ctrl-C records its
        pending suggestions too (interrupted), which never ran."""
        return len(self._started & self._outcomes.keys())

    def running(self) -> list[str]:
        """Ray ids of the trials suggested and not yet recorded."""
        return list(self._live)

    def task(self, trial_id: str) -> TrialTask | None:
        live = self._live.get(trial_id)
        return live.task if live is not None else None

    def annotate(self, trial_id: str, key: str, value: Any) -> None:
        """Set a user attribute (an ATTR key) on a trial not yet recorded."""
        live = self._live.get(trial_id)
        if live is not None:
            live.set_user_attr(ATTR[key], value)

    def attempt_errors(self, trial_id: str) -> list[str]:
        """Each failed attempt's error, for a trial not yet recorded."""
        live = self._live.get(trial_id)
        return list(live.user_attrs.get(ATTR["errors"], [])) if live is not None else []

    # -- Ray Tune's Searcher interface -----------------------------------------------------------
    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def failing_alike(self) -> str | None:
        """The last line of the error with which this run's first trials all failed, if they did."""
        return failing_alike(self.outcomes(), self.alike_after)

    def stop_all(self) -> bool:
        """Whether the sweep must stop: the study database has been unreachable longer than
        storage_outage, or the first trials all failed the same way (every trial would). Asked by
        Ray Tune at every step, so held writes are retried even while no trial reports."""
        self.writes.drain()
        return self.writes.expired or self.failing_alike() is not None

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        # Ray Tune waits here, not in stop_all, while no trial runs
        if self.writes.expired or self.failing_alike() is not None:
            return Searcher.FINISHED
        try:  # None: Ray Tune asks again later
            return self.writes.call(lambda: self._suggest(trial_id))
        except Unavailable:
            if self.storage is not None and not self._strays:  # a trial asked for as the connection dropped
                self._strays = True
                self.writes.submit(self._close_strays)
            return None

    def _close_strays(self) -> None:
        """Mark FAIL (interrupted) the trials left RUNNING by an ask that the database cut off: never launched."""
        assert self.storage is not None
        mark_interrupted(self.study, self.storage, keep=self._launched)
        self._strays = False

    def _next(self) -> tuple[optuna.trial.Trial, dict[str, Any], dict[str, Any], int | None] | None:
        """The next trial to launch: (trial, searched values, engine config, the search trial it repeats),
        or None when no more are to run."""
        for _ in range(DUPLICATE_TRIES):
            trial, params, engine = ask_trial(self.study, self.spec, self.multi)
            if self._fits(trial, engine):
                return trial, params, engine, None
        log.warning("sweep %s: %d sampled configs in a row were predicted not to fit in %g GiB; no more trials "
                    "are launched (lower the batch sizes or lengths searched, or raise resources.trial_memory_gb)",
                    self.spec.name, DUPLICATE_TRIES, self.spec.resources.trial_memory_gb)
        return None

    def _suggest(self, trial_id: str) -> dict[str, Any] | None:
        found = self._next()
        if found is None:
            return Searcher.FINISHED
        trial, params, engine, source = found
        trial.set_user_attr(ATTR["ray_trial"], trial_id)
        task = TrialTask(number=trial.number, engine=engine, params=params, kl_limit=self.spec.kl_limit,
                         kl_forecast=self.spec.kl_rule.forecast, kl_grace_iterations=self.spec.kl_rule.grace_iterations,
                         objective=self.spec.objective.model_dump(), engine_kind=self.spec.trial.engine,
                         external=self.spec.trial.launch(cluster=self.spec.ray.address is not None), source=source,
                         folder=str(self.trial_folder(trial.number)), stop_key=self.stop_key,
                         sys_path=[p for p in [os.getcwd(), *sys.path] if p])
        self._live[trial_id] = _Live(trial, task, self.writes)
        self._launched.add(trial.number)
        return task.to_config()

    def trial_folder(self, number: int) -> Path:
        return trial_folder(self.spec, number)

    def _fits(self, trial: optuna.trial.Trial, engine: dict[str, Any]) -> bool:
        """Check a sampled config against the memory budget; one predicted not to fit is recorded
        infeasible (PRUNED, constraint memory > 0) and never launched."""
        if self.memory is None:
            return True
        predicted = self.memory.predict_gb(PPOConfig(**engine))
        over = predicted - self.memory.budget_gb
        trial.set_user_attr(ATTR["memory"], predicted)
        if over <= 0:
            return True
        reason = f"memory: predicted {predicted:.2f} GiB > {self.memory.budget_gb:g} GiB"
        trial.set_user_attr(ATTR["unlaunched"], reason)
        trial.set_user_attr(ATTR["stop"], reason)
        trial.set_constraint("kl", 0.0)  # never ran: no KL; GP wants the same constraint names on every trial
        trial.set_constraint("memory", over)
        self.study.tell(trial, state=TrialState.PRUNED)
        return False

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        live = self._live.get(trial_id)
        if live is None:
            return
        live.last = result
        record = read_result(result)
        trial = live
        if isinstance(record, TrialFailure):
            trial.set_user_attr(ATTR["errors"], [*trial.user_attrs.get(ATTR["errors"], []), record.error[:300]])
            return
        self._take(live, record, result)

    def _take(self, live: _Live, record: TrialReport, result: dict[str, Any]) -> None:
        """Count an iteration's seconds and tell the study its score, once per iteration. A pruned
        trial's value is its last intermediate value, so the report the scheduler judged must reach
        the study too: Ray hands that one to on_trial_complete only, not to on_trial_result."""
        step = int(result.get(ITERATION, 0) or 0)
        if step in live.steps:
            return
        live.steps.add(step)
        live.compute += record.seconds
        live.eval = record.metrics.get(K.EVAL_SCORES, live.eval if math.isfinite(live.eval) else record.initial_eval)
        if not live.evals and math.isfinite(record.initial_gold):  # before any update
            live.evals.append([0, record.initial_eval, record.initial_gold])
        if K.EVAL_GOLD in record.metrics:
            live.evals.append([step, record.eval, record.metrics[K.EVAL_GOLD]])
        if record.pid and live.user_attrs.get(ATTR["pid"]) != record.pid:
            live.set_user_attr(ATTR["pid"], record.pid)
        if not self.multi and math.isfinite(record.objective):
            live.report(record.objective, step=step)

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        live = self._live.pop(trial_id, None)
        if live is None:
            return
        last = result or live.last
        if last and isinstance(read_result(last), TrialReport):
            self._take(live, read_result(last), last)
        if math.isfinite(live.eval):
            live.set_user_attr(ATTR["eval"], live.eval)
        if live.evals:
            live.set_user_attr(ATTR["gold"], live.evals[-1][2])
            live.set_user_attr(ATTR["evals"], live.evals)
        # the iterations it reported (a failure's report adds one to Ray's training_iteration)
        reported = max(live.steps, default=0)
        outcome = self._record(live, read_result(last) if last else None, reported, error)
        outcome.compute_seconds = live.compute
        outcome.wall_seconds = time.perf_counter() - live.started
        outcome.params = live.task.params
        self._outcomes[trial_id] = outcome

    def _tell(self, live: _Live, values: Any = None, state: TrialState | None = None) -> None:
        """Tell the study a trial's end (held while the database is unreachable; a replay of a tell that
        reached the database before its connection dropped changes nothing)."""
        self.writes.submit(self.study.tell, live.trial, values, state=state, skip_if_finished=True)

    def _record(self, trial: _Live, last: TrialReport | TrialFailure | None, iterations: int,
                error: bool) -> Outcome:
        kl_max = last.kl_max if last is not None else None
        kl_final = last.kl if isinstance(last, TrialReport) else kl_max
        trial.set_user_attr(ATTR["iterations"], iterations)
        ran = kl_max is not None and not (isinstance(kl_max, float) and math.isnan(kl_max))
        if isinstance(last, TrialReport) and math.isfinite(last.metrics.get(K.SCORES, math.nan)):
            trial.set_user_attr(ATTR["reward"], last.metrics[K.SCORES])
        if ran:
            trial.set_user_attr(ATTR["kl_max"], float(kl_max))
            trial.set_user_attr(ATTR["kl_final"], float(kl_final if kl_final is not None and not math.isnan(kl_final) else kl_max))
            trial.set_constraint("kl", kl_constraint(float(kl_max), self.spec.kl_limit, getattr(last, "stop_reason", None)))
        common = {"number": trial.number, "iterations": iterations, "kl_max": kl_max,
                  "kl_final": trial.user_attrs.get(ATTR["kl_final"])}
        out_of_memory = isinstance(last, TrialFailure) and last.error.startswith(OUT_OF_MEMORY)
        if out_of_memory:  # after its retries: infeasible for memory, as a config predicted not to fit
            if not ran:
                trial.set_constraint("kl", 0.0)
            trial.set_constraint("memory", max(trial.user_attrs.get(ATTR["memory"], 0.0) - (self.memory.budget_gb if self.memory else 0.0), 0.0) + 1.0)
            reason = f"memory: {last.error.splitlines()[0][:200]}"
            trial.set_user_attr(ATTR["error"], last.error[:2000])
            trial.set_user_attr(ATTR["stop"], reason)
            self._tell(trial, state=TrialState.PRUNED)
            return Outcome(state="INFEASIBLE", stop_reason=reason, value=None, error=last.error, **common)
        if self.memory is not None and ATTR["memory"] in trial.user_attrs:
            trial.set_constraint("memory", trial.user_attrs[ATTR["memory"]] - self.memory.budget_gb)
        if error or isinstance(last, TrialFailure):
            message = last.error if isinstance(last, TrialFailure) else "the trial's process died"
            trial.set_user_attr(ATTR["error"], message[:2000])
            trial.set_user_attr(ATTR["stop"], StopReason.failed(message))
            self._tell(trial, state=TrialState.FAIL)
            return Outcome(state="FAIL", stop_reason=StopReason.failed(message), value=None, error=message, **common)
        value = last.objective if last is not None else None
        reason = (last.stop_reason if last is not None else None) or (
            StopReason.PRUNED if iterations < self.iterations else StopReason.COMPLETED)
        trial.set_user_attr(ATTR["stop"], reason)
        if reason == StopReason.PRUNED or value is None or not math.isfinite(value):
            self._tell(trial, state=TrialState.PRUNED)
            return Outcome(state="PRUNED", stop_reason=reason, value=value, **common)
        values = [value, float(kl_final if kl_final is not None else 0.0)] if self.multi else value
        self._tell(trial, values)
        return Outcome(state="INFEASIBLE" if reason in StopReason.KL else "COMPLETE", stop_reason=reason,
                       value=value, **common)

    def on_retry(self, trial_id: str) -> int:
        """Ray restarts a trial after a failure (an exception that can pass, or its worker died);
        returns how many retries the trial has had."""
        live = self._live.get(trial_id)
        if live is None:
            return 0
        retries = int(live.user_attrs.get(ATTR["retries"], 0)) + 1
        live.set_user_attr(ATTR["retries"], retries)
        live.set_user_attr(ATTR["pid"], -1)  # the next attempt reports its own pid
        live.steps.clear()  # the next attempt counts its iterations from 1 again
        live.evals.clear()
        return retries

    def abandon_live(self, reason: str = StopReason.INTERRUPTED) -> list[str]:
        """Mark trials still running or pending (the sweep was interrupted) as FAIL, so a resume re-runs
        them; returns their ray trial ids."""
        abandoned = list(self._live)
        for trial_id in abandoned:
            live = self._live.pop(trial_id)
            live.set_user_attr(ATTR["stop"], reason)
            self._tell(live, state=TrialState.FAIL)
            self._outcomes[trial_id] = Outcome(number=live.trial.number, state="FAIL", stop_reason=reason, value=None,
                                               compute_seconds=live.compute,
                                               wall_seconds=time.perf_counter() - live.started, params=live.task.params)
        return abandoned

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles its search algorithm into the experiment state; the study is our checkpoint.
        return {"_metric": self._metric, "_mode": self._mode}

    def save(self, checkpoint_path: str) -> None:  # the study itself is the checkpoint
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass


class PromotionSearcher(StudySearcher):
    """Hands Ray Tune the planned promotion runs, one per suggestion, into the promotion study, and records
    each as StudySearcher records a search trial (same KL constraint, states and outcomes)."""

    def __init__(self, study: optuna.Study, spec: CompiledSpec, storage: optuna.storages.BaseStorage,
                 runs: list[PlannedRun]):
        super().__init__(study, spec, storage)
        self.queue = list(runs)
        self.iterations = spec.promote_iterations()
        self.memory = None  # the search checked these configs
        self.alike_after = 0  # these configs ran in the search

    def trial_folder(self, number: int) -> Path:
        return trial_folder(self.spec, number, PROMOTION)

    def _next(self) -> tuple[optuna.trial.Trial, dict[str, Any], dict[str, Any], int | None] | None:
        if not self.queue:
            return None
        trial = self.study.ask()
        run = self.queue.pop(0)
        for key, value in (("engine", json.dumps(run.engine)), ("stage", PROMOTION), ("source", run.source),
                           ("seed", run.seed), ("params", json.dumps(run.params))):
            trial.set_user_attr(ATTR[key], value)
        return trial, run.params, run.engine, run.source


class OutageStop(Stopper):
    """A Ray Tune stopper: stop the sweep once the study database has been unreachable past
    storage_outage, or once its first trials all failed the same way (StudySearcher.stop_all).
    Ray Tune copies its stoppers (pickle, deepcopy): a copy finds the searcher by key in this process."""

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
