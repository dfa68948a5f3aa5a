"""optuna-dashboard on a sweep's study, reading its constraints as Optuna 5 does.

Optuna 5 stores a trial's constraints as system attributes `constraints:<name>` (ours: `kl`, and
`memory` where a memory budget is set). optuna-dashboard 0.21 reads only the legacy attribute
`constraints` (a list), so on its own it shows every trial as feasible, and its best-trial card is the
highest value of any COMPLETE trial, a KL-infeasible one included. Writing the legacy list into the
study as well cannot fix that: Optuna 5 reads both formats and names the legacy entries "0", "1", ...,
so every trial would carry its KL constraint twice (`{"0": v, "kl": v}`), which changes what the GP
sampler learns and what `FrozenTrial.constraints` shows. So the study keeps Optuna 5's format only,
and `tuner dashboard` serves optuna-dashboard through a view of the storage that, for the dashboard
alone and without writing anything, gives each trial the legacy list too and picks the best trial
among the feasible ones. Studies written before this view existed read the same way.
"""

from __future__ import annotations

import copy
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from trials import ConfigError, Problem
from tuner.spec import CompiledSpec
from tuner.sweep._study import best_of, open_storage

__all__ = ["DASHBOARD_VERSION", "FeasibleView", "dashboard_app", "dashboard_page"]

DASHBOARD_VERSION = "0.21"  # the optuna-dashboard release this view is written and tested against
LEGACY = "constraints"  # optuna-dashboard 0.21's only source of a trial's constraints: a list of floats
_DETAIL = "/api/studies/<study_id:int>"  # optuna-dashboard's study API route (it holds best_trials)


def _with_legacy(trial: FrozenTrial) -> FrozenTrial:
    """A copy of the trial whose system attributes also hold its named constraints as the legacy list
    (in name order), for the dashboard only."""
    named = trial.constraints
    if not named:
        return trial
    shown = copy.copy(trial)
    shown._system_attrs = {**trial.system_attrs, LEGACY: [named[k] for k in sorted(named)]}
    return shown


class FeasibleView(optuna.storages.RDBStorage):
    """The study's storage as optuna-dashboard 0.21 should read it: constraints in its legacy list, and
    the best trial the best feasible one (as `tuner export` picks it). Writes go through unchanged."""

    def get_all_trials(self, study_id: int, deepcopy: bool = True,
                       states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return [_with_legacy(t) for t in super().get_all_trials(study_id, deepcopy=deepcopy, states=states)]

    def get_trial(self, trial_id: int) -> FrozenTrial:
        return _with_legacy(super().get_trial(trial_id))

    def get_best_trial(self, study_id: int) -> FrozenTrial:
        """The best feasible COMPLETE trial; without one, Optuna's own pick (dropped from the page by
        _feasible_best_only, since it is infeasible)."""
        complete = super().get_all_trials(study_id, deepcopy=False, states=(TrialState.COMPLETE,))
        best = best_of(complete, self.get_study_directions(study_id)[0])
        return _with_legacy(best) if best is not None else super().get_best_trial(study_id)


class _FeasibleBestOnly:
    """A Bottle plugin on optuna-dashboard's study route: its best trials keep only feasible ones (a study
    without a feasible COMPLETE trial has no best trial; a multi-objective study's front, which the
    dashboard computes over every COMPLETE trial, loses its infeasible members)."""

    name, api = "ppo_tuner_feasible_best", 2

    def apply(self, callback: Any, route: Any) -> Any:
        if route.rule != _DETAIL or route.method != "GET":
            return callback

        def detail(*args: Any, **kwargs: Any) -> Any:
            body = callback(*args, **kwargs)
            if isinstance(body, dict) and "best_trials" in body:
                body["best_trials"] = [t for t in body["best_trials"] if all(c <= 0 for c in t.get(LEGACY, []))]
            return body

        return detail


def dashboard_app(spec: CompiledSpec) -> Any:
    """optuna-dashboard's WSGI app on the sweep's study, through FeasibleView."""
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise ConfigError([Problem("optuna-dashboard", None, "is not installed",
                                    f"pip install 'optuna-dashboard=={DASHBOARD_VERSION}.*'")]) from None
    app = wsgi(open_storage(spec.storage_url(), kind=FeasibleView))
    app.install(_FeasibleBestOnly())
    return app


def dashboard_page(server: str, spec: CompiledSpec) -> str:
    """The dashboard's page of the sweep's study on `server` (http://host:port)."""
    storage = open_storage(spec.storage_url())
    study_id = storage.get_study_id_from_name(spec.name)
    return f"{server}/dashboard/studies/{study_id}"
