"""Checks that need the engine's field specs or span sections: base values, search-space bounds,
KL-mode conditions, batch-size divisibility, grid finiteness. Errors are Problems; warnings are lines.

`check_spec` returns a `Checked`: what was found, and the checked base values and search space that
`_compile` resolves into the compiled spec. Nothing here resolves; nothing in `_compile` checks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from trials import Problem, did_you_mean, field_specs, metrics
from tuner.engines import ENGINES
from tuner.spec._check_engine import check_engine
from tuner.spec._check_space import Found, build_space, check_value, plain
from tuner.spec._compile import launch_fields
from tuner.spec._models import TRIAL_FIELDS, Choices, Range, SweepSpec
from tuner.spec._space import KL_ADAPTIVE_ONLY, Param, fixed_value, iterations_of

__all__ = ["REQUIRED_PACKAGES", "Checked", "check_spec"]
_BATCH_FIX = ("use choices of powers of two for both, each mini_batch_size no larger than the smallest "
              "rollout_batch_size (e.g. rollout_batch_size: {choices: [64, 128, 256]}, mini_batch_size: "
              "{choices: [8, 16, 32]}), or search num_mini_batches instead of mini_batch_size")
_MAX_PAIRS = 100_000
# sampler type -> modules it imports when it first samples
REQUIRED_PACKAGES = {"cmaes": ("cmaes",), "gp": ("torch", "scipy")}


@dataclass(frozen=True)
class Checked:
    """What checking a structurally valid spec found, and the checked parts that compiling resolves."""

    problems: list[Problem]
    warnings: list[str]
    base: dict[str, Any]  # base values in their fields' types (entries with errors left out)
    space: dict[str, Param]  # search-space entries without errors


def check_spec(spec: SweepSpec, broken: frozenset[str] = frozenset()) -> Checked:
    """Errors and warnings of a structurally valid spec; `broken` names parts that failed structurally."""
    found = Found(lora=_always_lora(spec))
    base = _check_base(spec, found)
    space, problems, warnings = build_space(spec.search_space, lora=found.lora)
    found.problems += problems
    found.warnings += warnings

    def intact(*parts: str) -> bool:
        return not any(p in broken or p.split(".")[0] in broken for p in parts)

    def entries(*names: str) -> list[str]:
        return ["base", *(f"search_space.{n}" for n in names)]

    if intact("trial", "resources"):
        check_engine(spec, found)
    if intact(*entries("kl_mode", *KL_ADAPTIVE_ONLY)):
        _check_kl(space, base, found)
    if intact(*entries("rollout_batch_size", "mini_batch_size", "num_mini_batches", "micro_batch_size")):
        _check_batches(spec, space, base, found)
        if intact("trial", "resources") and not found.problems:
            _check_trainer_batches(spec, space, base, found)
    if intact("sampler"):
        _check_sampler(spec, space, found)
    if intact("sampler", "objective") and spec.sampler.type == "nsga2" and spec.objective.metric == metrics.KL:
        found.error("objective.metric", spec.objective.metric,
                    "nsga2 already minimizes objective/kl as its second objective",
                    "choose the metric to improve, such as eval/scores")
    if intact("trial", "objective") and spec.objective.metric == metrics.EVAL_GOLD and not spec.trial.eval_reward:
        found.error("objective.metric", spec.objective.metric,
                    "is the held-out reward's score, but trial.eval_reward is empty",
                    "name the held-out reward in trial.eval_reward (same forms as trial.reward),"
                    " or use eval/scores")
    if intact("budget", "base", "scheduler") and not found.problems:
        _budget_warnings(spec, iterations_of(spec.budget.iterations, base), found)
    if not (5 <= spec.kl_limit.nats <= 30):
        found.warnings.append(f"kl_limit = {spec.kl_limit.nats:g} is outside the usual range 5..30 nats "
                              "(the guidance keeps KL below 15-20 nats)")
    return Checked(found.problems, found.warnings, base, space)


def _always_lora(spec: SweepSpec) -> bool:
    """Whether every trial trains a LoRA adapter (lora_rank > 0 for every value a trial can get)."""
    entry = spec.search_space.get("lora_rank", spec.base.get("lora_rank", 0))
    values = [entry.low] if isinstance(entry, Range) else entry.choices if isinstance(entry, Choices) else [entry]
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in values)


def _check_base(spec: SweepSpec, found: Found) -> dict[str, Any]:
    specs, base = field_specs(), {}
    for name, raw in spec.base.items():
        path = f"base.{name}"
        if name not in specs:
            found.error(path, raw, "unknown engine field", did_you_mean(str(name), specs))
        elif name in TRIAL_FIELDS:
            found.error(path, raw, "is set under trial", f"set trial.{TRIAL_FIELDS[name]} instead")
        elif name == "checkpoint_dir":  # one folder for every trial: concurrent trials would overwrite each other's
            found.error(path, raw, "would be every trial's checkpoint folder; each trial checkpoints in its own "
                        "(trials/N/checkpoints in the sweep's folder)",
                        "remove base.checkpoint_dir (base.checkpoint_every sets how often, 0 never)")
        elif name in spec.search_space:
            found.error(f"search_space.{name}", plain(spec.search_space[name]), f"is also fixed in base ({raw!r})",
                        f"remove base.{name} or search_space.{name}")
        else:
            before = len(found.problems)
            value = check_value(specs[name], raw, path, found)
            if len(found.problems) == before:
                base[name] = value
    iterations = spec.budget.iterations
    if iterations is not None and "num_iterations" in base and base["num_iterations"] != iterations:
        found.error("budget.iterations", iterations, f"differs from base.num_iterations ({base['num_iterations']})",
                    "set the iterations in one place: budget.iterations")
    return base


def _value_set(name: str, space: dict[str, Param], base: dict[str, Any]) -> Sequence[Any]:
    if name in space and space[name].searched:
        return space[name].values() or ()
    return (fixed_value(name, space, base),)


def _check_kl(space: dict[str, Param], base: dict[str, Any], found: Found) -> None:
    if "adaptive" in _value_set("kl_mode", space, base):
        return
    for name in KL_ADAPTIVE_ONLY:
        if name in space and space[name].searched:
            found.error(f"search_space.{name}", space[name].to_data(),
                        "is sampled only when kl_mode is adaptive, but kl_mode can only be fixed",
                        "search kl_mode too (kl_mode: {choices: [fixed, adaptive]}), set kl_mode: adaptive, "
                        f"or remove search_space.{name}")


def _where(name: str, spec: SweepSpec) -> str | None:
    if name in spec.search_space:
        return f"search_space.{name}"
    return f"base.{name}" if name in spec.base else None


def _raw(spec: SweepSpec, space: dict[str, Param], where: str) -> Any:
    section, _, name = where.partition(".")
    if section == "base":
        return spec.base.get(name)
    return space[name].to_data() if name in space else None


def _check_batches(spec: SweepSpec, space: dict[str, Param], base: dict[str, Any], found: Found) -> None:
    """Every mini_batch_size a trial can get divides its rollout_batch_size, and micro_batch_size divides it."""
    rollouts = _value_set("rollout_batch_size", space, base)
    if "num_mini_batches" in space:
        minis = _check_num_mini_batches(spec, space, base, rollouts, found)
    else:
        minis = _value_set("mini_batch_size", space, base)
        bad = _first_bad_pair(rollouts, minis)
        if bad:
            candidates = (_searched("mini_batch_size", space), _searched("rollout_batch_size", space),
                          _where("mini_batch_size", spec), _where("rollout_batch_size", spec))
            where = next(filter(None, candidates), "search_space.mini_batch_size")
            found.error(where, _raw(spec, space, where),
                        f"mini_batch_size {bad[1]} does not divide rollout_batch_size {bad[0]},"
                        " a pair a trial could sample",
                        _BATCH_FIX)
            return
    micros = [m for m in _value_set("micro_batch_size", space, base) if m is not None]
    bad = _first_bad_pair(minis, micros) if minis is not None and micros else None
    if bad:
        where = _where("micro_batch_size", spec) or "search_space.mini_batch_size"
        found.error(where, _raw(spec, space, where),
                    f"micro_batch_size {bad[1]} does not divide mini_batch_size {bad[0]}, a value a trial could get",
                    "use a micro_batch_size that divides every mini_batch_size (e.g. the smallest), or leave it empty")


def _check_trainer_batches(spec: SweepSpec, space: dict[str, Param], base: dict[str, Any], found: Found) -> None:
    """Every batch-size combination a trial can sample, as an external engine's trainer checks it once it
    has started (verl: against the trial's world size, from trial.command): refused now, not in every trial.
    A size the launch does not pass (`launch_fields`) is the trainer's own: None to the engine's rule."""
    trainer = ENGINES.get(spec.trial.engine)
    if trainer is None or trainer.batches is None or not spec.trial.command:
        return
    passed = launch_fields(spec)

    def values(name: str) -> Sequence[Any]:
        return _value_set(name, space, base) if name in passed else (None,)

    rollouts = values("rollout_batch_size")
    if "num_mini_batches" in space:  # mini_batch_size = the trial's rollout_batch_size // num_mini_batches
        ours, counts = _value_set("rollout_batch_size", space, base), _value_set("num_mini_batches", space, base)
        size = len(ours) * len(counts)
        pairs = ((r if "rollout_batch_size" in passed else None, r // k) for r in ours for k in counts)
    else:
        minis = values("mini_batch_size")
        size, pairs = len(rollouts) * len(minis), ((r, m) for r in rollouts for m in minis)
    micros = values("micro_batch_size")
    if size * len(micros) > _MAX_PAIRS:
        found.warnings.append(f"the batch sizes give over {_MAX_PAIRS} combinations, too many to check against "
                              f"{trainer.name}'s own rules before launch: {trainer.name} checks each at start-up")
        return
    for rollout, mini in pairs:
        for micro in micros:
            # an empty micro_batch_size the launch passes is mini_batch_size per GPU (the export's mapping)
            launched = (micro or mini) if "micro_batch_size" in passed else None
            why, fix = trainer.check_batches(spec.trial.command, rollout, mini, launched)
            if why:
                names = ("mini_batch_size", "rollout_batch_size", "micro_batch_size", "num_mini_batches")
                where = next(filter(None, (_searched(n, space) for n in names)), None)
                where = where or next(filter(None, (_where(n, spec) for n in names)), "trial.command")
                found.error(where, _raw(spec, space, where) if where != "trial.command" else spec.trial.command,
                            f"{why}: {trainer.name} refuses this at start-up, and a trial could sample it",
                            f"{fix}, or change trial.command's GPU layout")
                return


def _check_num_mini_batches(spec: SweepSpec, space: dict[str, Param], base: dict[str, Any],
                            rollouts: Sequence[int], found: Found) -> set[int] | None:
    """The mini_batch_sizes num_mini_batches can give (None: too many to list, or an error was found)."""
    where = _where("mini_batch_size", spec)
    if where:
        found.error(where, _raw(spec, space, where), "cannot be set while num_mini_batches is searched "
                    "(mini_batch_size = rollout_batch_size // num_mini_batches)", f"remove {where}")
        return None
    counts = _value_set("num_mini_batches", space, base)
    bad = _first_bad_pair(rollouts, counts)
    if bad:
        where = "search_space.num_mini_batches"
        found.error(where, _raw(spec, space, where),
                    f"num_mini_batches {bad[1]} does not divide rollout_batch_size {bad[0]},"
                    " a pair a trial could sample",
                    "use num_mini_batches choices that divide every rollout_batch_size, e.g. powers of two "
                    "({choices: [1, 2, 4, 8]}) with rollout_batch_size powers of two no smaller than the largest")
        return None
    if len(rollouts) * len(counts) > _MAX_PAIRS:
        return None  # too many to list; the engine still refuses a bad micro_batch_size per trial
    return {r // n for r in rollouts for n in counts}


def _searched(name: str, space: dict[str, Param]) -> str | None:
    return f"search_space.{name}" if name in space and space[name].searched else None


def _first_bad_pair(totals: Sequence[int], parts: Iterable[int]) -> tuple[int, int] | None:
    """A (total, part) pair where part does not divide total, or None when every part divides every total."""
    for part in parts:
        if isinstance(totals, range) and len(totals) > 1:
            if totals.start % part:
                return totals.start, part
            if totals.step % part:
                return totals.start + totals.step, part
            continue
        for total in totals:
            if total % part:
                return total, part
    return None


def _check_sampler(spec: SweepSpec, space: dict[str, Param], found: Found) -> None:
    grid = spec.sampler.type == "grid"
    for name, param in space.items():
        if param.kind != "float":
            continue
        if grid and param.grid() is None:
            found.error(f"search_space.{name}", param.to_data(),
                        "the grid sampler needs a finite set of values, but this float range is continuous",
                        "add grid_points: 5 (or a step), or use choices")
        elif not grid and param.grid_points is not None:
            found.warnings.append(f"search_space.{name}.grid_points is used only by the grid sampler")
    if grid and not found.problems:
        size = 1
        for param in space.values():
            size *= len(param.grid() or [0]) if param.searched else 1
        if size != spec.budget.trials:
            partial = size > spec.budget.trials
            effect = "only part of the grid will run" if partial else "points will repeat"
            found.warnings.append(
                f"the grid has {size} points but budget.trials is {spec.budget.trials}: {effect}")
    missing = [m for m in REQUIRED_PACKAGES.get(spec.sampler.type, ()) if importlib.util.find_spec(m) is None]
    if missing:
        found.error("sampler.type", spec.sampler.type,
                    f"needs the {', '.join(missing)} package, which is not installed",
                    f"pip install {' '.join(missing)}, or choose another sampler")
    if spec.sampler.type == "cmaes":
        found.warnings.append("the cmaes sampler does not use the KL-limit constraint (tpe, gp and nsga2 do)")
    if spec.sampler.type == "nsga2" and spec.sampler.n_startup_trials is not None and spec.sampler.n_startup_trials < 2:
        found.error("sampler.n_startup_trials", spec.sampler.n_startup_trials,
                    "is nsga2's population size, which must be >= 2",
                    "use 2 or more (e.g. half of budget.trials)")


def _budget_warnings(spec: SweepSpec, iterations: int, found: Found) -> None:
    top_k = spec.budget.promote.top_k
    if top_k is not None and top_k > spec.budget.trials:
        found.warnings.append(f"budget.promote.top_k = {top_k} is more than budget.trials ({spec.budget.trials}): "
                              "at most the search's feasible trials are promoted")
    if spec.scheduler.type != "none" and spec.scheduler.grace_period >= iterations:
        found.warnings.append(f"scheduler.grace_period = {spec.scheduler.grace_period} is not below the "
                              f"{iterations} iterations per trial: no trial will be stopped early")
    if spec.kl_limit.grace_iterations >= iterations:
        found.warnings.append(f"kl_limit.grace_iterations = {spec.kl_limit.grace_iterations} is not below the "
                              f"{iterations} iterations per trial: the KL limit judges no iteration")
