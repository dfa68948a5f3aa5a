"""Sampling through real Optuna studies: every sampler gives valid engine configs inside the spec's space."""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import optuna
import pytest

from trials import PPOConfig
from tuner.spec import SweepSpec, make_sampler, parse_spec, sample_params, trial_config

optuna.logging.set_verbosity(optuna.logging.WARNING)

SAMPLERS = ["tpe", "random", "grid", "cmaes", "gp", "nsga2"]
N_TRIALS = 4


def make_spec(sampler: str, **overrides: Any) -> SweepSpec:
    grid = {"grid_points": 3} if sampler == "grid" else {}
    data: dict[str, Any] = {
        "name": f"s-{sampler}",
        "base": {"num_iterations": 5},
        "search_space": {
            "policy_lr": {"low": 1e-6, "high": 5e-5, "log": True, **grid},
            "cliprange": {"low": 0.1, "high": 0.3, **grid},
            "ppo_epochs": {"low": 2, "high": 6, "step": 2},
            "vf_coef": {"choices": [0.5, 1.0]},
            "kl_mode": {"choices": ["fixed", "adaptive"]},
            "kl_coef": {"low": 0.01, "high": 0.2, "log": True, **grid},
            "kl_target": {"low": 3.0, "high": 10.0, **grid},
            "rollout_batch_size": {"choices": [64, 128]},
            "mini_batch_size": {"choices": [8, 16, 32]},
            "gamma": 0.99,
        },
        "sampler": {"type": sampler, "n_startup_trials": 2, "seed": 3},
    }
    data.update(overrides)
    return parse_spec(data)


def run_study(spec: SweepSpec, storage: str | None = None) -> tuple[optuna.Study, list[tuple[dict, PPOConfig]]]:
    """Ask/tell N_TRIALS trials, recording the KL constraint as the controller does."""
    study = optuna.create_study(sampler=make_sampler(spec), directions=spec.directions(), storage=storage)
    seen = []
    for i in range(N_TRIALS):
        trial = study.ask()
        params = sample_params(trial, spec)
        config = trial_config(spec, params)
        seen.append((params, config))
        kl = 5.0 * (i + 1)  # trial 3 and later pass the 15-nat limit
        trial.set_constraint("kl", kl - spec.kl_limit)
        values = [float(config.policy_lr * 1e4)] + ([kl] if len(spec.directions()) == 2 else [])
        study.tell(trial, values)
    return study, seen


def assert_in_space(spec: SweepSpec, params: dict, config: PPOConfig) -> None:
    ranges = {k: v for k, v in spec.resolved()["search_space"].items() if isinstance(v, dict)}
    for name, entry in ranges.items():
        if name == "kl_target" and config.kl_mode != "adaptive":
            continue
        value = getattr(config, name)
        if "choices" in entry:
            assert value in entry["choices"], name
        else:
            assert entry["low"] - 1e-12 <= value <= entry["high"] + 1e-12, name
            if entry.get("step") and isinstance(value, int):
                assert (value - entry["low"]) % entry["step"] == 0, name
    assert config.gamma == 0.99 and config.num_iterations == 5
    assert config.rollout_batch_size % config.mini_batch_size == 0
    assert ("kl_target" in params) == (config.kl_mode == "adaptive")


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_samples_valid_configs_inside_the_space(sampler):
    if sampler == "cmaes" and importlib.util.find_spec("cmaes") is None:
        pytest.skip("the cmaes package is not installed")
    spec = make_spec(sampler)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # cmaes: "constraints ... will not use them"
        study, seen = run_study(spec)
    for params, config in seen:
        assert isinstance(config, PPOConfig)
        assert_in_space(spec, params, config)
    for trial, (_params, config) in zip(study.trials, seen, strict=True):
        assert ("kl_target" in trial.params) == (trial.params["kl_mode"] == "adaptive")
        assert trial_config(spec, trial.params) == config  # Optuna's own params give the same config
        assert set(trial.constraints) == {"kl"}
    assert len(study.directions) == (2 if sampler == "nsga2" else 1)


def test_conditional_kl_target_is_sampled_only_where_adaptive():
    spec = make_spec("random", budget={"trials": 40})
    study = optuna.create_study(sampler=make_sampler(spec))
    modes = set()
    for _ in range(20):
        trial = study.ask()
        params = sample_params(trial, spec)
        modes.add(params["kl_mode"])
        assert ("kl_target" in params) == (params["kl_mode"] == "adaptive")
        assert ("kl_target" in trial.params) == (params["kl_mode"] == "adaptive")
        study.tell(trial, 0.0)
    assert modes == {"fixed", "adaptive"}


def test_num_mini_batches_becomes_mini_batch_size():
    space = {"rollout_batch_size": {"choices": [32, 64, 128]}, "num_mini_batches": {"choices": [1, 2, 4, 8]}}
    spec = parse_spec({"name": "n", "search_space": space, "sampler": {"type": "random"}})
    study = optuna.create_study(sampler=make_sampler(spec))
    for _ in range(10):
        trial = study.ask()
        params = sample_params(trial, spec)
        assert "num_mini_batches" not in params and "num_mini_batches" in trial.params
        assert params["mini_batch_size"] * trial.params["num_mini_batches"] == params["rollout_batch_size"]
        assert trial_config(spec, trial.params).mini_batch_size == params["mini_batch_size"]
        study.tell(trial, 0.0)


def test_fixed_and_base_values_reach_the_config():
    spec = parse_spec({"name": "f", "trial": {"model": "demo", "prompts": "demo"}, "seed": 7,
                       "base": {"response_length": 8}, "budget": {"iterations": 3},
                       "search_space": {"kl_mode": "adaptive", "kl_target": {"low": 4.0, "high": 8.0}}})
    study = optuna.create_study(sampler=make_sampler(spec))
    trial = study.ask()
    params = sample_params(trial, spec)
    config = trial_config(spec, params)
    assert params["kl_mode"] == "adaptive" and 4.0 <= params["kl_target"] <= 8.0
    assert (config.response_length, config.num_iterations, config.seed) == (8, 3, 7)
    assert (config.model_path, config.reward, config.prompts) == ("demo", "trials.demo:reward", "demo")


def test_same_seed_same_first_trials():
    first = [run_study(make_spec("tpe"))[1][i][0] for i in range(2)]
    again = [run_study(make_spec("tpe"))[1][i][0] for i in range(2)]
    assert first == again


def test_grid_covers_only_grid_points():
    spec = make_spec("grid")
    grid_lr = spec.resolved()["search_space"]["policy_lr"]
    points = [grid_lr["low"], (grid_lr["low"] * grid_lr["high"]) ** 0.5, grid_lr["high"]]  # 3 log-spaced
    _, seen = run_study(spec)
    for params, _ in seen:
        assert any(params["policy_lr"] == pytest.approx(p) for p in points)


def test_constraints_persist_in_a_sqlite_study(tmp_path):
    spec = make_spec("tpe")
    study, _ = run_study(spec, storage=f"sqlite:///{tmp_path / 'study.db'}")
    reloaded = optuna.load_study(study_name=study.study_name, storage=f"sqlite:///{tmp_path / 'study.db'}")
    feasible = [all(v <= 0 for v in t.constraints.values()) for t in reloaded.trials]
    assert feasible == [True, True, True, False]
