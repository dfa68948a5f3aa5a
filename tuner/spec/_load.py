"""Reading a spec: the YAML file, its structure (pydantic), the checks against the engine, then the
compiled spec. Every problem is reported at once: when some sections fail structurally, the rest are
still checked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trials import ConfigError, Problem
from tuner.spec._check import check_spec
from tuner.spec._compile import CompiledSpec, compile_spec
from tuner.spec._errors import problems_from_validation_error
from tuner.spec._models import Choices, Range, SweepSpec

__all__ = ["derive_spec", "load_spec", "parse_spec"]


def load_spec(path: str | Path, ray_address: str | None = None) -> CompiledSpec:
    """Read, validate and compile a spec file; raises ConfigError listing every problem. `ray_address`:
    the cluster the sweep will join (`tuner run --address`, `tuner submit`), in place of the spec's
    ray.address before anything is checked: on a cluster verl and OpenRLHF may reserve other GPUs."""
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
    if ray_address and isinstance(data, dict) and isinstance(data.get("ray") or {}, dict):
        ray = {k: v for k, v in (data.get("ray") or {}).items() if k != "num_cpus"}  # a local Ray's only
        data = {**data, "ray": {**ray, "address": ray_address}}
    return parse_spec(data, base_dir=path.parent.resolve())


def parse_spec(data: dict[str, Any], base_dir: Path | None = None) -> CompiledSpec:
    """Validate and compile spec data; relative trial paths that exist under `base_dir` are resolved against it."""
    if not isinstance(data, dict):
        raise ConfigError([Problem("spec", data, "the top level must be a mapping of key: value",
                                   "start with 'name: my-sweep' and one section per line")])
    spec, problems, broken = _validate(data)
    checked = check_spec(spec, broken) if spec is not None else None
    if checked is not None:
        seen = {p.path for p in problems}
        problems += [p for p in checked.problems if p.path not in seen]
    if problems or checked is None:
        raise ConfigError(problems)
    return compile_spec(spec, checked.base, checked.space, checked.warnings, base_dir)


def derive_spec(spec: CompiledSpec, **sections: dict[str, Any]) -> CompiledSpec:
    """Another sweep from `spec`, with keys of some sections replaced (e.g. sampler={"seed": 3}), checked
    and compiled as a spec file would be (defaults it left empty are derived again)."""
    data = spec.spec.model_dump(mode="json", exclude_unset=True)
    for name, changes in sections.items():
        data[name] = {**data.get(name, {}), **changes} if isinstance(changes, dict) else changes
    return parse_spec(data)


# -- YAML --------------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is written twice", key_node.start_mark)
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
        problems = problems_from_validation_error(exc, SweepSpec, {"range": Range, "choices": Choices})
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
