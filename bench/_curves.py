"""The tables of learning curves that the sweep benchmarks replay: every config of a grid spec
(bench/specs/NAME_grid.yaml) run to the end, once, with its per-iteration objective/kl, eval/scores
and seconds, cached in bench/data/NAME_curves.jsonl (one config per line; recording resumes where
it stopped). Two tables: demo (the demo task, 360 configs) and places (the demo model with another
reward, bench/specs/places_reward.py; 120 configs).

    python bench/_curves.py --workers 2 --minutes 9     # records the missing configs, then exits
    python bench/_curves.py --calibrate                 # the cost model (run it when the machine is quiet)
    python bench/_curves.py --spec bench/specs/places_grid.yaml --workers 1 --minutes 35

The replays charge compute by a cost model, not by the recorded seconds (recorded over a long time,
under whatever else ran): the seconds of an iteration depend on ppo_epochs and mini_batch_size (the
gradient steps), plus an evaluation's seconds where one happens, plus a trial's start; all measured in
one process, alternating, by --calibrate (bench/data/demo_costs.json).

Each config runs exactly as a trial of the grid spec does (trial_config of the spec, the spec's
seed, 1 thread), so a live `tuner run` of the spec reproduces these curves on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
SPEC = BENCH / "specs" / "demo_grid.yaml"
SPECS = {"demo": SPEC, "places": BENCH / "specs" / "places_grid.yaml"}  # the recorded tables


def data_paths(spec_path: Path = SPEC) -> tuple[Path, Path]:
    """The table and the cost model of a grid spec: bench/specs/NAME_grid.yaml ->
    bench/data/NAME_curves.jsonl, NAME_costs.json."""
    name = Path(spec_path).stem.removesuffix("_grid")
    return BENCH / "data" / f"{name}_curves.jsonl", BENCH / "data" / f"{name}_costs.json"


TABLE, COSTS = data_paths(SPEC)


def load_grid_spec(path: Path = SPEC) -> Any:
    from tuner.spec import load_spec

    return load_spec(path)


def grid(spec: Any) -> list[dict[str, Any]]:
    """Every combination of the spec's categorical choices (fixed keys left to the base)."""
    space = {k: list(v.choices) for k, v in spec.search_space.items() if hasattr(v, "choices")}
    names = sorted(space)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(space[n] for n in names))]


def key(params: dict[str, Any]) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True)


@dataclass
class Curve:
    """One config's full run: index i of each list is iteration i + 1."""

    params: dict[str, Any]
    initial_eval: float
    kl: list[float]  # objective/kl (nats, summed over the response)
    eval: list[float | None]  # eval/scores where evaluated, else None
    seconds: list[float]  # perf/iteration_seconds (evaluations included)
    start_seconds: float  # loading the trial and its initial evaluation

    @property
    def iterations(self) -> int:
        return len(self.kl)


def best_never_crossing(curves: Iterable[Curve], limit: float) -> float:
    """The best final eval/scores of a config whose objective/kl never passes `limit` (nats), run to its end."""
    return max((c.eval[-1] for c in curves if c.eval[-1] is not None and max(c.kl) <= limit), default=math.nan)


def load_table(path: Path = TABLE) -> dict[str, Curve]:
    table = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                table[key(row["params"])] = Curve(**{k: row[k] for k in Curve.__dataclass_fields__})
    return table


def costed(table: dict[str, Curve], path: Path = COSTS) -> dict[str, Curve]:
    """The table with each curve's seconds from the cost model."""
    costs = json.loads(path.read_text())
    out = {}
    for k, c in table.items():
        per = costs["iteration"][f"{c.params['ppo_epochs']},{c.params['mini_batch_size']}"]
        seconds = [per + (costs["evaluation"] if e is not None else 0.0) for e in c.eval]
        out[k] = Curve(c.params, c.initial_eval, c.kl, c.eval, seconds, costs["start"])
    return out


