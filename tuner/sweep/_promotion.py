"""Promotion: after the search, its best feasible configs run again at full length with fresh seeds.

A search trial is one short, single-seed run that ASHA judged early; PPO is seed-sensitive, and a
short-run winner does not always win at full length. So the `budget.promote.top_k` best feasible
configs of the search run again, `budget.promote.seeds` times each, for `budget.promote.iterations`
iterations, under the same KL limit and without early cuts, each with a seed that no search trial
used. The best config is then the best mean over those seeds among the configs feasible in every
seed (`best_promoted`); `tuner export` exports it.

The runs are recorded in a study of their own, `<name>-promotion`, in the sweep's storage: the
search's sampler never sees them (its study holds the search alone), and a resume runs only the
(config, seed) pairs that study does not hold yet (`missing_runs`). Each of its trials carries the
search trial it repeats (`promoted_trial`), its seed and `stage: promotion`.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import TrialState

from tuner.spec import CompiledSpec
from tuner.sweep._study import (
    ATTR,
    engine_config_of,
    interrupted,
    is_feasible,
    mark_interrupted,
    ranked_feasible,
    state_of,
)

__all__ = ["PROMOTION", "Choice", "PlannedRun", "PromotedConfig", "SeedRun", "best_promoted", "choose", "missing_runs",
           "plan", "promoted_configs", "promotion_metrics", "promotion_missing", "promotion_name", "promotion_study",
           "promotion_table", "write_table"]

PROMOTION = "promotion"  # the stage's name: the study's suffix, the trials' stage attribute, the MLflow runs' kind


def promotion_name(name: str) -> str:
    """The promotion study of sweep `name`."""
    return f"{name}-{PROMOTION}"


@dataclass(frozen=True)
class PlannedRun:
    """One promotion run: a search trial's config, at the promotion's length, with a fresh seed."""

    source: int  # the search trial's number
    seed: int
    engine: dict[str, Any]
    params: dict[str, Any]  # the search trial's searched values


def fresh_seeds(used: set[int], start: int, count: int) -> list[int]:
    """`count` seeds from `start` + 1 upward that are not in `used`."""
    seeds: list[int] = []
    seed = start
    while len(seeds) < count:
        seed += 1
        if seed not in used:
            seeds.append(seed)
    return seeds


def plan(spec: CompiledSpec, search: optuna.Study) -> list[PlannedRun]:
    """The promotion runs of a finished search: its top_k feasible configs x the fresh seeds (empty when
    promotion is off or no trial was feasible). Deterministic: a resume plans the same runs."""
    top = ranked_feasible(search)[:spec.promote_top_k()]
    if not top:
        return []
    used = {int(json.loads(t.user_attrs[ATTR["engine"]]).get("seed", spec.seed))
            for t in search.get_trials(deepcopy=False) if ATTR["engine"] in t.user_attrs}
    seeds = fresh_seeds(used, spec.seed, spec.budget.promote.seeds)
    return [PlannedRun(source=t.number, seed=seed, params=dict(t.params),
                       engine={**engine_config_of(t), "seed": seed, "num_iterations": spec.promote_iterations()})
            for t in top for seed in seeds]


def promotion_study(spec: CompiledSpec, storage: optuna.storages.BaseStorage,
                    create: bool = False) -> optuna.Study | None:
    """The sweep's promotion study (created with `create`); None where promotion never started."""
    name = promotion_name(spec.name)
    if create:
        return optuna.create_study(study_name=name, storage=storage, directions=spec.directions(), load_if_exists=True)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _key(trial: optuna.trial.FrozenTrial) -> tuple[int, int] | None:
    if ATTR["source"] not in trial.user_attrs:
        return None
    return int(trial.user_attrs[ATTR["source"]]), int(trial.user_attrs[ATTR["seed"]])


def _ran(trial: optuna.trial.FrozenTrial) -> bool:
    """A promotion run that ended by itself (an interrupted one runs again)."""
    return trial.state.is_finished() and not interrupted(trial)


