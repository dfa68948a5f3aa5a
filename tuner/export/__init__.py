"""Export a PPOConfig to the formats people run: ppo-tuner's YAML and JSON, OpenRLHF, verl and
TRL; for a sweep of your own trainer, your command line with the values filled in, or the
searched values alone.

Each target's name tables (our field -> its flag, key or keyword) are its engine's, plain data with
the source file they were checked against, which the launch of a trial uses too:
`tuner.engines.openrlhf.FLAGS`, `verl.KEYS`, `trl.KWARGS` (and `trl.LORA_KWARGS` for peft's
LoraConfig). The walk
through a config that every target shares is `_skeleton.Exporter`; a target module overrides only the
steps where that target differs. A value a target cannot express is never dropped silently: the export
says so in a comment where it would go and returns a warning naming the field, the value and what the
target does instead.
"""

from __future__ import annotations

from tuner.export._api import (
           FORMATS,
           LAUNCH_TARGETS,
           check_format,
           engine_launch,
           export_config,
           formats_for,
)
from tuner.export._own import OUT, export_command, export_launch, export_searched

__all__ = ["FORMATS", "LAUNCH_TARGETS", "OUT", "check_format", "engine_launch", "export_command",
           "export_config", "export_launch", "export_searched", "formats_for"]
