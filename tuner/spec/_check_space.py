"""Checks of each search-space entry against its engine field: the entries become `Param`s, with
the problems and warnings found on the way (bounds, types, steps, repeated choices, range warnings).
"""

from __future__ import annotations

from typing import Any

from trials import FieldSpec, Problem, did_you_mean, field_specs
from trials._config import coerce
from tuner.spec._models import TRIAL_FIELDS, Choices, Range
from tuner.spec._space import NUM_MINI_BATCHES, Param

__all__ = ["Found", "build_space", "check_value", "plain"]


class Found:
    """Problems and warnings collected while checking; `lora`: every trial trains a LoRA adapter, so
    the documented ranges under LoRA apply (policy_lr's is ~10x higher)."""

    def __init__(self, lora: bool = False) -> None:
        self.problems: list[Problem] = []
        self.warnings: list[str] = []
        self.lora = lora

    def error(self, path: str, value: Any, message: str, fix: str = "") -> None:
        self.problems.append(Problem(path, value, message, fix))


def build_space(entries: dict[str, Any], prefix: str = "search_space",
                lora: bool = False) -> tuple[dict[str, Param], list[Problem], list[str]]:
    """Check every entry against its engine field; the Params of the entries without errors."""
    found, space = Found(lora), {}
    specs = field_specs()
    for name, entry in entries.items():
        path = f"{prefix}.{name}"
        spec = NUM_MINI_BATCHES if name == NUM_MINI_BATCHES.name else specs.get(name)
        if spec is None:
            found.error(path, plain(entry), "unknown search-space key (not an engine field)",
                        did_you_mean(str(name), [*specs, NUM_MINI_BATCHES.name]))
        elif name in TRIAL_FIELDS:
            found.error(path, plain(entry), "is set under trial, not searched",
                        f"set trial.{TRIAL_FIELDS[name]} instead")
        elif name == "num_iterations":
            found.error(path, plain(entry), "is the budget, not searched", "set budget.iterations instead")
        else:
            before = len(found.problems)
            param = _build(spec, entry, path, found)
            if len(found.problems) == before:
                space[name] = param
    return space, found.problems, found.warnings


def _build(spec: FieldSpec, entry: Any, path: str, found: Found) -> Param:
    if isinstance(entry, Range):
        return _range(spec, entry, path, found)
    if isinstance(entry, Choices):
        if not entry.choices:
            found.error(f"{path}.choices", [], "must list at least one value",
                        "add values, or write a fixed value instead")
        values = [check_value(spec, raw, f"{path}.choices[{i}]", found) for i, raw in enumerate(entry.choices)]
        repeated = sorted({repr(v) for v in values if values.count(v) > 1})
        if repeated:
            found.error(f"{path}.choices", entry.choices, f"repeats {', '.join(repeated)}", "list each value once")
        return Param(spec.name, "categorical", choices=tuple(values))
    return Param(spec.name, "fixed", value=check_value(spec, entry, path, found))


def _range(spec: FieldSpec, entry: Range, path: str, found: Found) -> Param:
    if spec.type not in ("int", "float"):
        if spec.choices:
            hint = f"[{', '.join(map(str, spec.choices))}]"
        else:
            hint = "[true, false]" if spec.type == "bool" else "[...]"
        found.error(path, plain(entry), f"a range needs a numeric field, but {spec.name} is a {spec.type}",
                    f"write {{choices: {hint}}} or a fixed value")
        return Param(spec.name, "fixed")
    before = len(found.problems)
    low = check_value(spec, entry.low, f"{path}.low", found)
    high = check_value(spec, entry.high, f"{path}.high", found)
    step = _step(spec, entry, path, found)
    if len(found.problems) == before:
        if low > high:
            found.error(f"{path}.low", low, f"must be <= high ({high:g})", "swap low and high")
        elif entry.log and low <= 0:
            found.error(f"{path}.low", low, "a log-scale range needs low > 0",
                        "set low to a positive value such as 1e-6, or drop log")
        elif step is not None and abs((high - low) / step - round((high - low) / step)) > 1e-6:
            found.warnings.append(f"{path}: high - low ({high - low:g}) is not a multiple of step ({step:g}); "
                                  "the largest value sampled will be below high")
    return Param(spec.name, spec.type, low=low, high=high, log=entry.log, step=step, grid_points=entry.grid_points)


def _step(spec: FieldSpec, entry: Range, path: str, found: Found) -> float | int | None:
    if entry.grid_points is not None and spec.type == "int":
        found.error(f"{path}.grid_points", entry.grid_points,
                    "applies only to float ranges (an integer range is already finite)",
                    "remove grid_points (use step to thin an integer range)")
    if entry.step is None:
        return None
    if entry.grid_points is not None and spec.type == "float":
        found.error(f"{path}.grid_points", entry.grid_points, "cannot be combined with step",
                    "keep either step or grid_points")
    step, error = coerce(spec, entry.step)
    if error or step <= 0:
        found.error(f"{path}.step", entry.step, error or "must be > 0",
                    f"use a positive {'integer' if spec.type == 'int' else 'number'}")
        return None
    if entry.log and not (spec.type == "int" and step == 1):
        found.error(f"{path}.step", entry.step, "cannot be combined with log", "remove step, or set log: false")
    return step


def plain(entry: Any) -> Any:
    """A search-space entry as the user wrote it (for messages)."""
    return entry.model_dump(exclude_unset=True) if isinstance(entry, (Range, Choices)) else entry


def check_value(spec: FieldSpec, raw: Any, path: str, found: Found) -> Any:
    """The value in the field's type; an error when it is impossible, a warning outside the documented range."""
    value, error = spec.parse(raw)
    if error:
        hint = did_you_mean(raw, map(str, spec.choices)) if spec.choices and isinstance(raw, str) else ""
        found.error(path, raw, error, hint if hint.startswith("did you mean") else spec.fix())
        return raw
    warning = spec.warning(value, path, lora=found.lora)
    if warning:
        found.warnings.append(warning)
    return value
