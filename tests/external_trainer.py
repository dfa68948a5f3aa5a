"""A user-style training script for `trial.engine: command`: it knows nothing of ppo-tuner but the
JSON-lines protocol (one '@ppo-tuner {...}' line per logged step on stdout).

Its per-token KL grows with the learning rate (--lr) and the step, so a large lr passes the sweep's KL
limit; it reports per-token KL and the response length, as many trainers log them. It starts a helper
process (as a data loader would) that must be stopped with it. Faults for the tests: --crash-if-lr
exits 1 with a traceback at step 2 (after one report); --hang-if-lr goes silent at step 2 and
ignores SIGTERM. Each step saves a checkpoint file to the working folder. --linger-helper S starts a
second helper in a session of its own (as a server would be) that ends S seconds after the trainer is
gone: no signal to the trainer's group reaches it, and a sweep must wait for it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time

LINGER = """
import os, sys, time
parent = os.getppid()
while os.getppid() == parent:
    time.sleep(0.1)
time.sleep(float(sys.argv[1]))
"""


def report(**values: float) -> None:
    sys.stdout.write("@ppo-tuner " + json.dumps(values) + "\n")
    sys.stdout.flush()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--step-seconds", type=float, default=0.1)
    parser.add_argument("--crash-if-lr", type=float, default=None)
    parser.add_argument("--hang-if-lr", type=float, default=None)
    parser.add_argument("--linger-helper", type=float, default=None)
    args = parser.parse_args()
    with open(os.environ["PPO_TUNER_TRIAL_CONFIG"]) as f:
        trial = json.load(f)["number"]
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)",
                               os.environ["PPO_TUNER_TRIAL_CONFIG"]])
    if args.linger_helper is not None:
        subprocess.Popen([sys.executable, "-c", LINGER, str(args.linger_helper), os.environ["PPO_TUNER_TRIAL_CONFIG"]],
                         start_new_session=True)
    sys.stdout.write(f"trial {trial}: training with lr {args.lr:g} (helper {helper.pid}), "
                     f"started at {time.time()}\n")
    for step in range(1, args.steps + 1):
        time.sleep(args.step_seconds)
        if step == 2 and args.crash_if_lr is not None and math.isclose(args.lr, args.crash_if_lr):
            raise RuntimeError(f"CUDA error: an illegal memory access was encountered (lr {args.lr:g})")
        if step == 2 and args.hang_if_lr is not None and math.isclose(args.lr, args.hang_if_lr):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(600)
        with open(f"checkpoint-{step}.txt", "w") as f:  # to its working folder, as trainers do
            f.write(f"{trial} {step}\n")
        kl_per_token = args.lr * 1e3 * step  # nats per token
        report(step=step, kl_per_token=kl_per_token, response_length=10.0,
               reward=1.0 - 1.0 / (1.0 + step * args.lr * 1e4),
               eval_reward=0.5 + 0.1 * math.log10(args.lr / 1e-6), loss=1.0 / step, t=time.time())
    return 0


if __name__ == "__main__":
    sys.exit(main())
