"""The controller's overhead: a real sweep's wall time against the ideal (its trials' compute divided by the
concurrency), and where the difference goes, with the same trials run without the controller beside it.

    python bench/controller_overhead.py      # 3 repeats of each arm, about 20 minutes on 2 quiet cores
    python bench/controller_overhead.py --quick --repeats 1    # a 2-trial sweep: a check of every step

Three arms, per sweep size and repeat, in this order within each repeat (the baselines alternate):
- sweep: `tuner run` as a user runs it (tuner.cli in a fresh process, a local Ray, MLflow and the study in
  SQLite under a scratch folder), timed from outside (bench/_overhead_sweep.py);
- alone: the sweep's trials again (their engine configs, stopped after the iterations each ran in the sweep)
  in one plain process, one at a time, with the torch threads the sweep gave them;
- two at a time: the same trials in two plain processes started together, each taking the next trial
  (bench/_overhead_baseline.py): the sweep's two slots sharing the cores, without the controller.

Trial compute is the sum of each trial's perf/iteration_seconds. The sweep's compute against the two-at-a-time
compute is the controller's share of the cores while trials run; two-at-a-time against alone is the trials
sharing the cores with each other. The rest of the sweep's wall over the ideal (alone) splits into fixed
costs (CLI, preflight, setup, Ray start, cold workers, teardown) and per-trial ones (result handling, warm
starts, idle slots); the split sums to the difference.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, emit, load, machine, run_worker, save
from _overhead_baseline import run_trials, without_controller

SIZES = {  # key: (name, changes to search_spaces/demo.yaml); promotion is bench/promotion_cost.py's
    "demo": ("demo sweep (8 trials x 12 iterations, ASHA)", {"budget": {"promote": {"top_k": 0}}}),
    "longer": ("longer sweep (16 trials x 40 iterations, no ASHA)", {
        "budget": {"trials": 16, "iterations": 40, "promote": {"top_k": 0}}, "scheduler": {"type": "none"}}),
    "quick": ("quick sweep (2 trials x 2 iterations, no ASHA)", {
        "budget": {"trials": 2, "iterations": 2, "promote": {"top_k": 0}}, "scheduler": {"type": "none"}}),
}
PACKAGES = ("torch", "transformers", "ray", "optuna", "mlflow", "ppo-tuner")


def breakdown(r: dict[str, Any]) -> dict[str, float]:
    """The sweep's wall time over the ideal from its trials' compute alone, in wall seconds (slot-seconds
    divided by the concurrency). It sums to wall - ideal_alone when each slot kept one worker process."""
    c, f, s = r["concurrency"], r["in_fit"], r["steps"]
    cold = f["idle: before a worker's first trial"] + f["cold_start_latency_sum"]
    return {
        "fixed: CLI (imports, spec, printing)": r["cli_other"],
        "fixed: preflight": s.get("preflight", 0.0),
        "fixed: setup (study, MLflow, Tune, other)": sum(v for k, v in s.items() if k.startswith("setup:")),
        "fixed: Ray start": s.get("ray_init", 0.0),
        "fixed: cold workers (actor, imports, models, first evaluation)": cold / c,
        "fixed: teardown (summary, plots, Ray shutdown)": s.get("summary", 0.0) + s.get("teardown: Ray shutdown", 0.0),
        "per trial: two trials sharing the cores": (r["pair"]["compute"] - r["alone"]["compute"]) / c,
        "per trial: the controller's share of the cores": (r["compute"] - r["pair"]["compute"]) / c,
        "per trial: result handling": f["result_latency_sum"] / c,
        "per trial: warm starts": (f["start_latency_sum"] - f["cold_start_latency_sum"]) / c,
        "per trial: after a trial's last result": f["after_last_result_sum"] / c,
        "per trial: idle slots (packing, Tune's end)":
            (f["idle: between trials"] + f["idle: after a worker's last trial"]) / c,
    }


def figures(r: dict[str, Any]) -> dict[str, float]:
    """One repeat's headline figures (fractions, seconds, milliseconds)."""
    parts = breakdown(r)
    c, f, pair = r["concurrency"], r["in_fit"], r["pair"]
    ideal_alone = r["alone"]["compute"] / c
    return {
        "wall_s": r["wall"], "ideal_alone_s": ideal_alone, "wall_over_ideal_alone": r["wall"] / ideal_alone,
        "two_at_a_time_wall_s": pair["wall"], "wall_over_two_at_a_time_wall": r["wall"] / pair["wall"],
        "fixed_s": sum(v for k, v in parts.items() if k.startswith("fixed:")),
        "per_trial_s": sum(v for k, v in parts.items() if k.startswith("per trial:")),
        "unaccounted_s": r["wall"] - ideal_alone - sum(parts.values()),
        "controller_share_of_compute": r["compute"] / pair["compute"] - 1,
        "core_sharing_of_compute": pair["compute"] / r["alone"]["compute"] - 1,
        "ms_per_report_sweep": 1000 * f["result_latency_sum"] / max(f["results"], 1),
        "ms_per_report_two_at_a_time": 1000 * pair["report_gap_sum"] / max(pair["reports"], 1),
        "ms_driver_callbacks_per_report": 1000 * f["callbacks_driver_seconds"] / max(r["iterations"], 1),
        "cold_worker_s_sweep": (f["idle: before a worker's first trial"] + f["cold_start_latency_sum"]) / c,
        "cold_process_s_two_at_a_time": pair["cold_start_sum"] / c,
        **{k: v for k, v in parts.items() if k.startswith("fixed:")},
    }


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "values": values}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per size, each figure's median and min-max over the repeats."""
    out: dict[str, Any] = {}
    for size in dict.fromkeys(r["size"] for r in runs):
        mine = [r["figures"] for r in runs if r["size"] == size]
        out[size] = {k: spread([m[k] for m in mine]) for k in mine[0]}
        out[size]["repeats"] = len(mine)
    return out


