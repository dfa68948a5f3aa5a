#!/usr/bin/env bash
# Regenerates every figure of bench/README.md into bench/results/ (about 55 minutes on 2 cores, with the
# table of learning curves already recorded; recording it from scratch adds 30-60 minutes).
# BASELINE=DIR also times the engine as it was (DIR holds an older trials/, see README).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python}
uptime

bash bench/setup_trl.sh
baseline=()
if [ -n "${BASELINE:-}" ]; then baseline=(--baseline "$BASELINE"); fi
$python bench/engine_vs_trl.py --threads 1 --trl-no-gc "${baseline[@]}" --out engine_vs_trl
$python bench/engine_vs_trl.py --only parity --out parity   # the step-by-step parity check alone
$python bench/engine_vs_trl.py --only speed --no-trl --unclipped --reps 3 --out engine_vs_trl_clip   # the cost of our clipping
# 2 threads per side (torch's default on 2 cores): only meaningful on a quiet machine (see README)
$python bench/engine_vs_trl.py --threads 2 --only speed --only limit --trl-no-gc --out engine_vs_trl_2threads
# a 28M-parameter model, where TRL's gc is a small share of its iteration: about 14 minutes
$python bench/engine_vs_trl.py --model qwen2-28m --reps 3 --unclipped --out engine_vs_trl_qwen2   # speed, limit; TRL with and without gc

until $python bench/_curves.py --minutes 9; do :; done   # resumable; a no-op when the table is complete
until $python bench/_curves.py --spec bench/specs/places_grid.yaml --minutes 9; do :; done
[ -f bench/data/demo_costs.json ] || $python bench/_curves.py --calibrate
$python bench/sweep_efficiency.py --jobs 2
$python bench/sweep_efficiency.py --table places --trials 16 --jobs 2
$python bench/sweep_efficiency.py --live
$python bench/kl_pruning.py
$python bench/controller_overhead.py   # 3 repeats of the sweep, its trials alone and two at a time: 20-30 minutes
$python bench/external_engines.py
$python bench/driver_memory.py   # 300 short trials: 10-15 minutes
$python bench/promotion_cost.py --repeats 3
$python bench/trial_checkpoint.py --iterations 12 --every 4 --kill 10   # what a preempted trial saves: ~1 minute
$python bench/memory_lora.py --repeats 1   # peaks up to ~13 GB of RAM (full fine-tuning of a 0.36B model)
$python bench/memory_small.py --repeats 3   # the slow memory test's model and trials, repeated
$python bench/memory_heldout.py --repeats 2   # the memory model on a model and a GPU run not in its fit
$python bench/cpu_bf16.py   # SmolLM2-135M-Instruct (the examples extra): fp32 against bf16 autocast
$python bench/real_lm.py    # SmolLM2 sentiment: the sweep against the default and random search; ~30+ minutes
if [ -x .venv-vllm/bin/python ]; then   # vLLM rollouts (README "Install"), SmolLM2: HF against vLLM, and against TRL
  $python bench/vllm_rollouts.py   # rollout 64 x response 128; ends after the pairs that fit in 20 minutes
  $python bench/engine_vs_trl.py --model smollm2-135m-instruct --vllm --reps 2 --out engine_vs_trl_smollm2_vllm
fi
uptime
