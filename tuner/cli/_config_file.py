"""Reading an engine config file (YAML: a flat mapping of PPOConfig fields)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from trials import ConfigError, PPOConfig, Problem, path_fields, resolve_relative

__all__ = ["load_config_file", "read_yaml"]


def read_yaml(path: str | os.PathLike, what: str = "config") -> Any:
    """Parsed YAML, or a one-line ConfigError (missing file, syntax error, empty file)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError([Problem(what, str(path), "no such file", f"give the path of a {what} YAML file")])
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError([Problem(what, str(path), f"is not valid YAML{where}: {reason}",
                                   "fix the YAML syntax")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(what, str(path), "is not UTF-8 text", "save the file as UTF-8")]) from None
    if data is None:
        raise ConfigError([Problem(what, str(path), "is empty", f"write the {what} as a YAML mapping")])
    return data


def load_config_file(path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> PPOConfig:
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError([Problem("config", type(data).__name__, "must be a mapping of field: value",
                                   "write one 'field: value' per line")])
    base_dir = Path(path).resolve().parent
    paths = path_fields()
    data = {k: resolve_relative(k, v, base_dir) if k in paths else v for k, v in data.items()}
    return PPOConfig.from_dict({**data, **(overrides or {})})
