"""A spec is compiled once into a frozen object that everything downstream reads."""

from __future__ import annotations

import dataclasses

import optuna
import pytest

from trials import PPOConfig
from tuner.spec import CompiledSpec, derive_spec, parse_spec, sample_params, trial_config

SPEC = {"name": "c", "base": {"kl_coef": 0.08, "rollout_batch_size": 32},
        "search_space": {"policy_lr": {"low": 1e-6, "high": 5e-5, "log": True},
                         "num_mini_batches": {"choices": [2, 4]}, "cliprange": 0.25},
        "budget": {"trials": 6, "iterations": 7}}


def test_the_compiled_spec_is_frozen_and_holds_the_resolved_parts():
    spec = parse_spec(SPEC)
    assert isinstance(spec, CompiledSpec)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.notes = ()
    with pytest.raises(TypeError):
        spec.space["policy_lr"] = None  # a read-only mapping
    assert isinstance(spec.base, PPOConfig)
    assert (spec.base.kl_coef, spec.base.rollout_batch_size, spec.base.cliprange) == (0.08, 32, 0.25)
    assert spec.base.num_iterations == spec.iterations() == 7
    assert spec.space["policy_lr"].searched and not spec.space["cliprange"].searched
    assert spec.n_startup_trials() == 3 and spec.sampler_seed() == 0 and spec.directions() == ["maximize"]
    assert spec.name == "c" and spec.budget.trials == 6  # the sections read through


def test_a_trial_config_is_the_base_with_the_sampled_values_in_place():
    spec = parse_spec(SPEC)
    base = spec.base.to_dict()
    trial = optuna.create_study().ask()
    params = sample_params(trial, spec)
    config = trial_config(spec, params)
    assert config.policy_lr == params["policy_lr"] and config.mini_batch_size == 32 // trial.params["num_mini_batches"]
    assert config == trial_config(spec, trial.params)  # Optuna's own params give the same config
    assert config.problems() == [] and config.kl_coef == 0.08
    assert spec.base.to_dict() == base and config.policy_lr != base["policy_lr"]  # the base is never changed


def test_a_derived_spec_is_checked_and_recompiled():
    spec = parse_spec(SPEC)
    other = derive_spec(spec, sampler={"type": "random", "seed": 5}, budget={"trials": 40})
    assert other.sampler.type == "random" and other.sampler_seed() == 5
    assert other.n_startup_trials() == 10  # derived again from the new budget
    assert other.base == spec.base
