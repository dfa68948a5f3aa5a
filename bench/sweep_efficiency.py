"""Sweep efficiency: our default (TPE + ASHA + the KL limit) against random search without pruning,
at equal compute, replayed on a recorded learning-curve table over many independently seeded
repeats; and (--live) one real `tuner run` of the demo grid spec to confirm that the replay matches
what the controller does.

    python bench/_curves.py                 # once (resumable): bench/data/demo_curves.jsonl
    python bench/sweep_efficiency.py --jobs 2                                   # the demo table
    python bench/sweep_efficiency.py --table places --trials 16 --jobs 2         # the places table
    python bench/sweep_efficiency.py --live     # one real `tuner run` of the demo grid spec against its replay

For each repeat: random search runs N trials to their end (no ASHA, no KL limit; a trial is feasible
when its KL never passed the limit); its compute C and its best feasible final eval/scores are the
bar. Every other searcher then runs with the same compute C (trials start while less than C is
spent; running ones finish), and the figure is the compute it had spent when it first completed a
feasible trial at least as good, over C (inf: not within C). Every searcher of every repeat has its
own sampler seed (`seed_of`: no two share one), so no searcher replays another's draws. A config
that a trial already ran is told its outcome and not run (`sampler.skip_duplicates`), on both sides
alike: it costs no compute and is not counted in the bar's N; the ablation that runs such repeats
again is compared with a bar that also runs them again. The median over repeats comes with a 95%
bootstrap interval. Every figure is computed twice from the same replays, a trial judged feasible
by the controller's rule (its KL never passed the limit) and by its final KL (bench/_replay.py's
JUDGED): `summary` and `summary_final`, and how the second moves the bar (`bar_final`).

Searchers: the default; TPE alone; random with ASHA and the KL limit; TPE settings (random
trials first, multivariate or independent TPE, the constant liar for running trials), all with ASHA
and the KL limit; and the default with kl_limit.grace_iterations 3 and 6, on the default's seed.
A continuous space over the same table (each searched key a range over the
grid's span, a sampled config read as the nearest recorded one) checks `sampler.skip_duplicates`
where configs do not repeat: with the same seed, skipping on and off must give the same sweep.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

from _common import ROOT, load, machine, save
from _curves import (
    COSTS,
    SPECS,
    best_never_crossing,
    costed,
    data_paths,
    grid,
    load_grid_spec,
    load_table,
)
from _replay import EVER, FINAL, JUDGED, simulate

SEED_BASE = 1000  # repeat r, searcher i: seed SEED_BASE + r * len(SEARCHERS) + i (all distinct)
BOOTSTRAP = 2000
TARGET = 0.25  # the default sweep reaches random search's best with at most this share of its compute


@dataclasses.dataclass(frozen=True)
class Searcher:
    sampler: str  # "random", or "tpe" (make_sampler's TPE, with `tpe` overriding its keywords)
    asha: bool = True
    kl_limit: bool = True
    startup: int | None = None  # TPE's random trials first; None: the spec's default
    tpe: tuple[tuple[str, Any], ...] = ()  # TPESampler keywords set here, e.g. (("multivariate", False),)
    skip: bool = True  # sampler.skip_duplicates
    bar: str = "random, no pruning"  # the searcher whose N trials set C and the target
    continuous: bool = False  # the continuous space over the table
    runs_to_end: bool = False  # a bar: N trials, no compute limit
    kl: tuple[tuple[str, Any], ...] = ()  # kl_limit options set here, e.g. (("grace_iterations", 3),)
    paired: str | None = None  # a variant of this searcher, replayed with its seed (the same draws until it differs)


BAR, BAR_REPEATS, BAR_CONTINUOUS = ("random, no pruning", "random, no pruning, repeats run",
                                    "continuous: random, no pruning")
OURS = "ours: TPE + ASHA + KL limit (the default)"
GRACE = (3, 6)  # kl_limit.grace_iterations replayed as variants of ours
SEARCHERS: dict[str, Searcher] = {
    BAR: Searcher("random", asha=False, kl_limit=False, runs_to_end=True),
    OURS: Searcher("tpe"),
    "TPE alone (no ASHA, no KL limit)": Searcher("tpe", asha=False, kl_limit=False),
    "random + ASHA + KL limit": Searcher("random"),
    "TPE, 5 random trials first": Searcher("tpe", startup=5),
    "TPE, 20 random trials first": Searcher("tpe", startup=20),
    "TPE, independent (multivariate off)": Searcher("tpe", tpe=(("multivariate", False),)),
    "TPE, no constant liar": Searcher("tpe", tpe=(("constant_liar", False),)),
    BAR_REPEATS: Searcher("random", asha=False, kl_limit=False, skip=False, runs_to_end=True, bar=BAR_REPEATS),
    "ours, repeats run again": Searcher("tpe", skip=False, bar=BAR_REPEATS),
    BAR_CONTINUOUS: Searcher("random", asha=False, kl_limit=False, continuous=True,
                             runs_to_end=True, bar=BAR_CONTINUOUS),
    "continuous: ours": Searcher("tpe", continuous=True, bar=BAR_CONTINUOUS),
    **{f"ours, kl_limit.grace_iterations {g}": Searcher("tpe", kl=(("grace_iterations", g),), paired=OURS)
       for g in GRACE},
}
NO_SKIP_CHECK = "continuous: ours"  # run again with skip_duplicates off, same seed: must give the same sweep


def seed_of(repeat: int, name: str) -> int:
    paired = SEARCHERS[name].paired
    if paired:
        return seed_of(repeat, paired)
    own = [n for n, s in SEARCHERS.items() if not s.paired]
    return SEED_BASE + repeat * len(own) + own.index(name)


def sweep_spec(spec: Any, s: Searcher, seed: int, trials: int, skip: bool | None = None) -> Any:
    from tuner.spec import derive_spec

    sampling = {"type": s.sampler, "seed": seed, "n_startup_trials": s.startup,
                "skip_duplicates": s.skip if skip is None else skip}
    sections: dict[str, Any] = {"sampler": sampling, "budget": {"trials": trials}}
    if s.continuous:
        sections["search_space"] = continuous_space(spec)
    if s.kl:
        sections["kl_limit"] = dict(s.kl)
    return derive_spec(spec, **sections)


def continuous_space(spec: Any) -> dict[str, Any]:
    """The grid's searched keys as ranges over their span (log for learning rates and betas, integers
    stay integers; mini_batch_size stays a choice, as in search_spaces/demo.yaml)."""
    space: dict[str, Any] = {}
    for name, p in spec.search_space.items():
        choices = list(getattr(p, "choices", None) or [])
        if not choices or name == "mini_batch_size":
            space[name] = p.model_dump(exclude_unset=True) if choices else p
        elif all(isinstance(c, int) for c in choices):
            space[name] = {"low": min(choices), "high": max(choices)}
        else:
            space[name] = {"low": min(choices), "high": max(choices), "log": True}
    return space


def snapper(spec: Any) -> Any:
    """A sampled config -> the nearest recorded one (nearest in log scale for every key)."""
    values = grid(spec)[0].keys()
    choices = {k: list(spec.search_space[k].choices) for k in values}

    def snap(sampled: dict[str, Any]) -> dict[str, Any]:
        return {k: min(cs, key=lambda c: abs(math.log(c) - math.log(sampled[k]))) for k, cs in choices.items()}
    return snap


def make(spec: Any, s: Searcher) -> Any:
    import optuna

    from tuner.spec import make_sampler
    from tuner.spec._samplers import TPE_OPTIONS

    if not s.tpe:
        return make_sampler(spec)
    options = {"seed": spec.sampler_seed(), "n_startup_trials": spec.n_startup_trials(), **TPE_OPTIONS, **dict(s.tpe)}
    return optuna.samplers.TPESampler(**options)


def one_repeat(job: tuple[str, int, int, int]) -> dict[str, Any]:
    """Every searcher once, each with its own seed, against its bar."""
    spec_path, repeat, trials, workers = job
    spec = load_grid_spec(Path(spec_path))
    table = costed(load_table(data_paths(Path(spec_path))[0]), cost_model(Path(spec_path)))
    snap = snapper(spec)
    out: dict[str, Any] = {"repeat": repeat, "bars": {}}

    def run(name: str, max_compute: float | None, skip: bool | None = None) -> Any:
        s = SEARCHERS[name]
        derived = sweep_spec(spec, s, seed_of(repeat, name), trials, skip)
        return simulate(table, derived, make(derived, s), asha=s.asha, kl_limit=s.kl_limit, workers=workers,
                        max_trials=trials if s.runs_to_end else None, max_compute=max_compute,
                        snap=snap if s.continuous else None)

    for name, s in SEARCHERS.items():
        if s.runs_to_end:
            bar = run(name, None)
            out["bars"][name] = {"compute": bar.compute, "target": bar.best(EVER), "target_final": bar.best(FINAL),
                                 "copies": bar.copies, "iterations": sum(t.iterations for t in bar.trials),
                                 "seed": seed_of(repeat, name)}
    for name, s in SEARCHERS.items():
        if s.runs_to_end:
            continue
        bar = out["bars"][s.bar]
        c, sweep = bar["compute"], run(name, bar["compute"])
        out[name] = {**judged(sweep, c, bar["target"], EVER), "trials": len(sweep.trials), "copies": sweep.copies,
                     "seed": seed_of(repeat, name), "final": judged(sweep, c, bar["target_final"], FINAL)}
        if name == NO_SKIP_CHECK:
            again = run(name, c, skip=False)
            out[name]["same_without_skip"] = ([t.params for t in again.trials] == [t.params for t in sweep.trials]
                                              and again.bests() == sweep.bests())
    return out


def judged(sweep: Any, compute: float, target: float, rule: str) -> dict[str, float]:
    """The share of `compute` spent when the sweep first reached `target` (inf: not within it), and its
    best value within `compute`, its trials judged feasible by `rule` (bench/_replay.py's JUDGED)."""
    reach = sweep.compute_to_reach(target, rule)
    return {"fraction": reach / compute if reach <= compute else math.inf,
            "best_at_equal_compute": sweep.best_within(compute, rule)}


def cost_model(spec_path: Path) -> Path:
    """The table's own cost model, else the demo's (same model, response length and batch shapes)."""
    own = data_paths(spec_path)[1]
    return own if own.exists() else COSTS


def bootstrap_median(values: list[float], seed: int = 0) -> tuple[float, float, float]:
    """The median and a 95% percentile-bootstrap interval for it (inf where more than half are inf)."""
    import numpy as np

    x = np.array(values, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(x[rng.integers(0, len(x), size=(BOOTSTRAP, len(x)))], axis=1)
    lo, hi = np.quantile(medians, [0.025, 0.975], method="inverted_cdf")
    return float(np.median(x)), float(lo), float(hi)


def summarise(results: list[dict[str, Any]], rule: str = EVER) -> dict[str, Any]:
    """Per searcher, over the repeats, with trials judged feasible by `rule` (JUDGED)."""
    target = "target" if rule == EVER else "target_final"

    def of(r: dict[str, Any], name: str) -> dict[str, Any]:
        return r[name] if rule == EVER else r[name]["final"]

    out: dict[str, Any] = {}
    for name, s in SEARCHERS.items():
        if s.runs_to_end:
            continue
        # a bar with no feasible trial sets none
        rows = [r for r in results if math.isfinite(r["bars"][s.bar][target])]
        f = [of(r, name)["fraction"] for r in rows]
        median, lo, hi = bootstrap_median(f)
        better = sum(of(r, name)["best_at_equal_compute"] > r["bars"][s.bar][target] for r in rows)
        equal = sum(of(r, name)["best_at_equal_compute"] == r["bars"][s.bar][target] for r in rows)
        out[name] = {"median": median, "ci95": [lo, hi], "repeats": len(f),
                     "reached_within_budget": sum(x <= 1 for x in f),
                     "within_25pct": sum(x <= TARGET for x in f),
                     "at_equal_compute": {"better": better, "equal": equal, "worse": len(rows) - better - equal},
                     "copies_median": sorted(r[name]["copies"] for r in rows)[len(rows) // 2]}
        if name == NO_SKIP_CHECK:
            out[name]["same_without_skip"] = sum(r[name]["same_without_skip"] for r in rows)
            out[name]["copies_total"] = sum(r[name]["copies"] for r in rows)
    return out


def bar_by_final_kl(results: list[dict[str, Any]], best_never_crossing: float) -> dict[str, int]:
    """How judging by the final KL moves random search's bar: the repeats whose target rises, and
    those where it rises above the best final eval/scores of any config whose KL never passes the
    limit (which a sweep that stops every crossing cannot reach)."""
    bars = [r["bars"][BAR] for r in results]
    return {"repeats": len(bars), "target_rises": sum(b["target_final"] > b["target"] for b in bars),
            "above_best_never_crossing": sum(b["target_final"] > best_never_crossing for b in bars),
            "best_never_crossing": best_never_crossing}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--table", choices=sorted(SPECS), default="demo", help="the recorded curve table to replay")
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--trials", type=int, default=32, help="random search's trials (and ours' budget.trials)")
    parser.add_argument("--jobs", type=int, default=1, help="processes replaying repeats in parallel")
    parser.add_argument("--minutes", type=float, default=math.inf,
                        help="stop after this long, keeping the repeats before the first unfinished one")
    parser.add_argument("--live", action="store_true", help="instead: the live `tuner run` check of the demo grid spec "
                        "(results: sweep_efficiency_live)")
    parser.add_argument("--live-timeout", type=float, default=420)
    parser.add_argument("--out", default=None, help="results name (default: sweep_efficiency[_TABLE])")
    args = parser.parse_args()
    spec_path = SPECS[args.table]
    spec, table = load_grid_spec(spec_path), load_table(data_paths(spec_path)[0])
    if not COSTS.exists():
        print("no cost model: run `python bench/_curves.py --calibrate` first", file=sys.stderr)
        return 2
    missing = len(grid(spec)) - len(table)
    if missing:
        print(f"the table misses {missing} configs: run `python bench/_curves.py --spec {spec_path.relative_to(ROOT)}` "
              "(resumable) first", file=sys.stderr)
        return 2
    res: dict[str, Any] = {"machine": machine(), "load": load(), "table": args.table,
                           "spec": str(spec_path.relative_to(ROOT)),
                           "cost_model": str(cost_model(spec_path).relative_to(ROOT)), "repeats": args.repeats,
                           "trials": args.trials, "workers": spec.resources.max_concurrent, "table_configs": len(table),
                           "seeds": f"repeat r, searcher i: {SEED_BASE} + r * {len(SEARCHERS)} + i",
                           "searchers": {n: dataclasses.asdict(s) for n, s in SEARCHERS.items()}}
    started = time.perf_counter()
    if args.live:
        return live_only(res, spec, table, args.live_timeout, started)
    jobs = [(str(spec_path), r, args.trials, spec.resources.max_concurrent) for r in range(args.repeats)]
    deadline = started + 60 * args.minutes
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        done: dict[int, dict[str, Any]] = {}
        for row in pool.imap_unordered(one_repeat, jobs):
            done[row["repeat"]] = row
            print(f"repeat {row['repeat']} done ({len(done)}/{args.repeats}, "
                  f"{time.perf_counter() - started:.0f} s)", flush=True)
            if time.perf_counter() > deadline:
                break  # out of time: the repeats before the first unfinished one are kept (no choice by speed)
    first_missing = next((r for r in range(args.repeats) if r not in done), args.repeats)
    res["per_repeat"] = [done[r] for r in range(first_missing)]
    res["repeats"] = first_missing
    res["summary"] = summarise(res["per_repeat"], EVER)
    res["summary_final"] = summarise(res["per_repeat"], FINAL)
    res["judged"] = JUDGED
    res["bar_final"] = bar_by_final_kl(res["per_repeat"], best_never_crossing(table.values(), spec.kl_limit))
    res["seconds"], res["load_end"] = time.perf_counter() - started, load()
    report(res)
    name = args.out or ("sweep_efficiency" if args.table == "demo" else f"sweep_efficiency_{args.table}")
    print(f"\nwrote {save(name, res)} in {res['seconds']:.0f} s")
    return 0


def live_only(res: dict[str, Any], spec: Any, table: dict, timeout: float, started: float) -> int:
    from _live import live_check, report_live

    live = {k: res[k] for k in ("machine", "load", "table", "spec", "cost_model", "table_configs")}
    live["live"] = live_check(spec, costed(table, COSTS), timeout)
    live["seconds"], live["load_end"] = time.perf_counter() - started, load()
    report_live(live["live"])
    print(f"\nwrote {save('sweep_efficiency_live', live)}")
    return 0 if live["live"].get("ok") else 1


def report(res: dict[str, Any]) -> None:
    print(f"table {res['table']} ({res['table_configs']} configs), {res['repeats']} repeats; the bar: random search, "
          f"{res['trials']} trials to the end")
    print("compute share at which each first reaches its bar's best feasible final eval/scores, at equal compute "
          "(median [95% bootstrap interval]), a trial feasible when...")
    for rule, key in ((EVER, "summary"), (FINAL, "summary_final")):
        print(f" ...{JUDGED[rule]}:")
        for name, s in res[key].items():
            eq = s["at_equal_compute"]
            print(f"  {name:40s} {s['median']:6.3f} [{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}]  within C "
                  f"{s['reached_within_budget']}/{s['repeats']}, within 25% {s['within_25pct']}/{s['repeats']}; "
                  f"best at C better/equal/worse {eq['better']}/{eq['equal']}/{eq['worse']}")
    bar = res["bar_final"]
    print(f"judged by the final KL, random search's target rises in {bar['target_rises']} of {bar['repeats']} repeats, "
          f"above {bar['best_never_crossing']:.3f} (the best of any config whose KL never passes the limit) "
          f"in {bar['above_best_never_crossing']}")
    check = res["summary"][NO_SKIP_CHECK]
    print(f"continuous space: {check['copies_total']} repeats sampled over {check['repeats']} sweeps; skipping on and "
          f"off gave the same sweep in {check['same_without_skip']}/{check['repeats']}")
    for rule, key in ((EVER, "summary"), (FINAL, "summary_final")):
        ours = res[key][OURS]
        met = ours["ci95"][1] <= TARGET
        print(f"ours, judged by {'its largest' if rule == EVER else 'its final'} KL: {ours['median']:.3f} "
              f"[{ours['ci95'][0]:.3f}, {ours['ci95'][1]:.3f}] of random search's compute "
              f"(target <= {TARGET}): {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    raise SystemExit(main())
