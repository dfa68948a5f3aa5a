"""MLflow tracking of a sweep, from the driver: a parent run per sweep, a nested child run per trial.

All writes go through one MlflowClient with explicit run ids (no global active run), from the
Tune driver's callbacks, so trials never touch the tracking store themselves. A trial waits while the
driver handles its result, so each iteration's metrics and a run's closing are handed to one writer
thread, in order (about 16 ms per result on SQLite, which the trials do not wait for), flushed
before the sweep's end is written.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import optuna
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from trials import ConfigError, Problem
from trials import metrics as K
from tuner.spec import SPEC_FILE, CompiledSpec
from tuner.sweep._callback import SweepCallback
from tuner.sweep._study import ATTR, PARENT_ATTR, redact, schema_init_lock
from tuner.sweep._writer import Writer
from tuner.trial import (
    KL_MAX,
    OBJECTIVE,
    START_SECONDS,
    TRAINER,
    WARM_START,
    Outcome,
    StopReason,
    TrialReport,
    TrialTask,
)

__all__ = ["TAG", "SweepTracker", "TrialLogger", "check_tracking_server", "run_name", "sweep_page"]

log = logging.getLogger(__name__)

# a trial's MLflow run status: only a trial that ran to its end within the KL limit is FINISHED (a green
# badge); one that passed the limit is FAILED (red), one cut by the scheduler KILLED (grey)
_STATUS = {"COMPLETE": "FINISHED", "INFEASIBLE": "FAILED", "PRUNED": "KILLED", "FAIL": "FAILED"}
# MLflow tags of the parent and child runs
TAG = {"kind": "ppo_tuner.kind", "study": "ppo_tuner.study", "number": "ppo_tuner.trial_number",
       "state": "ppo_tuner.state", "stop": "ppo_tuner.stop_reason", "error": "ppo_tuner.error",
       "errors": "ppo_tuner.errors", "retries": "ppo_tuner.retries", "best": "ppo_tuner.best_trial",
       "diagnosis": "ppo_tuner.diagnosis", "stage": "ppo_tuner.stage", "source": "ppo_tuner.promoted_trial",
       "seed": "ppo_tuner.seed"}
TRIAL = "trial"  # the kind (and stage) of a search trial's run; a promotion run's is PROMOTION
_METRICS = (*K.ALL, OBJECTIVE, KL_MAX, START_SECONDS, WARM_START)  # what a child run logs per iteration
# learning rates (1e-6..1e-3) draw as flat zeros on MLflow's chart axes: logged in millionths instead
LR_MICRO = {K.LR_POLICY: f"{K.LR_POLICY}_x1e6", K.LR_VALUE: f"{K.LR_VALUE}_x1e6"}

# The page `tuner ui` prints: MLflow 3.17 opens an experiment in its GenAI layout (traces, judges, an
# assistant) unless the URL says workflowType=machine_learning; the runs table takes its filter, order
# and columns from a "shared view", an experiment tag mlflow.sharedViewState.<key> holding them as JSON
# (what the UI's Share button writes), opened with ?viewStateShareKey=<key>. The view lists the trials
# alone (child runs whose parent is filtered out are listed flat, not folded under the sweep's run).
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # "Machine learning" in the UI
VIEW_KEY = "ppo-tuner-trials"
_VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"


def run_name(number: int, state: str | None = None, kind: str = TRIAL) -> str:
    """A trial's run name: trial-3 while it runs, trial-3 PRUNED once it ended (the run list shows it);
    a promotion run's: promotion-0 COMPLETE."""
    return f"{kind}-{number}" + (f" {state}" if state else "")


def _column(kind: str, name: str) -> str:
    return f"{kind}.`{name}`"  # how the MLflow UI names a column (metrics, params, tags, attributes)


