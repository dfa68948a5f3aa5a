"""The sweep spec: a YAML file saying what to train, what to search, how to score and where to run.

`load_spec` reads, checks and compiles one into a frozen `CompiledSpec` (every problem at once, as a
ConfigError); `sample_params` asks an Optuna trial for a trial's values and `trial_config` turns them
into its engine config; `extreme_configs` gives the configs at its space's memory extremes;
`make_sampler` builds the seeded sampler.

    YAML -> _models (structure) -> _check, _check_space (problems, warnings) -> _compile (CompiledSpec)
"""

from __future__ import annotations

from tuner.spec._compile import SPEC_FILE, CompiledSpec, trial_config
from tuner.spec._extremes import extreme_configs
from tuner.spec._load import derive_spec, load_spec, parse_spec
from tuner.spec._models import TRIAL_FIELDS, SweepSpec
from tuner.spec._samplers import make_sampler, sample_params

__all__ = ["SPEC_FILE", "TRIAL_FIELDS", "CompiledSpec", "SweepSpec", "derive_spec",
           "extreme_configs", "load_spec", "make_sampler", "parse_spec", "sample_params",
           "trial_config"]
