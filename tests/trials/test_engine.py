"""PPO runs on the built-in demo task (a real GPT-2-style model loaded with from_pretrained)."""

from __future__ import annotations

import json

import pytest
import torch

from trials import ConfigError, ModelError, PPOConfig, PPOTrainer, RewardError, train
from trials import metrics as K

SANE = dict(policy_lr=3e-5, value_lr=1e-3, kl_coef=0.05, rollout_batch_size=32, mini_batch_size=8,
            ppo_epochs=4, response_length=16, eval_interval=5, num_threads=2, seed=0)
AGGRESSIVE = {**SANE, "policy_lr": 3e-3, "kl_coef": 0.001}


def config(**changes) -> PPOConfig:
    return PPOConfig.from_dict({**SANE, **changes})


@pytest.mark.slow  # 40 iterations: 38 s (learning: tests/trials/test_lora.py)
def test_sane_settings_raise_the_evaluation_reward(demo_model):
    result = train(config(num_iterations=30))
    final = result.metrics[K.EVAL_SCORES]
    assert final > 1.5 * result.initial_eval and final > result.initial_eval + 0.02, (result.initial_eval, final)
    assert max(h[K.KL] for h in result.history) < 15


def test_aggressive_settings_drive_kl_past_15_nats(demo_model):
    result = train(config(**AGGRESSIVE, num_iterations=10))
    assert max(h[K.KL] for h in result.history) > 15


def test_every_documented_metric_is_reported(demo_model):
    result = train(config(num_iterations=2, eval_interval=2, eval_reward="trials.demo:gold_reward"))
    for name in K.ALL:
        assert name in result.metrics, name
        assert torch.isfinite(torch.tensor(result.metrics[name])), name


def test_a_stop_from_the_reporter_ends_the_run_at_that_iteration(demo_model):
    seen = []

    def reporter(iteration, metrics):
        seen.append(iteration)
        return iteration == 3

    result = train(config(num_iterations=10), reporter)
    assert seen == [1, 2, 3]
    assert result.iterations == 3 and result.stopped and len(result.history) == 3


def test_reporter_objects_with_a_report_method_are_accepted(demo_model):
    class Stopper:
        def report(self, iteration, metrics):
            return True

    assert train(config(num_iterations=5), Stopper()).iterations == 1


def test_policy_and_value_change_and_the_reference_does_not(demo_model):
    trainer = PPOTrainer(config(num_iterations=2))
    before = {name: {k: v.clone() for k, v in getattr(trainer, name).state_dict().items()}
              for name in ("policy", "ref", "value")}
    trainer.train()

    def changed(name):
        after = getattr(trainer, name).state_dict()
        return any(not torch.equal(before[name][k], after[k]) for k in after)

    assert changed("policy") and changed("value")
    assert not changed("ref")
    assert not any(p.requires_grad for p in trainer.ref.parameters())


def test_runs_are_deterministic_under_a_seed_on_the_cpu(demo_model):
    def run():
        return [{k: v for k, v in h.items() if not k.startswith("perf/")}
                for h in train(config(num_iterations=2, device="cpu")).history]

    assert run() == run()


def test_adaptive_kl_moves_beta_toward_the_target(demo_model):
    result = train(config(**{**AGGRESSIVE, "kl_mode": "adaptive", "kl_coef": 0.01, "kl_target": 1.0,
                             "kl_horizon": 100.0}, num_iterations=6))
    betas = [h[K.KL_COEF] for h in result.history]
    assert betas[0] == 0.01 and betas[-1] > betas[0]  # KL far above 1 nat pushes beta up


def test_k3_and_schedules_run(demo_model):
    result = train(config(num_iterations=2, kl_estimator="k3", lr_schedule="cosine", warmup_steps=2,
                          optimizer="adam", ent_coef=0.01, whiten_rewards=True, micro_batch_size=4))
    assert result.metrics[K.KL] >= 0  # k3 is never negative
    assert result.metrics[K.LR_POLICY] < 3e-5  # cosine decay has started


def test_the_final_policy_is_saved_with_save_pretrained(demo_model, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result = train(config(num_iterations=1, output_dir=str(tmp_path / "out")))
    assert result.output_dir == str(tmp_path / "out")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out").state_dict()
    start = AutoModelForCausalLM.from_pretrained(demo_model).state_dict()
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in start.items()}
    assert any(not torch.equal(saved[k], start[k]) for k in start)  # the trained policy, not the start
    assert AutoTokenizer.from_pretrained(tmp_path / "out").get_vocab() == \
        AutoTokenizer.from_pretrained(demo_model).get_vocab()


