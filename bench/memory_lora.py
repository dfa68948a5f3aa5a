"""Peak memory and seconds per iteration of one trial on a ~0.5B Qwen2-shaped model (random weights, built
from a config): full fine-tuning, LoRA, LoRA + gradient checkpointing, LoRA + the shared-base value;
against the memory model's prediction (trials.estimate_memory).

    python bench/memory_lora.py --repeats 1     # about 15 minutes on 2 quiet cores
                                                # (writes bench/results/memory_lora.json)
    python bench/memory_lora.py --repeats 1 --only lora-shared

Each configuration runs in its own process; its peak is that process's max RSS minus the RSS it had after
importing torch, transformers, peft and the engine (the baseline). On a CPU the memory model predicts that.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (  # noqa: E402
    MODEL_CACHE,
    build_qwen2,
    emit,
    load,
    machine,
    median,
    peak_rss_bytes,
    run_worker,
    save,
)

MODEL_DIR = MODEL_CACHE / "qwen2-0.5b-shape"
SHAPE = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
             intermediate_size=4864, max_position_embeddings=512, tie_word_embeddings=True)
TRIAL = dict(rollout_batch_size=4, mini_batch_size=4, micro_batch_size=2, ppo_epochs=1, response_length=32,
             max_prompt_length=16, num_iterations=2, eval_interval=10_000, num_eval_prompts=4, device="cpu",
             precision="fp32", num_threads=2, seed=0, policy_lr=1e-5, kl_coef=0.05)
CONFIGS = {
    "full": dict(),
    "lora": dict(lora_rank=16, policy_lr=1e-4),
    "lora-checkpointing": dict(lora_rank=16, policy_lr=1e-4, gradient_checkpointing=True),
    "lora-shared": dict(lora_rank=16, policy_lr=1e-4, value_backbone="shared"),
}


def build_model(folder: Path = MODEL_DIR) -> Path:
    """The Qwen2-shaped model (random weights, saved in bf16 as real checkpoints are) and long prompts."""
    if (folder / "prompts.txt").is_file():
        return folder
    build_qwen2(folder, SHAPE, dtype="bfloat16")
    write_prompts(folder)
    return folder


def write_prompts(folder: Path) -> Path:
    """folder/prompts.txt: 64 prompts of 3 demo sentences, longer than max_prompt_length, so every prompt fills it."""
    import random

    from trials.demo import sentence

    rng = random.Random(0)
    path = folder / "prompts.txt"
    path.write_text("\n".join(" ".join(sentence(rng) for _ in range(3)) for _ in range(64)))
    return path


def _config(name: str) -> dict[str, Any]:
    return {**TRIAL, **CONFIGS[name], "model_path": str(MODEL_DIR), "prompts": str(MODEL_DIR / "prompts.txt")}


def worker(name: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    """One trial in this process (configuration `name`, or the engine `fields` given): peak RSS over the
    baseline, seconds per iteration after the warm-up, and the memory model's prediction."""
    import peft  # noqa: F401  (part of the baseline, as torch and transformers)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from trials import PPOConfig, PPOTrainer, estimate_memory, metrics, model_config_of

    fields = fields or _config(name)
    config = PPOConfig.from_dict(fields)
    estimate = estimate_memory(config, model_config_of(config.model_path))
    baseline = peak_rss_bytes()
    started = time.perf_counter()
    trainer = PPOTrainer(config)
    loaded, load_seconds = peak_rss_bytes() - baseline, time.perf_counter() - started
    history = trainer.train().history
    timed = history[1:]
    work = [h[metrics.GENERATE_SECONDS] + h[metrics.SCORE_SECONDS] + h[metrics.UPDATE_SECONDS] for h in timed]
    return {"config": name, "fields": fields, "baseline_bytes": baseline, "after_load_bytes": loaded,
            "peak_bytes": peak_rss_bytes() - baseline, "load_seconds": load_seconds, "iteration_seconds": work,
            "update_seconds": [h[metrics.UPDATE_SECONDS] for h in timed],
            "generate_seconds": [h[metrics.GENERATE_SECONDS] for h in timed],
            "predicted_bytes": estimate.peak, "predicted": estimate.breakdown(), "predicted_phase": estimate.phase,
            "parameters": estimate.parameters}


def fix_malloc() -> None:
    """A fixed glibc mmap threshold for the workers started after this: glibc's default moves it up to 32 MiB as
    large blocks are freed, after which freed activations stay in the heap and the RSS creeps up with every
    iteration; a fixed threshold returns them, so the RSS follows the live tensors (what
    torch.cuda.max_memory_allocated counts on a GPU)."""
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(2**20))