def arms(key: str, repeat: int) -> dict[str, Any]:
    """One repeat of a size: the sweep (in a fresh process), then its trials alone and two at a time
    (alternating which goes first), each load average recorded as it ends."""
    sweep = {**run_worker(sys.executable, "controller_overhead.py", ["--size", key]), "load": load()}
    order = ("alone", "pair") if repeat % 2 == 0 else ("pair", "alone")
    for arm in order:
        sweep[arm] = without_controller(sweep, 1 if arm == "alone" else sweep["concurrency"], "controller_overhead.py")
    return {**sweep, "repeat": repeat, "order": ["sweep", *order], "figures": figures(sweep)}


def report(r: dict[str, Any]) -> None:
    g = r["figures"]
    print(f"\n{r['size']}, repeat {r['repeat']} ({' -> '.join(r['order'])}): {r['trials']} trials, "
          f"{r['iterations']} iterations, concurrency {r['concurrency']}, load {r['load']}")
    print(f"  sweep wall {r['wall']:.1f} s; ideal {g['ideal_alone_s']:.1f} s (compute alone "
          f"{r['alone']['compute']:.1f} s / {r['concurrency']}): {g['wall_over_ideal_alone']:.2f}x; "
          f"two plain processes at once, same trials: wall {g['two_at_a_time_wall_s']:.1f} s "
          f"(the sweep {g['wall_over_two_at_a_time_wall']:.2f}x it)")
    print(f"  trial compute: alone {r['alone']['compute']:.1f} s, two at a time {r['pair']['compute']:.1f} s "
          f"({g['core_sharing_of_compute']:+.0%}), in the sweep {r['compute']:.1f} s "
          f"({g['controller_share_of_compute']:+.0%} over two at a time: the controller's share of the cores)")
    print(f"  per report: {g['ms_per_report_sweep']:.1f} ms between results beyond the iteration in the sweep, "
          f"{g['ms_per_report_two_at_a_time']:.1f} ms without the controller; driver callbacks "
          f"{g['ms_driver_callbacks_per_report']:.1f} ms")
    print(f"  wall over the ideal, {r['wall'] - g['ideal_alone_s']:.1f} s: fixed {g['fixed_s']:.1f} s, "
          f"per trial {g['per_trial_s']:.1f} s, unaccounted {g['unaccounted_s']:.1f} s")
    for k, v in breakdown(r).items():
        print(f"    {k:66s} {v:6.1f}")


