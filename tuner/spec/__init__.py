"""The sweep spec: a YAML file saying what to train, what to search, how to score and where to run.

`load_spec` reads and validates one (every problem at once, as a ConfigError); `sample_params` and
`trial_config` turn an Optuna trial into an engine config; `make_sampler` builds the seeded sampler.
"""

from __future__ import annotations

from tuner.spec._load import load_spec, parse_spec
from tuner.spec._models import SweepSpec
from tuner.spec._samplers import make_sampler, sample_params, trial_config

__all__ = ["SweepSpec", "load_spec", "make_sampler", "parse_spec", "sample_params", "trial_config"]
