"""The driver's memory over a long sweep: `tuner run` on a sweep of a few hundred very short trials,
its resident memory (RSS) sampled from outside with psutil against the number of trials ended.

    python bench/driver_memory.py                 # 300 trials; about 8 minutes on 2 loaded cores
    python bench/driver_memory.py --trials 60     # a quick look

The trials use `trial.engine: command` with bench/_tiny_trainer.py, which prints its reports at once
and exits: what the driver does per trial (Ray Tune's trial and actor, Optuna's suggest and tell on the
study in SQLite, an MLflow child run with its metrics in sqlite:///, the table's line) is the same for
our engine's trials, while a trial of our engine would spend seconds loading the model and training
on the workers, which the driver never sees, and a few hundred of them would not fit in 15 minutes.
The sampler is the spec's default (TPE) and the scheduler none, so every trial is alike.

Reported: the driver's RSS when the first trial ended (set up), after the warm-up (--warmup trials),
at the last trial's end and its peak; the slope of RSS against trials ended after the warm-up (least
squares, MiB per 100 trials), also for each half of that span (their difference is the figure's
spread); and, separately, the RSS of Ray's GCS and raylet, which the driver started but which are not
the driver. The machine's load is recorded before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import yaml
from _common import BENCH, ROOT, load, machine, save

ENDED = re.compile(r"^trial (\d+): (?!started)", re.M)  # the table's line for a trial that ended (not its start)
SYSTEM = ("gcs_server", "raylet")  # Ray's long-lived processes below the driver (its workers come and go)


def spec(work: Path, trials: int, iterations: int, concurrency: int) -> Path:
    data = {
        "name": "driver-memory",
        "workdir": str(work / "sweeps"),
        "trial": {"engine": "command", "report_timeout": "2m", "stop_grace": "5s",
                  "command": [sys.executable, str(BENCH / "_tiny_trainer.py"), "{policy_lr}", "{num_iterations}"]},
        "search_space": {"policy_lr": {"low": 1.0e-6, "high": 1.0e-3, "log": True},
                         "kl_coef": {"low": 0.001, "high": 0.2, "log": True}},
        "objective": {"metric": "eval/scores", "score": "mean_last", "last_k": 2},
        "kl_limit": 15,
        "budget": {"trials": trials, "iterations": iterations},
        "scheduler": {"type": "none"},
        "resources": {"cpus_per_trial": 1, "max_concurrent": concurrency},
    }
    path = work / "driver-memory.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _rss(proc: psutil.Process) -> int:
    try:
        return proc.memory_info().rss
    except psutil.Error:
        return 0


def sample(proc: subprocess.Popen, log: Path, interval: float) -> list[dict[str, Any]]:
    """(seconds, trials ended, driver RSS, Ray processes' RSS by name) every `interval` until it exits."""
    driver, started, samples = psutil.Process(proc.pid), time.perf_counter(), []
    while proc.poll() is None:
        ended = len(ENDED.findall(log.read_text(errors="replace")))
        try:
            below = driver.children(recursive=True)
        except psutil.Error:
            below = []
        ray: dict[str, float] = {}
        for child in below:
            try:
                name = child.name()
            except psutil.Error:
                continue
            ray[name] = ray.get(name, 0.0) + _rss(child) / 2**20
        rss = _rss(driver) / 2**20
        if rss:
            samples.append({"t": round(time.perf_counter() - started, 2), "ended": ended, "rss_mib": round(rss, 1),
                            "ray_mib": {k: round(v, 1) for k, v in sorted(ray.items())}})
        time.sleep(interval)
    return samples


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y on x, per 100 x."""
    n = len(points)
    if n < 2:
        return float("nan")
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return 100 * sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else float("nan")


def first_at(samples: list[dict[str, Any]], ended: int) -> dict[str, Any]:
    return next(s for s in samples if s["ended"] >= ended)


def analyse(samples: list[dict[str, Any]], trials: int, warmup: int) -> dict[str, Any]:
    """The figures, over the sweep's search: from the first trial's end to the last sample before the last
    trial's (the promotion runs and the summary that follow it at once, plots and artifacts, and Ray's
    shutdown are left out of the slope but not of the peak)."""
    end = samples.index(first_at(samples, trials))
    fit = [s for s in samples[:end] if s["ended"] >= 1]
    after = [s for s in fit if s["ended"] >= warmup]
    mid = (warmup + trials) / 2
    points = [(s["ended"], s["rss_mib"]) for s in after]
    last = fit[-1]
    ray = {name: {"after_warmup": after[0]["ray_mib"].get(name, 0.0),
                  "before_last_trial_ended": last["ray_mib"].get(name, 0.0),
                  "slope_per_100_trials": slope([(s["ended"], s["ray_mib"].get(name, 0.0)) for s in after])}
           for name in SYSTEM}
    return {
        "rss_mib": {"first_trial_ended": fit[0]["rss_mib"], f"after_{warmup}_trials": after[0]["rss_mib"],
                    "before_last_trial_ended": last["rss_mib"], "peak_whole_run": max(s["rss_mib"] for s in samples)},
        "slope_mib_per_100_trials": slope(points),
        "slope_halves_mib_per_100_trials": [slope([p for p in points if p[0] < mid]),
                                            slope([p for p in points if p[0] >= mid])],
        "ray_system_processes_mib": ray,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=300)
    parser.add_argument("--iterations", type=int, default=3, help="reports per trial")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=50, help="trials ended before the slope is taken")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--out", default="driver_memory")
    parser.add_argument("--analyse", metavar="JSON", help="analyse the samples of a saved result again, in place")
    args = parser.parse_args()
    if args.analyse:
        saved = json.loads(Path(args.analyse).read_text())
        saved.update(analyse(saved["samples"], saved["trials"], saved["warmup"]))
        Path(args.analyse).write_text(json.dumps(saved, indent=1) + "\n")
        return report(saved, Path(args.analyse))
    if not 1 <= args.warmup < args.trials:
        parser.error(f"--warmup {args.warmup} must be below --trials {args.trials}")

    before = load()
    with tempfile.TemporaryDirectory(prefix="driver-memory-") as tmp:
        work = Path(tmp)
        path = spec(work, args.trials, args.iterations, args.concurrency)
        log = work / "run.log"
        command = [sys.executable, "-m", "tuner.cli", "run", str(path)]
        started = time.perf_counter()
        with log.open("w") as out:
            proc = subprocess.Popen(command, cwd=work, stdout=out, stderr=subprocess.STDOUT, env=_env())
            samples = sample(proc, log, args.interval)
        wall = time.perf_counter() - started
        text = log.read_text(errors="replace")
        if proc.returncode != 0:
            sys.stderr.write(text[-4000:])
            raise SystemExit(f"tuner run exited with {proc.returncode}")
    ended = len(ENDED.findall(text))
    if ended != args.trials:
        raise SystemExit(f"{ended} trials ended, not {args.trials}:\n{text[-3000:]}")
    if len({s["ended"] for s in samples if args.warmup <= s["ended"] < args.trials}) < 2:
        raise SystemExit(f"fewer than 2 sampled trial counts between trial {args.warmup} and trial {args.trials}: "
                         f"no slope can be taken; raise --trials or lower --interval (now {args.interval} s)")
    result = {"command": " ".join(["python", "bench/driver_memory.py", *sys.argv[1:]]), "machine": machine(),
              "load_before": before, "load_after": load(), "trials": args.trials, "iterations": args.iterations,
              "concurrency": args.concurrency, "warmup": args.warmup, "wall_seconds": round(wall, 1),
              **analyse(samples, args.trials, args.warmup), "samples": samples}
    return report(result, save(args.out, result))


def report(result: dict[str, Any], saved: Path) -> int:
    r, warmup = result["rss_mib"], result["warmup"]
    print(f"{result['trials']} trials x {result['iterations']} reports in {result['wall_seconds']:.0f} s "
          f"(load {result['load_before']} -> {result['load_after']})")
    print(f"driver RSS (MiB): first trial ended {r['first_trial_ended']:.0f}, after {warmup} trials "
          f"{r[f'after_{warmup}_trials']:.0f}, before the last trial ended {r['before_last_trial_ended']:.0f}, "
          f"peak {r['peak_whole_run']:.0f}")
    halves = result["slope_halves_mib_per_100_trials"]
    print(f"slope after the warm-up: {result['slope_mib_per_100_trials']:+.1f} MiB per 100 trials "
          f"(halves {halves[0]:+.1f}, {halves[1]:+.1f})")
    for name, ray in result["ray_system_processes_mib"].items():
        print(f"{name} (Ray's, not the driver): {ray['after_warmup']:.0f} -> {ray['before_last_trial_ended']:.0f} MiB, "
              f"{ray['slope_per_100_trials']:+.1f} MiB per 100 trials")
    print(f"saved {saved}")
    return 0


def _env() -> dict[str, str]:
    """This machine's environment, the project first on the path, a local Ray (no RAY_ADDRESS)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


if __name__ == "__main__":
    sys.exit(main())