def test_a_reward_model_by_path_scores_responses(demo_model, tiny_reward_model):
    result = train(config(num_iterations=1, reward=str(tiny_reward_model)))
    assert torch.isfinite(torch.tensor(result.metrics[K.SCORES]))


def test_prompt_files_jsonl_and_txt(demo_model, tmp_path):
    from trials.demo import demo_prompts

    prompts = demo_prompts(80)
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"prompt": p}) for p in prompts))
    (tmp_path / "e.txt").write_text("\n".join(prompts[:10]))
    result = train(config(num_iterations=1, prompts=str(tmp_path / "p.jsonl"), eval_prompts=str(tmp_path / "e.txt")))
    assert result.iterations == 1


@pytest.mark.parametrize("body,message", [
    ("def score(prompts, responses):\n    return [0.0]\n", "returned 1 values for 2 responses"),
    ("def score(prompts, responses):\n    return [float('nan')] * len(responses)\n", "non-finite"),
    ("def score(prompts, responses):\n    return 'high'\n", "not a sequence of numbers"),
    ("def score(prompts, responses):\n    raise KeyError('x')\n", "raised KeyError"),
    ("import not_a_module_anywhere\n", "cannot import"),
    ("other = 1\n", "has no callable named score"),
])
def test_bad_rewards_fail_before_training(demo_model, reward_module, body, message):
    name = reward_module("user_reward", body)
    with pytest.raises(RewardError, match=message) as info:
        PPOTrainer(config(reward=f"{name}:score"))
    assert info.value.problems[0].path == "reward"


def test_a_reward_from_a_python_file_path(demo_model, tmp_path):
    (tmp_path / "r.py").write_text("def score(prompts, responses):\n    return [len(r) / 100 for r in responses]\n")
    assert train(config(num_iterations=1, reward=f"{tmp_path / 'r.py'}:score")).iterations == 1


def test_model_path_errors(tmp_path):
    with pytest.raises(ModelError, match="no such model directory"):
        PPOTrainer(config(model_path=str(tmp_path / "missing")))
    (tmp_path / "notlm").mkdir()
    (tmp_path / "notlm" / "config.json").write_text('{"model_type": "clip"}')
    with pytest.raises(ModelError, match="causal language model"):
        PPOTrainer(config(model_path=str(tmp_path / "notlm")))


def test_malformed_prompt_files(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{oops\n')
    with pytest.raises(ConfigError, match="line 2 is not valid JSON"):
        PPOTrainer(config(prompts=str(tmp_path / "bad.jsonl")))
    (tmp_path / "few.txt").write_text("one\ntwo\n")
    with pytest.raises(ConfigError, match="num_eval_prompts"):
        PPOTrainer(config(prompts=str(tmp_path / "few.txt")))


def test_a_held_out_reward_scores_the_same_evaluation_responses(demo_model, reward_module):
    twice = reward_module("twice_reward", "from trials.demo import reward\n"
                                          "def twice(prompts, responses):\n"
                                          "    return [2 * s for s in reward(prompts, responses)]\n")
    plain = PPOTrainer(config(num_iterations=2, eval_interval=1))  # each trainer seeds the global RNG: one at a time
    plain_initial, plain_history = plain.initial_evals(), plain.train().history
    gold = PPOTrainer(config(num_iterations=2, eval_interval=1, eval_reward=f"{twice}:twice"))
    initial, history = gold.initial_evals(), gold.train().history
    assert set(plain_initial) == {K.EVAL_SCORES} and set(initial) == {K.EVAL_SCORES, K.EVAL_GOLD}
    assert initial[K.EVAL_SCORES] == plain_initial[K.EVAL_SCORES]  # the held-out reward does not change what is sampled
    assert initial[K.EVAL_GOLD] == pytest.approx(2 * initial[K.EVAL_SCORES])
    assert all(h[K.EVAL_GOLD] == pytest.approx(2 * h[K.EVAL_SCORES]) for h in history)
    assert [h[K.EVAL_SCORES] for h in history] == [h[K.EVAL_SCORES] for h in plain_history]


def test_a_broken_held_out_reward_is_named_before_training(demo_model):
    with pytest.raises(RewardError) as err:
        PPOTrainer(config(eval_reward="no_such_module_here:score"))
    assert err.value.problems[0].path == "eval_reward"
