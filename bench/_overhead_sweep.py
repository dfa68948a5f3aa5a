"""controller_overhead.py's sweep arm: one `tuner run` in this process, timed from outside without changing
the controller.

The controller's steps (preflight, Ray start, the study and MLflow setup, Tuner.fit, the summary, Ray's
shutdown) are wrapped where they are looked up at call time; each trial's driver-side timestamps (start,
every result, end) come from the live table the CLI shows. From them `account` splits the sweep's wall
time into the trials' compute (the sum of their perf/iteration_seconds), the slots' start latency, result
latency and idle time, and the fixed steps.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import yaml
from _common import ROOT


class Clock:
    """Wall-clock stamps of the controller's steps and of every trial, taken from outside."""

    def __init__(self) -> None:
        self.steps: dict[str, float] = {}
        self.callbacks = 0.0  # driver seconds in the MLflow and Optuna callbacks
        self.trials: dict[str, dict[str, Any]] = {}
        self.marks: dict[str, float] = {}  # step name + " start" / " end": last wall-clock stamps


CLOCK = Clock()


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
    _fit.join_ray = _step("ray_init", _fit.join_ray)
    _fit.RayUse.close = _step("teardown: Ray shutdown", _fit.RayUse.close)
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
    """One sweep, in this (fresh) process, as `tuner run` would run it: the demo spec with `changes`."""
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
    """The sweep's record: its wall time, its trials' compute, and where the rest of the wall went."""
    concurrency = spec["resources"]["max_concurrent"]
    trials = [t for t in clock.trials.values() if t["results"]]
    compute = sum(s for t in trials for _, s in t["results"])
    start_latency = [t["results"][0][0] - t["start"] - t["results"][0][1] for t in trials]
    result_latency = sum(b[0] - a[0] - b[1] for t in trials
                         for a, b in zip(t["results"], t["results"][1:], strict=False))
    busy = sum(t["end"] - t["start"] for t in trials)
    fit = clock.steps.get("fit", 0.0)
    steps = {k: v for k, v in clock.steps.items() if k != "run_sweep"}
    named = ("ray_init", "fit", "summary")
    steps["setup: other (spec file, callbacks)"] = clock.steps["run_sweep"] - sum(
        v for k, v in clock.steps.items() if k in named or k.startswith(("setup:", "teardown:")))
    first = _first_on_each_worker(trials)
    return {
        "size": name, "trials": len(trials), "iterations": sum(len(t["results"]) for t in trials), "wall": wall,
        "ideal": compute / concurrency, "overhead": wall / (compute / concurrency) - 1, "compute": compute,
        "concurrency": concurrency, "steps": steps, "cpus_per_trial": spec["resources"]["cpus_per_trial"],
        # imports of tuner.cli included
        "cli_other": wall - clock.steps["run_sweep"] - clock.steps.get("preflight", 0.0),
        "in_fit": {"start_latency_sum": sum(start_latency), "result_latency_sum": result_latency,
                   "results": sum(len(t["results"]) - 1 for t in trials),
                   "cold_start_latency_sum": sum(lat for lat, t in zip(start_latency, trials, strict=True)
                                                 if id(t) in first),
                   "after_last_result_sum": sum(t["end"] - t["results"][-1][0] for t in trials),
                   "idle_slot_seconds": concurrency * fit - busy, **_idle(clock, trials),
                   "callbacks_driver_seconds": clock.callbacks},
        "per_trial": [{"engine": t["engine"], "iterations": len(t["results"]),
                       "compute": sum(s for _, s in t["results"])} for t in trials],
        "per_trial_start": [{"latency": lat, "trial_start_seconds": t.get("trial_start_seconds") or float("nan"),
                             "warm": t.get("warm") if t.get("warm") is not None else float("nan"), "pid": t.get("pid")}
                            for lat, t in zip(start_latency, trials, strict=True)],
    }


def _first_on_each_worker(trials: list[dict[str, Any]]) -> set[int]:
    """The ids of the trials that each worker process ran first (its cold start)."""
    first: dict[Any, dict[str, Any]] = {}
    for t in sorted(trials, key=lambda t: t["start"]):
        first.setdefault(t.get("pid"), t)
    return {id(t) for t in first.values()}


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
