"""Export for a sweep of an external trainer (`trial.engine: command | verl | openrlhf | trl`): the
searched values alone, as YAML or JSON (our engine's full config would run our engine, not
yours); for `command`, your own command line with the values filled in, as the trial
launched it; for verl and OpenRLHF, the best trial's full launch (your trial.command and the
overrides the sweep added) as a script that runs it again in a folder of its own."""

from __future__ import annotations

import json
import re
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


# in an exported launch, the run's folder where the trial had its own, which bash fills in from $OUT (a
# plain word: the launch words leave it unquoted)
OUT = "__OUT__"


def export_launch(command: list[str], overrides: list[str], env: dict[str, str], engine: str,
                  folder: str, source: dict | None = None) -> tuple[str, list[str]]:
    """A bash script running a trial's launch again: `command` (trial.command, its placeholders
    filled) then `overrides` (the hyperparameters in the engine's names, and the settings the sweep
    adds), with `env` (trial.env and the engine's variables); OUT in a word is the run's folder
    ($OUT, by default a new folder beside the script), which took the trial's folder's place."""
    notes = [f"{engine} as the best trial launched it (in {folder}), the sweep's values in OVERRIDES; "
             "its checkpoints and metrics file go to $OUT instead of the trial's folder",
             "run it where the trial's environment is (your interpreter, data and models); "
             "without RAY_ADDRESS its trainer starts a Ray of its own"]
    lines = ["#!/usr/bin/env bash",
             *comment_lines(header(f"the best trial's {engine} launch", source)), *comment_lines(notes),
             "set -euo pipefail",
             f'OUT="${{OUT:-$(cd "$(dirname "$0")" && pwd)/{engine}-best}}"', 'mkdir -p "$OUT"',
             *(f"export {name}={_bash_word(value)}" for name, value in env.items()),
             "COMMAND=(", *(f"  {_bash_word(w)}" for w in command), ")",
             "OVERRIDES=(", *(f"  {_bash_word(w)}" for w in overrides), ")",
             'exec "${COMMAND[@]}" "${OVERRIDES[@]}"']
    return "\n".join(lines) + "\n", []


def _bash_word(word: str) -> str:
    """One argv word for bash: quoted as it is, except OUT, which bash fills in."""
    if OUT not in word:
        return shlex.quote(word)
    return '"' + "${OUT}".join(re.sub(r'([\\"$`])', r"\\\1", part) for part in word.split(OUT)) + '"'
