"""Reading a spec: the YAML file, its structure (pydantic), then the checks against the engine.

Every problem is reported at once: when some sections fail structurally, the rest are still checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trials import ConfigError, Problem
from tuner.spec._check import check_spec
from tuner.spec._errors import problems_from_validation_error
from tuner.spec._models import SweepSpec

__all__ = ["load_spec", "parse_spec"]


def load_spec(path: str | Path) -> SweepSpec:
    """Read, validate and resolve a spec file; raises ConfigError listing every problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {'is a directory, not a spec file' if path.is_dir() else 'spec file not found'}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({type(exc).__name__})") from None
    data = _parse_yaml(text, path)
    if data is None:
        raise ConfigError(f"{path}: the spec file is empty; it needs at least 'name: my-sweep'")
    return parse_spec(data, base_dir=path.parent.resolve())


def parse_spec(data: dict[str, Any], base_dir: Path | None = None) -> SweepSpec:
    """Validate spec data; relative trial paths that exist under `base_dir` are resolved against it."""
    if not isinstance(data, dict):
        raise ConfigError([Problem("spec", data, "the top level must be a mapping of key: value",
                                   "start with 'name: my-sweep' and one section per line")])
    spec, problems, broken = _validate(data)
    if spec is not None:
        seen = {p.path for p in problems}
        problems += [p for p in check_spec(spec, broken)[0] if p.path not in seen]
    if problems:
        raise ConfigError(problems)
    return _resolve_paths(spec, base_dir) if base_dir is not None else spec


# -- YAML --------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is written twice", key_node.start_mark)
                seen.add(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(text: str, path: Path) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = " ".join(str(exc.problem or exc.context or "syntax error").split())
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


# -- structure -----------------------------------------------------------------------------------------
def _validate(data: dict[str, Any]) -> tuple[SweepSpec | None, list[Problem], frozenset[str]]:
    """The spec (or, on structural errors, the spec without its broken parts), the errors, the broken parts."""
    try:
        return SweepSpec.model_validate(data), [], frozenset()
    except ValidationError as exc:
        problems = problems_from_validation_error(exc, SweepSpec)
        broken = frozenset(_broken_part(tuple(err["loc"])) for err in exc.errors())
    try:
        return SweepSpec.model_validate(_without(data, broken)), problems, broken
    except ValidationError:
        return None, problems, broken


def _broken_part(loc: tuple[Any, ...]) -> str:
    if len(loc) > 1 and loc[0] == "search_space":
        return f"search_space.{loc[1]}"
    return str(loc[0]) if loc else "spec"


def _without(data: dict[str, Any], broken: frozenset[str]) -> dict[str, Any]:
    partial = {k: v for k, v in data.items() if str(k) not in broken}
    entries = {p.split(".", 1)[1] for p in broken if p.startswith("search_space.")}
    if entries and isinstance(partial.get("search_space"), dict):
        partial["search_space"] = {k: v for k, v in partial["search_space"].items() if str(k) not in entries}
    partial.setdefault("name", "spec")
    return partial


# -- paths ---------------------------------------------------------------------------------------------
def _resolve_paths(spec: SweepSpec, base_dir: Path) -> SweepSpec:
    """Relative files of the trial section that exist next to the spec file become absolute paths."""
    trial = spec.trial
    updates = {key: _local(getattr(trial, key), base_dir) for key in ("model", "prompts", "eval_prompts", "value_model")}
    target, sep, function = trial.reward.rpartition(":")
    if sep and target.endswith(".py"):
        updates["reward"] = f"{_local(target, base_dir)}:{function}"
    elif not sep:
        updates["reward"] = _local(trial.reward, base_dir)
    return spec.model_copy(update={"trial": trial.model_copy(update=updates)})


def _local(value: str | None, base_dir: Path) -> str | None:
    if value is None or value == "demo":
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    candidate = base_dir / path
    return str(candidate.resolve()) if candidate.exists() else value
