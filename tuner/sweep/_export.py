"""The sweep's answer (a `Choice`) in an export format: our engine's config in any engine's
format; for a sweep of an external trainer, its command line as the trial launched it (verl,
OpenRLHF: trial.command and the overrides, in a folder of its own), or its searched values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trials import PPOConfig
from tuner.engines import engine as engine_named
from tuner.export import OUT, export_command, export_config, export_launch, export_searched
from tuner.spec import CompiledSpec
from tuner.sweep._locate import trial_folder
from tuner.sweep._promotion import Choice
from tuner.sweep._study import engine_config_of
from tuner.trial import Attr, launch_argv

__all__ = ["export_choice"]


def export_choice(spec: CompiledSpec, choice: Choice, fmt: str) -> tuple[str, list[Any]]:
    """(text, warnings): the chosen trial in `fmt`, a format `tuner.export.check_format` let
    through for the sweep's engine."""
    engine = engine_config_of(choice.trial)
    if spec.trial.engine != "ppo-tuner" and fmt in ("yaml", "json"):
        return export_searched(dict(choice.trial.params), fmt, choice.source)
    trainer = engine_named(spec.trial.engine) if spec.trial.engine != "ppo-tuner" else None
    if trainer is not None and fmt == trainer.name and trainer.names and not trainer.launcher:
        launch = spec.launch()  # the fields the trial passed: every other setting stays the engine's or yours
        argv = launch_argv(fmt, launch["command"], engine, Path(OUT), choice.trial.number, launch["fields"])
        env = {**launch["env"], **({trainer.metrics_env: str(Path(OUT) / trainer.metrics_file)}
                                   if trainer.metrics_env else {})}
        return export_launch(argv[:len(launch["command"])], argv[len(launch["command"]):], env, fmt,
                             str(trial_folder(spec, choice.trial.number)), choice.source)
    if fmt == "command":
        folder = trial_folder(spec, choice.trial.number)
        argv = launch_argv("command", list(spec.trial.command), engine, folder, choice.trial.number)
        return export_command(argv, str(folder), choice.source)
    return export_config(PPOConfig.from_dict(engine), fmt, source=choice.source,
                         mean_length=choice.trial.user_attrs.get(Attr.RESPONSE_LENGTH))
