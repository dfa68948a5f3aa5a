"""How a trial starts an external engine's trainer (`tuner.engines` says what differs per
engine): its argv, the user's trial.command followed by the trial's hyperparameters in the
engine's own names, through the same mapping as `tuner export` (`tuner.export.engine_launch`);
and, before any trial, whether trial.command can start at all (`check_trainer`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Collection
from pathlib import Path
from typing import Any

from trials import ConfigError, PPOConfig, Problem
from tuner.engines import engine as engine_named
from tuner.export import engine_launch
from tuner.trial._result import last_line

__all__ = ["check_trainer", "launch", "launch_argv"]

_CHECK_SECONDS = 120.0  # the import check's limit (importing torch and trl takes seconds)
_WHERE = "a path relative to the spec's folder, an absolute path, or a name on PATH"


def launch(kind: str, command: list[str], engine: dict[str, Any], workdir: Path | None = None,
           number: int | None = None, fields: Collection[str] | None = None) -> tuple[list[str], Any, list[str]]:
    """(argv, the launch arguments as the exporter gives them, the values the engine cannot
    express) of a trial of engine `kind` with engine config `engine`. `workdir`: the trial's
    folder, where the trainer writes its metrics file and its checkpoints; `number`: the trial's
    ('{trial_number}'). `fields`: the fields a verl or OpenRLHF launch passes
    (`tuner.spec.launch_fields`; None: every mapped field); TRL's launcher builds its whole run
    from the trial's config, so it takes every field."""
    trainer = engine_named(kind)
    if not trainer.names:
        return trainer.argv(command, engine, (), workdir, number), None, []
    if trainer.launcher:
        args, lost = engine_launch(PPOConfig.from_dict(engine), kind)
        return trainer.argv(command, engine, (), workdir, number), args, lost
    args, lost = engine_launch(PPOConfig.from_dict(engine), kind, fields, trainer.launch_skips(command))
    return trainer.argv(command, engine, args, workdir, number), args, lost


def launch_argv(engine_kind: str, command: list[str], engine: dict[str, Any], folder: Path | None = None,
                number: int | None = None, fields: Collection[str] | None = None) -> list[str]:
    """The argv a trial of `engine_kind` with engine config `engine` launches (`tuner export`,
    `tuner validate`)."""
    return launch(engine_kind, command, engine, folder, number, fields)[0]


def check_trainer(kind: str, command: list[str], env: dict[str, str]) -> None:
    """Before any trial: trial.command's program exists and is executable, and, for an engine whose
    launcher runs in the user's interpreter (trl), that interpreter imports what it needs (one
    subprocess). A ConfigError naming trial.command[0] otherwise: every trial would fail alike."""
    trainer, program = engine_named(kind), command[0]
    found = shutil.which(program)
    if found is None:
        where = "not found on PATH" if os.sep not in program else (
            "not an executable file" if os.path.exists(program) else "no such file")
        raise ConfigError([Problem("trial.command[0]", program, f"cannot be started: {where}",
                                   f"give the trainer's program or interpreter: {_WHERE} "
                                   "(and chmod +x a script)")])
    if not trainer.imports:
        return
    names = ", ".join(trainer.imports)
    try:
        proc = subprocess.run([found, "-c", "; ".join(f"import {m}" for m in trainer.imports)],
                              env={**os.environ, **env}, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, errors="replace",
                              timeout=_CHECK_SECONDS)
    except subprocess.TimeoutExpired:
        raise ConfigError([Problem("trial.command[0]", program,
                                   f"did not import {names} within {_CHECK_SECONDS:g} s",
                                   "check that interpreter by hand")]) from None
    except OSError as exc:
        raise ConfigError([Problem("trial.command[0]", program,
                                   f"cannot be started: {exc.strerror}",
                                   f"name a Python interpreter with {names}")]) from None
    if proc.returncode != 0:
        error = last_line(proc.stderr) or f"exit code {proc.returncode}"
        raise ConfigError([Problem("trial.command[0]", program,
                                   f"must import {names} for engine: {kind}, and it failed "
                                   f"with {error}",
                                   f"name an interpreter that has them ({trainer.setup})")])
