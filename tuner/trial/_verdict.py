"""A trial's verdict: the one place that decides, from what a trial reported and how it ended, the
state the study records, why it stopped, its constraints and the attributes written with it.

Pure functions of records: the searcher writes what `verdict` returns, the study's reader
(`recorded_state`) reads the state back from what was written, and the table, the plots and MLflow
show that state; none of them judges the KL limit or the memory budget again.

The study's constraints (> 0: infeasible, never the best, and the constraint-aware samplers learn
from them): "kl", the trial's largest KL minus the limit (`kl_constraint`), and, where the spec sets
resources.trial_memory_gb, "memory", the predicted peak minus that budget (GiB).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trials import metrics as K
from tuner.trial._result import State, StopReason, TextEnum, TrialFailure, TrialReport
from tuner.trial._scoring import kl_constraint

__all__ = ["OUT_OF_MEMORY", "Attr", "Ending", "Verdict", "ending_of", "feasible",
           "memory_constraint", "recorded_state", "unfit", "verdict"]

OUT_OF_MEMORY = "OutOfMemoryError"  # the error of a trial that ran out of memory (torch's)


class Attr(TextEnum):
    """The user attributes on each Optuna trial (their strings are the study's keys)."""

    ENGINE = "engine_config"  # JSON: the trial's full engine config
    # why it ended: completed, kl_limit, kl_forecast, pruned (asha), failed: ..., interrupted
    STOP = "stop_reason"
    KL_MAX = "kl_max"  # the largest objective/kl it reported (nats)
    KL_FINAL = "kl_final"
    # the last iteration's objective/scores (mean reward of the rollout batch)
    REWARD = "reward_final"
    RESPONSE_LENGTH = "response_length_final"  # the last iteration's mean tokens per response
    # the last eval/scores it reported (held-out prompts), the initial one included
    EVAL = "eval_last"
    GOLD = "gold_last"  # the last eval/gold_scores (the held-out reward), where the spec names one
    # with a held-out reward: [[iteration, eval/scores, eval/gold_scores], ...] from iteration 0
    EVALS = "evaluations"
    ITERATIONS = "iterations"
    RAY_TRIAL = "ray_trial_id"
    MLFLOW_RUN = "mlflow_run_id"
    ERROR = "error"
    ERRORS = "errors"  # each attempt's error, for trials that were retried
    RETRIES = "retries"
    PID = "pid"  # the process running the trial's current attempt
    # the number of the trial whose engine config this one repeated (not run)
    DUPLICATE = "duplicate_of"
    # the memory model's prediction of the trial's peak (GiB), where checked
    MEMORY = "predicted_memory_gb"
    # why a sampled config was recorded without running (predicted not to fit)
    UNLAUNCHED = "not_launched"
    STAGE = "stage"  # "promotion" on the trials of the promotion study (search trials have none)
    # a promotion run: the number of the search trial whose config it runs again
    SOURCE = "promoted_trial"
    SEED = "seed"  # a promotion run: its seed, one no search trial used
    PARAMS = "searched_params"  # a promotion run: the search trial's searched values (JSON)
    RERUN = "run_again_of"  # a re-run of an interrupted trial's config: that trial's number
    RESUMED = "resumed_after"  # our engine's trial resumed from its checkpoint: the iteration the checkpoint held


class Ending(TextEnum):
    """How a trial ended, as the controller saw it."""

    COMPLETED = "completed"  # it ran its iterations (or stopped for a reason of its own)
    KL_RULE = "kl_rule"  # the KL limit, or its forecast, stopped it
    CUT = "cut"  # the scheduler (ASHA) or the wall-clock budget stopped it early
    RAISED = "raised"  # it raised, or its process died, after its retries
    OUT_OF_MEMORY = "out_of_memory"  # it ran out of memory, after its retries
    UNFIT = "unfit"  # predicted not to fit in the memory budget: never launched


@dataclass(frozen=True)
class Verdict:
    """What the study records of a trial: `state` is what the table, MLflow and the `Outcome` say;
    `told` the Optuna state the study is told (an infeasible trial is told COMPLETE or PRUNED)."""

    state: State
    told: State  # COMPLETE (with `value`), PRUNED or FAIL
    ending: Ending
    stop_reason: str
    value: float | None = None
    error: str = ""
    kl_last: float | None = None  # the last KL reported (a two-objective study's second value)
    constraints: Mapping[str, float] = field(default_factory=dict)  # name -> value, in write order
    attrs: Mapping[Attr, Any] = field(default_factory=dict)  # user attributes, in write order


def feasible(constraints: Mapping[str, float] | None) -> bool:
    """Whether a trial's constraints (kl, memory) are all met (<= 0)."""
    return all(v <= 0 for v in (constraints or {}).values())


def recorded_state(told: str, constraints: Mapping[str, float] | None,
                   duplicate: bool = False) -> State:
    """The state of a trial as the study holds it: `told` (Optuna's state name), INFEASIBLE for a
    COMPLETE or PRUNED trial whose constraints are not met, DUPLICATE for a repeated config."""
    if duplicate:
        return State.DUPLICATE
    if told in (State.COMPLETE, State.PRUNED) and not feasible(constraints):
        return State.INFEASIBLE
    return State(told)


def memory_constraint(predicted_gb: float, budget_gb: float, out_of_memory: bool = False) -> float:
    """The "memory" constraint: predicted GiB minus the budget (<= 0: it fits); at least 1 for a
    trial that ran out of memory, whatever the prediction said."""
    over = predicted_gb - budget_gb
    return max(over, 0.0) + 1.0 if out_of_memory else over


def unfit(predicted_gb: float, budget_gb: float) -> Verdict | None:
    """A sampled config against the memory budget: None where it fits; else the verdict of a config
    never launched (PRUNED, infeasible for memory, kl 0: it ran no KL, and GP wants the same
    constraint names on every trial)."""
    over = memory_constraint(predicted_gb, budget_gb)
    if over <= 0:
        return None
    reason = f"memory: predicted {predicted_gb:.2f} GiB > {budget_gb:g} GiB"
    return Verdict(state=State.INFEASIBLE, told=State.PRUNED, ending=Ending.UNFIT,
                   stop_reason=reason, constraints={"kl": 0.0, "memory": over},
                   attrs={Attr.UNLAUNCHED: reason, Attr.STOP: reason})


def ending_of(last: TrialReport | TrialFailure | None, iterations: int, planned: int,
              raised: bool) -> Ending:
    """How a trial ended: from its last report (or failure), the iterations it reported against the
    `planned` ones, and whether Ray saw it raise."""
    if isinstance(last, TrialFailure) and last.error.startswith(OUT_OF_MEMORY):
        return Ending.OUT_OF_MEMORY
    if raised or isinstance(last, TrialFailure):
        return Ending.RAISED
    reason = last.stop_reason if last is not None else None
    if reason in StopReason.KL:
        return Ending.KL_RULE
    if reason == StopReason.PRUNED or (not reason and iterations < planned):
        return Ending.CUT
    return Ending.COMPLETED


def _ran(kl_max: float | None) -> bool:
    return kl_max is not None and not (isinstance(kl_max, float) and math.isnan(kl_max))


def _run_attrs(last: TrialReport | TrialFailure | None, iterations: int) -> dict[Attr, Any]:
    """What a trial's last report says about its run: iterations, the last reward, its KL."""
    attrs: dict[Attr, Any] = {Attr.ITERATIONS: iterations}
    if isinstance(last, TrialReport) and math.isfinite(last.metrics.get(K.SCORES, math.nan)):
        attrs[Attr.REWARD] = last.metrics[K.SCORES]
    if isinstance(last, TrialReport) and math.isfinite(last.metrics.get(K.RESPONSE_LENGTH, math.nan)):
        attrs[Attr.RESPONSE_LENGTH] = last.metrics[K.RESPONSE_LENGTH]
    kl_max = last.kl_max if last is not None else None
    if _ran(kl_max):
        kl_last = last.kl if isinstance(last, TrialReport) else kl_max
        attrs[Attr.KL_MAX] = float(kl_max)
        attrs[Attr.KL_FINAL] = float(kl_last if kl_last is not None and not math.isnan(kl_last)
                                     else kl_max)
    return attrs


def verdict(last: TrialReport | TrialFailure | None, iterations: int, *, planned: int,
            raised: bool, kl_limit: float, memory_budget_gb: float | None = None,
            predicted_gb: float | None = None) -> Verdict:
    """The verdict of a trial that ended: `last` its last report or failure (None: it reported
    nothing), `iterations` those it reported, `planned` those it was to run, `raised` whether Ray
    saw it fail; the KL limit, and the memory budget and the trial's predicted peak where checked.

    - ran its iterations: COMPLETE with its score (PRUNED without one);
    - stopped by the KL rule: told COMPLETE with its score, INFEASIBLE (constraint kl > 0);
    - cut by the scheduler or the wall clock: PRUNED, with its constraints;
    - raised: FAIL, with its error;
    - out of memory: PRUNED and INFEASIBLE for memory (constraint memory >= 1).
    """
    ending = ending_of(last, iterations, planned, raised)
    attrs = _run_attrs(last, iterations)
    kl_max = last.kl_max if last is not None else None
    kl_last = last.kl if isinstance(last, TrialReport) else kl_max
    constraints: dict[str, float] = {}
    if Attr.KL_MAX in attrs:
        constraints["kl"] = kl_constraint(float(kl_max), kl_limit,
                                          getattr(last, "stop_reason", None))
    base = {"ending": ending, "kl_last": kl_last}
    if ending is Ending.OUT_OF_MEMORY:  # as a config predicted not to fit
        assert isinstance(last, TrialFailure)
        constraints.setdefault("kl", 0.0)
        constraints["memory"] = memory_constraint(predicted_gb or 0.0, memory_budget_gb or 0.0,
                                                  out_of_memory=True)
        reason = f"memory: {last.error.splitlines()[0][:200]}"
        attrs.update({Attr.ERROR: last.error[:2000], Attr.STOP: reason})
        return Verdict(state=State.INFEASIBLE, told=State.PRUNED, stop_reason=reason,
                       error=last.error, constraints=constraints, attrs=attrs, **base)
    if memory_budget_gb is not None and predicted_gb is not None:
        constraints["memory"] = memory_constraint(predicted_gb, memory_budget_gb)
    if ending is Ending.RAISED:
        message = last.error if isinstance(last, TrialFailure) else "the trial's process died"
        reason = StopReason.failed(message)
        attrs.update({Attr.ERROR: message[:2000], Attr.STOP: reason})
        return Verdict(state=State.FAIL, told=State.FAIL, stop_reason=reason, error=message,
                       constraints=constraints, attrs=attrs, **base)
    value = last.objective if last is not None else None
    reason = (last.stop_reason if last is not None else None) or (
        StopReason.PRUNED if ending is Ending.CUT else StopReason.COMPLETED)
    attrs[Attr.STOP] = reason
    if ending is Ending.CUT or value is None or not math.isfinite(value):
        return Verdict(state=State.PRUNED, told=State.PRUNED, stop_reason=reason, value=value,
                       constraints=constraints, attrs=attrs, **base)
    state = State.INFEASIBLE if ending is Ending.KL_RULE else State.COMPLETE
    return Verdict(state=state, told=State.COMPLETE, stop_reason=reason, value=value,
                   constraints=constraints, attrs=attrs, **base)
