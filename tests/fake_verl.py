"""A stand-in for verl's `main_ppo` with its checkpointing, for the resume tests
(tests/tuner/trial/test_resume.py): it reads the Hydra overrides verl reads for this, saves a
checkpoint every `trainer.save_freq` steps in `trainer.default_local_dir` as verl does
(global_step_N/ and latest_checkpointed_iteration.txt, verl/utils/checkpoint/checkpoint_manager.py),
resumes from the latest one there (`trainer.resume_mode: auto`, verl's default), and logs each step
to $VERL_FILE_LOGGER_PATH as verl's file logger does (the file opened "wb": a restart truncates it).

    python fake_verl.py [key=value ...]

With $KILL_AT_STEP set, a run that did not resume kills itself (SIGKILL, as a preempted node) after
logging that step. Each start prints `resumed-from STEP LR` (0 and its own lr when it found no
checkpoint), where LR is the learning rate saved in the checkpoint it resumed from.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def overrides(argv: list[str]) -> dict[str, str]:
    return {k.lstrip("+"): v for k, _, v in (a.partition("=") for a in argv if "=" in a)}


def main() -> None:
    args = overrides(sys.argv[1:])
    lr = float(args["actor_rollout_ref.actor.optim.lr"])
    steps = int(args["trainer.total_training_steps"])
    save_freq = int(args.get("trainer.save_freq", "-1"))
    folder = Path(args.get("trainer.default_local_dir", "checkpoints/verl_examples/gsm8k"))
    tracker = folder / "latest_checkpointed_iteration.txt"
    start, saved_lr = 0, lr
    if tracker.exists():
        start = int(tracker.read_text())
        saved_lr = json.loads((folder / f"global_step_{start}" / "state.json").read_text())["lr"]
    print(f"resumed-from {start} {saved_lr!r}", flush=True)
    log = open(os.environ["VERL_FILE_LOGGER_PATH"], "wb", buffering=0)
    log.write(json.dumps({"step": start, "data": {"val-core/score": 0.0}}).encode() + b"\n")
    kill_at = int(os.environ.get("KILL_AT_STEP", "0"))
    for step in range(start + 1, steps + 1):
        time.sleep(float(os.environ.get("STEP_SECONDS", "0.05")))
        data = {"actor/reward_kl_penalty": lr * 1e3 * step, "response_length/mean": 10.0,
                "critic/score/mean": 0.1 * step, "actor/pg_loss": 1.0 / step}
        log.write(json.dumps({"step": step, "data": data}).encode() + b"\n")
        if save_freq > 0 and step % save_freq == 0:
            (folder / f"global_step_{step}").mkdir(parents=True, exist_ok=True)
            (folder / f"global_step_{step}" / "state.json").write_text(json.dumps({"lr": lr, "step": step}))
            tracker.write_text(str(step))
        if start == 0 and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
