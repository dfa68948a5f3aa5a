"""Does ppo-tuner find better PPO settings on a real language model? SmolLM2-135M-Instruct, sentiment.

    python bench/real_lm.py --quick          # a smoke test of every step (minutes)
    python bench/real_lm.py                  # the CPU figures: about 30 minutes on 2 shared cores
    python bench/real_lm.py --device cuda    # the GPU figures: rollout 64, 64-token responses

The task is search_spaces/sentiment_smollm2.yaml: SmolLM2-135M-Instruct with a LoRA policy and a shared
value model, chat-templated prompts, VADER's compound score as the reward and TextBlob's polarity as
the held-out judge (eval_reward), promotion on. Its sizes and budget are replaced by this script's
(--rollout, --response, ...), the same for every side. Four answers, each then trained again from the
start over --seeds fresh seeds (seeds no sweep trial used) at the same length:

1. the guidance's default: policy lr 1e-4 (LoRA), beta 0.05 (fixed), epsilon 0.2, lambda 0.95,
   4 epochs, vf_coef 0.5;
2. the sweep's answer after promotion (`tuner run` of the spec: TPE + ASHA + the KL limit, then the
   best configs over fresh seeds), whatever it costs;
3. random search's answer at equal compute: random sampling, no pruning, no promotion, as many trials
   as the sweep's trial-iterations (search and promotion) make, its best feasible trial.

Per answer: the judge's final score (eval/gold_scores on the held-out prompts) as the mean over
seeds with a 95% t-interval, the reward's (eval/scores), the final KL (objective/kl, nats per response),
and compute (seconds and PPO iterations; for the tuned and random sides their sweep's too).

4. Our engine against TRL 1.12's PPO on this model (bench/engine_vs_trl.py's speed, with the LoRA
   policy on both sides and TRL's separate value model, so ours runs a separate value model too),
   samples/s and both sides' versions; and our iteration against its model-call floor
   (engine_vs_trl.py's limit). CPU only: TRL's side is timed on the CPU (--no-trl leaves it out).

Writes bench/results/real_lm.json (or --out) with the versions, the machine, the load and the command.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    ROOT,
    TRL_PYTHON,
    Workload,
    load,
    machine,
    no_cuda,
    run_worker,
    save,
    version_mismatch,
    versions,
)

SPEC = ROOT / "search_spaces" / "sentiment_smollm2.yaml"
MODEL = "smollm2-135m-instruct"
DEFAULT = {"policy_lr": 1e-4, "kl_mode": "fixed", "kl_coef": 0.05, "cliprange": 0.2, "gae_lambda": 0.95,
           "ppo_epochs": 4, "vf_coef": 0.5}  # the guidance's default under LoRA
FRESH_SEED = 10_000  # final runs use seeds FRESH_SEED + i: no sweep trial or promotion run used them
# sizes per mode: prompts per iteration, samples per gradient step, response tokens, search trials,
# iterations per trial (and of every final run), promoted configs x seeds, final seeds, TRL reps
SIZES = {
    "cpu": dict(rollout=8, mini=4, response=16, trials=4, iterations=3, top_k=1, promote_seeds=2, seeds=3, reps=1),
    "quick": dict(rollout=4, mini=4, response=8, trials=2, iterations=2, top_k=1, promote_seeds=1, seeds=2, reps=1),
    "cuda": dict(rollout=64, mini=16, response=64, trials=16, iterations=20, top_k=2, promote_seeds=2, seeds=3,
                 reps=3),
}
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """The mean and its 95% t-interval (nan-wide with one value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = T975.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return mean, mean - half, mean + half


def sized_spec(args: argparse.Namespace, s: dict[str, Any], workdir: Path, name: str, **sections: Any) -> Any:
    """The task's spec at this run's sizes and budget (and any other sections replaced)."""
    from tuner.spec import derive_spec, load_spec

    spec = load_spec(SPEC)
    cuda = args.device == "cuda"
    half = max(1, s["iterations"] // 2)  # ASHA's first rung, where the judge scores (the objective)
    base = {**spec.spec.base, "rollout_batch_size": s["rollout"], "mini_batch_size": s["mini"],
            "response_length": s["response"], "eval_interval": half, "device": args.device,
            "num_threads": None if cuda else args.threads}  # on a GPU: the trial's CPU reservation
    if cuda:
        base["precision"] = "auto"
    promote = {"top_k": s["top_k"], "seeds": s["promote_seeds"], "iterations": s["iterations"]}
    budget = {"trials": s["trials"], "iterations": s["iterations"], "promote": promote}
    resources = ({"cpus_per_trial": 4, "gpus_per_trial": 1, "max_concurrent": 1} if cuda else
                 {"cpus_per_trial": args.threads, "gpus_per_trial": 0})
    scheduler = {"grace_period": half}
    return derive_spec(spec, **{"name": name, "workdir": str(workdir), "base": base, "budget": budget,
                                "resources": resources, "scheduler": scheduler, **sections})


def sweep(spec: Any) -> dict[str, Any]:
    """Run a sweep; its answer's params, its compute, and its trials."""
    from tuner.spec import trial_config
    from tuner.sweep import open_study, promotion_study, run_sweep, trial_rows

    started = time.perf_counter()
    summary = run_sweep(spec)
    study, storage = open_study(spec)
    rows = trial_rows(study)
    promoted = promotion_study(spec, storage)
    promotion_rows = trial_rows(promoted) if promoted is not None else []
    iterations = sum(r.iterations or 0 for r in [*rows, *promotion_rows])
    choice = summary.choice
    params = dict(choice.trial.params) if choice else None
    return {"answer": params, "config": trial_config(spec, params).to_dict() if params is not None else None,
            "stage": choice.stage if choice else None, "trial": choice.trial.number if choice else None,
            "compute_seconds": summary.trial_compute_seconds, "iterations": iterations,
            "wall_seconds": time.perf_counter() - started, "counts": summary.counts,
            "trials": [dataclasses.asdict(r) for r in rows]}


def final_runs(base: dict[str, Any], seeds: int) -> dict[str, Any]:
    """The config trained from the start over fresh seeds: the judge, the reward, the KL, the compute."""
    from trials import PPOConfig, PPOTrainer
    from trials import metrics as K

    runs = []
    for i in range(seeds):
        config = {**base, "seed": FRESH_SEED + i, "output_dir": None, "eval_interval": base["num_iterations"]}
        trainer = PPOTrainer(PPOConfig.from_dict(config))  # the judge scores the start and the end
        started = time.perf_counter()
        result = trainer.train()
        last = result.metrics
        runs.append({"seed": FRESH_SEED + i, "judge": last[K.EVAL_GOLD], "reward": last[K.EVAL_SCORES],
                     "kl": last[K.KL], "iterations": result.iterations,
                     "initial_judge": trainer.initial_evals().get(K.EVAL_GOLD),
                     "seconds": sum(h[K.ITERATION_SECONDS] for h in result.history),
                     "wall_seconds": time.perf_counter() - started})
        print(f"    seed {FRESH_SEED + i}: judge {runs[-1]['judge']:+.3f}, reward {runs[-1]['reward']:+.3f}, "
              f"KL {runs[-1]['kl']:.2f}, {runs[-1]['seconds']:.0f} s", flush=True)
    out: dict[str, Any] = {"runs": runs}
    for key in ("judge", "reward", "kl"):
        mean, lo, hi = t_interval([r[key] for r in runs])
        out[key] = {"mean": mean, "ci95": [lo, hi]}
    out["seconds"] = sum(r["seconds"] for r in runs)
    out["iterations"] = sum(r["iterations"] for r in runs)
    return out


def engine_vs_trl(args: argparse.Namespace, s: dict[str, Any]) -> dict[str, Any]:
    """engine_vs_trl.py's speed (ours, TRL) and limit (ours against its model calls) on this model, LoRA."""
    import engine_vs_trl as evt

    w = Workload(rollout=s["rollout"], mini=s["mini"], epochs=1, response=s["response"], lr=1e-4,
                 threads=args.threads, model=MODEL, lora=8)
    out: dict[str, Any] = {"workload": dataclasses.asdict(w)}
    if not args.no_trl:
        trl = {k: v for k, v in run_worker(TRL_PYTHON, "_engine_trl.py", ["versions"]).items()
               if k != "process_seconds"}
        out["versions"] = {"ours": versions(), "trl": trl}
        problem = version_mismatch(out["versions"]["ours"], trl)
        if problem:
            raise SystemExit(problem)
        out["speed"] = evt.speed(w, s["reps"], iterations=2, warmup=1)
    out["limit"] = evt.limit(w, iterations=2, warmup=1)
    return out


def problem(args: argparse.Namespace, s: dict[str, Any]) -> str | None:
    """One line for what stops this run before anything starts, or None."""
    if no_cuda(args.device):
        return no_cuda(args.device)
    for name, value in [("threads", args.threads), *s.items()]:
        if value < 1:
            return f"--{name} {value}: must be at least 1; give a positive number"
    if s["rollout"] % s["mini"]:
        return f"--mini {s['mini']}: does not divide --rollout {s['rollout']}; give a divisor of {s['rollout']}"
    if not SPEC.is_file():
        return f"no {SPEC.relative_to(ROOT)}: the task's spec is part of the project; check out a full tree"
    if not args.no_trl and args.device == "cpu" and not TRL_PYTHON.exists():
        return f"no {TRL_PYTHON.relative_to(ROOT)}: run `bash bench/setup_trl.sh` first, or pass --no-trl"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of every step")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run (CPU)")
    parser.add_argument("--no-trl", action="store_true", help="leave out the TRL comparison")
    parser.add_argument("--out", default="real_lm", help="result name under bench/results/")
    for name in ("rollout", "mini", "response", "trials", "iterations", "seeds"):
        parser.add_argument(f"--{name}", type=int,
                            help="default: " + ", ".join(f"{m} {s[name]}"
                                                         for m, s in SIZES.items()))
    args = parser.parse_args()
    s = dict(SIZES["quick" if args.quick else args.device])
    s.update({k: getattr(args, k) for k in s if getattr(args, k, None) is not None})
    line = problem(args, s)
    if line:
        print(line, file=sys.stderr)
        return 2
    if args.device == "cuda":
        args.no_trl = True  # TRL's side of engine_vs_trl runs on the CPU
    res: dict[str, Any] = {"sizes": s, "device": args.device, "machine": machine(), "load": load(),
                           "versions": {"ours": versions()}, "command": " ".join(["python", *sys.argv]),
                           "default": DEFAULT, "spec": str(SPEC.relative_to(ROOT))}
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="real_lm-"))
    try:
        print("sweep (TPE + ASHA + KL limit, then promotion) ...", flush=True)
        tuned = sweep(sized_spec(args, s, workdir, "real-lm-tuned"))
        res["answers"] = {"tuned": tuned}
        save(args.out, res)
        trials = max(1, round(tuned["iterations"] / s["iterations"]))
        print(f"random search: {trials} trials, no pruning, no promotion ...", flush=True)
        rand = sweep(sized_spec(args, s, workdir, "real-lm-random", sampler={"type": "random", "seed": 7},
                                scheduler={"type": "none"},
                                budget={"trials": trials, "iterations": s["iterations"], "promote": {"top_k": 0}}))
        base = sized_spec(args, s, workdir, "real-lm-default").base.to_dict()
        answers = {"default": {"config": {**base, **DEFAULT}, "compute_seconds": 0.0, "iterations": 0},
                   "tuned": tuned, "random": rand}
        res["answers"] = {}
        save(args.out, {**res, "random": rand, "tuned": tuned})
        for name, answer in answers.items():
            print(f"{name}: {s['seeds']} fresh seeds x {s['iterations']} iterations ...", flush=True)
            if answer["config"] is None:
                res["answers"][name] = {**answer, "final": None, "note": "the sweep had no feasible answer"}
                continue
            res["answers"][name] = {**answer, "final": final_runs(answer["config"], s["seeds"])}
            save(args.out, res)  # what is done so far survives a later failure
        if args.device == "cpu":
            print("our engine against TRL 1.12, and against its model-call floor ...", flush=True)
            res["engine"] = engine_vs_trl(args, s)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    res["seconds"], res["load_end"] = time.perf_counter() - started, load()
    report(res)
    print(f"wrote {save(args.out, res)} in {res['seconds']:.0f} s")
    return 0


