"""The controller's overhead: a real sweep's wall time against the ideal (the sum of its trials' compute
divided by the concurrency), and where the difference goes.

    python bench/controller_overhead.py      # about 9 minutes on 2 cores: the demo sweep, then a longer one, each
                                             # followed by its trials again, one at a time

Each sweep runs as `tuner run SPEC` does (tuner.cli in this process, a local Ray, MLflow and the
study in SQLite under a scratch directory), timed from outside without changing the controller:
preflight, Ray start, the study and MLflow setup, Tuner.fit, the summary (plots, artifacts). In fit,
each trial's driver-side timestamps (start, every result, end) give its compute (the sum of its
perf/iteration_seconds, what the ideal counts), its start latency (start to first result, less the
first iteration: Ray actor, process start and imports for a cold worker, then what the trial itself
reports as perf/trial_start_seconds: loading, or copying cached checkpoints on a warm worker, and
the initial evaluation), the latency of its later results, and the idle time of the slots. Time the
driver spends in the MLflow and Optuna callbacks is summed too.

The ideal counts compute twice: as the trials reported it inside the sweep (with the controller's
processes on the same cores), and alone: after the sweep, in a fresh process with nothing else of
ours running, each trial's config again, one at a time, for the iterations it ran in the sweep.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT, emit, load, machine, run_worker, save

SIZES = {  # name: changes to search_spaces/demo.yaml (the search alone: bench/promotion_cost.py measures promotion)
    "demo sweep (8 trials x 12 iterations, ASHA)": {"budget": {"promote": {"top_k": 0}}},
    "longer sweep (16 trials x 40 iterations, no ASHA)": {
        "budget": {"trials": 16, "iterations": 40, "promote": {"top_k": 0}},
        "scheduler": {"type": "none"}},
}


class Clock:
    """Wall-clock stamps of the controller's steps and of every trial, taken from outside."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self.callbacks = 0.0  # driver seconds in the MLflow and Optuna callbacks
        self.trials: dict[str, dict[str, Any]] = {}
        self.marks: dict[str, float] = {}  # step name + " start" / " end": last wall-clock stamps


def _step(name: str, fn: Any) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = CLOCK.marks[f"{name} start"] = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            CLOCK.marks[f"{name} end"] = time.perf_counter()
            CLOCK.steps[name] = CLOCK.steps.get(name, 0.0) + time.perf_counter() - t
    return timed


def _callback(fn: Any) -> Any:
    def timed(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            CLOCK.callbacks += time.perf_counter() - t
    return timed


CLOCK = Clock()


def instrument() -> None:
    """Wrap the controller's steps and callbacks (module attributes, looked up at call time), once;
    the wrappers read the module's CLOCK, which each sweep replaces."""
    import ray.tune

    import tuner.sweep as sweep
    from trials import metrics as K
    from tuner.cli import _table
    from tuner.sweep import _events, _fit, _run, _searcher, _tracking

    sweep.preflight = _step("preflight", sweep.preflight)
    _run.open_study = _step("setup: Optuna study (SQLite)", _run.open_study)
    _run.remaining_trials = _step("setup: Optuna study (SQLite)", _run.remaining_trials)
    _tracking.SweepTracker.__init__ = _step("setup: MLflow store and parent run", _tracking.SweepTracker.__init__)
    ray.tune.Tuner.__init__ = _step("setup: Ray Tune Tuner", ray.tune.Tuner.__init__)
    sweep.run_sweep = _step("run_sweep", sweep.run_sweep)
    _fit._ray_init = _step("ray_init", _fit._ray_init)
    _run.summarise = _step("summary", _run.summarise)
    _run.finish_sweep = _step("summary", _run.finish_sweep)
    ray.tune.Tuner.fit = _step("fit", ray.tune.Tuner.fit)
    for cls, names in ((_events.RayEvents, ("on_trial_start", "on_trial_result", "on_trial_complete")),
                       (_searcher.StudySearcher, ("suggest", "on_trial_result", "on_trial_complete"))):
        for name in names:
            setattr(cls, name, _callback(getattr(cls, name)))

    class TimedTable(_table.LiveTable):
        def trial_started(self, task: Any) -> None:
            CLOCK.trials.setdefault(task.number, {"start": time.perf_counter(), "results": [], "engine": task.engine})
            super().trial_started(task)

        def trial_reported(self, number: int, iteration: int, report: Any) -> None:
            rec = CLOCK.trials[number]
            rec["results"].append((time.perf_counter(), report.metrics.get(K.ITERATION_SECONDS, 0.0)))
            rec["trial_start_seconds"] = report.start_seconds
            rec["warm"] = float(report.warm_start)
            rec["pid"] = report.pid
            super().trial_reported(number, iteration, report)

        def trial_ended(self, outcome: Any) -> None:
            CLOCK.trials[outcome.number]["end"] = time.perf_counter()
            super().trial_ended(outcome)

    _table.LiveTable = TimedTable


def run(name: str, changes: dict[str, Any], work: Path) -> dict[str, Any]:
    """One sweep, in this (fresh) process, as `tuner run` would run it."""
    t = time.perf_counter()
    from tuner.cli import main as cli

    cli_import = time.perf_counter() - t
    instrument()

    spec = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    for section, values in changes.items():
        spec[section] = {**spec.get(section, {}), **values} if isinstance(values, dict) else values
    spec.update(name=f"overhead-{len(list(work.iterdir()))}", workdir=str(work / "sweeps"))
    path = work / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    global CLOCK
    CLOCK = Clock()
    started = time.perf_counter()
    code = cli(["run", str(path)])
    wall = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"tuner run {path} exited with {code}")
    return {**account(name, spec, CLOCK, wall + cli_import), "cli_import": cli_import}


