"""controller_overhead.py's baselines: a sweep's trials again without the controller, in plain processes.

Each process takes the next trial not yet taken (a file created in a shared folder claims it), builds the
engine from the trial's config and stops it after the iterations it ran in the sweep, as a user running
`tuner train` by hand would. One process gives the trials' compute one at a time; two at once share the
cores as the sweep's two slots do, but with no controller, Ray or MLflow beside them.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import load, run_worker


def _claim(folder: str, index: int) -> bool:
    try:
        os.close(os.open(Path(folder) / str(index), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def run_trials(path: str, claims: str) -> dict[str, Any]:
    """A worker process: the trials in `path` that it claims in `claims`, one after another, each with the
    torch threads the sweep gave it (its CPU reservation); wall-clock stamps, so that processes compare."""
    t = time.time()
    from trials import PPOConfig, PPOTrainer, reserved_threads
    from trials import metrics as K

    imports = time.time() - t
    out = []
    for index, trial in enumerate(json.loads(Path(path).read_text())):
        if not _claim(claims, index):
            continue
        engine = {**trial["engine"], "num_threads": trial["engine"].get("num_threads")
                  or reserved_threads(trial["cpus_per_trial"])}
        stamps: list[float] = []
        seconds: list[float] = []

        def report(iteration: int, metrics: dict[str, float], n: int = trial["iterations"],
                   stamps: list = stamps, seconds: list = seconds) -> bool:
            stamps.append(time.time())
            seconds.append(metrics[K.ITERATION_SECONDS])
            return iteration >= n

        start = time.time()
        PPOTrainer(PPOConfig.from_dict(engine)).train(report)
        out.append({"index": index, "iterations": len(seconds), "compute": sum(seconds), "in_sweep": trial["compute"],
                    "start": start, "end": time.time(), "pid": os.getpid(),
                    # building the trainer (models loaded, or cached in this process) and the initial evaluation
                    "start_latency": stamps[0] - start - seconds[0],
                    # time between reports beyond the iterations' own seconds (the reporter's cost)
                    "report_gap_sum": sum(b - a - s for a, b, s in zip(stamps, stamps[1:], seconds[1:],
                                                                        strict=False))})
    return {"trials": out, "imports": imports, "pid": os.getpid(), "load": load()}


def without_controller(sweep: dict[str, Any], at_once: int, script: str) -> dict[str, Any]:
    """The sweep's trials again in `at_once` plain processes started together (each `script --trials`)."""
    with tempfile.TemporaryDirectory(prefix=f"ppo-baseline-{at_once}-") as tmp:
        path, claims = Path(tmp) / "trials.json", Path(tmp) / "claims"
        claims.mkdir()
        path.write_text(json.dumps([{**t, "cpus_per_trial": sweep["cpus_per_trial"]} for t in sweep["per_trial"]]))
        args = ["--trials", str(path), "--claims", str(claims)]
        started = time.time()
        with ThreadPoolExecutor(at_once) as pool:
            procs = list(pool.map(lambda _: run_worker(sys.executable, script, args), range(at_once)))
        wall = time.time() - started
    trials = sorted((t for p in procs for t in p["trials"]), key=lambda t: t["index"])
    firsts = [min(p["trials"], key=lambda t: t["start"]) for p in procs if p["trials"]]
    return {
        "at_once": at_once, "wall": wall, "compute": sum(t["compute"] for t in trials), "trials": trials,
        "reports": sum(t["iterations"] - 1 for t in trials), "report_gap_sum": sum(t["report_gap_sum"] for t in trials),
        # a process's start to its first trial's first iteration: Python, imports, models, initial evaluation
        "cold_start_sum": sum(t["start"] - started + t["start_latency"] for t in firsts),
        "warm_start_sum": sum(t["start_latency"] for t in trials) - sum(t["start_latency"] for t in firsts),
        "processes": [{"pid": p["pid"], "imports": p["imports"], "trials": len(p["trials"]), "load": p["load"],
                       "process_seconds": p["process_seconds"]} for p in procs],
        "load": load(),
    }