def report_summary(summary: dict[str, Any]) -> None:
    print("\nmedian (min-max) over the repeats:")
    for size, figs in summary.items():
        print(f"  {size}, {figs['repeats']} repeats:")
        for k, v in figs.items():
            if k != "repeats":
                print(f"    {k:66s} {v['median']:8.3f} ({v['min']:.3f}-{v['max']:.3f})")


def cold_start() -> dict[str, Any]:
    """What a fresh trial worker pays before its first iteration, step by step (this process is fresh)."""
    out, t = {}, time.perf_counter()
    for name, stmt in (("import ray", "import ray"), ("import torch", "import torch"),
                       ("import transformers", "import transformers"),
                       ("import the engine", "from trials import PPOConfig, PPOTrainer")):
        exec(stmt, {})
        out[name], t = time.perf_counter() - t, time.perf_counter()
    from trials import PPOTrainer
    from tuner.spec import load_spec, trial_config

    config = trial_config(load_spec(ROOT / "search_spaces" / "demo.yaml"), {})
    t = time.perf_counter()
    trainer = PPOTrainer(config)
    out["load the models (cold)"], t = time.perf_counter() - t, time.perf_counter()
    trainer.initial_eval()
    out["initial evaluation"], t = time.perf_counter() - t, time.perf_counter()
    PPOTrainer(config).initial_eval()
    out["a warm trial's start (cached checkpoints, initial evaluation)"] = time.perf_counter() - t
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", choices=["demo", "longer"], help="run only these sizes")
    parser.add_argument("--quick", action="store_true", help="a 2-trial sweep only: a check of every step")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each arm per size (default 3)")
    parser.add_argument("--out", help="results/NAME.json (default controller_overhead, or _quick with --quick)")
    parser.add_argument("--size", choices=list(SIZES), help=argparse.SUPPRESS)  # worker: one sweep
    parser.add_argument("--cold-start", action="store_true", help=argparse.SUPPRESS)  # worker
    parser.add_argument("--trials", help=argparse.SUPPRESS)  # worker: a sweep's trials without the controller
    parser.add_argument("--claims", help=argparse.SUPPRESS)  # its folder of claimed trials
    args = parser.parse_args()
    if args.trials:
        emit(run_trials(args.trials, args.claims))
        return 0
    if args.cold_start:
        emit(cold_start())
        return 0
    if args.size is not None:
        from _overhead_sweep import run

        name, changes = SIZES[args.size]
        emit(run(name, changes, Path(tempfile.mkdtemp(prefix="ppo-overhead-"))))
        return 0
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: give 1 or more")
    keys = ["quick"] if args.quick else (args.only or ["demo", "longer"])
    res: dict[str, Any] = {"command": " ".join(["python", "bench/controller_overhead.py", *sys.argv[1:]]),
                           "machine": machine(), "versions": {p: md.version(p) for p in PACKAGES},
                           "load": load(), "runs": []}
    started = time.perf_counter()
    for repeat in range(args.repeats):  # every size once per repeat, so that the repeats span the run's load
        for key in keys:
            res["runs"].append(arms(key, repeat))
            report(res["runs"][-1])
    res["summary"] = summarise(res["runs"])
    res["cold_start"] = run_worker(sys.executable, "controller_overhead.py", ["--cold-start"])
    res["load_end"] = load()
    res["loads_1min"] = spread([x for r in res["runs"] for x in (r["load"][0], r["alone"]["load"][0],
                                                                  r["pair"]["load"][0])] + [res["load"][0]])
    res["seconds"] = time.perf_counter() - started
    report_summary(res["summary"])
    print("\na fresh worker's start, step by step (seconds):")
    for k, v in res["cold_start"].items():
        if k != "process_seconds":
            print(f"  {k:62s} {v:6.2f}")
    out = args.out or ("controller_overhead_quick" if args.quick else "controller_overhead")
    print(f"\n1-minute load during the run {res['loads_1min']['min']}-{res['loads_1min']['max']}; "
          f"wrote {save(out, res)} in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