def account(name: str, spec: dict[str, Any], clock: Clock, wall: float) -> dict[str, Any]:
    concurrency = spec["resources"]["max_concurrent"]
    trials = list(clock.trials.values())
    compute = sum(s for t in trials for _, s in t["results"])
    trials = [t for t in trials if t["results"]]
    start_latency = [t["results"][0][0] - t["start"] - t["results"][0][1] for t in trials]
    result_latency = sum(b[0] - a[0] - b[1] for t in trials
                         for a, b in zip(t["results"], t["results"][1:], strict=False))
    busy = sum(t["end"] - t["start"] for t in trials)
    fit = clock.steps.get("fit", 0.0)
    ideal = compute / concurrency
    steps = {k: v for k, v in clock.steps.items() if k != "run_sweep"}
    steps["setup: other (spec file, callbacks)"] = clock.steps["run_sweep"] - sum(
        v for k, v in clock.steps.items() if k in ("ray_init", "fit", "summary") or k.startswith("setup:"))
    return {
        "size": name, "trials": len(trials), "iterations": sum(len(t["results"]) for t in trials), "wall": wall,
        "ideal": ideal, "overhead": wall / ideal - 1, "compute": compute, "concurrency": concurrency, "steps": steps,
        "cpus_per_trial": spec["resources"]["cpus_per_trial"],
        # imports of tuner.cli included
        "cli_other": wall - clock.steps["run_sweep"] - clock.steps.get("preflight", 0.0),
        "in_fit": {"start_latency_sum": sum(start_latency), "result_latency_sum": result_latency,
                   "idle_slot_seconds": concurrency * fit - busy, **_idle(clock, trials),
                   "callbacks_driver_seconds": clock.callbacks},
        "per_trial": [{"engine": t["engine"], "iterations": len(t["results"]),
                       "compute": sum(s for _, s in t["results"])} for t in trials],
        "per_trial_start": [{"latency": lat, "trial_start_seconds": t.get("trial_start_seconds") or float("nan"),
                             "warm": t.get("warm") if t.get("warm") is not None else float("nan"), "pid": t.get("pid")}
                            for lat, t in zip(start_latency, trials, strict=True)],
    }


def _idle(clock: Clock, trials: list[dict[str, Any]]) -> dict[str, float]:
    """Idle slot-seconds split by worker process: before its first trial, between trials, after its last."""
    head = gaps = tail = 0.0
    for pid in {t.get("pid") for t in trials}:
        mine = sorted((t for t in trials if t.get("pid") == pid), key=lambda t: t["start"])
        head += mine[0]["start"] - clock.marks["fit start"]
        gaps += sum(b["start"] - a["end"] for a, b in zip(mine, mine[1:], strict=False))
        tail += clock.marks["fit end"] - mine[-1]["end"]
    return {"idle: before a worker's first trial": head, "idle: between trials": gaps,
            "idle: after a worker's last trial": tail}


