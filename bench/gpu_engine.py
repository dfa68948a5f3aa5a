"""The engine on a GPU: a GPT-2-small-sized model (12 layers, 768 wide) built from a config, with the
demo's tokenizer, reward and prompts; seconds per phase in fp32 and bf16 autocast.

    python bench/gpu_engine.py --iterations 6

Prints one line per precision and a JSON summary. Needs a CUDA device (it says so and exits 2 otherwise).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

SHAPE = dict(n_positions=256, n_embd=768, n_layer=12, n_head=12)  # GPT-2 small's; 85M parameters with the demo's vocab


def model_config() -> Any:
    """The model's transformers config: GPT-2 small's shape with the demo's tokenizer."""
    from transformers import AutoTokenizer, GPT2Config

    from trials.demo import build_demo_model

    tokenizer = AutoTokenizer.from_pretrained(build_demo_model())
    return GPT2Config(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **SHAPE)


def build(folder: str) -> str:
    from transformers import AutoTokenizer, GPT2LMHeadModel

    from trials.demo import build_demo_model

    torch.manual_seed(0)
    model = GPT2LMHeadModel(model_config())
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(build_demo_model()).save_pretrained(folder)
    return folder


def trial_config(folder: str, precision: str, rollout: int = 128, mini: int = 32, response: int = 48,
                 iterations: int = 6) -> Any:
    """The engine's config of one run (device cuda)."""
    from trials import PPOConfig

    return PPOConfig(model_path=folder, rollout_batch_size=rollout, mini_batch_size=mini, ppo_epochs=2,
                     response_length=response, num_iterations=iterations, eval_interval=10_000,
                     num_eval_prompts=64, policy_lr=1e-5, value_lr=1e-5, precision=precision, device="cuda")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--rollout", type=int, default=128)
    parser.add_argument("--mini", type=int, default=32)
    parser.add_argument("--response", type=int, default=48)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 2
    from trials import PPOTrainer, estimate_memory
    from trials import metrics as K

    folder = build(tempfile.mkdtemp())
    params = None
    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    for precision in ("fp32", "bf16"):
        config = trial_config(folder, precision, args.rollout, args.mini, args.response, args.iterations)
        trainer = PPOTrainer(config)
        params = sum(p.numel() for p in trainer.policy.parameters())
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = trainer.train()
        wall = time.perf_counter() - started
        steady = result.history[1:] or result.history  # the first iteration warms up kernels
        row = {key: statistics.mean(h[key] for h in steady) for key in
               (K.ITERATION_SECONDS, K.GENERATE_SECONDS, K.SCORE_SECONDS, K.UPDATE_SECONDS, K.TOKENS_PER_SEC)}
        row.update(samples_per_sec=args.rollout / row[K.ITERATION_SECONDS], wall=wall,
                   peak_gib=torch.cuda.max_memory_allocated() / 2**30, final_kl=result.metrics[K.KL],
                   predicted_gib=estimate_memory(config, model_config()).peak / 2**30)
        summary[precision] = row
        print(f"{precision}: {row[K.ITERATION_SECONDS]:.3f} s/iteration (generate {row[K.GENERATE_SECONDS]:.3f}, "
              f"score {row[K.SCORE_SECONDS]:.3f}, update {row[K.UPDATE_SECONDS]:.3f}), "
              f"{row['samples_per_sec']:.1f} samples/s, peak {row['peak_gib']:.2f} GiB "
              f"(predicted {row['predicted_gib']:.2f})", flush=True)
        del trainer
        torch.cuda.empty_cache()
    summary.update(params=params, rollout=args.rollout, mini=args.mini, response=args.response)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
