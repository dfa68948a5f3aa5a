"""Sweep efficiency on the demo task: our default (TPE + ASHA + the KL limit) against random search
without pruning, at equal compute, replayed on the recorded learning-curve table, over many seeds;
and one live `tuner run` of the grid spec to confirm that the replay matches what the controller does.

    python bench/_curves.py                 # once (resumable): bench/data/demo_curves.jsonl
    python bench/sweep_efficiency.py        # about 3 minutes on 2 cores (the live sweep included)

For each seed: random search runs N trials to their end (no ASHA, no KL limit; a trial is feasible
when its KL never passed the limit); its compute C and its best feasible final eval/scores are the
bar. Ours (the grid spec as it is: TPE, ASHA with grace 3, the 15-nat KL limit, 2 trials at once)
then runs until it completes a feasible trial at least as good; the figure is the compute it spent
by then over C (1.0 = as much as random search; > 1 or inf = not reached within C). Ours skips a
config a trial already ran (`sampler.skip_duplicates`, on by default). Ablations: ours running such
duplicates again, TPE alone (no ASHA, no KL limit), random search with ASHA and the KL limit, and TPE
with 20 random trials first instead of the default min(10, trials / 2).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, load, machine, save
from _curves import COSTS, SPEC, costed, grid, key, load_grid_spec, load_table
from _replay import simulate

VARIANTS = {  # name: (sampler, ASHA, KL limit, n_startup_trials: None = the spec's default, skip duplicates)
    "random, no pruning": ("random", False, False, None, False),
    "ours: TPE + ASHA + KL limit": ("tpe", True, True, None, True),
    "ours, duplicates run again": ("tpe", True, True, None, False),
    "TPE alone": ("tpe", False, False, None, True),
    "random + ASHA + KL limit": ("random", True, True, None, True),
    "TPE (20 random first) + ASHA + KL": ("tpe", True, True, 20, True),
}
OURS = "ours: TPE + ASHA + KL limit"


def variant(spec: Any, sampler: str, seed: int, trials: int, startup: int | None = None, skip: bool = True) -> Any:
    from tuner.spec import derive_spec

    sampling = {"type": sampler, "seed": seed, "n_startup_trials": startup, "skip_duplicates": skip}
    return derive_spec(spec, sampler=sampling, budget={"trials": trials})


def one_seed(spec: Any, table: dict, seed: int, trials: int, workers: int) -> dict[str, Any]:
    from tuner.spec import make_sampler

    base = variant(spec, "random", seed, trials, skip=False)  # plain random search repeats what it draws
    bar = simulate(table, base, make_sampler(base), asha=False, kl_limit=False, workers=workers, max_trials=trials)
    budget, target = bar.compute, bar.best()
    iterations = sum(t.iterations for t in bar.trials)
    out = {"seed": seed, "budget_seconds": budget, "budget_iterations": iterations, "target": target}
    for name, (sampler, asha, kl, startup, skip) in VARIANTS.items():
        if name == "random, no pruning":
            continue
        s = variant(spec, sampler, seed, trials, startup, skip)
        sweep = simulate(table, s, make_sampler(s), asha=asha, kl_limit=kl, workers=workers, max_compute=3 * budget)
        reach = sweep.compute_to_reach(target)
        at_budget = max((b for c, _, b in sweep.timeline if c <= budget), default=-math.inf)
        reach_it = next((i for _, i, b in sweep.timeline if b >= target), math.inf)
        out[name] = {"fraction": reach / budget, "fraction_iterations": reach_it / iterations,
                     "best_at_equal_compute": at_budget, "trials": len(sweep.trials)}
    return out


def live_check(spec: Any, table: dict, timeout: float) -> dict[str, Any]:
    """`tuner run` of the grid spec in a scratch directory; its trials against the table and the replay."""
    import optuna
    from mlflow.tracking import MlflowClient

    from tuner.spec import make_sampler

    work = Path(tempfile.mkdtemp(prefix="ppo-live-"))
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "run", str(SPEC)], cwd=work, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        return {"ok": False, "error": proc.stderr[-2000:]}
    sweep_dir = work / "sweeps" / spec.name
    study = optuna.load_study(study_name=spec.name, storage=f"sqlite:///{sweep_dir / 'study.db'}")
    client = MlflowClient(tracking_uri=f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = {r.data.tags.get("ppo_tuner.trial_number"): r for r in client.search_runs(
        [client.get_experiment_by_name(spec.name).experiment_id], max_results=500)}
    replay = simulate(table, spec, make_sampler(spec), asha=True, kl_limit=True, workers=spec.resources.max_concurrent,
                      max_trials=spec.budget.trials)
    rows, worst_kl, worst_eval = [], 0.0, 0.0
    replayed = {t.number: t for t in replay.trials}
    copies = sum("duplicate_of" in t.user_attrs for t in study.get_trials(deepcopy=False))
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" in t.user_attrs:  # a config already run: told its outcome, not run (no MLflow run)
            continue
        params = {k: t.params[k] for k in grid(spec)[0]}
        curve = table[key(params)]
        run_id = runs[str(t.number)].info.run_id
        kl = {m.step: m.value for m in client.get_metric_history(run_id, "objective/kl")}
        ev = {m.step: m.value for m in client.get_metric_history(run_id, "eval/scores")}
        worst_kl = max([worst_kl, *(abs(v - curve.kl[s - 1]) for s, v in kl.items())])
        worst_eval = max([worst_eval, *(abs(v - curve.eval[s - 1]) for s, v in ev.items())])
        sim = replayed.get(t.number)
        rows.append({"number": t.number, "params": params, "live_stop": t.user_attrs.get("stop_reason"),
                     "live_iterations": t.user_attrs.get("iterations"),
                     "replay_params_same": sim is not None and sim.params == params,
                     "replay_stop": sim.stop_reason if sim else None, "replay_iterations": sim.iterations if sim else None})
    same = sum(r["replay_params_same"] and r["replay_stop"] == r["live_stop"]
               and r["replay_iterations"] == r["live_iterations"] for r in rows)
    return {"ok": worst_kl < 1e-4 and worst_eval < 1e-6, "wall_seconds": wall, "max_abs_kl_diff": worst_kl,
            "max_abs_eval_diff": worst_eval, "trials": rows, "replay_agrees_on": same,
            "duplicates_told": {"live": copies, "replay": replay.copies}}


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy as np

    out = {}
    for name in VARIANTS:
        if name == "random, no pruning":
            continue
        f = np.array([r[name]["fraction"] for r in results])
        fi = np.array([r[name]["fraction_iterations"] for r in results])
        out[name] = {"median": float(np.median(f)), "q25": float(np.quantile(f, 0.25)), "q75": float(np.quantile(f, 0.75)),
                     "reached_within_budget": int((f <= 1).sum()), "within_25pct": int((f <= 0.25).sum()),
                     "median_iterations": float(np.median(fi)), "seeds": len(f)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--trials", type=int, default=32, help="random search's trials (and ours' budget.trials)")
    parser.add_argument("--no-live", action="store_true", help="skip the live `tuner run` check")
    parser.add_argument("--live-timeout", type=float, default=420)
    args = parser.parse_args()
    spec, table = load_grid_spec(), load_table()
    if not COSTS.exists():
        print("no cost model: run `python bench/_curves.py --calibrate` first", file=sys.stderr)
        return 2
    missing = len(grid(spec)) - len(table)
    if missing:
        print(f"the table misses {missing} configs: run `python bench/_curves.py` (resumable) first", file=sys.stderr)
        return 2
    table = costed(table)
    res: dict[str, Any] = {"machine": machine(), "load": load(), "seeds": args.seeds, "trials": args.trials,
                           "workers": spec.resources.max_concurrent, "table_configs": len(table)}
    started = time.perf_counter()
    res["per_seed"] = [one_seed(spec, table, s, args.trials, spec.resources.max_concurrent) for s in range(args.seeds)]
    res["summary"] = summarise(res["per_seed"])
    if not args.no_live:
        res["live"] = live_check(spec, table, args.live_timeout)
    res["seconds"], res["load_end"] = time.perf_counter() - started, load()
    report(res)
    print(f"\nwrote {save('sweep_efficiency', res)} in {res['seconds']:.0f} s")
    return 0


def report(res: dict[str, Any]) -> None:
    print(f"{res['seeds']} seeds; random search: {res['trials']} trials to the end; {res['table_configs']} recorded configs")
    print("compute fraction at which each reaches random search's best feasible final eval/scores (median [q25, q75]):")
    for name, s in res["summary"].items():
        print(f"  {name:34s} {s['median']:6.3f} [{s['q25']:.3f}, {s['q75']:.3f}]  reached within budget in "
              f"{s['reached_within_budget']}/{s['seeds']}, within 25% in {s['within_25pct']}/{s['seeds']}; "
              f"in iterations {s['median_iterations']:.3f}")
    ours = res["summary"][OURS]["median"]
    print(f"ours: {ours:.3f} of random search's compute (target <= 0.25): {'met' if ours <= 0.25 else 'NOT met'}")
    if "live" in res:
        lv = res["live"]
        if "error" in lv:
            print(f"live check FAILED: {lv['error']}")
            return
        print(f"live `tuner run` ({lv['wall_seconds']:.0f} s): curves against the table: max |dKL| {lv['max_abs_kl_diff']:.2e}, "
              f"max |d eval| {lv['max_abs_eval_diff']:.2e} ({'match' if lv['ok'] else 'DIFFER'}); the replay of the same "
              f"sweep agrees on params, stop reason and iterations for {lv['replay_agrees_on']}/{len(lv['trials'])} trials")
        for r in lv["trials"]:
            print(f"    trial {r['number']}: live {r['live_stop']} at {r['live_iterations']}, replay {r['replay_stop']} at "
                  f"{r['replay_iterations']}{'' if r['replay_params_same'] else ' (other params)'}")


if __name__ == "__main__":
    raise SystemExit(main())
