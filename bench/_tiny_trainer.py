"""The trainer of bench/driver_memory.py (`trial.engine: command`): imports nothing heavy, prints one
'@ppo-tuner {...}' report per step at once and exits, so that a trial costs the controller what any
trial costs it (a Ray actor, the study's records, an MLflow child run, the table) and almost nothing else."""

from __future__ import annotations

import json
import sys


def main(lr: float, steps: int) -> int:
    for step in range(1, steps + 1):
        kl = lr * 1e3 * step
        print("@ppo-tuner " + json.dumps({"step": step, "kl": kl, "reward": 1.0 - 1.0 / (1.0 + step * lr * 1e4),
                                          "eval_reward": 0.5 + lr * 100, "loss": 1.0 / step}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(float(sys.argv[1]), int(sys.argv[2])))
