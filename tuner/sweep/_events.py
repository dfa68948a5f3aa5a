"""The one Ray Tune callback of a sweep: Ray's events become records (`TrialTask`, `TrialReport`,
`Outcome`) for the MLflow logger and every `SweepCallback`. Callbacks never see Ray's trial objects
or the searcher's state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ray.tune import Callback
from ray.tune.result import AUTO_RESULT_KEYS, DONE, TRIAL_ID

from tuner.sweep._callback import SweepCallback
from tuner.sweep._signals import before_tune_stop
from tuner.trial import ITERATION, SCHEDULER_SCORE, Outcome, TrialFailure, TrialTask

__all__ = ["RayEvents", "forget_trial"]


class RayEvents(Callback):
    """Ray Tune's callback events, as records: the searcher's outcomes and the trial logger's runs are
    brought together here, then every SweepCallback is told."""

    def __getstate__(self) -> dict:
        return {}  # Ray pickles callbacks into its experiment state; these hold live handles

    def __init__(self, searcher: Any, logger: Any, callbacks: Sequence[SweepCallback] = ()):
        self.searcher, self.logger, self.callbacks = searcher, logger, list(callbacks)

    def setup(self, **info: Any) -> None:
        """Ray Tune's SIGINT handler is in place: a stop tells the trials first."""
        before_tune_stop(self.searcher.stop_trials)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        task = TrialTask.from_config(trial.config)
        self.searcher.trial_started(trial.trial_id)
        run_id = self.logger.open_run(task)  # a retry of the same trial keeps its run
        self.searcher.annotate(trial.trial_id, "mlflow_run", run_id)
        for callback in self.callbacks:
            callback.trial_started(task)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.logger.trial_retried(trial.config["number"], self.searcher.on_retry(trial.trial_id))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        number = trial.config["number"]
        record = self.searcher.decode(trial.trial_id, result)  # decoded once, with the searcher
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
        forget_trial(trial)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "FAIL")
        forget_trial(trial)


def forget_trial(trial: Any) -> None:
    """Drop what Ray Tune keeps of a trial that ended for the rest of the fit, down to its number and a
    few of Tune's own result keys: its config (the TrialTask: the engine config, the driver's sys.path),
    the flattened copy of it and the tag made from it, its last result (every metric, the config again),
    the per-metric statistics of every numeric key (max, min, mean, last, two running windows), and the
    JSON of all that in Tune's experiment state. Tune holds them until the fit ends, so the driver's
    memory would grow with every trial (bench/driver_memory.py measures it). The sweep never reads
    them after the end: the study and the MLflow runs hold every result, and the scheduler, the
    searcher and this callback's records were told of the end before this runs. `tuner resume`
    starts from the study, never from Tune's state."""
    number = trial.config.get("number")
    trial.config = {"number": number}
    trial._Trial__unresolved_config = trial.config  # Tune's copy of the config as suggested (Trial.__init__)
    trial.evaluated_params = {}
    trial.experiment_tag = str(number)
    meta = getattr(trial, "run_metadata", None)
    if meta is not None:  # each assignment drops its cached JSON
        keep = {*AUTO_RESULT_KEYS, DONE, TRIAL_ID, SCHEDULER_SCORE} - {"config"}
        meta.last_result = {k: v for k, v in (meta.last_result or {}).items() if k in keep}
        meta.metric_analysis, meta.metric_n_steps = {}, {}
    trial.invalidate_json_state()