def measure(names: list[str], repeats: int, fields: Callable[[str], dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Each configuration `repeats` times, each run a worker process of its own: {name: [worker results]}."""
    fix_malloc()
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for repeat in range(repeats):
        for name in names:
            result = run_worker(sys.executable, "memory_lora.py", ["--worker", name, json.dumps(fields(name))],
                                timeout=1200)
            runs[name].append(result)
            print(f"[{repeat + 1}/{repeats}] {name:20s} peak {result['peak_bytes'] / 2**30:6.2f} GiB  predicted "
                  f"{result['predicted_bytes'] / 2**30:6.2f} GiB ({error(result):+.1%}, {result['predicted_phase']})  "
                  f"{median(result['iteration_seconds']):6.1f} s/iteration", flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", action="append", choices=list(CONFIGS))
    parser.add_argument("--out", default="memory_lora")
    args = parser.parse_args()
    build_model()
    load_before = load()
    runs = measure(args.only or list(CONFIGS), args.repeats, _config)
    summary = {name: summary_of(rs) for name, rs in runs.items()}
    if "full" in summary and "lora-shared" in summary:
        ratios = [s["peak_bytes"] / f["peak_bytes"] for s, f in zip(runs["lora-shared"], runs["full"], strict=True)]
        summary["lora_shared_over_full"] = {"per_repeat": ratios, "median": median(ratios)}
        print(f"LoRA + shared value / full fine-tuning peak: {median(ratios):.3f}")
    gpu = _gpu_predictions()
    print(json.dumps(gpu, indent=1))
    path = save(args.out, {"machine": machine(), "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                           "load_before": load_before, "load_after": load(), "shape": SHAPE,
                           "trial": TRIAL, "configs": CONFIGS, "summary": summary, "runs": runs,
                           "gpu_predictions": gpu})
    print(f"wrote {path}")


def error(result: dict[str, Any]) -> float:
    """The prediction's error against the measured peak (+: predicted above)."""
    return result["predicted_bytes"] / result["peak_bytes"] - 1


def summary_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One configuration's repeats: the median peak, its spread, the prediction and its errors."""
    peaks = [r["peak_bytes"] for r in results]
    return {"peak_bytes": median(peaks), "peak_min": min(peaks), "peak_max": max(peaks),
            "predicted_bytes": results[0]["predicted_bytes"], "errors": [error(r) for r in results],
            "seconds_per_iteration": median([s for r in results for s in r["iteration_seconds"]]),
            "seconds_spread": [min(s for r in results for s in r["iteration_seconds"]),
                               max(s for r in results for s in r["iteration_seconds"])],
            "parameters": results[0]["parameters"]}


# Public config.json shapes: (hidden, layers, heads, kv heads, intermediate, vocab, tied embeddings)
FAMILY = {
    "Qwen2.5-0.5B": (896, 24, 14, 2, 4864, 151936, True),
    "Qwen2.5-1.5B": (1536, 28, 12, 2, 8960, 151936, True),
    "Qwen2.5-3B": (2048, 36, 16, 2, 11008, 151936, True),
    "Qwen2.5-7B": (3584, 28, 28, 4, 18944, 152064, False),
    "Llama-3-8B": (4096, 32, 32, 8, 14336, 128256, False),
    "Qwen2.5-14B": (5120, 48, 40, 8, 13824, 152064, False),
    "Qwen2.5-32B": (5120, 64, 40, 8, 27648, 152064, False),
}
GPU_TRIAL = dict(rollout_batch_size=64, mini_batch_size=8, micro_batch_size=2, response_length=256,
                 max_prompt_length=256, device="cuda", precision="auto", frozen_dtype="auto")
GPU_MODES = {"full": {}, "lora": dict(lora_rank=16), "lora-shared": dict(lora_rank=16, value_backbone="shared"),
             "lora-shared-checkpointing": dict(lora_rank=16, value_backbone="shared", gradient_checkpointing=True)}
USABLE = 0.9  # of a card's memory that the prediction may fill (the CUDA context and fragmentation take the rest)


def _gpu_predictions() -> dict[str, Any]:
    """The memory model's PREDICTION (no GPU was measured): each family model's peak on a CUDA device
    (bf16 autocast, bf16 frozen weights), rollout 64 and 256-token responses, and the largest that fits
    an 80 GB and a 24 GB card."""
    from transformers import LlamaConfig, Qwen2Config

    from trials import PPOConfig, estimate_memory

    out: dict[str, Any] = {"trial": GPU_TRIAL, "usable_fraction": USABLE, "peak_gib": {}, "largest_fitting": {}}
    for name, (h, n, heads, kv, inter, vocab, tied) in FAMILY.items():
        cls = LlamaConfig if name.startswith("Llama") else Qwen2Config
        shape = cls(hidden_size=h, num_hidden_layers=n, num_attention_heads=heads, num_key_value_heads=kv,
                    intermediate_size=inter, vocab_size=vocab, tie_word_embeddings=tied)
        out["peak_gib"][name] = {
            mode: round(estimate_memory(PPOConfig.from_dict({**GPU_TRIAL, **fields}), shape).gib, 1)
            for mode, fields in GPU_MODES.items()}
    for card in (80, 24):
        out["largest_fitting"][f"{card} GB"] = {
            mode: next((m for m in reversed(FAMILY) if out["peak_gib"][m][mode] <= USABLE * card * 1e9 / 2**30), None)
            for mode in GPU_MODES}
    return out


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":  # --worker NAME [FIELDS_JSON]
        emit(worker(sys.argv[2], json.loads(sys.argv[3]) if len(sys.argv) > 3 else None))
    else:
        main()
