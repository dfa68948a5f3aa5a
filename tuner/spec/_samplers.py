"""From a validated spec to Optuna: the seeded sampler, define-by-run sampling, and a trial's config.

The KL limit as a constraint (Optuna 5.0)
-----------------------------------------
Optuna 5's samplers read the constraints stored on each trial (``FrozenTrial.constraints``, a dict
name -> float; a trial is feasible when every value is <= 0; their ``constraints_func`` argument is
deprecated). The caller records them on the live trial, before telling it::

    trial = study.ask()                       # an optuna.trial.Trial
    ...                                       # run it; kl = the largest objective/kl it reported
    trial.set_constraint("kl", kl - spec.kl_limit)   # > 0: passed the KL limit, infeasible
    study.tell(trial, value)                  # or state=TrialState.PRUNED

- Call it exactly once per trial (a second call with the same name is ignored with a warning) and
  before ``study.tell`` (a finished trial cannot be changed). NaN is refused: use ``math.inf``.
- Record it on every trial that reports, feasible ones included: GPSampler requires the same
  constraint names on all completed trials, and only then models the feasible region.
- TPESampler (single- and multi-objective) puts any trial with a positive constraint, complete or
  pruned, among the worst; NSGAIISampler ranks feasible trials first (constrained domination);
  GPSampler multiplies its acquisition by the modelled probability of feasibility. A trial stopped for
  passing the limit is best told as COMPLETE with its value, so that all three learn from it.
- CmaEsSampler ignores constraints (it warns once per trial that has them); RandomSampler and
  GridSampler ignore them silently. No sampler here is given ``constraints_func``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

import optuna

from trials import ConfigError, Problem
from tuner.spec._check import REQUIRED_PACKAGES
from tuner.spec._compile import CompiledSpec
from tuner.spec._space import KL_ADAPTIVE_ONLY

__all__ = ["TPE_OPTIONS", "make_sampler", "sample_params"]

# TPE's settings, stated here rather than left to Optuna's defaults (Optuna 5's, made explicit):
# multivariate TPE, and the constant liar for trials still running when the next one is asked.
# bench/README.md "sweep efficiency" compares them with the alternatives on two curve tables.
TPE_OPTIONS = {"multivariate": True, "constant_liar": True}


class _GridSampler(optuna.samplers.GridSampler):
    """A grid sampler that leaves stopping to the sweep's budget: Optuna's calls study.stop() once
    the grid is exhausted, which is only allowed inside study.optimize, not with ask and tell. An
    interrupted trial's point stays visited; the resumed sweep runs it again as a queued trial (the
    sweep's `requeue_interrupted`), as for every sampler."""

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial,
                    state: optuna.trial.TrialState, values: Any) -> None:
        pass


def make_sampler(spec: CompiledSpec, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
    """The spec's Optuna sampler, seeded, for a study created with `spec.directions()`.

    TPE, GP and NSGA-II avoid trials that passed the KL limit once the caller records, on every
    trial it tells, ``trial.set_constraint("kl", max_kl - spec.kl_limit)`` before ``study.tell``
    (> 0 means infeasible; details in this module's docstring). `seed_offset`: a continued study's
    sampler needs a seed of its own (the number of trials it has), or it draws its first trials again.
    """
    kind, seed, n = spec.sampler.type, spec.sampler_seed() + seed_offset, spec.n_startup_trials()
    missing = [m for m in REQUIRED_PACKAGES.get(kind, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError([Problem(
            "sampler.type", kind, f"needs the {', '.join(missing)} package, which is not installed",
            f"pip install {' '.join(missing)}, or choose another sampler",
        )])
    if kind == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n, **TPE_OPTIONS)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "grid":
        grid = {name: p.grid() for name, p in spec.space.items() if p.searched}
        return _GridSampler(grid, seed=seed)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=n, warn_independent_sampling=False)
    if kind == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n, warn_independent_sampling=False)
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=n)


def sample_params(trial: optuna.Trial, spec: CompiledSpec) -> dict[str, Any]:
    """Engine-field values for one trial, asked of `trial` define-by-run.

    kl_target and kl_horizon are asked only where kl_mode is adaptive. A searched num_mini_batches
    stays the Optuna parameter, and comes back as mini_batch_size = rollout_batch_size // it.
    Fixed search-space values are included, so the result names every search-space key that applies.
    """
    space = spec.space
    out: dict[str, Any] = {}
    for name in _order(space):
        if name in KL_ADAPTIVE_ONLY:
            mode = out["kl_mode"] if "kl_mode" in out else spec.fixed("kl_mode")
            if mode != "adaptive":
                continue
        out[name] = space[name].suggest(trial)
    if "num_mini_batches" in out:
        count = out.pop("num_mini_batches")
        rollout = out.get("rollout_batch_size", spec.fixed("rollout_batch_size"))
        out["mini_batch_size"] = rollout // count
    return out


def _order(space: Mapping[str, Any]) -> list[str]:
    first = [n for n in ("kl_mode", "rollout_batch_size") if n in space]
    return first + [n for n in space if n not in first]
