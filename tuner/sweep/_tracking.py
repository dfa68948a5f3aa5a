"""MLflow tracking of a sweep, from the driver: a parent run per sweep, a nested child run per trial.

All writes go through one MlflowClient with explicit run ids (no global active run), from the
Tune driver's callbacks, so trials never touch the tracking store themselves. A trial waits while the
driver handles its result, so each iteration's metrics and a run's closing are handed to one writer
thread, in order (about 16 ms per result on SQLite that the trials no longer wait for), flushed
before the sweep's end is written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import queue
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from trials import metrics as K
from tuner.spec import SweepSpec
from tuner.sweep._searcher import StudySearcher
from tuner.sweep._study import ATTR, redact, schema_init_lock

__all__ = ["SweepTracker", "TrialLogger"]

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"
_STATUS = {"COMPLETE": "FINISHED", "INFEASIBLE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED"}


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(data)[:6000]}


class SweepTracker:
    """The parent run: created once per sweep, reused on resume (its id is kept in the study)."""

    def __init__(self, spec: SweepSpec, study: optuna.Study):
        self.spec, self.study = spec, study
        with schema_init_lock(spec.tracking_uri()):  # MLflow's schema migrations must not run twice at once
            self.client = MlflowClient(tracking_uri=spec.tracking_uri())
            self.experiment_id = self._experiment()
        self.parent_id = self._parent()

    def _experiment(self) -> str:
        name = self.spec.experiment_name()
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if not self.spec.tracking_uri().startswith(("http://", "https://")):  # a server stores its own
            location = (self.spec.sweep_dir() / "mlartifacts").resolve().as_uri()
        # "finetuning" makes the MLflow UI open the experiment on its training-runs view
        return self.client.create_experiment(name, artifact_location=location,
                                             tags={"mlflow.experimentKind": "finetuning"})

    def _parent(self) -> str:
        run_id = self.study.user_attrs.get(PARENT_ATTR)
        if run_id:
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=f"sweep-{self.spec.name}",
                                     tags={"ppo_tuner.kind": "sweep", "ppo_tuner.study": self.spec.name})
        self.study.set_user_attr(PARENT_ATTR, run.info.run_id)
        settings = _flatten({k: v for k, v in self.spec.resolved().items() if k not in ("search_space", "base")})
        settings["storage"] = redact(self.spec.storage_url())
        settings["mlflow.tracking_uri"] = redact(self.spec.tracking_uri())
        params = [Param(k, redact(v) or "") for k, v in sorted(settings.items())][:100]
        self.client.log_batch(run.info.run_id, params=params)
        self.log_text(run.info.run_id, _spec_yaml(self.spec), "spec.yaml")
        return run.info.run_id

    def log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.client.log_artifact(run_id, str(path))

    def log_file(self, path: Path) -> None:
        self.client.log_artifact(self.parent_id, str(path))

    def finish(self, summary: dict[str, float], tags: dict[str, str], status: str = "FINISHED") -> None:
        metrics = [Metric(k, float(v), 0, 0) for k, v in summary.items() if v is not None and math.isfinite(v)]
        self.client.log_batch(self.parent_id, metrics=metrics, tags=[RunTag(k, v) for k, v in tags.items()])
        self.client.set_terminated(self.parent_id, status=status)

    def child_runs(self) -> list[Any]:
        return self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}'",
                                       max_results=5000)


def _spec_yaml(spec: SweepSpec) -> str:
    import yaml

    data = spec.resolved()
    data["storage"] = redact(data.get("storage"))
    if isinstance(data.get("mlflow"), dict):
        data["mlflow"]["tracking_uri"] = redact(data["mlflow"].get("tracking_uri"))
    return yaml.safe_dump(data, sort_keys=False)


class _Writer:
    """Calls run one at a time, in the order given, on a daemon thread."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="ppo-tuner-mlflow-writer", daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.calls.put((fn, args))

    def flush(self) -> None:
        self.calls.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _loop(self) -> None:
        while True:
            fn, args = self.calls.get()
            try:
                fn(*args)
            except BaseException as exc:  # kept for flush(): the sweep goes on, as it would have after a failed write
                self.error = self.error or exc
            finally:
                self.calls.task_done()


