"""Under a sweep, torch in the trial's process gets the spec's CPUs per trial, whatever OMP_NUM_THREADS
the driver's environment carries."""

from __future__ import annotations

import os

from tests.sweep_helpers import tuner, write_spec
from tuner.spec import load_spec

READ_BACK = '''import torch


def reward(prompts, responses):
    with open({log!r}, "a") as f:
        f.write(f"{{torch.get_num_threads()}}\\n")
    return [float(len(r)) for r in responses]
'''


def test_the_trial_s_torch_threads_follow_cpus_per_trial(tmp_path, demo_model):
    log = tmp_path / "threads.log"
    (tmp_path / "read_back.py").write_text(READ_BACK.format(log=str(log)))
    spec = write_spec(tmp_path, "threads", trial={"model": "demo", "reward": "read_back.py:reward", "prompts": "demo"},
                      base={"response_length": 4, "rollout_batch_size": 8, "mini_batch_size": 8,
                            "num_eval_prompts": 8, "ppo_epochs": 1, "device": "cpu", "num_threads": None},
                      search_space={"policy_lr": {"choices": [3.0e-5]}},
                      budget={"trials": 1, "iterations": 1, "promote": {"top_k": 0}},
                      resources={"cpus_per_trial": 2, "max_concurrent": 1})
    proc = tuner("run", spec, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    seen = set(log.read_text().split())
    assert seen == {"2"}, seen


def test_num_threads_in_the_spec_wins_over_the_reservation(tmp_path):
    spec = write_spec(tmp_path, "threads", base={"num_threads": 1}, resources={"cpus_per_trial": 2})
    assert load_spec(spec).base.num_threads == 1
