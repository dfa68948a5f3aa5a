"""Our PPO engine against trl 1.12's `trl.experimental.ppo.PPOTrainer`, on the CPU, the same work on both sides.

    bash bench/setup_trl.sh                 # once: bench/.venv-trl with trl 1.12.0 (the main environment is untouched)
    python bench/engine_vs_trl.py           # about 4 minutes on 2 quiet cores
    python bench/engine_vs_trl.py --model qwen2-28m --reps 3 --unclipped --out engine_vs_trl_qwen2   # about 14 minutes
    python bench/engine_vs_trl.py --model smollm2-135m-instruct --reps 2 --out engine_vs_trl_smollm2  # LoRA r8
    python bench/engine_vs_trl.py --model smollm2-135m-instruct --vllm --reps 2 --out engine_vs_trl_smollm2_vllm

Same work: the same model and weights (policy, reference; the value model is our engine's, given to
TRL under its attribute names), the same prompts and reward, the same rollout batch, mini-batch,
epochs, response length, learning rate, KL coefficient, value coefficient and temperature. --model:
the demo model (0.24M parameters), or qwen2-28m, a Qwen2-shaped model of 28.3M parameters with random
weights and the demo's byte-level tokenizer, built from a config into bench/.cache/ and loaded by both
sides with from_pretrained (each model has its own default rollout, mini-batch, epochs and response length;
with a model other than the demo, the default is speed and limit, with TRL without gc as a side).

1. Parity (bench/_parity.py): both engines replay one rollout, with EOS at different positions, for
   4 epochs x 4 mini-batches; per-step losses, clip fractions, approx KL and gradient norms before
   each optimizer step must agree, and the rewards where the engines differ on purpose: no speed may
   come from doing less. Refuses to run (exit 2) when bench/.venv-trl runs other versions of torch,
   transformers, tokenizers or numpy than this python; both sides' versions go into the JSON.
2. Speed: processes alternate, ours then TRL's then TRL's then ours..., each running warm-up
   iterations and then timed ones, and reporting its own peak RSS. Phases: generation, the no-grad
   scoring forwards (and reward), gc.collect() (TRL calls it twice per iteration), and the rest
   (GAE, the PPO epochs, the optimizer): the update. --trl-no-gc adds TRL with its gc.collect() calls
   made no-ops as a side of its own ("trl, no gc"; Python's automatic collection still runs, as on
   every side), and the ratio of ours to it.
   --vllm adds ours with vLLM rollouts (rollout_engine: vllm, the server from .venv-vllm; its weight
   sync timed apart from generation) as a side of its own, and TRL's s/iteration over it.
3. The limit: our iterations, each followed by every unavoidable model call of an iteration timed
   alone (HF generate; the reference and value forwards; per mini-batch the policy and value forward
   and backward, and a fused AdamW step); the ratio of the two.

Prints a table and the ratios; writes bench/results/engine_vs_trl.json. Record the load with every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

import _parity
from _common import (
    MODELS,
    TRL_PYTHON,
    Workload,
    load,
    machine,
    median,
    model_path,
    no_vllm,
    run_worker,
    save,
    version_mismatch,
    versions,
)

UNCLIPPED = "ours, no clipping"  # as in the parity check: TRL's PPO never clips gradients, ours does by default
NO_GC = "trl, no gc"  # TRL with its gc.collect() calls made no-ops
VLLM = "ours, vllm"  # ours with rollout_engine: vllm (a vLLM server from .venv-vllm generates)
# per model, the defaults of --rollout, --mini, --epochs, --response (the demo's are those of the recorded figures)
PRESETS = {"demo": dict(rollout=64, mini=16, epochs=4, response=16, lora=0),
           # --reps 3 --unclipped: about 14 minutes
           "qwen2-28m": dict(rollout=16, mini=8, epochs=1, response=64, lora=0),
           "smollm2-135m-instruct": dict(rollout=8, mini=8, epochs=1, response=16, lora=8)}
# per side: the worker's python, script and mode
SIDES = {"trl": (TRL_PYTHON, "_engine_trl.py", "speed"), NO_GC: (TRL_PYTHON, "_engine_trl.py", "speed-no-gc")}


def speed(w: Workload, reps: int, iterations: int, warmup: int, baseline: str | None = None,
          trl: bool = True, unclipped: bool = False, no_gc: bool = False, vllm: bool = False) -> dict[str, Any]:
    """Alternating processes: ours, TRL (TRL without its gc.collect() calls; ours with vLLM rollouts; our
    engine as it was, from `baseline`; ours without gradient clipping), order reversed every rep."""
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], **({"trl": []} if trl else {}),
                                             **({NO_GC: []} if no_gc else {}), **({VLLM: []} if vllm else {}),
                                             **({"ours before": []} if baseline else {}),
                                             **({UNCLIPPED: []} if unclipped else {})}
    for rep in range(reps):
        order = list(runs) if rep % 2 == 0 else list(runs)[::-1]
        for side in order:
            python, script, mode = SIDES.get(side, (sys.executable, "_engine_ours.py", "speed"))
            ws = dataclasses.replace(w, clip_grad=False) if side == UNCLIPPED else w
            ws = dataclasses.replace(w, rollout_engine="vllm") if side == VLLM else ws
            result = run_worker(python, script, [mode, ws.to_json(), str(iterations), str(warmup)],
                                first_on_path=baseline if side == "ours before" else None)
            runs[side].append(result)
            it = median([r["iteration"] for r in result["rows"]])
            print(f"  rep {rep + 1} {side:11s}: {it:.3f} s/iteration, peak RSS {result['peak_rss_mib']:.0f} MiB, "
                  f"load {result['load'][1][0]}", flush=True)
    summary = {side: _summarise(w, rs) for side, rs in runs.items()}
    def ratios(slow: str) -> list[float]:
        return [median([r["iteration"] for r in s["rows"]]) / median([r["iteration"] for r in o["rows"]])
                for o, s in zip(runs["ours"], runs[slow], strict=True)]

    out: dict[str, Any] = {"sides": summary, "runs": runs}
    if no_gc:
        out.update(speedup_no_gc_per_rep=ratios(NO_GC), speedup_no_gc=median(ratios(NO_GC)))
    if vllm:  # ours' s/iteration over ours with vLLM rollouts, and TRL's over it
        out.update(vllm_speedup_per_rep=[1 / x for x in ratios(VLLM)])
        out.update(vllm_speedup=median(out["vllm_speedup_per_rep"]))
        if trl:
            per = [a / b for a, b in zip(ratios("trl"), ratios(VLLM), strict=True)]
            out.update(speedup_vllm_per_rep=per, speedup_vllm=median(per))
    if trl:
        out.update(speedup_per_rep=ratios("trl"), speedup=median(ratios("trl")))
        if unclipped:  # TRL's s/iteration over ours without clipping, pair by pair
            per = [a * b for a, b in zip(ratios("trl"), [1 / x for x in ratios(UNCLIPPED)], strict=True)]
            out.update(speedup_unclipped_per_rep=per, speedup_unclipped=median(per))
    if unclipped:
        out.update(clipping_cost_per_rep=[1 / x for x in ratios(UNCLIPPED)])
    if baseline:
        out.update(baseline=baseline, engine_speedup_per_rep=ratios("ours before"),
                   engine_speedup=median(ratios("ours before")))
    return out


def _summarise(w: Workload, results: list[dict[str, Any]]) -> dict[str, float]:
    rows = [row for r in results for row in r["rows"]]
    out = {k: median([row[k] for row in rows]) for k in ("iteration", "generate", "score", "gc", "update")}
    if all("sync" in row for row in rows):  # ours: the weight sync to the vLLM server (0 with HF rollouts)
        out["sync"] = median([row["sync"] for row in rows])
    if all("clip" in row for row in rows):  # ours: the two gradient-norm clips of every optimizer step
        out["clip"] = median([row["clip"] for row in rows])
    out["samples_per_sec"] = w.rollout / out["iteration"]
    out["peak_rss_mib"] = median([r["peak_rss_mib"] for r in results])
    return out


def limit(w: Workload, iterations: int, warmup: int) -> dict[str, Any]:
    result = run_worker(sys.executable, "_engine_ours.py", ["limit", w.to_json(), str(iterations), str(warmup)])
    rows = result["rows"]
    for row in rows:
        row["floor"] = sum(v for k, v in row.items() if k.startswith("floor_"))
    keys = ["iteration", "generate", "score", "update", "floor", "floor_generate", "floor_ref", "floor_value",
            "floor_forward_backward", "floor_optimizer"]
    out = {k: median([row[k] for row in rows]) for k in keys}
    out["ratio"] = median([row["iteration"] / row["floor"] for row in rows])
    out["load"] = result["load"]
    return out


def report(res: dict[str, Any]) -> None:
    w = res["workload"]
    print(f"\nworkload: model {w.get('model', 'demo')}, LoRA rank {w.get('lora', 0)}, "
          f"rollout {w['rollout']}, mini-batch {w['mini']}, {w['epochs']} epochs, "
          f"{w['response']}-token "
          f"responses, {w['threads']} thread(s) per side; load {res['load']}")
    if "parity" in res:
        print("\n".join(_parity.summary(res["parity"])))
    if "speed" in res:
        s = res["speed"]
        print("\nseconds per iteration (median)   iteration  generate  score    gc     update  samples/s  peak RSS")
        for side, r in s["sides"].items():
            print(f"  {side:30s} {r['iteration']:9.3f} {r['generate']:9.3f} {r['score']:6.3f} {r['gc']:6.3f} "
                  f"{r['update']:8.3f} {r['samples_per_sec']:9.1f} {r['peak_rss_mib']:7.0f} MiB")
        if "speedup" in s:
            print(f"speedup (TRL s/iteration / ours, median of {len(s['speedup_per_rep'])} alternating pairs): "
                  f"{s['speedup']:.2f}x (target >= 2x): {'met' if s['speedup'] >= 2 else 'NOT met'}; per pair "
                  f"{', '.join(f'{x:.2f}' for x in s['speedup_per_rep'])}")
        if "speedup_vllm" in s:
            print(f"speedup against TRL of ours with vLLM rollouts: {s['speedup_vllm']:.2f}x; per pair "
                  f"{', '.join(f'{x:.2f}' for x in s['speedup_vllm_per_rep'])}")
        if "vllm_speedup" in s:
            print(f"ours with HF rollouts / ours with vLLM rollouts, s/iteration: {s['vllm_speedup']:.2f}x; per pair "
                  f"{', '.join(f'{x:.2f}' for x in s['vllm_speedup_per_rep'])}")
        if "speedup_no_gc" in s:
            print(f"speedup against TRL without its gc.collect() calls: {s['speedup_no_gc']:.2f}x "
                  f"(target >= 2x): {'met' if s['speedup_no_gc'] >= 2 else 'NOT met'}; per pair "
                  f"{', '.join(f'{x:.2f}' for x in s['speedup_no_gc_per_rep'])}")
        if "speedup_unclipped" in s:
            print(f"speedup against ours without gradient clipping (the parity check's configuration): "
                  f"{s['speedup_unclipped']:.2f}x; per pair "
                  f"{', '.join(f'{x:.2f}' for x in s['speedup_unclipped_per_rep'])}")
        for side, r in s["sides"].items():
            if r.get("sync"):
                print(f"  {side}: the policy's weights to the vLLM server {r['sync']:.3f} s/iteration (not in "
                      f"generate)")
            if "clip" in r:
                print(f"  {side}: clip_grad_norm_ (two a step; TRL's PPO has none) {r['clip']:.3f} s/iteration, "
                      f"{r['clip'] / r['iteration']:.1%} of the iteration")
        if "clipping_cost_per_rep" in s:
            print(f"ours with clipping / without, s/iteration per pair: "
                  f"{', '.join(f'{x:.3f}' for x in s['clipping_cost_per_rep'])}")
        if "engine_speedup" in s:
            print(f"our engine now against itself before ({s['baseline']}): {s['engine_speedup']:.2f}x "
                  f"(per pair {', '.join(f'{x:.2f}' for x in s['engine_speedup_per_rep'])})")
    if "limit" in res:
        lm = res["limit"]
        print(f"\nlimit: iteration {lm['iteration']:.3f} s against its unavoidable model calls {lm['floor']:.3f} s "
              f"(generate {lm['floor_generate']:.3f}, ref {lm['floor_ref']:.3f}, value {lm['floor_value']:.3f}, "
              f"forward+backward {lm['floor_forward_backward']:.3f}, AdamW {lm['floor_optimizer']:.3f})")
        print(f"  ours: generate {lm['generate']:.3f}, score {lm['score']:.3f}, update {lm['update']:.3f}")
        print(f"  ratio {lm['ratio']:.3f}x (target <= 1.15x): {'met' if lm['ratio'] <= 1.15 else 'NOT met'}")


def _bad_sizes(sizes: dict[str, int], model: str) -> str | None:
    """One line for sizes no run can use, or None."""
    for name, value in sizes.items():
        if value < (0 if name == "lora" else 1):
            return f"--{name} {value}: must be at least 1; give a positive number"
    if sizes["rollout"] % sizes["mini"]:
        return (f"--mini {sizes['mini']}: does not divide --rollout {sizes['rollout']} (TRL splits the rollout into "
                f"equal mini-batches); give a divisor of {sizes['rollout']}")
    from trials import PPOConfig, model_config_of

    shape = MODELS[model] or model_config_of(model_path(model)).to_dict()
    positions = shape.get("max_position_embeddings") or shape["n_positions"]
    prompt = PPOConfig().max_prompt_length
    if prompt + sizes["response"] > positions:
        return (f"--response {sizes['response']}: {prompt}-token prompts and responses this long pass the {positions} "
                f"positions of --model {model}; give at most {positions - prompt}")
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="alternating pairs of processes")
    parser.add_argument("--iterations", type=int, default=3, help="timed iterations per process")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per side (2 is torch's default here, but 2 threads "
                             "on 2 shared cores stall whenever another job runs)")
    parser.add_argument("--model", choices=list(PRESETS), default="demo",
                        help="demo: trials' 0.24M-parameter model; qwen2-28m: a Qwen2-shaped model of 28.3M parameters "
                             "with random weights, built once in bench/.cache/; smollm2-135m-instruct: the pretrained "
                             "SmolLM2 (the examples extra), a LoRA policy on both sides")
    for name in ("rollout", "mini", "epochs", "response", "lora"):
        parser.add_argument(f"--{name}", type=int, help="default: per model, " + ", ".join(
            f"{m} {p[name]}" for m, p in PRESETS.items()))
    parser.add_argument("--parity-samples", type=int, default=32)
    parser.add_argument("--only", choices=["parity", "speed", "limit"], action="append",
                        help="default: all three with the demo model; speed and limit with another (the parity "
                             "check runs on the demo model)")
    parser.add_argument("--out", default="engine_vs_trl", help="result name under bench/results/")
    parser.add_argument("--no-trl", action="store_true",
                        help="speed: leave TRL out (e.g. only ours against --baseline)")
    parser.add_argument("--trl-no-gc", action="store_true",
                        help="speed: also time TRL with its gc.collect() calls made no-ops, as a "
                             "side of its own (always with a model other than the demo)")
    parser.add_argument("--unclipped", action="store_true", help="speed: also time ours without gradient clipping "
                                                                 "(as in the parity check and as TRL's PPO runs)")
    parser.add_argument("--vllm", action="store_true",
                        help="speed: also time ours with vLLM rollouts (rollout_engine: vllm, the server from "
                             ".venv-vllm) as a side of its own")
    parser.add_argument("--baseline", help="a folder holding an older trials/ to time as a third side, e.g. from "
                                           "`git archive COMMIT trials | tar -x -C DIR`")
    args = parser.parse_args()
    demo = args.model == "demo"
    only = args.only or (["parity", "speed", "limit"] if demo else ["speed", "limit"])
    no_gc = not args.no_trl and (args.trl_no_gc or not demo)
    uses_trl = "parity" in only or ("speed" in only and not args.no_trl)
    if args.vllm and no_vllm():
        print(no_vllm(), file=sys.stderr)
        return 2
    if uses_trl and not TRL_PYTHON.exists():
        print(f"no {TRL_PYTHON}: run `bash bench/setup_trl.sh` first", file=sys.stderr)
        return 2
    sizes = {k: v if getattr(args, k) is None else getattr(args, k) for k, v in PRESETS[args.model].items()}
    problem = _bad_sizes(sizes, args.model)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    w = Workload(**sizes, threads=args.threads, model=args.model)
    model_path(w.model)  # built here once, before any worker loads it
    res: dict[str, Any] = {"workload": dataclasses.asdict(w), "machine": machine(), "load": load(),
                           "versions": {"ours": versions()}}
    if uses_trl:  # both sides must run the same versions of what they share
        res["versions"]["trl"] = {k: v for k, v in run_worker(TRL_PYTHON, "_engine_trl.py", ["versions"]).items()
                                  if k != "process_seconds"}
        problem = version_mismatch(res["versions"]["ours"], res["versions"]["trl"])
        if problem:
            print(problem, file=sys.stderr)
            return 2
    started = time.perf_counter()
    if "parity" in only:
        res["parity"] = _parity.parity(w, args.parity_samples)
    if "speed" in only:
        res["speed"] = speed(w, args.reps, args.iterations, args.warmup, args.baseline, trl=not args.no_trl,
                             unclipped=args.unclipped, no_gc=no_gc, vllm=args.vllm)
    if "limit" in only:
        res["limit"] = limit(w, args.iterations * 2, args.warmup)
    res["seconds"] = time.perf_counter() - started
    res["load_end"] = load()
    report(res)
    print(f"\nwrote {save(args.out, res)} in {res['seconds']:.0f} s")
    return 0 if res.get("parity", {}).get("ok", True) else 1


if __name__ == "__main__":
    raise SystemExit(main())
