"""A reward that injects real faults, each once, when its flag file exists in $FAULT_DIR.

A flag is claimed atomically (renamed) by the first worker that reaches its `after`-th reward call
in that process, so the fault fires mid-training in a trial, never in the controller's pre-flight
check. Flags: oom (raises torch.OutOfMemoryError), crash (raises RuntimeError), inf (returns 1e30,
which makes the value loss infinite), slow (sleeps, to leave time for a kill).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from trials.demo import reward as demo_reward

_calls = 0


def _claim(name: str, after: int) -> bool:
    flag = Path(os.environ.get("FAULT_DIR", "/nonexistent")) / name
    if _calls < after or not flag.exists():
        return False
    try:
        os.rename(flag, flag.with_suffix(f".taken-{os.getpid()}"))
        return True
    except OSError:
        return False  # another worker claimed it first


def reward(prompts: list[str], responses: list[str]) -> list[float]:
    global _calls
    _calls += 1
    if _claim("oom", after=4):
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory (simulated by the test)")
    if _claim("crash", after=4):
        raise RuntimeError("the reward service is unavailable (simulated by the test)")
    if _claim("inf", after=4):
        return [1e30] * len(responses)
    if os.environ.get("FAULT_SLOW"):
        time.sleep(float(os.environ["FAULT_SLOW"]))
    return demo_reward(prompts, responses)
