"""Resolution: a checked spec becomes the one frozen object everything downstream takes.

`CompiledSpec` holds the validated spec (its sections as written, URLs with their ${NAME}
references), the search space as typed `Param`s, the engine base shared by every trial (as a
`PPOConfig`), the resolved numbers (iterations, sampler seed, startup trials, directions) and the
warnings found while checking. Samplers, the searcher, the trainable, export and `tuner validate`
read it; none of them checks again. `trial_config` makes a trial's engine config from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from trials import (
    OUTSIDE_RANGE,
    PPOConfig,
    Problem,
    TunerError,
    looked_in,
    metrics,
    path_fields,
    reserved_threads,
    resolve_relative,
)
from trials.demo import RANGES_NOTE
from tuner.spec import _values
from tuner.spec._models import TRIAL_FIELDS, KLLimitSection, SweepSpec, spec_key
from tuner.spec._space import Param, fixed_value, iterations_of

__all__ = ["SPEC_FILE", "CompiledSpec", "compile_spec", "launch_fields", "trial_config"]

SPEC_FILE = "spec.yaml"  # the resolved spec, kept in the sweep's folder for resume, status and export


@dataclass(frozen=True)
class CompiledSpec:
    """A sweep spec, validated and resolved once. Its sections (`name`, `trial`, `objective`, `budget`,
    `scheduler`, `sampler`, `resources`, `ray`, `mlflow`, `kl_limit`, `seed`, ...) read through to the
    validated `spec`."""

    spec: SweepSpec
    space: Mapping[str, Param]
    base: PPOConfig  # every engine field shared by the trials: trial section, seed, base, fixed values, iterations
    notes: tuple[str, ...] = ()  # warnings found while checking
    _derived: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def __getattr__(self, name: str) -> Any:
        if name in SweepSpec.model_fields:
            return getattr(self.spec, name)
        raise AttributeError(name)

    # -- what the controller asks --------------------------------------------------------------
    def warnings(self) -> list[str]:
        """Values outside the guidance's documented ranges (in one line, which says why they are expected
        where the model is the demo's) and other things worth a second look."""
        ranges = [n for n in self.notes if OUTSIDE_RANGE in n]
        others = [n for n in self.notes if OUTSIDE_RANGE not in n]
        if not ranges:
            return others
        why = f": expected, {RANGES_NOTE}" if self.base.model_path == "demo" else ""
        if len(ranges) == 1:
            return [f"{ranges[0]}{why}", *others]
        values = "; ".join(f"{name} ({documented.strip()})"
                           for name, _, documented in (n.partition(OUTSIDE_RANGE) for n in ranges))
        return [f"{len(ranges)} values outside the documented ranges: {values}{why}", *others]

    @property
    def kl_limit(self) -> float:
        """The KL limit in nats (summed over the response); its forecast and grace are in `kl_rule`."""
        return self.spec.kl_limit.nats

    @property
    def kl_rule(self) -> KLLimitSection:
        return self.spec.kl_limit

    def iterations(self) -> int:
        return self.base.num_iterations

    def in_spec_terms(self, error: TunerError) -> TunerError:
        """`error` (the engine's, about its config) with each problem named by the spec key the user
        wrote (`trial.reward`, not `reward`), and the folder a relative path was looked for in."""
        folder = self._derived.get("base_dir")
        problems = [Problem(spec_key(p.path), p.value, p.message + _looked_in(p, folder), p.fix)
                    for p in error.problems]
        return type(error)(problems) if problems else error

    def sweep_dir(self) -> Path:
        return Path(self.spec.workdir) / self.spec.name

    def spec_file(self) -> Path:
        return self.sweep_dir() / SPEC_FILE

    def storage_url(self, expand: bool = True) -> str:
        """The study database URL; with `expand`, its ${NAME} references replaced from the environment."""
        if self.spec.storage is not None:
            return _values.expand_env(self.spec.storage, "storage") if expand else self.spec.storage
        return f"sqlite:///{(self.sweep_dir() / 'study.db').resolve()}"

    def tracking_uri(self, expand: bool = True) -> str:
        """The MLflow tracking URI; with `expand`, its ${NAME} references replaced from the environment."""
        uri = self.spec.mlflow.tracking_uri
        if uri is not None:
            return _values.expand_env(uri, "mlflow.tracking_uri") if expand else uri
        return f"sqlite:///{(self.sweep_dir() / 'mlflow.db').resolve()}"

    def env_references(self) -> list[str]:
        """The environment variables that the storage and tracking URLs refer to (${NAME})."""
        return _values.env_references(f"{self.spec.storage or ''} {self.spec.mlflow.tracking_uri or ''}")

    def experiment_name(self) -> str:
        return self.spec.mlflow.experiment or self.spec.name

    def directions(self) -> list[str]:
        """Optuna directions: the objective's, plus minimizing objective/kl for nsga2."""
        return list(self._derived["directions"])

    def promote_top_k(self) -> int:
        """Configs the promotion stage re-runs (0: none); see budget.promote."""
        return self._derived["promote_top_k"]

    def promote_iterations(self) -> int:
        """PPO iterations of a promoted run: budget.promote.iterations, else the search's trial length."""
        return self.spec.budget.promote.iterations or self.iterations()

    def sampler_seed(self) -> int:
        return self._derived["sampler_seed"]

    def n_startup_trials(self) -> int:
        """Random trials first (nsga2: its population size), defaulting to half the budget, at most 10 (50)."""
        return self._derived["n_startup_trials"]

    def fixed(self, name: str) -> Any:
        """An engine field's value where it is not searched."""
        return fixed_value(name, self.space, self._derived["base_values"])

    def launch(self) -> dict[str, Any]:
        """How an external trial's trainer is started (TrialTask.external; empty for our engine): trial.launch,
        and the fields its launch passes (`launch_fields`)."""
        external = self.spec.trial.launch(cluster=self.spec.ray.address is not None)
        return {**external, "fields": sorted(launch_fields(self.spec))} if external else external

    def resolved(self) -> dict[str, Any]:
        """The spec with every default filled in, as plain YAML-able data (URLs as written, ${NAME} kept)."""
        data = self.spec.model_dump(mode="json")
        data["base"] = dict(self._derived["base_values"])
        data["search_space"] = {name: p.to_data() for name, p in self.space.items()}
        data["budget"]["iterations"] = self.iterations()
        data["budget"]["promote"].update(top_k=self.promote_top_k(), iterations=self.promote_iterations())
        data["sampler"].update(seed=self.sampler_seed(), n_startup_trials=self.n_startup_trials())
        data["storage"] = self.storage_url(expand=False)
        data["mlflow"] = {"tracking_uri": self.tracking_uri(expand=False), "experiment": self.experiment_name()}
        return data