def missing_runs(planned: list[PlannedRun], study: optuna.Study,
                 storage: optuna.storages.BaseStorage) -> list[PlannedRun]:
    """The planned runs the promotion study does not hold yet. Runs left RUNNING by a controller that died
    are marked FAIL (interrupted) first, so they run again."""
    mark_interrupted(study, storage)
    done = {_key(t) for t in study.get_trials(deepcopy=False) if _ran(t)}
    return [run for run in planned if (run.source, run.seed) not in done]


@dataclass
class SeedRun:
    """One promotion run as the study holds it."""

    seed: int
    state: str
    value: float | None
    kl_max: float | None
    feasible: bool


@dataclass
class PromotedConfig:
    """A promoted config: its search result and its runs at full length."""

    source: int  # the search trial
    params: dict[str, Any]
    search_value: float
    search_rank: int  # 1 = the search's best feasible trial
    runs: list[SeedRun] = field(default_factory=list)
    seeds: int = 0  # the runs planned
    rank: int | None = None  # 1 = the best promoted config; None where it is not eligible

    @property
    def values(self) -> list[float]:
        return [r.value for r in self.runs if r.value is not None and math.isfinite(r.value)]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def spread(self) -> float:
        """The standard deviation over seeds (0 with one seed)."""
        return statistics.stdev(self.values) if len(self.values) > 1 else 0.0 if self.values else math.nan

    @property
    def kl_max(self) -> float:
        """The largest KL any of its runs reached (nats)."""
        kls = [r.kl_max for r in self.runs if r.kl_max is not None]
        return max(kls) if kls else math.nan

    @property
    def eligible(self) -> bool:
        """Every planned seed ran to its end within the KL limit."""
        return len(self.runs) >= self.seeds > 0 and all(r.feasible and r.state == "COMPLETE" for r in self.runs)

    @property
    def verdict(self) -> str:
        if self.eligible:
            return "feasible in every seed"
        if len(self.runs) < self.seeds:
            return f"{self.seeds - len(self.runs)} of {self.seeds} seeds still to run"
        bad = [f"seed {r.seed} {r.state}" for r in self.runs if not (r.feasible and r.state == "COMPLETE")]
        return ", ".join(bad)


def promoted_configs(spec: CompiledSpec, search: optuna.Study, study: optuna.Study | None) -> list[PromotedConfig]:
    """The planned configs with their runs so far, ranked by mean over seeds among the eligible ones
    (`rank`), in the search's order."""
    planned = plan(spec, search)
    if not planned:
        return []
    ranked = ranked_feasible(search)  # one read of the study
    ranks = {t.number: i + 1 for i, t in enumerate(ranked)}
    values = {t.number: t.values[0] for t in ranked}
    seeds = {run.seed for run in planned}
    configs = {run.source: PromotedConfig(source=run.source, params=run.params, search_value=values[run.source],
                                          search_rank=ranks[run.source], seeds=len(seeds))
               for run in planned}
    for trial in study.get_trials(deepcopy=False) if study is not None else []:
        key = _key(trial)
        if key is None or key[0] not in configs or key[1] not in seeds or not _ran(trial):
            continue
        configs[key[0]].runs.append(SeedRun(seed=key[1], state=state_of(trial),
                                            value=trial.values[0] if trial.values else None,
                                            kl_max=trial.user_attrs.get(ATTR["kl_max"]),
                                            feasible=is_feasible(trial) and trial.state == TrialState.COMPLETE))
    maximize = spec.objective.direction == "maximize"
    eligible = sorted((c for c in configs.values() if c.eligible),
                      key=lambda c: (-c.mean if maximize else c.mean, c.search_rank))
    for rank, config in enumerate(eligible, 1):
        config.rank = rank
    for config in configs.values():
        config.runs.sort(key=lambda r: r.seed)
    return sorted(configs.values(), key=lambda c: c.search_rank)


