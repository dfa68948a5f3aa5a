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
  count toward budget.trials.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from tuner.spec import SweepSpec, sample_params, trial_config
from tuner.sweep._study import ATTR, ran_configs, tell_duplicate

__all__ = ["StudySearcher", "Outcome", "ask_trial"]

OBJECTIVE = "objective"  # the running score reported by the trainable (see _trainable.py)
DUPLICATE_TRIES = 25  # samples asked for one slot before a repeated config is run anyway (a space nearly used up)


def ask_trial(study: optuna.Study, spec: SweepSpec, multi: bool = False) -> tuple[optuna.trial.Trial, dict[str, Any], dict[str, Any]]:
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


def _sample(study: optuna.Study, spec: SweepSpec) -> tuple[optuna.trial.Trial, dict[str, Any], dict[str, Any], str]:
    trial = study.ask()
    params = sample_params(trial, spec)
    engine = trial_config(spec, params).to_dict()
    text = json.dumps(engine)
    trial.set_user_attr(ATTR["engine"], text)
    return trial, params, engine, text


class Outcome:
    """What the searcher decided about a finished trial, shared with the tracking callbacks."""

    def __init__(self, number: int, state: str, stop_reason: str, value: float | None, error: str = ""):
        self.number, self.state, self.stop_reason, self.value, self.error = number, state, stop_reason, value, error


class StudySearcher(Searcher):
    def __init__(self, study: optuna.Study, spec: SweepSpec):
        super().__init__(metric=OBJECTIVE, mode="max" if spec.objective.direction == "maximize" else "min")
        self.study, self.spec = study, spec
        self.live: dict[str, optuna.trial.Trial] = {}  # ray trial id -> live Optuna trial
        self.last: dict[str, dict[str, Any]] = {}  # ray trial id -> last result
        self.outcomes: dict[str, Outcome] = {}  # ray trial id -> what was recorded
        self.configs: dict[str, dict[str, Any]] = {}  # ray trial id -> the config it was given
        self.multi = len(spec.directions()) > 1

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        trial, params, engine = ask_trial(self.study, self.spec, self.multi)
        trial.set_user_attr(ATTR["ray_trial"], trial_id)
        self.live[trial_id] = trial
        self.configs[trial_id] = config = {"engine": engine, "params": params, "number": trial.number, "kl_limit": self.spec.kl_limit,
                "objective": self.spec.objective.model_dump(), "sys_path": [p for p in [os.getcwd(), *sys.path] if p]}
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        self.last[trial_id] = result
        trial = self.live.get(trial_id)
        if trial is not None and "error" in result:
            errors = [*trial.user_attrs.get(ATTR["errors"], []), str(result["error"])[:300]]
            trial.set_user_attr(ATTR["errors"], errors)
            return
        if trial is not None and "pid" in result and trial.user_attrs.get(ATTR["pid"]) != int(result["pid"]):
            trial.set_user_attr(ATTR["pid"], int(result["pid"]))
        value = result.get(OBJECTIVE)
        if trial is not None and not self.multi and value is not None and math.isfinite(value):
            trial.report(value, step=int(result["training_iteration"]))

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        trial = self.live.pop(trial_id, None)
        if trial is None:
            return
        last = result or self.last.get(trial_id, {})
        outcome = self._record(trial, last, error)
        self.outcomes[trial_id] = outcome

    def _record(self, trial: optuna.trial.Trial, last: dict[str, Any], error: bool) -> Outcome:
        iterations = int(last.get("training_iteration", 0) or 0)
        kl_max = last.get("kl_max")
        trial.set_user_attr(ATTR["iterations"], iterations)
        if kl_max is not None:
            trial.set_user_attr(ATTR["kl_max"], float(kl_max))
            trial.set_user_attr(ATTR["kl_final"], float(last.get("objective/kl", kl_max)))
            trial.set_constraint("kl", float(kl_max) - self.spec.kl_limit if math.isfinite(kl_max) else math.inf)
        if error or last.get("error"):
            message = str(last.get("error") or "the trial's process died")
            trial.set_user_attr(ATTR["error"], message[:2000])
            trial.set_user_attr(ATTR["stop"], f"failed: {message.splitlines()[0][:200]}")
            self.study.tell(trial, state=TrialState.FAIL)
            return Outcome(trial.number, "FAIL", f"failed: {message.splitlines()[0][:200]}", None, message)
        value = last.get(OBJECTIVE)
        reason = last.get("stop_reason") or ("pruned" if iterations < self.spec.iterations() else "completed")
        trial.set_user_attr(ATTR["stop"], reason)
        if reason == "pruned" or value is None or not math.isfinite(value):
            self.study.tell(trial, state=TrialState.PRUNED)
            return Outcome(trial.number, "PRUNED", reason, value)
        values = [value, float(last.get("objective/kl", kl_max or 0.0))] if self.multi else value
        self.study.tell(trial, values)
        state = "INFEASIBLE" if reason == "kl_limit" else "COMPLETE"
        return Outcome(trial.number, state, reason, value)

    def on_retry(self, trial_id: str) -> None:
        """Ray restarts a trial after a failure (an exception that can pass, or its worker died)."""
        trial = self.live.get(trial_id)
        if trial is not None:
            trial.set_user_attr(ATTR["retries"], int(trial.user_attrs.get(ATTR["retries"], 0)) + 1)
            trial.set_user_attr(ATTR["pid"], -1)  # the next attempt reports its own pid

    def abandon_live(self, reason: str = "interrupted") -> list[str]:
        """Mark trials still running or pending (the sweep was interrupted) as FAIL, so a resume re-runs
        them; returns their ray trial ids."""
        abandoned = list(self.live)
        for trial_id in abandoned:
            trial = self.live.pop(trial_id)
            trial.set_user_attr(ATTR["stop"], reason)
            self.study.tell(trial, state=TrialState.FAIL)
            self.outcomes[trial_id] = Outcome(trial.number, "FAIL", reason, None)
        return abandoned

    def __getstate__(self) -> dict[str, Any]:
        # Ray pickles its search algorithm into the experiment state; the study is our checkpoint.
        return {"_metric": self._metric, "_mode": self._mode}

    def save(self, checkpoint_path: str) -> None:  # the study itself is the checkpoint
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass
