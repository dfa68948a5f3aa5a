"""What the promotion stage adds to the demo sweep's wall time, measured side by side.

Runs search_spaces/demo.yaml as it is (the search, then the best 2 configs x 2 fresh seeds) and with
`budget.promote.top_k: 0` (the search alone), alternating, `--repeats` times each, each in a fresh
folder, and prints every wall time and the ratio of the medians with its range over the pairs.

    python bench/promotion_cost.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import ROOT, machine, save


def run_demo(folder: Path, name: str, top_k: int | None) -> float:
    spec = yaml.safe_load((ROOT / "search_spaces" / "demo.yaml").read_text())
    spec["name"] = name
    spec["workdir"] = str(folder / "sweeps")
    if top_k is not None:
        spec["budget"]["promote"] = {**spec["budget"].get("promote", {}), "top_k": top_k}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tuner.cli", "run", str(path)], cwd=folder, capture_output=True,
                          text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    walls: dict[str, list[float]] = {"search": [], "promoted": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            walls["search"].append(run_demo(Path(tmp), f"demo-search-{i}", 0))
            walls["promoted"].append(run_demo(Path(tmp), f"demo-promoted-{i}", None))
            print(json.dumps({"pair": i, "search_s": round(walls["search"][-1], 1),
                              "promoted_s": round(walls["promoted"][-1], 1)}), flush=True)
    ratios = [p / s for s, p in zip(walls["search"], walls["promoted"], strict=True)]
    result = {"search_s": [round(w, 1) for w in walls["search"]],
              "promoted_s": [round(w, 1) for w in walls["promoted"]],
              "ratio_of_medians": round(statistics.median(walls["promoted"]) / statistics.median(walls["search"]), 2),
              "pair_ratios": [round(r, 2) for r in ratios], "load": [round(x, 1) for x in os.getloadavg()],
              "machine": machine()}
    print(json.dumps(result))
    save("promotion_cost", result)


if __name__ == "__main__":
    main()
