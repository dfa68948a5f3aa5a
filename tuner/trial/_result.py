"""The one vocabulary of what a trial tells the controller, besides the engine's metrics
(`trials.metrics`): the keys of the result dict a trial reports, the records that produce and read it,
and the record of what the controller decided about a finished trial.

A trial reports a `TrialReport` after every iteration and a `TrialFailure` if it raised; both turn
into the flat dict Ray Tune carries (`to_result`) and back (`read_result`). Every reader (the
searcher, the MLflow logger, the table, the benchmark replay) goes through these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from trials import metrics as K

__all__ = ["ERROR", "INITIAL_EVAL", "ITERATION", "KL_MAX", "OBJECTIVE", "RESUMED", "SCHEDULER_SCORE", "STATES",
           "Outcome", "State", "StopReason", "TextEnum", "TrialFailure", "TrialReport",
           "failing_alike", "last_line", "read_result"]

# keys of the result dict, besides the engine's metric names
OBJECTIVE = "objective"  # the trial's running score: what the study records as its value
SCHEDULER_SCORE = "scheduler_score"  # what ASHA ranks: the score, or the worst value past the KL limit
KL_MAX = "kl_max"  # the largest objective/kl so far (nats, summed over the response)
STOP_REASON = "stop_reason"  # on the last report only: why the trial ended
START_SECONDS = "perf/trial_start_seconds"  # loading and the initial evaluation, before iteration 1
WARM_START = "perf/warm_start"  # 1.0 when the worker had the checkpoints cached
INITIAL_EVAL = "initial_eval"  # eval/scores before any update (iteration 0), where the trial evaluated it
INITIAL_GOLD = "initial_gold"  # eval/gold_scores before any update, where the trial has a held-out reward
PID = "pid"  # the process running this attempt
ERROR = "error"  # a failed attempt: "Type: message"
RETRYABLE = "retryable"  # 1.0 when running the attempt again may succeed
TRACEBACK = "traceback"
TRAINER = "trainer/"  # prefix of an external trainer's own metric names, kept besides ours
# the iteration this attempt restored from its checkpoint (0: none); its reports up to it are the earlier
# attempt's, reported again from the checkpoint so that the iterations count on from 1
RESUMED = "resumed_after"
ITERATION = "training_iteration"  # Ray Tune's count of reports: the engine's iteration

class TextEnum(str, Enum):
    """An enum whose members are their strings: `str()`, f-strings, JSON and the databases see the
    value alone, so records written with a member are the same bytes as with its string."""

    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(str.__str__(self), spec)


class State(TextEnum):
    """The outcomes a trial can have, as the study, the table and MLflow name them."""

    COMPLETE = "COMPLETE"
    INFEASIBLE = "INFEASIBLE"  # past the KL limit, or predicted not to fit or out of memory
    PRUNED = "PRUNED"
    FAIL = "FAIL"
    RUNNING = "RUNNING"
    WAITING = "WAITING"
    DUPLICATE = "DUPLICATE"  # a config an earlier trial ran: told that one's outcome, not run


STATES = tuple(state.value for state in State)


class StopReason(TextEnum):
    """Why a trial ended (the study's stop_reason attribute; failures read 'failed: <error>')."""

    COMPLETED = "completed"
    KL_LIMIT = "kl_limit"
    # its KL was forecast to pass the limit before its last iteration (kl_limit.forecast)
    KL_FORECAST = "kl_forecast"
    PRUNED = "pruned"
    INTERRUPTED = "interrupted"

    @staticmethod
    def of_kl(limit: Any) -> str:
        """Why a `trials.KLLimit` that stopped a run stopped it."""
        return StopReason.KL_FORECAST if limit.forecast_stop else StopReason.KL_LIMIT

    @staticmethod
    def failed(error: str) -> str:
        """'failed: ' and the error's first line; where the error goes on (a traceback, a trainer's
        log tail), its last line too, which names the fault ("ModuleNotFoundError: ...")."""
        lines = [line.strip() for line in error.splitlines() if line.strip()]
        if len(lines) < 2:
            return f"failed: {lines[0][:200] if lines else ''}"
        head = lines[0].removesuffix("log tail:").rstrip("; :")
        return f"failed: {head[:200]}: {last_line(error)}"


# the reasons that make a trial infeasible for its KL
StopReason.KL = (StopReason.KL_LIMIT, StopReason.KL_FORECAST)  # type: ignore[attr-defined]


def last_line(error: str) -> str:
    """The last non-blank line of an error, where a traceback or a log tail names the fault (at most
    200 characters)."""
    lines = [line.strip() for line in error.splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


@dataclass(frozen=True)
class TrialReport:
    """One iteration's report: the engine's metrics and the controller's numbers for them."""

    metrics: dict[str, float]
    objective: float
    scheduler_score: float
    kl_max: float
    stop_reason: str | None = None  # set on the trial's last report
    start_seconds: float = math.nan
    warm_start: bool = False
    pid: int = 0
    initial_eval: float = math.nan  # eval/scores before any update; NaN where the trial did not evaluate it
    initial_gold: float = math.nan  # eval/gold_scores before any update; NaN without a held-out reward
    trainer: dict[str, float] = field(default_factory=dict)  # an external trainer's numbers, under its own names
    resumed_after: int = 0  # RESUMED: the iteration this attempt's checkpoint held, 0 where it started afresh

    def to_result(self) -> dict[str, Any]:
        trainer = {TRAINER + k: v for k, v in self.trainer.items()}
        out: dict[str, Any] = {**self.metrics, **trainer,
                               OBJECTIVE: self.objective, SCHEDULER_SCORE: self.scheduler_score,
                               KL_MAX: self.kl_max, START_SECONDS: self.start_seconds,
                               WARM_START: float(self.warm_start), PID: self.pid, INITIAL_EVAL: self.initial_eval,
                               INITIAL_GOLD: self.initial_gold, RESUMED: self.resumed_after}
        if self.stop_reason is not None:
            out[STOP_REASON] = self.stop_reason
        return out

    @property
    def kl(self) -> float:
        return self.metrics.get(K.KL, math.nan)

    @property
    def eval(self) -> float:
        """This iteration's eval/scores, NaN where it did not evaluate."""
        return self.metrics.get(K.EVAL_SCORES, math.nan)

    def initial(self, metric: str) -> float:
        """`metric`'s value before any update (an evaluated metric), NaN where it was not measured."""
        return {K.EVAL_SCORES: self.initial_eval, K.EVAL_GOLD: self.initial_gold}.get(metric, math.nan)

    def replayed(self, iteration: int) -> bool:
        """Whether this report of `iteration` is an earlier attempt's, restored from its checkpoint."""
        return iteration <= self.resumed_after

    @property
    def seconds(self) -> float:
        return self.metrics.get(K.ITERATION_SECONDS, 0.0)


@dataclass(frozen=True)
class TrialFailure:
    """An attempt that raised."""

    error: str
    retryable: bool
    traceback: str = ""
    scheduler_score: float = math.nan
    kl_max: float | None = None
    pid: int = 0

    def to_result(self) -> dict[str, Any]:
        return {ERROR: self.error, RETRYABLE: float(self.retryable), TRACEBACK: self.traceback,
                OBJECTIVE: math.nan, SCHEDULER_SCORE: self.scheduler_score, PID: self.pid, KL_MAX: self.kl_max}


def read_result(result: dict[str, Any]) -> TrialReport | TrialFailure:
    """The record a result dict was made from (Ray adds keys of its own; they are ignored)."""
    if ERROR in result:
        return TrialFailure(error=str(result[ERROR]), retryable=bool(result.get(RETRYABLE)),
                            traceback=str(result.get(TRACEBACK, "")),
                            scheduler_score=float(result.get(SCHEDULER_SCORE, math.nan)),
                            kl_max=result.get(KL_MAX), pid=int(result.get(PID, 0) or 0))
    metrics = {k: float(result[k]) for k in K.ALL if isinstance(result.get(k), (int, float))}
    return TrialReport(metrics=metrics, objective=float(result.get(OBJECTIVE, math.nan)),
                       scheduler_score=float(result.get(SCHEDULER_SCORE, math.nan)),
                       kl_max=float(result.get(KL_MAX, math.nan)), stop_reason=result.get(STOP_REASON),
                       start_seconds=float(result.get(START_SECONDS, math.nan)),
                       warm_start=bool(result.get(WARM_START)), pid=int(result.get(PID, 0) or 0),
                       initial_eval=float(result.get(INITIAL_EVAL, math.nan)),
                       initial_gold=float(result.get(INITIAL_GOLD, math.nan)),
                       resumed_after=int(result.get(RESUMED, 0) or 0),
                       trainer={k[len(TRAINER):]: float(v) for k, v in result.items()
                                if k.startswith(TRAINER) and isinstance(v, (int, float))})


@dataclass
class Outcome:
    """What the controller recorded about a finished trial, with its timings."""

    number: int
    state: State
    stop_reason: str
    value: float | None
    error: str = ""
    iterations: int = 0
    kl_max: float | None = None
    kl_final: float | None = None
    compute_seconds: float = 0.0  # the trial's start plus the sum of its iterations' seconds
    wall_seconds: float = 0.0  # from its suggestion to its end
    params: dict[str, Any] = field(default_factory=dict)


def failing_alike(outcomes: list[Outcome], first: int) -> str | None:
    """The error's last line where the first `first` trials to end (in the order they ended; trials
    stopped without an error left out) all failed, after their retries, with the same last line: a
    fault every trial will meet (a trainer's missing module). None otherwise."""
    ended = [o for o in outcomes if o.state != State.FAIL or o.error][:first]
    if first < 1 or len(ended) < first or any(o.state != State.FAIL for o in ended):
        return None
    lines = {last_line(o.error) for o in ended}
    return lines.pop() if len(lines) == 1 else None