def alone(path: str) -> dict[str, Any]:
    """Each trial of a sweep again, one at a time in this process: its engine config, stopped after the
    iterations it ran in the sweep; the sum of its perf/iteration_seconds, as the sweep counts compute."""
    import json

    from trials import PPOConfig, PPOTrainer, reserved_threads
    from trials import metrics as K

    out = []
    for t in json.loads(Path(path).read_text()):
        seconds: list[float] = []
        # the threads the sweep gave the trial (its CPU reservation), not all of this machine's
        t["engine"]["num_threads"] = t["engine"].get("num_threads") or reserved_threads(t["cpus_per_trial"])

        def report(iteration: int, metrics: dict[str, float], n: int = t["iterations"],
                   seconds: list = seconds) -> bool:
            seconds.append(metrics[K.ITERATION_SECONDS])
            return iteration >= n

        PPOTrainer(PPOConfig.from_dict(t["engine"])).train(report)
        out.append({"iterations": len(seconds), "compute": sum(seconds), "in_sweep": t["compute"]})
    return {"trials": out, "compute": sum(t["compute"] for t in out), "load": load()}


def with_alone(r: dict[str, Any]) -> dict[str, Any]:
    """The sweep's record with the ideal from its trials' compute measured alone (in a fresh process)."""
    import json

    path = Path(tempfile.mkdtemp(prefix="ppo-alone-")) / "trials.json"
    path.write_text(json.dumps([{**t, "cpus_per_trial": r["cpus_per_trial"]} for t in r.pop("per_trial")]))
    a = run_worker(sys.executable, "controller_overhead.py", ["--alone", str(path)])
    return {**r, "alone": a, "ideal_alone": a["compute"] / r["concurrency"],
            "overhead_alone": r["wall"] / (a["compute"] / r["concurrency"]) - 1}


def report(r: dict[str, Any]) -> None:
    print(f"\n{r['size']}: {r['trials']} trials, {r['iterations']} iterations, concurrency {r['concurrency']}")
    print(f"  wall {r['wall']:.1f} s, ideal {r['ideal']:.1f} s "
          f"(trial compute {r['compute']:.1f} s / {r['concurrency']}): "
          f"overhead {r['overhead']:.0%} (target <= 10%): {'met' if r['overhead'] <= 0.10 else 'NOT met'}")
    if "alone" in r:
        print(f"  ideal from each trial's compute measured alone: {r['ideal_alone']:.1f} s "
              f"({r['alone']['compute']:.1f} s / {r['concurrency']}; "
              f"in the sweep {r['compute']:.1f} s): "
              f"wall / ideal {r['wall'] / r['ideal_alone']:.2f}x, "
              f"overhead {r['overhead_alone']:.0%} (target <= 10%): "
              f"{'met' if r['overhead_alone'] <= 0.10 else 'NOT met'}")
    print("  where the difference goes (seconds of wall time; in-fit items are slot-seconds, "
          "divide by the concurrency):")
    for k, v in r["steps"].items():
        print(f"    {k:45s} {v:7.1f}")
    print(f"    {'CLI (imports, spec load, summary print)':45s} {r['cli_other']:7.1f}")
    for k, v in r["in_fit"].items():
        print(f"    in fit: {k:37s} {v:7.1f}")
    for i, t in enumerate(r["per_trial_start"]):
        print(f"    trial start {i}: {t['latency']:.2f} s to its first result beyond its first "
              f"iteration; it reports perf/trial_start_seconds {t['trial_start_seconds']:.2f}, "
              f"warm_start {t['warm']:.0f}, worker pid {t['pid']}")


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
    parser.add_argument("--only", type=int, action="append", help="run only these sizes (0, 1)")
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)  # worker: one sweep
    parser.add_argument("--cold-start", action="store_true", help=argparse.SUPPRESS)  # worker
    parser.add_argument("--alone", help=argparse.SUPPRESS)  # worker: a sweep's trials again, one at a time
    args = parser.parse_args()
    if args.alone:
        emit(alone(args.alone))
        return 0
    if args.cold_start:
        emit(cold_start())
        return 0
    if args.size is not None:
        name, changes = list(SIZES.items())[args.size]
        emit(run(name, changes, Path(tempfile.mkdtemp(prefix="ppo-overhead-"))))
        return 0
    res: dict[str, Any] = {"machine": machine(), "load": load(), "runs": []}
    started = time.perf_counter()
    for i in range(len(SIZES)):
        if not args.only or i in args.only:  # each sweep in a fresh process, as `tuner run`
            sweep = {**run_worker(sys.executable, "controller_overhead.py", ["--size", str(i)]), "load": load()}
            res["runs"].append(with_alone(sweep))
    res["cold_start"] = run_worker(sys.executable, "controller_overhead.py", ["--cold-start"])
    res["seconds"] = time.perf_counter() - started
    for r in res["runs"]:
        report(r)
    print("\na fresh worker's start, step by step (seconds):")
    for k, v in res["cold_start"].items():
        if k != "process_seconds":
            print(f"  {k:62s} {v:6.2f}")
    print(f"\nwrote {save('controller_overhead', res)} in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
