"""Checks of the trial's engine: which trainer runs a trial, how an external one is started, and
whether the resources can work for it (before anything is launched). What each external engine
needs of its command and its GPUs is its own `Engine.check`."""

from __future__ import annotations

from trials import did_you_mean, field_specs
from tuner.engines import ENGINES, PLACEHOLDER, TRIAL_PLACEHOLDERS, engine
from tuner.spec._check_space import Found
from tuner.spec._compile import launch_fields
from tuner.spec._models import TRIAL_FIELDS, SweepSpec

__all__ = ["check_engine"]


def check_engine(spec: SweepSpec, found: Found) -> None:
    """The trial section's engine keys: an external engine needs its command, ours takes none."""
    trial = spec.trial
    if trial.engine == "ppo-tuner":
        for key in ("command", "env"):
            if getattr(trial, key):
                found.error(f"trial.{key}", getattr(trial, key), "applies only to an external engine",
                            f"set trial.engine ({', '.join(ENGINES)}), or remove trial.{key}")
        return
    external = engine(trial.engine)
    if not trial.command:
        found.error("trial.command", trial.command, f"is needed with engine: {trial.engine}",
                    f"give the trainer's argv, e.g. {external.example}")
        return
    specs = field_specs()
    for i, arg in enumerate(trial.command):
        for name in PLACEHOLDER.findall(arg):
            if name in TRIAL_PLACEHOLDERS:
                continue
            if name not in specs or name in TRIAL_FIELDS:
                found.error(f"trial.command[{i}]", arg,
                            f"'{{{name}}}' is not an engine field nor one of {', '.join(TRIAL_PLACEHOLDERS)}",
                            did_you_mean(name, [*TRIAL_PLACEHOLDERS, *(n for n in specs if n not in TRIAL_FIELDS)]))
    if spec.resources.trial_memory_gb is not None:
        found.error("resources.trial_memory_gb", spec.resources.trial_memory_gb,
                    "predicts our engine's memory only", f"remove it for engine: {trial.engine}")
    found.problems += external.check(trial.command, spec.resources.gpus_per_trial,
                                     cluster=spec.ray.address is not None, fields=launch_fields(spec))
