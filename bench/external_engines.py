"""What the controller adds to an external trial, per engine source: the CPU it spends reading,
converting, checking and scoring each report (as a ratio to a step of the trainer), and the delay from a
KL crossing being written to the trainer's process being gone.

    python bench/external_engines.py [--repeats 5] [--steps 20] [--step-seconds 0.1]

Each engine's source is read by the real code path (`tuner.trial._external.run_command`, no Ray): the
JSON-lines protocol on stdout (`command`, also what `trl` reads), verl's file logger followed every
20 ms (`verl`), OpenRLHF's per-step log line (`openrlhf`). The trainers are the stand-ins of the tests
(tests/external_trainer.py; tests/engine_trainers.py, logging through verl 0.9.1's and OpenRLHF
0.11.2's own code, in .engines/venv-checks), each sleeping `--step-seconds` per step: a real PPO step
takes seconds to minutes, so the ratio here is an upper bound for real trainers.
Controller CPU: this process's CPU time (every thread: the output reader, the file follower, the loop)
over a trial of `--steps` reports and over one of 3 x `--steps`; the difference over the 2 x `--steps`
more reports is the cost of one more step (the trainer's start, paid once per trial, cancels out; the
file follower's polling during the step is in it). emit is a no-op: tune.report, which our engine's
trials pay too, is left out. Delay: the crossing report's own wall-clock stamp `t` to run_command's return, which
comes after the trainer's process group is gone (it exits on SIGTERM).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import ROOT, load, machine, save

sys.path.insert(0, str(ROOT))

from tests.engine_packages import check_python, source  # noqa: E402
from trials import PPOConfig  # noqa: E402
from trials import metrics as K  # noqa: E402
from tuner.trial import read_result  # noqa: E402
from tuner.trial._external import run_command  # noqa: E402
from tuner.trial._task import TrialTask  # noqa: E402

OBJECTIVE = {"metric": K.SCORES, "direction": "maximize", "score": "final", "last_k": 3}


def task(engine: str, lr: float, steps: int, step_seconds: float) -> TrialTask:
    if engine == "command":
        command = [sys.executable, str(ROOT / "tests" / "external_trainer.py"), "--lr", "{policy_lr}", "--steps",
                   "{num_iterations}", "--step-seconds", str(step_seconds)]
    else:
        command = [str(check_python()), str(ROOT / "tests" / "engine_trainers.py"), engine, str(source(engine))]
    c = PPOConfig.from_dict({"num_iterations": steps, "rollout_batch_size": 16, "mini_batch_size": 8, "policy_lr": lr})
    return TrialTask(number=0, engine=c.to_dict(), params={}, kl_limit=15.0, objective=OBJECTIVE, engine_kind=engine,
                     external={"command": command, "env": {"STEP_SECONDS": str(step_seconds)}, "report_timeout": 60,
                               "stop_grace": 5, "ray": "private"})


def one(engine: str, lr: float, steps: int, step_seconds: float) -> dict[str, float]:
    reports: list[Any] = []
    with tempfile.TemporaryDirectory() as folder:
        cpu = time.process_time()
        run_command(task(engine, lr, steps, step_seconds), lambda r: reports.append(read_result(r)), Path(folder))
        gone, cpu = time.time(), time.process_time() - cpu
    return {"reports": len(reports), "cpu": cpu, "delay": gone - reports[-1].trainer["t"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=0.1)
    args = parser.parse_args()
    before, rows = load(), {}
    for engine in ("command", "verl", "openrlhf"):
        # lr 1e-5: KL 0.1 nats per step, never the limit (cost); lr 6e-4: 6 nats per step, past 15 at step 3 (delay)
        one(engine, 6e-4, args.steps, args.step_seconds)  # warm-up: the first trial imports the engine's mapping
        short = [one(engine, 1e-5, args.steps, args.step_seconds) for _ in range(args.repeats)]
        long = [one(engine, 1e-5, 3 * args.steps, args.step_seconds) for _ in range(args.repeats)]
        cut = [one(engine, 6e-4, args.steps, args.step_seconds) for _ in range(args.repeats)]
        assert all(r["reports"] == 3 for r in cut) and all(r["reports"] == args.steps for r in short)
        cost = [(b["cpu"] - a["cpu"]) / (2 * args.steps) for a, b in zip(short, long, strict=True)]  # paired runs
        delay = [r["delay"] for r in cut]
        rows[engine] = {"cpu_per_report_us": [round(c * 1e6) for c in cost],
                        "cpu_per_trial_start_ms": [round((a["cpu"] - args.steps * c) * 1e3, 1)
                                                   for a, c in zip(short, cost, strict=True)],
                        "ratio_to_step": statistics.median(cost) / args.step_seconds,
                        "delay_ms": [round(d * 1e3, 1) for d in delay]}
        print(f"{engine:9s} controller CPU per report: median {statistics.median(cost) * 1e6:.0f} us "
              f"({min(cost) * 1e6:.0f}-{max(cost) * 1e6:.0f}), {statistics.median(cost) / args.step_seconds:.1e} of a "
              f"{args.step_seconds:g} s step | crossing written -> process gone: median "
              f"{statistics.median(delay) * 1e3:.0f} ms ({min(delay) * 1e3:.0f}-{max(delay) * 1e3:.0f})", flush=True)
    path = save("external_engines", {"machine": machine(), "load": [before, load()], "args": vars(args), "rows": rows})
    print(f"saved {path}")


if __name__ == "__main__":
    main()
