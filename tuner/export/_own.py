"""Export for a sweep of an external trainer (`trial.engine: command | verl | openrlhf | trl`): the
searched values alone, as YAML or JSON (our engine's full config would run our engine, not
yours), and, for `command`, your own command line with the values filled in, as the trial
launched it."""

from __future__ import annotations

import json
import shlex
from typing import Any

import yaml

from tuner.export._common import comment_lines, header
from tuner.export._native import _finite


def export_searched(params: dict[str, Any], fmt: str, source: dict | None = None
                    ) -> tuple[str, list[str]]:
    """The searched values (engine field -> value) as YAML with the provenance as comments, or as
    JSON {"params": ..., "source": ...}."""
    if fmt == "json":
        record = {"params": _finite(params), "source": _finite(source or {})}
        return json.dumps(record, indent=2, allow_nan=False, default=str) + "\n", []
    title = "the searched values of your trainer's best trial (engine field names)"
    lines = comment_lines(header(title, source))
    lines.append(yaml.safe_dump(dict(params), default_flow_style=False, sort_keys=False).rstrip("\n"))
    return "\n".join(lines) + "\n", []


def export_command(argv: list[str], folder: str, source: dict | None = None
                   ) -> tuple[str, list[str]]:
    """A bash script running `argv` (trial.command with the trial's values in its '{field}'
    placeholders, as the trial launched it); its comments name `folder`, where the trial ran."""
    notes = [f"the trial ran in {folder}, where $PPO_TUNER_TRIAL_CONFIG named trial_config.json; "
             "values your trainer read only from that file are not on this line"]
    lines = ["#!/usr/bin/env bash",
             *comment_lines(header("your trial.command with the best trial's values", source)),
             *comment_lines(notes), "set -euo pipefail", shlex.join(argv)]
    return "\n".join(lines) + "\n", []