def compile_spec(spec: SweepSpec, base_values: dict[str, Any], space: dict[str, Param], warnings: list[str],
                 base_dir: Path | None = None) -> CompiledSpec:
    """Resolve a checked spec. Relative trial paths that exist under `base_dir` become absolute."""
    if base_dir is not None:
        spec = _resolve_paths(spec, base_dir)
    if spec.trial.eval_reward and "metric" not in spec.objective.model_fields_set:  # the held-out reward decides
        spec = spec.model_copy(update={"objective": spec.objective.model_copy(update={"metric": metrics.EVAL_GOLD})})
    iterations = iterations_of(spec.budget.iterations, base_values)
    engine = {**_trial_fields(spec), "seed": spec.seed, **base_values,
              **{name: p.value for name, p in space.items() if not p.searched}, "num_iterations": iterations}
    if engine.get("num_threads") is None:  # torch gets the trial's CPU reservation, whatever the driver's env says
        engine["num_threads"] = reserved_threads(spec.resources.cpus_per_trial)
    derived = {"directions": _directions(spec), "sampler_seed": _sampler_seed(spec),
               "n_startup_trials": _n_startup_trials(spec), "promote_top_k": _promote_top_k(spec),
               "base_values": MappingProxyType(dict(base_values)),
               "base_dir": None if base_dir is None else str(base_dir)}
    return CompiledSpec(spec=spec, space=MappingProxyType(dict(space)), base=PPOConfig(**engine),
                        notes=tuple(warnings), _derived=MappingProxyType(derived))


