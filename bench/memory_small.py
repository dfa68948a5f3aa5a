"""The memory model against measured peaks on the small model of the slow memory test
(tests/trials/test_memory.py), repeated: the figures behind that test's one run per mode.

    python bench/memory_small.py --repeats 3     # a few minutes on 2 cores (writes bench/results/memory_small.json)

A Qwen2-shaped model of about 25M parameters built from a config (random weights, saved in bf16, the demo's
byte-level tokenizer); one trial of 2 iterations in fp32 on the CPU, full fine-tuning and LoRA r16 with the
shared-base value, each run in its own process and measured as bench/memory_lora.py measures (peak RSS over
the peak after the imports, glibc's mmap threshold fixed). These rows are part of the memory model's fit
(its CPU constant): they show the fit and its run-to-run spread, not a held-out check (bench/memory_heldout.py).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import MODEL_CACHE, build_qwen2, load, machine, save  # noqa: E402
from bench.memory_lora import measure, summary_of  # noqa: E402

MODEL_DIR = MODEL_CACHE / "qwen2-25m-shape"
SHAPE = dict(hidden_size=512, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
             intermediate_size=2048, tie_word_embeddings=True)
TRIAL = dict(rollout_batch_size=4, mini_batch_size=4, micro_batch_size=2, response_length=16, max_prompt_length=8,
             num_iterations=2, num_eval_prompts=4, device="cpu", precision="fp32", num_threads=2)
MODES = {"full": {}, "lora-shared": {"lora_rank": 16, "value_backbone": "shared"}}
TOLERANCE = 0.15  # what the slow test allows


def build_model(folder: Path = MODEL_DIR) -> Path:
    return build_qwen2(folder, SHAPE, dtype="bfloat16")


def fields(mode: str, folder: Path = MODEL_DIR) -> dict[str, Any]:
    """The engine fields of the trial in `mode` on the model saved in `folder`."""
    return {"model_path": str(folder), **TRIAL, **MODES[mode]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="memory_small")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: give 1 or more")
    build_model()
    load_before = load()
    runs = measure(list(MODES), args.repeats, fields)
    summary = {mode: summary_of(rs) for mode, rs in runs.items()}
    for mode, s in summary.items():
        print(f"{mode:12s} peak {s['peak_min'] / 2**20:.0f}-{s['peak_max'] / 2**20:.0f} MiB, predicted "
              f"{s['predicted_bytes'] / 2**20:.0f} MiB: errors {', '.join(f'{e:+.1%}' for e in s['errors'])}")
    path = save(args.out, {"command": " ".join(["python", "bench/memory_small.py", *sys.argv[1:]]),
                           "machine": machine(), "load_before": load_before, "load_after": load(), "shape": SHAPE,
                           "trial": TRIAL, "modes": MODES, "summary": summary, "runs": runs})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
