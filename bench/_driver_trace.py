"""Where the driver's memory of bench/driver_memory.py goes: the same sweep run in this process, with
tracemalloc started when the --start-th trial ends; when the last one ends, the Python allocations made
since then and still held are printed by where they were made (the largest first).

    python bench/_driver_trace.py --trials 60 --start 15     # about 4 minutes on 2 loaded cores
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

from driver_memory import spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--start", type=int, default=15, help="trials ended before tracing starts")
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()
    if not 1 <= args.start < args.trials:
        parser.error(f"--start {args.start} must be below --trials {args.trials}")

    from tuner.cli import main as cli
    from tuner.sweep import _events

    report: list[str] = []
    ended = 0
    original = _events.RayEvents.on_trial_complete

    def counted(self: Any, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        nonlocal ended
        original(self, iteration, trials, trial, **info)
        ended += 1
        if ended == args.start:
            gc.collect()
            tracemalloc.start(10)
        elif ended == args.trials:
            gc.collect()
            stats = tracemalloc.take_snapshot().statistics("traceback")
            tracemalloc.stop()
            span = args.trials - args.start
            report.append(f"Python allocations made over trials {args.start}-{args.trials} and still held: "
                          f"{sum(s.size for s in stats) / 2**20:.2f} MiB "
                          f"({sum(s.size for s in stats) / span / 1024:.1f} KiB per trial)")
            for stat in stats[:args.top]:
                frames = [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stat.traceback]
                report.append(f"{stat.size / 1024:8.0f} KiB {stat.count:6d} blocks  "
                              + " <- ".join(reversed(frames[-4:])))

    _events.RayEvents.on_trial_complete = counted
    with tempfile.TemporaryDirectory(prefix="driver-trace-") as tmp:
        code = cli(["run", str(spec(Path(tmp), args.trials, 3, 2))])
    print("\n".join(report))
    return code


if __name__ == "__main__":
    sys.exit(main())
