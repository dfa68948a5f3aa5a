"""The search space as typed parameters: one `Param` per search-space key of a compiled spec.

A `Param` knows how to ask an Optuna trial for a value (`suggest`), which finite values it can take
(`values`, for the static batch-size checks), its grid (for the grid sampler) and its YAML form.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trials import FieldSpec, field_specs

__all__ = ["KL_ADAPTIVE_ONLY", "NUM_MINI_BATCHES", "Param", "fixed_value", "iterations_of"]

KL_ADAPTIVE_ONLY = ("kl_target", "kl_horizon")  # sampled only where kl_mode is adaptive

NUM_MINI_BATCHES = FieldSpec(
    name="num_mini_batches", type="int", low=1,
    help="mini-batches per rollout batch, sampled instead of mini_batch_size "
         "(mini_batch_size = rollout_batch_size // num_mini_batches)")


@dataclass(frozen=True)
class Param:
    """One search-space key: kind is 'float', 'int', 'categorical' or 'fixed'."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    grid_points: int | None = None
    choices: tuple[Any, ...] = ()
    value: Any = None

    def suggest(self, trial: Any) -> Any:
        """Ask an Optuna trial for this parameter's value (define-by-run)."""
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.name, self.low, self.high, step=self.step or 1, log=self.log)
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        return self.value

    @property
    def searched(self) -> bool:
        return self.kind != "fixed"

    def values(self) -> Sequence[Any] | None:
        """Every value this key can take, or None for a continuous float range."""
        if self.kind == "fixed":
            return (self.value,)
        if self.kind == "categorical":
            return self.choices
        if self.kind == "int":
            return range(int(self.low), int(self.high) + 1, 1 if self.log else int(self.step or 1))
        return self.grid() if self.step is not None else None

    def grid(self) -> list[Any] | None:
        """The grid sampler's points for this key, or None when the range is continuous."""
        if self.kind == "float":
            if self.step is not None:
                n = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
                return [self.low + k * self.step for k in range(n)]
            if self.grid_points is None:
                return None
            return _spaced(self.low, self.high, self.grid_points, self.log)
        values = self.values()
        return list(values) if values is not None else None

    def to_data(self) -> Any:
        """The YAML form, defaults filled in."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return {"choices": list(self.choices)}
        data: dict[str, Any] = {"low": self.low, "high": self.high, "log": self.log}
        if self.kind == "int" or self.step is not None:
            data["step"] = self.step if self.step is not None else 1
        if self.grid_points is not None:
            data["grid_points"] = self.grid_points
        return data


def _spaced(low: float, high: float, n: int, log: bool) -> list[float]:
    if log:
        a, b = math.log(low), math.log(high)
        points = [math.exp(a + (b - a) * k / (n - 1)) for k in range(n)]
    else:
        points = [low + (high - low) * k / (n - 1) for k in range(n)]
    return [low, *points[1:-1], high]  # exact endpoints, so every point lies in [low, high]


def fixed_value(name: str, space: Mapping[str, Param], base: Mapping[str, Any]) -> Any:
    """A key's value where it is not searched: a fixed search-space value, the base, or the engine default."""
    if name in space and not space[name].searched:
        return space[name].value
    return base[name] if name in base else field_specs()[name].default


def iterations_of(budget_iterations: int | None, base: Mapping[str, Any]) -> int:
    """PPO iterations per trial: budget.iterations, else base.num_iterations, else the engine default."""
    if budget_iterations is not None:
        return budget_iterations
    if "num_iterations" in base:
        return int(base["num_iterations"])
    return int(field_specs()["num_iterations"].default)
