"""The memory model (trials.estimate_memory) on data it was not fitted on, reported apart from the fitted rows.

    python bench/memory_heldout.py --repeats 2     # a few minutes on 2 cores; peaks at about 4 GB of RAM
                                                   # (writes bench/results/memory_heldout.json)

The memory model's CPU constant (CPU_OVERHEAD in trials/_memory.py) and its activation factors were fitted on
Qwen2-shaped models only: the 0.36B model of bench/memory_lora.py and the 25M model of
tests/trials/test_memory.py, both saved in bf16, with 16-token responses or 32. Held out here:

- CPU: another architecture and size, a GPT-2-shaped model (LayerNorm, a GELU MLP 4 times as wide, learned
  positions, Conv1D layers; GPT-2 small's 12 layers x 768: 85M parameters with the 197-token byte-level
  tokenizer), saved in fp32, with 64-token responses: full fine-tuning, LoRA r16 and LoRA + the shared value,
  each in its own process and measured as bench/memory_lora.py measures (peak RSS over the import's).
- GPU: the H100 run of bench/gpu_engine.py (`bench/results/gpu_engine.txt`, torch.cuda.max_memory_allocated),
  against the prediction for its config and model, computed here (no GPU needed).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import BENCH, MODEL_CACHE, ROOT, build_causal_lm, load, machine, save  # noqa: E402
from bench.memory_lora import TRIAL, measure, summary_of, write_prompts  # noqa: E402

MODEL_DIR = MODEL_CACHE / "gpt2-small-shape"
SHAPE = dict(n_positions=256, n_embd=768, n_layer=12, n_head=12)
CONFIGS = {
    "full": dict(),
    "lora": dict(lora_rank=16, policy_lr=1e-4),
    "lora-shared": dict(lora_rank=16, policy_lr=1e-4, value_backbone="shared"),
}
RESPONSE = 64  # tokens: the fit's runs had 16 or 32
TOLERANCE = 0.15  # what tests/trials/test_memory.py allows on the fitted model


def build_model(folder: Path = MODEL_DIR) -> Path:
    """The GPT-2-shaped model (random weights, saved in fp32) and prompts that fill max_prompt_length."""
    build_causal_lm(folder, SHAPE, model_type="gpt2")
    write_prompts(folder)
    return folder


def model_config() -> Any:
    """The model's transformers config alone (what the memory model reads; no weights)."""
    from transformers import AutoConfig

    from trials.demo import byte_level_tokenizer

    return AutoConfig.for_model("gpt2", vocab_size=len(byte_level_tokenizer()), **SHAPE)


def fields(name: str) -> dict[str, Any]:
    return {**TRIAL, **CONFIGS[name], "response_length": RESPONSE, "model_path": str(MODEL_DIR),
            "prompts": str(MODEL_DIR / "prompts.txt")}


def gpu_rows(path: Path = BENCH / "results" / "gpu_engine.txt") -> dict[str, Any]:
    """The H100 run's measured peaks against the memory model's prediction for the same config and model."""
    from bench.gpu_engine import model_config, trial_config
    from trials import estimate_memory

    text = path.read_text()
    run = json.loads(text[text.index("\n{") + 1:])  # the run's JSON summary, after its printed lines
    rows = {}
    for precision in ("fp32", "bf16"):
        config = trial_config("gpt2-small", precision, run["rollout"], run["mini"], run["response"])
        estimate = estimate_memory(config, model_config())
        measured = run[precision]["peak_gib"] * 2**30
        rows[precision] = {"peak_bytes": measured, "predicted_bytes": estimate.peak, "phase": estimate.phase,
                           "error": estimate.peak / measured - 1, "parameters": estimate.parameters}
    return {"device": run["device"], "torch": run["torch"], "source": str(path.relative_to(ROOT)),
            "rollout": run["rollout"], "mini": run["mini"], "response": run["response"], "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", action="append", choices=list(CONFIGS))
    parser.add_argument("--out", default="memory_heldout")
    args = parser.parse_args()
    build_model()
    load_before = load()
    runs = measure(args.only or list(CONFIGS), args.repeats, fields)
    cpu = {name: {**summary_of(rs), "phase": rs[0]["predicted_phase"]} for name, rs in runs.items()}
    gpu = gpu_rows()
    for precision, row in gpu["rows"].items():
        print(f"gpu {gpu['device']}, {precision}: peak {row['peak_bytes'] / 2**30:5.2f} GiB  predicted "
              f"{row['predicted_bytes'] / 2**30:5.2f} GiB ({row['error']:+.1%}, {row['phase']})")
    errors = [e for s in cpu.values() for e in s["errors"]] + [r["error"] for r in gpu["rows"].values()]
    worst = max(errors, key=abs)
    print(f"held out: the largest error is {worst:+.1%} (within {TOLERANCE:.0%}: "
          f"{sum(abs(e) <= TOLERANCE for e in errors)} of {len(errors)})")
    path = save(args.out, {"machine": machine(), "load_before": load_before, "load_after": load(),
                           "model_type": "gpt2", "shape": SHAPE, "trial": {**TRIAL, "response_length": RESPONSE},
                           "configs": CONFIGS, "cpu": cpu, "runs": runs, "gpu": gpu, "largest_error": worst,
                           "within_tolerance": [sum(abs(e) <= TOLERANCE for e in errors), len(errors)]})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
