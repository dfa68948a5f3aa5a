"""The external engines a trial can run, one module each: `command` (the user's own trainer and its
report line), `verl`, `openrlhf`, `trl`. An `Engine` holds everything that differs per engine:
its names for our fields (which the export and the launch share), its launch argv, where its
metrics are read and in what units, its spec checks, and its launcher script. Adding an engine is
adding a module and its line in ENGINES.

This package sits below `tuner.spec`, `tuner.trial` and `tuner.export`, and imports none of them.
"""

from __future__ import annotations

from tuner.engines._base import (
    CHECKPOINTS,
    CONFIG_ENV,
    LAUNCHERS,
    PLACEHOLDER,
    SOURCE_FIELDS,
    TRIAL_PLACEHOLDERS,
    Engine,
    TrainerError,
    Units,
    command_argv,
    numbers,
)
from tuner.engines._placement import PACK, STRICT_PACK, Placement, fits
from tuner.engines._words import flag_words, hydra_value, hydra_word
from tuner.engines.command import COMMAND, PREFIX, PROTOCOL, parse_report
from tuner.engines.openrlhf import OPENRLHF
from tuner.engines.trl import TRL
from tuner.engines.verl import VERL

__all__ = ["CHECKPOINTS", "CONFIG_ENV", "ENGINES", "LAUNCHERS", "PACK", "PLACEHOLDER", "PREFIX", "PROTOCOL",
           "SOURCE_FIELDS", "STRICT_PACK", "TRIAL_PLACEHOLDERS", "Engine", "Placement", "TrainerError", "Units",
           "command_argv", "engine", "fits", "flag_words", "hydra_value", "hydra_word", "numbers", "parse_report"]

ENGINES: dict[str, Engine] = {e.name: e for e in (COMMAND, VERL, OPENRLHF, TRL)}


def engine(name: str) -> Engine:
    """The engine called `name` (trial.engine), a KeyError for another name."""
    return ENGINES[name]