def calibrate(spec_path: Path = SPEC, rounds: int = 6) -> dict[str, Any]:
    """Seconds of an iteration per (ppo_epochs, mini_batch_size), of an evaluation and of a warm trial
    start, for the grid spec's middle config; combos alternate within each round."""
    import statistics

    from trials import PPOTrainer
    from trials import _engine as E
    from trials import metrics as K
    from tuner.spec import trial_config

    spec = load_grid_spec(spec_path)
    choices = {k: list(v.choices) for k, v in spec.search_space.items() if hasattr(v, "choices")}
    middle = {k: v[len(v) // 2] for k, v in choices.items()}
    combos = [(e, m) for e in choices["ppo_epochs"] for m in choices["mini_batch_size"]]
    config = trial_config(spec, middle).replace(num_iterations=10_000, eval_interval=10_000)
    runs = {c: PPOTrainer(config.replace(ppo_epochs=c[0], mini_batch_size=c[1])).state for c in combos}
    times: dict[tuple[int, int], list[float]] = {c: [] for c in combos}
    evals, starts = [], []
    for r in range(rounds):
        for c in combos:
            times[c].append(E._iteration(runs[c], r + 1)[K.ITERATION_SECONDS])
        t = time.perf_counter()
        E.evaluate(runs[combos[0]])
        evals.append(time.perf_counter() - t)
        t = time.perf_counter()
        PPOTrainer(trial_config(spec, middle)).initial_eval()
        starts.append(time.perf_counter() - t)
    result = {"iteration": {f"{e},{m}": statistics.median(v[1:]) for (e, m), v in times.items()},
              "evaluation": statistics.median(evals[1:]), "start": statistics.median(starts[1:]),
              "load": [round(x, 2) for x in os.getloadavg()], "config": middle}
    data_paths(spec_path)[1].write_text(json.dumps(result, indent=1) + "\n")
    return result


def record_one(params: dict[str, Any], spec_path: Path = SPEC) -> dict[str, Any]:
    """Run one config of the grid spec to its end, as a trial of the spec would run."""
    from trials import PPOTrainer
    from trials import metrics as K
    from tuner.spec import trial_config

    started = time.perf_counter()
    trainer = PPOTrainer(trial_config(load_grid_spec(spec_path), params))
    initial = trainer.initial_eval()
    start_seconds = time.perf_counter() - started
    history = trainer.train().history
    return {"params": params, "initial_eval": initial, "kl": [h[K.KL] for h in history],
            "eval": [h.get(K.EVAL_SCORES) for h in history], "seconds": [h[K.ITERATION_SECONDS] for h in history],
            "start_seconds": start_seconds, "load": os.getloadavg()[0]}


def record(workers: int, minutes: float, spec_path: Path = SPEC) -> int:
    """Record missing configs until done or out of time; returns how many are still missing."""
    spec = load_grid_spec(spec_path)
    table_path = data_paths(spec_path)[0]
    done = load_table(table_path)
    todo = [p for p in grid(spec) if key(p) not in done]
    deadline = time.monotonic() + 60 * minutes
    table_path.parent.mkdir(exist_ok=True)
    print(f"{len(done)} configs recorded, {len(todo)} to record with {workers} processes", flush=True)
    with mp.get_context("spawn").Pool(workers, maxtasksperchild=40) as pool, table_path.open("a") as out:
        pending = iter(list(todo))
        running = [pool.apply_async(record_one, (p, spec_path)) for p in itertools.islice(pending, workers)]
        while running:
            row = running.pop(0).get()
            out.write(json.dumps(row) + "\n")
            out.flush()
            todo.remove(row["params"])
            if time.monotonic() < deadline:
                running += [pool.apply_async(record_one, (p, spec_path)) for p in itertools.islice(pending, 1)]
    print(f"{len(todo)} configs still to record", flush=True)
    return len(todo)


def main() -> int:
    parser = argparse.ArgumentParser(description="record the learning-curve table of the grid spec")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=9.0, help="stop starting new configs after this")
    parser.add_argument("--calibrate", action="store_true", help="measure the cost model only")
    parser.add_argument("--spec", type=Path, default=SPEC, help="the grid spec (default: the demo's)")
    args = parser.parse_args()
    sys.path.insert(0, str(BENCH.parent))
    if args.calibrate:
        print(json.dumps(calibrate(args.spec), indent=1))
        return 0
    return 1 if record(args.workers, args.minutes, args.spec) else 0


if __name__ == "__main__":
    raise SystemExit(main())
