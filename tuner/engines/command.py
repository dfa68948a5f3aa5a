"""`trial.engine: command`: the user's own trainer, which prints one report line per iteration on
its output, `@ppo-tuner {...}` (a JSON object; docs/own-trainer.md). Its hyperparameters reach it
as '{field}' placeholders in trial.command and in the trial's config file."""

from __future__ import annotations

import json

from trials import metrics as K
from tuner.engines._base import Engine, TrainerError, Units, numbers

__all__ = ["COMMAND", "PREFIX", "PROTOCOL", "parse_report", "protocol_line"]

PREFIX = "@ppo-tuner "  # a report line: this, then one JSON object

# The JSON-lines protocol of `trial.engine: command` (docs/own-trainer.md).
PROTOCOL = Units(kl=("kl",), kl_per_token=("kl_per_token",), length=("response_length",),
                 names={"reward": K.SCORES, "eval_reward": K.EVAL_SCORES,
                        "response_length": K.RESPONSE_LENGTH})


def _object(text: str, line: str) -> dict[str, float]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TrainerError(f"a report line is not JSON ({exc.msg}): {line.strip()[:200]}") from None
    if not isinstance(data, dict):
        raise TrainerError(f"a report line must hold a JSON object: {line.strip()[:200]}")
    return numbers(data)


def protocol_line(line: str) -> dict[str, float]:
    """The numbers of a line of output that holds a report (after whatever precedes PREFIX)."""
    return _object(line[line.index(PREFIX) + len(PREFIX):], line)


def parse_report(line: str, units: Units = PROTOCOL
                 ) -> tuple[dict[str, float], dict[str, float]] | None:
    """A report line's metrics under our names and the trainer's own numbers; None for another
    line."""
    if not line.startswith(PREFIX):
        return None
    return units.convert(_object(line[len(PREFIX):], line))


COMMAND = Engine("command", PROTOCOL, PREFIX, protocol_line,
                 example="command: [python, train.py, --lr, '{policy_lr}']")
