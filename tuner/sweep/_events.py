"""The one Ray Tune callback of a sweep: Ray's events become records (`TrialTask`, `TrialReport`,
`Outcome`) for the MLflow logger and every `SweepCallback`. Callbacks never see Ray's trial objects
or the searcher's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.tune import Callback

from tuner.sweep._callback import SweepCallback
from tuner.trial import ITERATION, Outcome, TrialFailure, read_result
from tuner.trial._task import TrialTask

__all__ = ["RayEvents", "forget_metrics"]


class RayEvents(Callback):
    """Ray Tune's callback events, as records: the searcher's outcomes and the trial logger's runs are
    brought together here, then every SweepCallback is told."""

    def __getstate__(self) -> dict:
        return {}  # Ray pickles callbacks into its experiment state; these hold live handles

    def __init__(self, searcher: Any, logger: Any, callbacks: Sequence[SweepCallback] = ()):
        self.searcher, self.logger, self.callbacks = searcher, logger, list(callbacks)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        task = TrialTask.from_config(trial.config)
        run_id = self.logger.open_run(task)  # a retry of the same trial keeps its run
        self.searcher.annotate(trial.trial_id, "mlflow_run", run_id)
        for callback in self.callbacks:
            callback.trial_started(task)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.logger.trial_retried(trial.config["number"], self.searcher.on_retry(trial.trial_id))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        number = trial.config["number"]
        record = read_result(result)
        if isinstance(record, TrialFailure):  # an attempt failed: keep its error, whether or not it is retried
            self.logger.attempt_failed(number, self.searcher.attempt_errors(trial.trial_id) or [record.error])
            return
        step = int(result.get(ITERATION, 0))
        self.logger.trial_reported(number, step, record)
        for callback in self.callbacks:
            callback.trial_reported(number, step, record)

    def _end(self, trial: Any, fallback: str) -> None:
        outcome = self.searcher.outcome(trial.trial_id) or Outcome(
            number=trial.config["number"], state=fallback, stop_reason=fallback.lower(), value=None)
        self.logger.trial_ended(outcome)
        for callback in self.callbacks:
            callback.trial_ended(outcome)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "COMPLETE")
        forget_metrics(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAIL")
        forget_metrics(trial)


def forget_metrics(trial: Any) -> None:
    """Drop Ray Tune's per-metric statistics of a trial that ended (for every numeric key of its results:
    max, min, mean, last and two running windows, and their JSON in Tune's experiment state), which
    Tune keeps for the whole fit: the driver then grows 6 MiB per 100 trials of bench/driver_memory.py
    instead of 14. The sweep never reads them: the study and the MLflow runs hold every result, and
    the scheduler and the searcher were told of the trial's end before this callback runs. Its last
    result stays."""
    meta = getattr(trial, "run_metadata", None)
    if meta is not None and hasattr(meta, "metric_analysis"):
        meta.metric_analysis, meta.metric_n_steps = {}, {}  # setting them also drops the cached JSON


