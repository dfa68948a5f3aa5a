"""bf16 autocast against fp32 on the CPU: seconds per PPO iteration, and whether learning stays the same.

    python bench/cpu_bf16.py                      # SmolLM2-135M-Instruct, LoRA r8 + shared value, ~15 min on 2 cores
    python bench/cpu_bf16.py --reps 2 --iterations 2 --model demo --reward trials.demo:reward   # a smoke test

Processes alternate, fp32 then bf16 then bf16 then fp32 ..., each a fresh PPOTrainer of the same
config except `precision` (rep r runs seed r on both sides), running 1 warm-up iteration, the timed
ones, and a last one that also evaluates (not timed). Speed: the median seconds per phase of each
side, and bf16's speed-up per pair (fp32 s/iteration over bf16's, same seed, adjacent in time).

Learning parity: bf16 changes the sampled tokens, so its trajectory cannot equal fp32's token for
token; what must hold is that it learns as fp32 does. For the reward (objective/scores) and the KL
(objective/kl, nats per response) averaged over each run's iterations, bf16's mean over the seeds must
lie within one seed-to-seed standard deviation of fp32's runs of fp32's mean: bf16 may move a result no
more than changing the seed does. With --reps >= 3 this can fail (a bias in the rollout log-probs, for
one, shows in the KL first); with fewer it is not judged. No run may report a non-finite loss.

The CPU's bf16 support is read from /proc/cpuinfo (amx_bf16, avx512_bf16) and recorded with the machine.
Writes bench/results/cpu_bf16.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from _common import load, machine, median, peak_rss_mib, run_worker, save

PRECISIONS = ("fp32", "bf16")
TRACKED = ("objective/scores", "objective/kl")


def cpu_bf16_flags() -> list[str]:
    """The bf16 instruction sets /proc/cpuinfo lists (empty off Linux or without them)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted({"amx_bf16", "avx512_bf16"} & set(flags))


def engine_config(args: dict[str, Any], precision: str, seed: int, iterations: int) -> Any:
    from trials import PPOConfig

    return PPOConfig.from_dict({
        "model_path": args["model"], "reward": args["reward"], "prompts": args["prompts"],
        "lora_rank": args["lora"], "value_backbone": "shared" if args["lora"] else "separate",
        "rollout_batch_size": args["rollout"], "mini_batch_size": args["mini"], "ppo_epochs": args["epochs"],
        "response_length": args["response"], "policy_lr": args["lr"], "num_eval_prompts": args["rollout"],
        "num_iterations": iterations, "eval_interval": 10_000, "device": "cpu", "precision": precision,
        "num_threads": args["threads"], "seed": seed, **args.get("engine", {})})


def worker(args: dict[str, Any], precision: str, seed: int) -> dict[str, Any]:
    """One run: phases of the timed iterations, the tracked metrics of every iteration."""
    from trials import PPOTrainer
    from trials import metrics as K

    warmup, timed = 1, args["iterations"]
    trainer = PPOTrainer(engine_config(args, precision, seed, warmup + timed + 1))
    rows: list[dict[str, float]] = []

    def report(iteration: int, m: dict[str, float]) -> bool:
        row = {k: m[k] for k in TRACKED}
        if warmup < iteration <= warmup + timed:
            row.update(iteration=m[K.ITERATION_SECONDS], generate=m[K.GENERATE_SECONDS],
                       score=m[K.SCORE_SECONDS], update=m[K.UPDATE_SECONDS])
        rows.append(row)
        return False

    before = load()
    trainer.train(report)
    return {"precision": precision, "seed": seed, "rows": rows, "load": [before, load()],
            "peak_rss_mib": peak_rss_mib()}


def side_summary(runs: list[dict[str, Any]]) -> dict[str, float]:
    timed = [r for run in runs for r in run["rows"] if "iteration" in r]
    out = {k: median([r[k] for r in timed]) for k in ("iteration", "generate", "score", "update")}
    out["peak_rss_mib"] = median([run["peak_rss_mib"] for run in runs])
    return out


def parity(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per tracked metric: each run's mean over its iterations; bf16's mean over runs against fp32's,
    within fp32's seed-to-seed standard deviation."""
    out: dict[str, Any] = {"judged": len(runs["fp32"]) >= 3, "ok": True}
    for key in TRACKED:
        means = {p: [statistics.fmean(r[key] for r in run["rows"]) for run in runs[p]] for p in PRECISIONS}
        shift = statistics.fmean(means["bf16"]) - statistics.fmean(means["fp32"])
        spread = statistics.stdev(means["fp32"]) if len(means["fp32"]) > 1 else float("nan")
        ok = abs(shift) <= spread
        out[key] = {"run_means": means, "shift": shift, "fp32_seed_sd": spread, "ok": ok}
        out["ok"] = out["ok"] and ok
    out["ok"] = out["ok"] if out["judged"] else None
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct", help="a model name or folder")
    parser.add_argument("--reward", default="trials.rewards:vader_sentiment")
    parser.add_argument("--prompts", default="demo")
    parser.add_argument("--lora", type=int, default=8, help="LoRA rank (0: full fine-tuning, separate value model)")
    parser.add_argument("--rollout", type=int, default=8)
    parser.add_argument("--mini", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--response", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per process")
    parser.add_argument("--reps", type=int, default=3, help="alternating pairs of processes (seed = rep)")
    parser.add_argument("--engine", default="{}", help="more engine fields, as JSON (e.g. '{\"chat_template\": true}')")
    parser.add_argument("--out", default="cpu_bf16")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)  # ARGS_JSON PRECISION SEED
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker[0]), args.worker[1], int(args.worker[2]))), flush=True)
        return 0
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "worker", "reps", "engine")}
    settings["engine"] = json.loads(args.engine)
    res: dict[str, Any] = {"settings": settings, "machine": {**machine(), "bf16_flags": cpu_bf16_flags()},
                           "load": load(), "command": " ".join(["python", *sys.argv])}
    started = time.perf_counter()
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PRECISIONS}
    for rep in range(args.reps):
        for precision in PRECISIONS if rep % 2 == 0 else PRECISIONS[::-1]:
            result = run_worker(sys.executable, "cpu_bf16.py",
                                ["--worker", json.dumps(settings), precision, str(rep)], timeout=3600)
            runs[precision].append(result)
            print(f"  rep {rep + 1} {precision}: {side_summary([result])['iteration']:.2f} s/iteration, "
                  f"load {result['load'][1][0]}", flush=True)
    res["runs"] = runs
    res["sides"] = {p: side_summary(rs) for p, rs in runs.items()}
    res["speedup_per_pair"] = [side_summary([a])["iteration"] / side_summary([b])["iteration"]
                               for a, b in zip(runs["fp32"], runs["bf16"], strict=True)]
    res["speedup"] = median(res["speedup_per_pair"])
    res["parity"] = parity(runs)
    res["seconds"], res["load_end"] = time.perf_counter() - started, load()
    report(res)
    print(f"wrote {save(args.out, res)}")
    return 0


def report(res: dict[str, Any]) -> None:
    print(f"\n{res['machine']['cpu']} (bf16: {', '.join(res['machine']['bf16_flags']) or 'none'}); "
          f"load {res['load']} -> {res['load_end']}")
    print("seconds per iteration (median)  iteration  generate  score  update  peak RSS")
    for p, s in res["sides"].items():
        print(f"  {p:30s} {s['iteration']:9.2f} {s['generate']:9.2f} {s['score']:6.2f} {s['update']:7.2f} "
              f"{s['peak_rss_mib']:6.0f} MiB")
    print(f"bf16 speed-up (fp32 s/iteration / bf16's): {res['speedup']:.2f}x; per pair "
          f"{', '.join(f'{x:.2f}' for x in res['speedup_per_pair'])}")
    par = res["parity"]
    for key in TRACKED:
        p = par[key]
        print(f"parity {key}: bf16 - fp32 = {p['shift']:+.4f} against fp32's seed-to-seed sd {p['fp32_seed_sd']:.4f}: "
              f"{'within' if p['ok'] else 'OUTSIDE'}")
    print(f"parity: {'not judged (fewer than 3 seeds)' if par['ok'] is None else 'holds' if par['ok'] else 'FAILS'}")


if __name__ == "__main__":
    raise SystemExit(main())