def report(res: dict[str, Any]) -> None:
    s = res["sizes"]
    print(f"\n{res['machine']['cpu']}, {res['device']}; rollout {s['rollout']}, {s['response']}-token responses, "
          f"{s['iterations']} iterations, {s['seeds']} fresh seeds; load {res['load']} -> {res['load_end']}")
    print("answer     judge (TextBlob) [95% t]        reward (VADER)   final KL  final runs    sweep")
    for name, a in res["answers"].items():
        f = a["final"]
        if f is None:
            print(f"  {name:8s} no answer ({a.get('note')})")
            continue
        j = f["judge"]
        print(f"  {name:8s} {j['mean']:+.3f} [{j['ci95'][0]:+.3f}, {j['ci95'][1]:+.3f}]  {f['reward']['mean']:+.3f}"
              f"        {f['kl']['mean']:6.2f}   {f['seconds']:5.0f} s   {a['compute_seconds']:5.0f} s, "
              f"{a['iterations']} iterations")
    for name in ("tuned", "random"):
        a = res["answers"][name]
        print(f"  {name} answer: {a['answer']} ({a['stage']}, trial {a['trial']})")
    e = res.get("engine", {})
    if "speed" in e:
        sides = e["speed"]["sides"]
        print("engine vs TRL (median s/iteration, samples/s): " + "; ".join(
            f"{k} {v['iteration']:.2f} s, {v['samples_per_sec']:.2f}/s" for k, v in sides.items())
            + f"; TRL / ours {e['speed']['speedup']:.2f}x")
    if "limit" in e:
        lm = e["limit"]
        print(f"our iteration {lm['iteration']:.2f} s against its model calls {lm['floor']:.2f} s: {lm['ratio']:.2f}x")


if __name__ == "__main__":
    raise SystemExit(main())
