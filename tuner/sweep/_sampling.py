"""The next trial of a search: Optuna's sample, its engine config, the configs a trial already ran
(told that trial's outcome instead of running again), and the memory budget (a config predicted not
to fit is recorded infeasible and never launched).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import optuna

from trials import PPOConfig
from tuner.spec import CompiledSpec, sample_params, trial_config
from tuner.sweep._study import ran_configs, tell_duplicate
from tuner.trial import Attr, MemoryCheck, unfit

__all__ = ["DUPLICATE_TRIES", "ask_trial", "fits", "next_search_trial"]

# samples asked for one slot before a repeated config is run anyway (a space nearly used up)
DUPLICATE_TRIES = 25
log = logging.getLogger(__name__)

Sampled = tuple[optuna.trial.Trial, dict[str, Any], dict[str, Any]]


def ask_trial(study: optuna.Study, spec: CompiledSpec, multi: bool = False) -> Sampled:
    """A new trial to run, its sampled params and its engine config (recorded on the trial). Unless
    the spec says otherwise, a sampled config that a trial already ran is told that trial's outcome
    (`tell_duplicate`) and the sampler asked again, DUPLICATE_TRIES times at most."""
    skip = spec.sampler.skip_duplicates and spec.sampler.type != "grid"  # a grid never repeats
    ran = ran_configs(study) if skip else {}
    for _ in range(DUPLICATE_TRIES - 1):
        trial, params, engine, text = _sample(study, spec)
        if text not in ran:
            return trial, params, engine
        tell_duplicate(study, trial, ran[text], multi)
    trial, params, engine, _ = _sample(study, spec)  # a space nearly used up: the repeat runs
    return trial, params, engine


def _sample(study: optuna.Study, spec: CompiledSpec
            ) -> tuple[optuna.trial.Trial, dict[str, Any], dict[str, Any], str]:
    trial = study.ask()
    params = sample_params(trial, spec)
    engine = trial_config(spec, params).to_dict()
    text = json.dumps(engine)
    trial.set_user_attr(Attr.ENGINE, text)
    return trial, params, engine, text


def fits(study: optuna.Study, trial: optuna.trial.Trial, engine: dict[str, Any],
         memory: MemoryCheck | None) -> bool:
    """Check a sampled config against the memory budget (none: it fits). The prediction is recorded
    on the trial; one predicted not to fit is told its verdict (`tuner.trial.unfit`: PRUNED,
    constraint memory > 0) and is never launched."""
    if memory is None:
        return True
    predicted = memory.predict_gb(PPOConfig(**engine))
    trial.set_user_attr(Attr.MEMORY, predicted)
    found = unfit(predicted, memory.budget_gb)
    if found is None:
        return True
    for key, value in found.attrs.items():
        trial.set_user_attr(key, value)
    for name, value in found.constraints.items():
        trial.set_constraint(name, value)
    study.tell(trial, state=optuna.trial.TrialState[found.told])
    return False


def next_search_trial(study: optuna.Study, spec: CompiledSpec, memory: MemoryCheck | None,
                      multi: bool) -> Sampled | None:
    """The next search trial to launch: one that fits the memory budget, or None once
    DUPLICATE_TRIES sampled configs in a row did not (no more trials are launched)."""
    for _ in range(DUPLICATE_TRIES):
        trial, params, engine = ask_trial(study, spec, multi)
        if fits(study, trial, engine, memory):
            return trial, params, engine
    log.warning("sweep %s: %d sampled configs in a row were predicted not to fit in %g GiB; "
                "no more trials are launched (lower the batch sizes or lengths searched, or raise "
                "resources.trial_memory_gb)", spec.name, DUPLICATE_TRIES,
                spec.resources.trial_memory_gb)
    return None
