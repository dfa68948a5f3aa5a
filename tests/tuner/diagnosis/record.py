"""Records the real trajectories the diagnosis rules are tested on: short runs of our engine on the
built-in demo model, each chosen to show one of the guidance's problems (or none), written to
trajectories.json next to this file. Re-record with:

    python tests/tuner/diagnosis/record.py      # about 5 minutes on 2 cores
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from trials import PPOConfig, PPOTrainer
from trials import metrics as K

OUT = Path(__file__).with_name("trajectories.json")
BASE = dict(model_path="demo", reward="trials.demo:reward", prompts="demo", policy_lr=3e-5, value_lr=1e-3, kl_coef=0.05,
            rollout_batch_size=32, mini_batch_size=8, ppo_epochs=4, response_length=16, num_iterations=12,
            eval_interval=4, seed=0, device="cpu", num_threads=1)
KEPT = (K.KL, K.KL_COEF, K.SCORES, K.SCORES_STD, K.VALUE_LOSS, K.EXPLAINED_VARIANCE, K.CLIPFRAC,
        K.APPROXKL, K.EVAL_SCORES)
RUNS = {  # name -> the fields changed from BASE (configs/demo.yaml, 12 iterations)
    "sane": {},
    "tame": {"policy_lr": 1e-6, "kl_coef": 0.2},  # KL near zero, reward flat
    "aggressive": {"policy_lr": 3e-3, "kl_coef": 0.001},  # configs/demo_aggressive.yaml: KL explodes
    "value_lr_high": {"value_lr": 0.05},
    "many_epochs_tight_clip": {"ppo_epochs": 10, "cliprange": 0.05, "policy_lr": 3e-4},  # clip fractions ~0.4
    "top_k_3": {"top_k": 3, "policy_lr": 1e-4},  # value loss jumps 192-fold at iteration 3
    "greedy_entropy_k1": {"top_k": 1, "ent_coef": 1.0, "num_iterations": 8},  # k1 KL negative (-0.68 nats)
    "greedy_k1": {"top_k": 1, "num_iterations": 8},
}


def record(changes: dict) -> dict:
    config = PPOConfig.from_dict({**BASE, **changes})
    history = PPOTrainer(config).train().history
    return {"engine": {k: v for k, v in config.to_dict().items()
                       if k in (*BASE, *changes, "kl_estimator", "vf_coef", "cliprange")},
            "metrics": {m: [round(h[m], 6) if m in h else math.nan for h in history] for m in KEPT}}


def main() -> None:
    runs = {name: record(changes) for name, changes in RUNS.items()}
    OUT.write_text(json.dumps(runs, indent=1).replace("NaN", "null") + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
