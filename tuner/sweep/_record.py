"""What the study is told of a launched trial: its iterations as they come (`LiveTrial.take`), and
at its end its verdict (`tuner.trial.verdict`) written as user attributes, constraints and a state,
and handed back as an `Outcome`.

Every write goes through the sweep's `HeldWrites`: while the study database is unreachable the
writes are held, and the trial's attributes are read back from `LiveTrial.user_attrs`, never from
the database.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from trials import metrics as K
from tuner.sweep._outage import HeldWrites
from tuner.trial import (
    ERROR,
    ITERATION,
    PID,
    Attr,
    Outcome,
    State,
    StopReason,
    TrialFailure,
    TrialReport,
    TrialTask,
    read_result,
    verdict,
)

__all__ = ["LiveTrial", "Rules", "TrialLedger", "abandon", "record"]


@dataclass(frozen=True)
class Rules:
    """What a trial of this stage is judged against."""

    planned: int  # the iterations a trial is to run: one that reported fewer was cut
    kl_limit: float
    memory_budget_gb: float | None  # resources.trial_memory_gb where the configs were checked
    multi: bool  # the study has two objectives (the score, the last KL)


class LiveTrial:
    """A trial suggested and not recorded yet. Its writes go through `writes`; its user attributes
    are read back from `user_attrs` (what was written or is held), never from the database."""

    def __init__(self, trial: optuna.trial.Trial, task: TrialTask, writes: HeldWrites):
        self.trial, self.task, self.writes = trial, task, writes
        self.number = trial.number
        self.user_attrs: dict[str, Any] = dict(trial.user_attrs)
        self.started = time.perf_counter()
        self.compute = 0.0  # sum of its iterations' seconds
        self.last: TrialReport | TrialFailure | None = None  # the last record it reported
        self.steps: set[int] = set()  # the iterations whose score the study was told
        self.counted: set[int] = set()  # the iterations counted in its compute, over all its attempts
        self.eval = math.nan  # the last eval/scores reported
        # [iteration, eval/scores, eval/gold_scores] where both were reported
        self.evals: list[list[float]] = []

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value
        self.writes.submit(self.trial.set_user_attr, key, value)

    def set_constraint(self, key: str, value: float) -> None:
        self.writes.submit(self.trial.set_constraint, key, value)

    def report(self, value: float, step: int) -> None:
        self.writes.submit(self.trial.report, value, step=step)

    def failed(self, record: TrialFailure) -> None:
        """An attempt failed: its error joins the trial's errors."""
        errors = [*self.user_attrs.get(Attr.ERRORS, []), record.error[:300]]
        self.set_user_attr(Attr.ERRORS, errors)

    def take(self, record: TrialReport, step: int, multi: bool) -> None:
        """Count an iteration's seconds and tell the study its score, once per iteration. A pruned
        trial's value is its last intermediate value, so the report the scheduler judged must reach
        the study too: Ray hands that one to on_trial_complete only, not to on_trial_result."""
        if step in self.steps:
            return
        self.steps.add(step)
        # restored from the checkpoint of this trial's earlier attempt, which counted its seconds and score (a
        # re-run of an interrupted trial's config restores that trial's: new to this one, counted here)
        told = step in self.counted  # an earlier attempt reported this iteration (Optuna keeps its score)
        replayed = record.replayed(step) and told
        if record.resumed_after and self.user_attrs.get(Attr.RESUMED) != record.resumed_after:
            self.set_user_attr(Attr.RESUMED, record.resumed_after)
        self.compute += 0.0 if replayed else record.seconds
        self.counted.add(step)
        before = self.eval if math.isfinite(self.eval) else record.initial_eval
        self.eval = record.metrics.get(K.EVAL_SCORES, before)
        if not self.evals and math.isfinite(record.initial_gold):  # before any update
            self.evals.append([0, record.initial_eval, record.initial_gold])
        if K.EVAL_GOLD in record.metrics:
            self.evals.append([step, record.eval, record.metrics[K.EVAL_GOLD]])
        if record.pid and self.user_attrs.get(Attr.PID) != record.pid:
            self.set_user_attr(Attr.PID, record.pid)
        if not multi and not told and math.isfinite(record.objective):
            self.report(record.objective, step=step)

    def retried(self) -> int:
        """Ray restarts the trial: returns how many retries it has had. The next attempt reports
        its own pid and counts its iterations from 1 again."""
        retries = int(self.user_attrs.get(Attr.RETRIES, 0)) + 1
        self.set_user_attr(Attr.RETRIES, retries)
        self.set_user_attr(Attr.PID, -1)
        self.steps.clear()
        self.evals.clear()
        return retries

    def tell(self, study: optuna.Study, values: Any = None,
             state: TrialState | None = None) -> None:
        """Tell the study the trial's end (held while the database is unreachable; a replay of a
        tell that reached the database before its connection dropped changes nothing)."""
        self.writes.submit(study.tell, self.trial, values, state=state, skip_if_finished=True)


