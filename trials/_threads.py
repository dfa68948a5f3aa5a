"""How many CPU threads torch gets when `num_threads` is empty: the CPUs reserved for the run.

torch's own default is one thread per core of the machine. On cores that other work keeps busy that
costs far more than it gains: its threads wait on each other at every operation, and each waits for
a core. `tuner train configs/demo.yaml` on a 2-core machine at load 5-8 took 9.3 s per iteration with
torch's 2 threads against 0.36 s with 1.
"""

from __future__ import annotations

import math
import os

__all__ = ["reserved_threads"]


def reserved_threads(cpus: float | None = None, *, available: int | None = None,
                     load: float | None = None) -> int:
    """Threads for torch, at least 1.

    `cpus`: the CPUs a scheduler reserved for the run (a sweep's `resources.cpus_per_trial`): its whole
    part, as Ray gives a worker with that many CPUs. Without a reservation (`tuner train`, `train()`):
    the cores this process may run on (`available`, default its CPU affinity) less those already busy
    (`load`, default the 1-minute load average, rounded), so a quiet machine gets every core and a
    loaded one fewer threads than cores.
    """
    if cpus is not None:
        return max(1, math.floor(cpus))
    if available is None:
        available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(available, available - round(load)))