def trials_view(searched: list[str]) -> dict[str, Any]:
    """The runs table of the sweep's page: the trials, first to last, with the columns a user compares."""
    columns = [_column("tags", TAG["stage"]), _column("tags", TAG["state"]),
               _column("metrics", OBJECTIVE), _column("metrics", K.KL), _column("metrics", KL_MAX),
               _column("metrics", K.EVAL_SCORES), _column("tags", TAG["stop"]),
               *(_column("params", name) for name in searched)]
    return {"searchFilter": f"tags.`{TAG['kind']}` != 'sweep'",  # search trials and promotion runs
            "orderByKey": "attributes.start_time",
            "orderByAsc": True, "startTime": "ALL", "lifecycleFilter": "Active", "datasetsFilter": [],
            "modelVersionFilter": "All Runs", "selectedColumns": columns, "columnOrder": columns,
            "runsHiddenMode": "SHOW_ALL", "viewMaximized": False, "runListHidden": False,
            # one group per state (COMPLETE, INFEASIBLE, PRUNED, FAIL), open: every trial is a row at once
            "groupBy": {"aggregateFunction": "max", "groupByKeys": [{"mode": "tag", "groupByData": TAG["state"]}]},
            "groupsExpanded": {}}


def sweep_page(base_url: str, experiment_id: str) -> str:
    """The sweep's page on an MLflow server at `base_url`: its trials in the model-training layout."""
    return (f"{base_url.rstrip('/')}/#/experiments/{experiment_id}/runs"
            f"?workflowType=machine_learning&viewStateShareKey={VIEW_KEY}")


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        out: dict[str, str] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(data)[:6000]}


def check_tracking_server(spec: CompiledSpec) -> None:
    """An MLflow server named by `mlflow.tracking_uri` answers (its /health), before anything is written:
    else one line naming it (MlflowClient would retry for minutes, then fail with a traceback)."""
    uri = spec.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)  # /health needs no credentials: a user:password@ part is left out
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    netloc = host + (f":{parts.port}" if parts.port else "")
    try:
        urllib.request.urlopen(f"{parts.scheme}://{netloc}{parts.path.rstrip('/')}/health", timeout=10).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (OSError, ValueError) as exc:
        reason = str(getattr(exc, "reason", None) or exc).strip().splitlines()[0][:200]
        raise ConfigError([Problem("mlflow.tracking_uri", redact(uri), f"no MLflow server answers there ({reason})",
                                   "start the MLflow server, or fix the address (empty: a SQLite store in the "
                                   "sweep's folder)")]) from None


