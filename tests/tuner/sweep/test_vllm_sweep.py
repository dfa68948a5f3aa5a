"""A sweep whose trials generate with vLLM (rollout_engine: vllm) against the real server in .venv-vllm:
it completes, and no vLLM process outlives it (the process table after `tuner run` returns)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import VLLM_PYTHON, needs_vllm
from tests.sweep_helpers import tuner, write_spec
from tuner.spec import load_spec
from tuner.sweep import load_study, trial_rows

pytestmark = [pytest.mark.slow, needs_vllm]


def vllm_servers(model: Path) -> list[str]:
    """The command lines of live processes that serve `model` with vLLM."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"vllm.entrypoints.openai.api_server" in argv and str(model).encode() in argv:
            found.append(" ".join(a.decode(errors="replace") for a in argv))
    return found


def test_a_vllm_sweep_completes_and_leaves_no_vllm_process(tmp_path, tiny_llama):
    spec = write_spec(
        tmp_path, "vllm",
        trial={"model": str(tiny_llama), "reward": "trials.demo:reward", "prompts": "demo"},
        base={"rollout_engine": "vllm", "vllm_python": str(VLLM_PYTHON), "lora_rank": 8,
              "value_backbone": "shared", "rollout_batch_size": 8, "mini_batch_size": 8, "response_length": 8,
              "max_prompt_length": 16, "ppo_epochs": 1, "eval_interval": 2, "num_eval_prompts": 8,
              "device": "cpu", "num_threads": 1},
        search_space={"policy_lr": {"choices": [1.0e-4, 1.0e-3]}},
        budget={"trials": 2, "iterations": 2, "promote": {"top_k": 0}},
        scheduler={"type": "none"}, resources={"cpus_per_trial": 1, "max_concurrent": 1})
    ran = tuner("run", spec, cwd=tmp_path, timeout=1200)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    rows = trial_rows(load_study(load_spec(spec)))
    assert [(r.state, r.iterations) for r in rows] == [("COMPLETE", 2), ("COMPLETE", 2)], rows
    assert vllm_servers(tiny_llama) == []
