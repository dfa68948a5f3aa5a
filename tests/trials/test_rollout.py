"""The rollout's model calls: log-probs taken while sampling equal a forward's, the LM head on the
response positions only gives the same logits, and the fused GELU leaves the model's outputs unchanged."""

from __future__ import annotations

import pytest
import torch

from trials import PPOConfig, train
from trials import _rollout as R
from trials import metrics as K
from trials._models import load_causal_lm, load_tokenizer
from trials.demo import demo_prompts


@pytest.fixture(scope="module")
def lm(demo_model):
    return load_causal_lm(str(demo_model)), load_tokenizer(str(demo_model))


def _sample(lm, n=24, length=12, temperature=0.7):
    from transformers import GenerationConfig

    model, tokenizer = lm
    enc = tokenizer(demo_prompts(n), return_tensors="pt", padding=True, add_special_tokens=False)
    config = GenerationConfig(do_sample=True, temperature=temperature, max_new_tokens=length,
                              pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    responses, logprobs = R.generate(model, enc["input_ids"], enc["attention_mask"], config, temperature, True)
    return enc, responses, logprobs


def _forward(model, enc, responses):
    seq = torch.cat([enc["input_ids"], responses], 1)
    attn = torch.cat([enc["attention_mask"], torch.ones_like(responses)], 1)
    return seq, attn, (attn.cumsum(1) - 1).clamp(min=0)


def test_logprobs_taken_while_sampling_equal_a_forwards(lm):
    enc, responses, logprobs = _sample(lm)
    seq, attn, pos = _forward(lm[0], enc, responses)
    with torch.no_grad():
        logits = R.forward_logits(lm[0], seq, attn, pos, enc["input_ids"].shape[1])
    expected = R.logprobs_of(logits, responses, 0.7)
    mask = R.response_mask(responses, lm[1].eos_token_id)
    assert logprobs.shape == responses.shape
    assert torch.allclose(logprobs * mask, expected * mask, atol=1e-5)


def test_the_lm_head_on_the_response_positions_gives_the_same_logits(lm):
    enc, responses, _ = _sample(lm)
    seq, attn, pos = _forward(lm[0], enc, responses)
    P = enc["input_ids"].shape[1]
    with torch.no_grad():
        full = lm[0](input_ids=seq, attention_mask=attn, position_ids=pos).logits[:, P - 1:-1]
        kept = R.forward_logits(lm[0], seq, attn, pos, P)
    assert kept.shape == full.shape == (*responses.shape, full.shape[-1])
    assert torch.allclose(kept, full, atol=1e-6)


@pytest.mark.parametrize("bf16,vocab,expected", [(False, 64, True), (True, 64, False), (False, 50_257, False)])
def test_sampled_logprobs_only_in_float32_and_for_small_logits(bf16, vocab, expected):
    assert R.sampler_logprobs_fit(128, 48, vocab, autocast_bf16=bf16) is expected


def test_the_fused_gelu_keeps_the_models_outputs(demo_model):
    from transformers import AutoModelForCausalLM
    from transformers.activations import NewGELUActivation

    ours, plain = load_causal_lm(str(demo_model)), AutoModelForCausalLM.from_pretrained(demo_model)
    assert not any(isinstance(m, NewGELUActivation) for m in ours.modules())
    assert ours.config.activation_function == plain.config.activation_function  # saved as it was
    ids = torch.randint(3, 40, (4, 12))
    with torch.no_grad():
        assert torch.allclose(ours(input_ids=ids).logits, plain(input_ids=ids).logits, atol=1e-4)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_first_ppo_step_starts_from_ratio_one_and_zero_kl(demo_model, precision):
    # One epoch of one mini-batch: the only gradient step sees the policy that sampled the rollout.
    config = PPOConfig.from_dict(dict(rollout_batch_size=16, mini_batch_size=16, ppo_epochs=1, response_length=8,
                                      num_iterations=1, num_eval_prompts=8, device="cpu", precision=precision,
                                      num_threads=2))
    metrics = train(config).metrics
    assert abs(metrics[K.KL]) < 1e-4
    assert metrics[K.APPROXKL] < 1e-9 and metrics[K.CLIPFRAC] == 0.0