class SweepTracker:
    """The parent run: created once per sweep, reused on resume (its id is kept in the study)."""

    def __init__(self, spec: CompiledSpec, study: optuna.Study, reopen: bool = True):
        self.spec, self.study = spec, study
        with schema_init_lock(spec.tracking_uri()):  # MLflow's schema migrations must not run twice at once
            self.client = MlflowClient(tracking_uri=spec.tracking_uri())
            self.experiment_id = self._experiment()
        self.parent_id = self._parent(reopen)

    @classmethod
    def existing(cls, spec: CompiledSpec, study: optuna.Study) -> SweepTracker | None:
        """The sweep's tracker, for reading (tuner diagnose): writes nothing; None where the study has no
        parent run yet."""
        run_id = study.user_attrs.get(PARENT_ATTR)
        if not run_id:
            return None
        self = cls.__new__(cls)
        self.spec, self.study, self.parent_id = spec, study, run_id
        self.client = MlflowClient(tracking_uri=spec.tracking_uri())
        self.experiment_id = self.client.get_run(run_id).info.experiment_id
        return self

    def _experiment(self) -> str:
        name = self.spec.experiment_name()
        found = self.client.get_experiment_by_name(name)
        searched = sorted(n for n, p in self.spec.space.items() if p.searched)
        view = {_VIEW_TAG: json.dumps(trials_view(searched))}
        if found is not None:
            # set again: an existing experiment may lack them or hold another view
            for key, value in {**EXPERIMENT_KIND, **view}.items():
                self.client.set_experiment_tag(found.experiment_id, key, value)
            return found.experiment_id
        location = None
        if not self.spec.tracking_uri().startswith(("http://", "https://")):  # a server stores its own
            location = (self.spec.sweep_dir() / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(name, artifact_location=location, tags={**EXPERIMENT_KIND, **view})

    def _parent(self, reopen: bool) -> str:
        run_id = self.study.user_attrs.get(PARENT_ATTR)
        if run_id:
            if reopen:
                self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=f"sweep-{self.spec.name}",
                                     tags={TAG["kind"]: "sweep", TAG["study"]: self.spec.name})
        self.study.set_user_attr(PARENT_ATTR, run.info.run_id)
        settings = _flatten({k: v for k, v in self.spec.resolved().items() if k not in ("search_space", "base")})
        settings["storage"] = redact(self.spec.storage_url())
        settings["mlflow.tracking_uri"] = redact(self.spec.tracking_uri())
        params = [Param(k, redact(v) or "") for k, v in sorted(settings.items())][:100]
        self.client.log_batch(run.info.run_id, params=params)
        self.log_text(run.info.run_id, _spec_yaml(self.spec), SPEC_FILE)
        return run.info.run_id

    def log_text(self, run_id: str, text: str, name: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_text(text)
            self.client.log_artifact(run_id, str(path))

    def log_file(self, path: Path) -> None:
        self.client.log_artifact(self.parent_id, str(path))

    def finish(self, summary: dict[str, float], best: int | None, status: str = "FINISHED") -> None:
        metrics = [Metric(k, float(v), 0, 0) for k, v in summary.items() if v is not None and math.isfinite(v)]
        tags = [RunTag(TAG["best"], str(best) if best is not None else "none")]
        self.client.log_batch(self.parent_id, metrics=metrics, tags=tags)
        self.client.set_terminated(self.parent_id, status=status)

    def child_runs(self) -> list[Any]:
        return self.client.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent_id}'",
                                       max_results=5000)

    def metric_history(self, run_id: str, name: str) -> list[tuple[int, float]]:
        """(step, value) of one metric of a run, by step."""
        return sorted((m.step, m.value) for m in self.client.get_metric_history(run_id, name))


def _spec_yaml(spec: CompiledSpec) -> str:
    import yaml

    data = spec.resolved()
    data["storage"] = redact(data.get("storage"))
    if isinstance(data.get("mlflow"), dict):
        data["mlflow"]["tracking_uri"] = redact(data["mlflow"].get("tracking_uri"))
    return yaml.safe_dump(data, sort_keys=False)


