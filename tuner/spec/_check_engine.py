"""Checks of the trial's engine: which trainer runs a trial, and how an external one is started."""

from __future__ import annotations

from trials import did_you_mean, field_specs
from tuner.spec._check_space import Found
from tuner.spec._models import TRIAL_FIELDS, SweepSpec
from tuner.trial._external import PLACEHOLDER

__all__ = ["check_engine"]

_NOT_YET = ("verl", "openrlhf", "trl")


def check_engine(spec: SweepSpec, found: Found) -> None:
    """The trial section's engine keys: an external engine needs its command, ours takes none."""
    trial = spec.trial
    if trial.engine in _NOT_YET:
        found.error("trial.engine", trial.engine, "has no backend yet",
                    "use 'engine: command' with your trainer's launch line and the JSON-lines reports "
                    "(README: 'Sweep your own trainer'), or 'engine: ppo-tuner'")
        return
    if trial.engine == "ppo-tuner":
        for key in ("command", "env"):
            if getattr(trial, key):
                found.error(f"trial.{key}", getattr(trial, key), "applies only to an external engine",
                            f"set trial.engine: command, or remove trial.{key}")
        return
    if not trial.command:
        found.error("trial.command", trial.command, "is needed with engine: command",
                    "give the trainer's argv, e.g. command: [python, train.py, --lr, '{policy_lr}']")
        return
    specs = field_specs()
    for i, arg in enumerate(trial.command):
        for name in PLACEHOLDER.findall(arg):
            if name not in specs or name in TRIAL_FIELDS:
                found.error(f"trial.command[{i}]", arg, f"'{{{name}}}' is not an engine field",
                            did_you_mean(name, [n for n in specs if n not in TRIAL_FIELDS]))
    if spec.resources.trial_memory_gb is not None:
        found.error("resources.trial_memory_gb", spec.resources.trial_memory_gb,
                    "predicts our engine's memory only", "remove it for engine: command")