def record(study: optuna.Study, live: LiveTrial, raised: bool, rules: Rules) -> Outcome:
    """Write a finished trial's evaluations and verdict to the study; its `Outcome`."""
    if math.isfinite(live.eval):
        live.set_user_attr(Attr.EVAL, live.eval)
    if live.evals:
        live.set_user_attr(Attr.GOLD, live.evals[-1][2])
        live.set_user_attr(Attr.EVALS, live.evals)
    # the iterations it reported (a failure's report adds one to Ray's training_iteration)
    iterations = max(live.steps, default=0)
    last = live.last
    found = verdict(last, iterations, planned=rules.planned, raised=raised, kl_limit=rules.kl_limit,
                    memory_budget_gb=rules.memory_budget_gb,
                    predicted_gb=live.user_attrs.get(Attr.MEMORY))
    for key, value in found.attrs.items():
        live.set_user_attr(key, value)
    for name, value in found.constraints.items():
        live.set_constraint(name, value)
    if found.told is State.COMPLETE:
        kl_last = found.kl_last if found.kl_last is not None else 0.0
        live.tell(study, [found.value, float(kl_last)] if rules.multi else found.value)
    else:
        live.tell(study, state=TrialState[found.told])
    return Outcome(number=live.number, state=found.state, stop_reason=found.stop_reason,
                   value=found.value, error=found.error, iterations=iterations,
                   kl_max=last.kl_max if last is not None else None,
                   kl_final=found.attrs.get(Attr.KL_FINAL), compute_seconds=live.compute,
                   wall_seconds=time.perf_counter() - live.started, params=live.task.params)


def abandon(study: optuna.Study, live: LiveTrial, reason: str = StopReason.INTERRUPTED) -> Outcome:
    """Record a trial still running or pending when the sweep stopped: FAIL with `reason`, so that a
    resume runs it again."""
    live.set_user_attr(Attr.STOP, reason)
    live.tell(study, state=TrialState.FAIL)
    return Outcome(number=live.number, state=State.FAIL, stop_reason=reason, value=None,
                   compute_seconds=live.compute, wall_seconds=time.perf_counter() - live.started,
                   params=live.task.params)


def _result_key(result: dict[str, Any]) -> tuple[Any, ...]:
    """What tells one of a trial's results from another: its iteration, its attempt, a failure."""
    return result.get(ITERATION), result.get(PID), ERROR in result


class TrialLedger:
    """The trials a searcher handed to Ray Tune, by Ray's trial id: those not recorded yet
    (`LiveTrial`), those Ray started, and what was recorded of each (`Outcome`); what the sweep's
    callbacks may ask of them. A trial's results are decoded once (`decode`), however many readers
    ask for them."""

    def __init__(self) -> None:
        self._live: dict[str, LiveTrial] = {}  # a trial not yet recorded
        self._outcomes: dict[str, Outcome] = {}  # what was recorded
        self._started: set[str] = set()  # the trials Ray Tune started (not only suggested)
        self._decoded: dict[str, tuple[tuple[Any, ...], TrialReport | TrialFailure]] = {}

    def outcome(self, trial_id: str) -> Outcome | None:
        """What was recorded for a finished trial (None while it runs)."""
        return self._outcomes.get(trial_id)

    def outcomes(self) -> list[Outcome]:
        return list(self._outcomes.values())

    def trial_started(self, trial_id: str) -> None:
        """Ray Tune started the trial (a suggested one may never start: the sweep stopped first)."""
        self._started.add(trial_id)

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
        """Set a user attribute (an `Attr`, by its short name: "mlflow_run") on a trial not yet
        recorded."""
        live = self._live.get(trial_id)
        if live is not None:
            live.set_user_attr(Attr[key.upper()], value)

    def attempt_errors(self, trial_id: str) -> list[str]:
        """Each failed attempt's error, for a trial not yet recorded."""
        live = self._live.get(trial_id)
        return list(live.user_attrs.get(Attr.ERRORS, [])) if live is not None else []

    def decode(self, trial_id: str, result: dict[str, Any]) -> TrialReport | TrialFailure:
        """The record `result` was made from (`read_result`), decoded once for the searcher and
        the sweep's callbacks: a live trial's last one is kept until it ends or is retried."""
        if trial_id not in self._live:
            return read_result(result)
        key = _result_key(result)
        held = self._decoded.get(trial_id)
        if held is None or held[0] != key:
            held = self._decoded[trial_id] = (key, read_result(result))
        return held[1]

    def forget(self, trial_id: str) -> None:
        """Drop the trial's decoded result: it ended, or its next attempt counts from 1 again."""
        self._decoded.pop(trial_id, None)
