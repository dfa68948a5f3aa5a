"""The sweep's answer (a `Choice`) in an export format: our engine's config in any engine's
format; for a sweep of an external trainer, its command line as the trial launched it, or its
searched values."""

from __future__ import annotations

from typing import Any

from trials import PPOConfig
from tuner.export import export_command, export_config, export_searched
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
    if fmt == "command":
        folder = trial_folder(spec, choice.trial.number)
        argv = launch_argv("command", list(spec.trial.command), engine, folder)
        return export_command(argv, str(folder), choice.source)
    return export_config(PPOConfig.from_dict(engine), fmt, source=choice.source,
                         mean_length=choice.trial.user_attrs.get(Attr.RESPONSE_LENGTH))