class TrialLogger(Callback):
    """One nested child run per trial: its params, every iteration's metrics, its state and stop reason."""

    def __getstate__(self) -> dict:
        return {}  # Ray pickles callbacks into its experiment state; these hold live handles

    def __init__(self, tracker: SweepTracker, searcher: StudySearcher):
        self.tracker, self.searcher = tracker, searcher
        self.client = tracker.client
        self.runs: dict[str, str] = {}  # ray trial id -> mlflow run id
        self.writer = _Writer()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id not in self.runs:  # a retry of the same trial keeps its run
            self._create_run(trial.trial_id, trial.config)

    def _create_run(self, trial_id: str, config: dict[str, Any]) -> str:
        number = config.get("number")
        run = self.client.create_run(self.tracker.experiment_id, run_name=f"trial-{number}", tags={
            "mlflow.parentRunId": self.tracker.parent_id, "ppo_tuner.kind": "trial",
            "ppo_tuner.trial_number": str(number), "ppo_tuner.ray_trial_id": trial_id})
        self.runs[trial_id] = run.info.run_id
        params = [Param(k, str(v)) for k, v in sorted(config.get("params", {}).items())]
        params += [Param(f"engine.{k}", redact(str(v)) or "") for k, v in sorted(config["engine"].items())
                   if k not in config.get("params", {})]
        self.client.log_batch(run.info.run_id, params=params[:100])
        live = self.searcher.live.get(trial_id)
        if live is not None:
            live.set_user_attr(ATTR["mlflow_run"], run.info.run_id)
        return run.info.run_id

    def close_abandoned(self, trial_ids: list[str]) -> None:
        """Trials the interrupted sweep had suggested, running or not yet started: a KILLED run each,
        so that MLflow keeps exactly one child run per Optuna trial."""
        try:
            self.writer.flush()  # every metric and closing handed to the writer is in the store
        except Exception as exc:  # the study has every outcome; a resume's reconcile repairs the runs
            reason = (str(exc).splitlines() or [""])[0][:200]
            log.warning("MLflow: a write failed (%s: %s); the study keeps every trial's outcome", type(exc).__name__, reason)
        for trial_id in trial_ids:
            run_id = self.runs.get(trial_id) or self._create_run(trial_id, self.searcher.configs[trial_id])
            self._kill(run_id, "FAIL", "interrupted")

    def _kill(self, run_id: str, state: str, stop_reason: str) -> None:
        self.client.log_batch(run_id, tags=[RunTag("ppo_tuner.state", state), RunTag("ppo_tuner.stop_reason", stop_reason)])
        self.client.set_terminated(run_id, status="KILLED")

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.searcher.on_retry(trial.trial_id)
        run_id = self.runs.get(trial.trial_id)
        live = self.searcher.live.get(trial.trial_id)
        if run_id and live is not None:
            self.client.set_tag(run_id, "ppo_tuner.retries", str(live.user_attrs.get(ATTR["retries"], 1)))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        if "error" in result:  # an attempt failed: keep its error, whether or not it is retried
            live = self.searcher.live.get(trial.trial_id)
            errors = live.user_attrs.get(ATTR["errors"], []) if live is not None else [str(result["error"])]
            self.client.set_tag(run_id, "ppo_tuner.errors", " | ".join(errors)[:5000])
            return
        step = int(result.get("training_iteration", 0))
        names = [*K.ALL, "objective", "kl_max", "perf/trial_start_seconds", "perf/warm_start"]
        metrics = [Metric(n, float(result[n]), 0, step) for n in names
                   if isinstance(result.get(n), (int, float)) and math.isfinite(result[n])]
        self.writer.submit(self.client.log_batch, run_id, metrics)

    def _close(self, trial: Any, fallback: str) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        outcome = self.searcher.outcomes.get(trial.trial_id)
        state = outcome.state if outcome else fallback
        tags = [RunTag("ppo_tuner.state", state), RunTag("ppo_tuner.stop_reason", outcome.stop_reason if outcome else fallback)]
        if outcome and outcome.error:
            tags.append(RunTag("ppo_tuner.error", outcome.error[:5000]))
        self.writer.submit(self.client.log_batch, run_id, (), (), tags)  # after the run's metrics
        self.writer.submit(self.client.set_terminated, run_id, _STATUS.get(state, "KILLED"))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "COMPLETE")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._close(trial, "FAIL")

    def reconcile(self, study: optuna.Study) -> dict[str, int]:
        """Make MLflow agree with the study after a controller died: runs left RUNNING become KILLED,
        and a trial that has no run (it was suggested but never started) gets a KILLED one, so that
        there is exactly one child run per Optuna trial that ran or was meant to (a DUPLICATE never runs)."""
        by_number: dict[str, list[Any]] = {}
        for run in self.tracker.child_runs():
            by_number.setdefault(run.data.tags.get("ppo_tuner.trial_number", ""), []).append(run)
        killed = created = 0
        for trial in study.get_trials(deepcopy=False):
            runs = by_number.get(str(trial.number), [])
            for run in runs:
                if run.info.status == "RUNNING" and run.info.run_id not in self.runs.values():
                    self.client.set_tag(run.info.run_id, "ppo_tuner.state", "KILLED")
                    self.client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
                    killed += 1
            if not runs and trial.state.is_finished() and ATTR["duplicate"] not in trial.user_attrs:
                engine = json.loads(trial.user_attrs.get(ATTR["engine"], "{}"))
                run_id = self._create_run(trial.user_attrs.get(ATTR["ray_trial"], f"optuna-{trial.number}"),
                                          {"number": trial.number, "params": dict(trial.params), "engine": engine})
                self._kill(run_id, trial.state.name, trial.user_attrs.get(ATTR["stop"], "interrupted"))
                created += 1
        return {"killed": killed, "created": created}

os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