class TrialLogger(SweepCallback):
    """One nested child run per trial: its params, every iteration's metrics, its state and stop reason."""

    def __init__(self, tracker: SweepTracker, kind: str = TRIAL):
        # kind: TRIAL (the search's) or PROMOTION (its runs are the promotion study's)
        self.tracker, self.kind = tracker, kind
        self.client = tracker.client
        self.runs: dict[int, str] = {}  # trial number -> mlflow run id
        self.logged: dict[int, int] = {}  # trial number -> the last iteration logged, over its attempts
        self.writer = Writer()

    def open_run(self, task: TrialTask) -> str:
        """The trial's child run (created on its first attempt; a retry keeps it); "" while the tracking
        server cannot be reached: the trial runs on without one, and `tuner sync` creates it from the study."""
        if task.number not in self.runs:
            try:
                self.runs[task.number] = self._create_run(task.number, task.params, task.engine, task.source)
            except Exception as exc:
                self.writer.failed += 1
                log.warning("MLflow: trial %d's run could not be created (%s); 'tuner sync' creates it from the study",
                            task.number, _first_line(exc))
                return ""
        return self.runs[task.number]

    def _create_run(self, number: int, searched: dict[str, Any], engine: dict[str, Any],
                    source: int | None = None) -> str:
        tags = {"mlflow.parentRunId": self.tracker.parent_id, TAG["kind"]: self.kind, TAG["number"]: str(number),
                TAG["stage"]: "search" if self.kind == TRIAL else self.kind}
        if source is not None:
            tags.update({TAG["source"]: str(source), TAG["seed"]: str(engine.get("seed"))})
        run = self.client.create_run(self.tracker.experiment_id, run_name=run_name(number, kind=self.kind), tags=tags)
        params = [Param(k, str(v)) for k, v in sorted(searched.items())]
        params += [Param(f"engine.{k}", redact(str(v)) or "") for k, v in sorted(engine.items()) if k not in searched]
        self.client.log_batch(run.info.run_id, params=params[:100])
        return run.info.run_id

    def close_abandoned(self, tasks: list[TrialTask]) -> None:
        """Trials the interrupted sweep had suggested, running or not yet started: a KILLED run each,
        so that MLflow keeps exactly one child run per Optuna trial."""
        try:
            self.writer.flush()  # every metric and closing handed to the writer is in the store
        except Exception as exc:  # the study has every outcome; a resume's reconcile repairs the runs
            log.warning("MLflow: %d writes failed (first: %s: %s); the study keeps every trial's outcome: "
                        "'tuner sync %s' (or 'tuner resume') writes what is missing", self.writer.failed,
                        type(exc).__name__, _first_line(exc), self.tracker.spec.name)
        for task in tasks:
            try:
                self._kill(self.open_run(task), "FAIL", StopReason.INTERRUPTED)
            except Exception as exc:  # the next sync or resume marks it KILLED
                log.warning("MLflow: trial %d's run could not be closed (%s)", task.number, _first_line(exc))

    def _kill(self, run_id: str, state: str, stop_reason: str) -> None:
        self.client.log_batch(run_id, tags=[RunTag(TAG["state"], state), RunTag(TAG["stop"], stop_reason)])
        self.client.set_terminated(run_id, status="KILLED")

    def trial_retried(self, number: int, retries: int) -> None:
        if number in self.runs and retries:
            self.writer.submit(self.client.set_tag, self.runs[number], TAG["retries"], str(retries))

    def attempt_failed(self, number: int, errors: list[str]) -> None:
        if number in self.runs:
            self.writer.submit(self.client.set_tag, self.runs[number], TAG["errors"], " | ".join(errors)[:5000])

    def trial_reported(self, number: int, iteration: int, report: TrialReport) -> None:
        run_id = self.runs.get(number)
        if run_id is None or report.replayed(iteration) and iteration <= self.logged.get(number, 0):
            return  # restored from the checkpoint of the trial's earlier attempt, which logged it
        self.logged[number] = max(iteration, self.logged.get(number, 0))
        values = report.to_result()
        metrics = [Metric(LR_MICRO[n], float(values[n]) * 1e6, 0, iteration) if n in LR_MICRO
                   else Metric(n, float(values[n]), 0, iteration) for n in _METRICS
                   if isinstance(values.get(n), (int, float)) and math.isfinite(values[n])]
        metrics += [Metric(_metric_name(TRAINER + n), v, 0, iteration)
                    for n, v in report.trainer.items() if math.isfinite(v)]
        if iteration == 1:  # the curves start before any update
            metrics += [Metric(name, report.initial(name), 0, 0) for name in K.EVALUATED
                        if math.isfinite(report.initial(name))]
        self.writer.submit(self.client.log_batch, run_id, metrics)

    def trial_ended(self, outcome: Outcome) -> None:
        run_id = self.runs.get(outcome.number)
        if run_id is None:
            return
        tags = [RunTag(TAG["state"], outcome.state), RunTag(TAG["stop"], outcome.stop_reason)]
        if outcome.error:
            tags.append(RunTag(TAG["error"], outcome.error[:5000]))
        self.writer.submit(self.client.log_batch, run_id, (), (), tags)  # after the run's metrics
        self.writer.submit(self.client.update_run, run_id, None, run_name(outcome.number, outcome.state, self.kind))
        self.writer.submit(self.client.set_terminated, run_id, _STATUS.get(outcome.state, "KILLED"))

    def reconcile(self, study: optuna.Study) -> dict[str, int]:
        """Make MLflow agree with the study after a controller died or the tracking server was away: a run
        left RUNNING is closed as its trial ended in the study (KILLED where the trial did not end), a
        trial that has no run gets one, so that there is exactly one child run per Optuna trial that ran or
        was meant to (a DUPLICATE, or a config predicted not to fit in memory, never runs); and a run that
        misses iterations gets the study's record of them: the objective per iteration and kl_max (the
        engine's other metrics of those iterations are not in the study, and stay missing)."""
        by_number: dict[str, list[Any]] = {}
        for run in self.tracker.child_runs():
            if run.data.tags.get(TAG["kind"], TRIAL) != self.kind:
                continue
            by_number.setdefault(run.data.tags.get(TAG["number"], ""), []).append(run)
        counts = {"closed": 0, "created": 0, "restored": 0}
        for trial in study.get_trials(deepcopy=False):
            runs = by_number.get(str(trial.number), [])
            never_ran = ATTR["duplicate"] in trial.user_attrs or ATTR["unlaunched"] in trial.user_attrs
            if not runs and trial.state.is_finished() and not never_ran:
                engine = json.loads(trial.user_attrs.get(ATTR["engine"], "{}"))
                source = trial.user_attrs.get(ATTR["source"])
                params = (json.loads(trial.user_attrs.get(ATTR["params"], "{}"))
                          if source is not None else dict(trial.params))
                runs = [self.client.get_run(self._create_run(trial.number, params, engine, source))]
                counts["created"] += 1
            for run in runs:
                if run.info.run_id in self.runs.values():
                    continue  # this controller's own
                counts["restored"] += self._restore(run.info.run_id, trial)
                if run.info.status == "RUNNING" and trial.state.is_finished():
                    self._close(run.info.run_id, trial)
                    counts["closed"] += 1
        return counts

    def _restore(self, run_id: str, trial: optuna.trial.FrozenTrial) -> int:
        """Log the study's objective per iteration that the run lacks; returns how many were written."""
        have = {m.step for m in self.client.get_metric_history(run_id, OBJECTIVE)}
        metrics = [Metric(OBJECTIVE, float(v), 0, int(step)) for step, v in sorted(trial.intermediate_values.items())
                   if int(step) not in have and math.isfinite(v)]
        if metrics and ATTR["kl_max"] in trial.user_attrs:
            metrics.append(Metric(KL_MAX, float(trial.user_attrs[ATTR["kl_max"]]), 0, max(m.step for m in metrics)))
        for start in range(0, len(metrics), 500):
            self.client.log_batch(run_id, metrics=metrics[start:start + 500])
        return len(metrics)

    def _close(self, run_id: str, trial: optuna.trial.FrozenTrial) -> None:
        """End a run as its (finished) trial ended in the study; KILLED if it was interrupted."""
        from tuner.sweep._study import state_of

        stop = trial.user_attrs.get(ATTR["stop"], StopReason.INTERRUPTED)
        if stop == StopReason.INTERRUPTED:
            self._kill(run_id, "FAIL", StopReason.INTERRUPTED)
            return
        state = state_of(trial)
        tags = [RunTag(TAG["state"], state), RunTag(TAG["stop"], stop)]
        if ATTR["error"] in trial.user_attrs:
            tags.append(RunTag(TAG["error"], str(trial.user_attrs[ATTR["error"]])[:5000]))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status=_STATUS.get(state, "KILLED"))

    def flush(self) -> None:
        self.writer.flush()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def _metric_name(name: str) -> str:
    """An external trainer's own metric name as MLflow accepts it (verl's 'val-core/x/reward/mean@1': '@' -> '_')."""
    return re.sub(r"[^/\w.\- :]", "_", name)

