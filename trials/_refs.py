"""What the engine's string fields point at: the reward reference, and files named relative to a config.

The one parser of a `reward` value and the one rule for resolving a relative path: the engine, the
spec loader, `tuner train`, the cluster packager and the exporters all use these.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trials._builtin import is_builtin_model
from trials._errors import Problem, RewardError

__all__ = ["REWARD_FIELDS", "RewardRef", "looked_in", "parse_reward", "resolve_relative"]

REWARD_FIELDS = ("reward", "eval_reward")  # the fields whose value is a reward reference (parse_reward)
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_FIX = "write 'my_module:my_reward', 'path/to/file.py:my_reward', or the folder of a reward model"


@dataclass(frozen=True)
class RewardRef:
    """A parsed `reward` value: a reward-model folder, a function in a .py file, or a function in a module."""

    kind: Literal["model", "file", "module"]
    target: str  # the folder, the .py file, or the dotted module name
    function: str = ""  # empty for a reward model

    def __str__(self) -> str:
        return self.target if self.kind == "model" else f"{self.target}:{self.function}"

    @property
    def local_path(self) -> str | None:
        """The file or folder part (None for a module, which is found on the Python path)."""
        return None if self.kind == "module" else self.target

    def with_target(self, target: str) -> RewardRef:
        return RewardRef(self.kind, target, self.function)


def parse_reward(value: str, path: str = "reward") -> RewardRef:
    """'module:function', 'file.py:function', or a reward-model folder (a folder that exists wins over
    the 'a:b' form; a value without ':' is a folder). A malformed value is a RewardError naming `path`."""
    if not isinstance(value, str) or not value.strip():
        raise RewardError([Problem(path, value, "must name a reward", _FIX)])
    if os.path.isdir(value) or ":" not in value or _WINDOWS_DRIVE.match(value):
        return RewardRef("model", value)
    target, _, function = value.rpartition(":")
    if not target or not function.isidentifier():
        raise RewardError([Problem(path, value,
                                   "must be 'module:function', 'file.py:function' or a "
                                   "reward-model folder", _FIX)])
    if target.endswith(".py"):
        return RewardRef("file", target, function)
    if not _DOTTED.match(target):
        raise RewardError([Problem(path, value, f"{target!r} is neither a module name nor a .py file", _FIX)])
    return RewardRef("module", target, function)


def resolve_relative(field: str, value: Any, base_dir: Path) -> Any:
    """A path-valued field's value with a relative file or folder that exists under `base_dir` made
    absolute (symlinks kept); 'demo' (the demo prompts), built-in model names, absolute paths, module
    names, hub names and paths that do not exist there are kept."""
    if not isinstance(value, str) or value == "demo" or is_builtin_model(value):
        return value
    if field in REWARD_FIELDS:
        try:
            ref = parse_reward(value, field)
        except RewardError:
            return value  # reported where the value is validated
        local = ref.local_path
        return value if local is None else str(ref.with_target(str(_local(local, base_dir))))
    return str(_local(value, base_dir))


def looked_in(field: str, value: Any, folder: str, where: str) -> str:
    """For an error about a path-valued field whose value is a relative file or folder: ' (a relative
    path: looked for in WHERE FOLDER)', the folder `resolve_relative` looked in; else ''."""
    if not isinstance(value, str) or value == "demo":
        return ""
    local: str | None = value
    if field in REWARD_FIELDS:
        try:
            local = parse_reward(value, field).local_path
        except RewardError:
            return ""
    if local is None or Path(local).expanduser().is_absolute():
        return ""
    return f" (a relative path: looked for in {where} {folder})"


def _local(value: str, base_dir: Path) -> str:
    """Absolute without following symlinks: a venv's bin/python is a link to the base interpreter,
    and only the link's own path starts the venv ('..' is taken lexically, as os.path.abspath
    does)."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = base_dir / path
    return os.path.abspath(candidate) if candidate.exists() else value
