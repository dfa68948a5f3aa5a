"""What a preempted trial of our engine saves with its checkpoints (checkpoint_every), on the demo model.

One run of --iterations iterations is killed after iteration --kill (its process dies there: the reporter
raises), then started again twice: from its checkpoint (the last one is at the largest multiple of --every
before the kill), and afresh without one, as it was before checkpoints. Prints and saves each retry's wall
time (loading included), the iterations each runs again, the cost of a save (seconds and size, full
fine-tuning and LoRA) against an iteration's seconds, and the iterations a preemption at a uniformly random
iteration costs with and without checkpoints.

    python bench/trial_checkpoint.py --iterations 12 --every 4 --kill 10
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import load, machine, save

from trials import CHECKPOINT_FILE, PPOConfig, PPOTrainer, load_checkpoint, save_checkpoint
from trials import metrics as K

BASE = {"device": "cpu", "num_threads": 1, "seed": 0, "eval_interval": 4}  # the demo config, one thread


class Preempted(Exception):
    pass


def _config(folder: Path | None, iterations: int, every: int, **extra) -> PPOConfig:
    return PPOConfig.from_dict({**BASE, "num_iterations": iterations, "checkpoint_every": every if folder else 0,
                                "checkpoint_dir": str(folder) if folder else None, **extra})


def _killed(config: PPOConfig, kill: int) -> float:
    """Run until iteration `kill` is reported, then die; returns the wall seconds it ran."""
    started = time.perf_counter()

    def report(iteration: int, metrics: dict[str, float]) -> bool:
        if iteration == kill:
            raise Preempted
        return False

    try:
        PPOTrainer(config).train(report)
    except Preempted:
        pass
    return time.perf_counter() - started


def _retry(config: PPOConfig) -> dict[str, float]:
    """Start the run again (a retry on a fresh worker loads everything again) and run it to its end."""
    started = time.perf_counter()
    trainer = PPOTrainer(config)
    resumed = trainer.resumed.iteration if trainer.resumed else 0
    result = trainer.train()
    return {"wall_s": round(time.perf_counter() - started, 2), "resumed_after": resumed,
            "iterations_run": config.num_iterations - resumed,
            "iteration_s": [round(h[K.ITERATION_SECONDS], 3) for h in result.history[resumed:]]}


def _save_cost(config: PPOConfig, repeats: int = 5) -> dict[str, float]:
    """Seconds to save and to restore the run's checkpoint (median of `repeats`), and its size."""
    trainer = PPOTrainer(config)
    trainer.train(lambda i, m: i == 2)  # a state with Adam's moments, as at a real checkpoint
    initial = trainer.initial_evals()
    saves = []
    for _ in range(repeats):
        started = time.perf_counter()
        path = save_checkpoint(trainer.state, 2, initial)
        saves.append(time.perf_counter() - started)
    started = time.perf_counter()
    assert load_checkpoint(trainer.state) is not None
    restore = time.perf_counter() - started
    params = sum(p.numel() for p in trainer.policy.parameters())
    return {"save_s": round(statistics.median(saves), 4), "restore_s": round(restore, 4),
            "size_mib": round(path.stat().st_size / 2**20, 3), "policy_parameters": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--every", type=int, default=4)
    parser.add_argument("--kill", type=int, default=10, help="the iteration after which the run dies")
    args = parser.parse_args()
    loads = [load()]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "ckpt"
        first = _killed(_config(folder, args.iterations, args.every), args.kill)
        assert (folder / CHECKPOINT_FILE).is_file()
        resumed = _retry(_config(folder, args.iterations, args.every))
        loads.append(load())
        afresh = _retry(_config(None, args.iterations, args.every))
        full = _save_cost(_config(Path(tmp) / "full", args.iterations, args.every))
        lora = _save_cost(_config(Path(tmp) / "lora", args.iterations, args.every, lora_rank=8, policy_lr=1e-4))
    loads.append(load())
    iteration_s = statistics.median(afresh["iteration_s"])
    n, e = args.iterations, args.every
    # a preemption after iteration k (uniform in 1..n-1) loses k iterations without checkpoints, k mod e with
    lost_without = statistics.mean(range(1, n))
    lost_with = statistics.mean(k % e for k in range(1, n))
    result = {
        "command": "python bench/trial_checkpoint.py " + " ".join(sys.argv[1:]),
        "config": {**BASE, "num_iterations": n, "checkpoint_every": e, "killed_after": args.kill,
                   "model": "demo", "rollout_batch_size": PPOConfig().rollout_batch_size},
        "killed_attempt_s": round(first, 2), "retry_from_checkpoint": resumed, "retry_afresh": afresh,
        "retry_saved_s": round(afresh["wall_s"] - resumed["wall_s"], 2),
        "retry_wall_ratio": round(resumed["wall_s"] / afresh["wall_s"], 3),
        "median_iteration_s": round(iteration_s, 3),
        "save_full": full, "save_lora": lora,
        "save_overhead_per_iteration": round(full["save_s"] / (e * iteration_s), 4),
        "uniform_preemption_lost_iterations": {"without": round(lost_without, 2), "with": round(lost_with, 2)},
        "load": loads, "machine": machine(),
    }
    print(json.dumps(result, indent=1))
    save("trial_checkpoint", result)


if __name__ == "__main__":
    main()
