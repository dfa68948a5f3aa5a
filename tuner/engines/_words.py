"""Settings as a trainer's argv words: `--flag value` (argparse) and `key=value` (Hydra overrides).
A launch and an export write the same words."""

from __future__ import annotations

import re
from typing import Any

__all__ = ["flag_words", "hydra_value", "hydra_word", "merge_list"]


def _word(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def flag_words(name: str, value: Any) -> list[str]:
    """One setting as argv words: `--name value ...`; True is the bare flag (argparse
    store_true)."""
    if value is True:
        return [name]
    return [name, *(_word(v) for v in (value if isinstance(value, (tuple, list)) else (value,)))]


def hydra_word(name: str, value: Any) -> str:
    """One setting as a Hydra override word: `name=value`."""
    return f"{name}={hydra_value(value)}"


def hydra_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, bool):
        return "True" if value else "False"
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and not re.fullmatch(r"[A-Za-z0-9_./+-]+", value):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"  # Hydra's quoted string
    return str(value)


def merge_list(mine: str, ours: str) -> str:
    """The Hydra list override `mine` (key=[a,b] or key=a) with the items of `ours` it lacks."""
    key, _, value = mine.partition("=")
    items = [v.strip().strip("'\"") for v in value.strip().strip("'\"").strip("[]").split(",") if v.strip()]
    items += [v for v in ours.partition("=")[2].strip("[]").split(",") if v not in items]
    return f"{key}={hydra_value(items)}"