def best_promoted(configs: list[PromotedConfig]) -> PromotedConfig | None:
    """The best mean over seeds among the configs feasible in every seed."""
    return next((c for c in configs if c.rank == 1), None)


@dataclass(frozen=True)
class Choice:
    """The config a sweep recommends: the best promoted one, else (promotion did not run) the search's best."""

    trial: optuna.trial.FrozenTrial  # the search trial whose config it is
    stage: str  # PROMOTION or "search"
    source: dict[str, Any]  # provenance for the export's header
    note: str = ""  # why it is the search's best, where it is


def promotion_missing(configs: list[PromotedConfig]) -> int:
    """Promotion runs planned and not yet held by the promotion study."""
    return sum(max(0, c.seeds - len(c.runs)) for c in configs)


def choose(spec: CompiledSpec, search: optuna.Study, configs: list[PromotedConfig]) -> Choice | None:
    """The sweep's answer: the best promoted config once every promotion run ended; the search's best
    where promotion is off or has not finished (the note says which). None where there is none: no
    feasible search trial, or no promoted config was feasible in every seed (then the search's best is
    no answer either: its fresh seeds disagree with it)."""
    if configs and not promotion_missing(configs):
        best = best_promoted(configs)
        if best is None:
            return None
        return Choice(search.get_trials(deepcopy=False)[best.source], PROMOTION, {
            "sweep": spec.name, "trial": best.source, "stage": PROMOTION, "mean": best.mean, "spread": best.spread,
            "seeds": [r.seed for r in best.runs], "kl_max": best.kl_max, "search_rank": best.search_rank})
    top = ranked_feasible(search)
    if not top:
        return None
    why = ("promotion is off (budget.promote.top_k: 0)" if spec.promote_top_k() == 0 else
           f"promotion has not finished: tuner resume {spec.name} runs its missing seeds" if configs else
           "promotion has not run: the search has trials still to run")
    return Choice(top[0], "search", {"sweep": spec.name, "trial": top[0].number, "stage": "search",
                                     "objective": top[0].values[0], "kl_max": top[0].user_attrs.get(ATTR["kl_max"])},
                  note=f"the search's best trial (one seed, scored by the search): {why}")


def promotion_metrics(configs: list[PromotedConfig]) -> dict[str, float]:
    """The parent run's metrics of the promotion: per config and for the best."""
    out: dict[str, float] = {}
    for c in configs:
        prefix = f"promotion/trial_{c.source}"
        out.update({f"{prefix}/mean": c.mean, f"{prefix}/spread": c.spread, f"{prefix}/kl_max": c.kl_max,
                    f"{prefix}/search_rank": float(c.search_rank),
                    f"{prefix}/promotion_rank": float(c.rank) if c.rank is not None else math.nan})
    best = best_promoted(configs)
    if best is not None and not promotion_missing(configs):
        out.update({"promotion/best_trial": float(best.source), "promotion/best_mean": best.mean,
                    "promotion/best_spread": best.spread})
    return out


def write_table(configs: list[PromotedConfig], path: Any) -> Any:
    """The promotion's table as CSV (the parent run's artifact)."""
    import csv

    rows = promotion_table(configs)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(dict.fromkeys(k for row in rows for k in row)))
        writer.writeheader()
        writer.writerows(rows)
    return path


def promotion_table(configs: list[PromotedConfig]) -> list[dict[str, Any]]:
    """One row per promoted config (the parent run's table artifact, and the CLI's table)."""
    return [{"trial": c.source, "search_rank": c.search_rank, "search_value": c.search_value,
             "promotion_rank": c.rank, "mean": c.mean, "spread": c.spread, "kl_max": c.kl_max,
             "seeds": " ".join(f"{r.seed}:{r.state}:{_num(r.value)}" for r in c.runs), "verdict": c.verdict,
             **{f"param.{k}": v for k, v in sorted(c.params.items())}} for c in configs]


def _num(value: float | None) -> str:
    return f"{value:.4f}" if value is not None and math.isfinite(value) else "-"