def trial_config(spec: CompiledSpec, params: Mapping[str, Any]) -> PPOConfig:
    """The engine config of one trial: the compiled base with `params` in place (no validation again:
    every sampled value lies in its checked range, and batch sizes were checked for every pair).

    `params` may be sample_params' result or Optuna's own trial.params (num_mini_batches included).
    """
    values = dict(params)
    count = values.pop("num_mini_batches", None)
    if count is not None and "mini_batch_size" not in values:
        rollout = values.get("rollout_batch_size", spec.base.rollout_batch_size)
        values["mini_batch_size"] = rollout // count
    return dataclasses.replace(spec.base, **values)


def launch_fields(spec: SweepSpec) -> frozenset[str]:
    """The engine fields an external engine's launch passes (verl, OpenRLHF): those the spec sets (base:, or
    search_space:, where num_mini_batches sets mini_batch_size), each trial's length (budget.iterations), and
    its seed where the spec gives one (base.seed, or a `seed:` other than the default 0, which the saved spec
    of a resumed sweep always holds) or the sweep promotes (each promotion run has a seed of its own). Every
    other setting is the engine's default or trial.command's."""
    fields = {*spec.base, *spec.search_space, "num_iterations"}
    if "num_mini_batches" in fields:
        fields.add("mini_batch_size")
    if spec.seed != 0 or _promote_top_k(spec) > 0:
        fields.add("seed")
    return frozenset(fields - {"num_mini_batches"})


def _looked_in(problem: Problem, folder: str | None) -> str:
    if folder is None or problem.path not in path_fields():
        return ""
    return looked_in(problem.path, problem.value, folder, "the spec's folder")


def _trial_fields(spec: SweepSpec) -> dict[str, Any]:
    return {engine: getattr(spec.trial, key) for engine, key in TRIAL_FIELDS.items()}


def _resolve_paths(spec: SweepSpec, base_dir: Path) -> SweepSpec:
    trial = spec.trial
    updates: dict[str, Any] = {key: resolve_relative(engine, getattr(trial, key), base_dir)
                               for engine, key in TRIAL_FIELDS.items()}
    if trial.command:  # the trainer runs in its trial's folder: a script named relative to the spec is made absolute
        updates["command"] = [arg if "{" in arg or arg.startswith("-") else resolve_relative("command", arg, base_dir)
                              for arg in trial.command]
    return spec.model_copy(update={"trial": trial.model_copy(update=updates)})


def _directions(spec: SweepSpec) -> tuple[str, ...]:
    if spec.sampler.type == "nsga2":
        return (spec.objective.direction, "minimize")
    return (spec.objective.direction,)


def _sampler_seed(spec: SweepSpec) -> int:
    return spec.sampler.seed if spec.sampler.seed is not None else spec.seed


def _n_startup_trials(spec: SweepSpec) -> int:
    if spec.sampler.n_startup_trials is not None:
        return spec.sampler.n_startup_trials
    if spec.sampler.type == "nsga2":
        return max(2, min(50, spec.budget.trials // 2))
    return max(1, min(10, spec.budget.trials // 2))


def _promote_top_k(spec: SweepSpec) -> int:
    """3 where the budget allows; a smaller search promotes a third of its trials (none below 3 trials)."""
    if spec.budget.promote.top_k is not None:
        return spec.budget.promote.top_k
    return min(3, spec.budget.trials // 3)
