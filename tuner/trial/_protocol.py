"""What an external trainer and the controller agree on: the report line of `trial.engine: command`,
the '{field}' placeholders of trial.command, the trial's config file, and how a trainer's numbers
become our metric names (`Units`: which keys hold the KL to the reference and in what unit, which the
reward). Every engine's reader (`_engines`) ends in `Units.convert`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from trials import metrics as K

__all__ = ["CONFIG_ENV", "PLACEHOLDER", "PREFIX", "PROTOCOL", "TrainerError", "Units", "command_argv", "parse_report"]

PREFIX = "@ppo-tuner "  # a report line: this, then one JSON object
CONFIG_ENV = "PPO_TUNER_TRIAL_CONFIG"  # names the trial's config file (JSON)
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")  # '{policy_lr}' in trial.command: that engine field's value


class TrainerError(Exception):
    """The external trainer failed: exited non-zero, went silent, or wrote a report we cannot read."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class Units:
    """How one engine's logged numbers become ours. The KL is to the reference model: `kl` keys hold it
    in nats summed over the response (our unit); else `kl_per_token` (the per-token mean, as verl and
    OpenRLHF log it) x `length` (mean tokens per response), exact when every response has the mean length."""

    kl: tuple[str, ...] = ()
    kl_per_token: tuple[str, ...] = ()
    length: tuple[str, ...] = ()
    names: dict[str, str] = field(default_factory=dict)  # the engine's key -> our metric name
    needs_kl: bool = True  # a record without KL is an error; else it is held and merged into the next report
    foreign: tuple[str, ...] = ()  # our metric names that the engine logs with another meaning: kept as its own

    def kl_of(self, raw: dict[str, float]) -> float | None:
        """nats summed over the response, or None when the record has no KL."""
        for key in self.kl:
            if key in raw:
                return raw[key]
        per_token = next((raw[k] for k in self.kl_per_token if k in raw), None)
        length = next((raw[k] for k in self.length if k in raw), None)
        if per_token is not None and length is not None:
            return per_token * length  # nats/token x tokens
        return None

    def convert(self, raw: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        """(our metrics, the trainer's other numbers under their own names). Raises TrainerError without a KL."""
        ours = {k: v for k, v in raw.items() if k in K.ALL and k not in self.foreign}
        kl = self.kl_of(raw)
        if kl is not None:
            ours[K.KL] = kl
        elif K.KL not in ours:
            needed = [*self.kl, *(f"{k} with {' or '.join(self.length)}" for k in self.kl_per_token)]
            raise TrainerError(f"a report needs {' or '.join(repr(n) for n in needed)}: {json.dumps(raw)[:200]}")
        for theirs, name in self.names.items():
            if theirs in raw:
                ours.setdefault(name, raw[theirs])
        return ours, {k: v for k, v in raw.items() if k not in ours}


# The JSON-lines protocol of `trial.engine: command` (docs/own-trainer.md).
PROTOCOL = Units(kl=("kl",), kl_per_token=("kl_per_token",), length=("response_length",),
                 names={"reward": K.SCORES, "eval_reward": K.EVAL_SCORES, "response_length": K.RESPONSE_LENGTH})


def numbers(data: dict[str, Any]) -> dict[str, float]:
    """The numbers of a record (booleans and text left out)."""
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def parse_report(line: str, units: Units = PROTOCOL) -> tuple[dict[str, float], dict[str, float]] | None:
    """A report line's metrics under our names and the trainer's own numbers; None for another line."""
    if not line.startswith(PREFIX):
        return None
    try:
        data = json.loads(line[len(PREFIX):])
    except json.JSONDecodeError as exc:
        raise TrainerError(f"a report line is not JSON ({exc.msg}): {line.strip()[:200]}") from None
    if not isinstance(data, dict):
        raise TrainerError(f"a report line must hold a JSON object: {line.strip()[:200]}")
    return units.convert(numbers(data))


def command_argv(command: list[str], engine: dict[str, Any]) -> list[str]:
    """trial.command with each '{field}' replaced by the trial's value of that engine field."""
    return [PLACEHOLDER.sub(lambda m: str(engine[m.group(1)]), arg) for arg in command]
