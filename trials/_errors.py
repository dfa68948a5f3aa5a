"""The project's own exceptions: every user mistake becomes one of these.

A `Problem` names the field (as a dotted path), the value received and the fix. The CLI prints
each problem on one line and exits with code 2; nothing else turns into a user-facing message.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Problem", "TunerError", "ConfigError", "RewardError", "ModelError", "NonFiniteError",
           "MissingExtra", "did_you_mean"]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a user's input."""

    path: str  # dotted YAML path, e.g. "search_space.policy_lr.low"
    value: Any
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message} (got {self.value!r})"
        text = f"{text}; {self.fix}" if self.fix else text
        # one line, always: control characters from the user's input (a key with a newline) are escaped
        return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class TunerError(Exception):
    """Base of every error caused by user input; the CLI shows it without a traceback."""

    def __init__(self, problems: Iterable[Problem] | str):
        if isinstance(problems, str):
            self.problems: list[Problem] = []
            message = problems
        else:
            self.problems = list(problems)
            message = "\n".join(str(p) for p in self.problems)
        super().__init__(message)

    def lines(self) -> list[str]:
        """One line per problem, ready for the terminal."""
        if self.problems:
            return [str(p) for p in self.problems]
        return [line for line in str(self).splitlines() if line] or [type(self).__name__]


class ConfigError(TunerError):
    """A config or spec value is impossible, misspelt, or inconsistent."""


class RewardError(TunerError):
    """The reward cannot be loaded, or it returned something other than one finite float per sample."""


class ModelError(TunerError):
    """A model path is missing or is not the kind of model it must be."""


class MissingExtra(ImportError):
    """An optional extra's package is not installed: what needs it (`message`) and how to install it
    (`fix`); whoever knows the field that named the feature turns it into a Problem."""

    def __init__(self, message: str, fix: str):
        super().__init__(message)
        self.message, self.fix = message, fix


class NonFiniteError(RuntimeError):
    """A loss or statistic became NaN or infinite during training (a trial failure, not a user error)."""


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """A fix hint for a misspelt key: the closest known names, or the list of valid ones."""
    known = sorted(known)
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "valid keys are: " + ", ".join(known)
