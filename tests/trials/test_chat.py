"""Chat templates on a tiny Llama whose tokenizer has one (ChatML: '<|im_start|>user ... <|im_end|>'),
built here from a config and loaded with from_pretrained: plain prompts become a user turn, templated
ones are kept, the end-of-turn token ends a response as EOS does, and rewards get plain text."""

from __future__ import annotations

import json

import pytest
import torch

from trials import ConfigError, PPOConfig, PPOTrainer
from trials._chat import chat_format, stop_token_ids
from trials._engine import _generate
from trials._models import load_tokenizer
from trials._rollout import decode, response_mask

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
PROMPTS = ["the cat", "a dog sees", "every bird", "one fox likes"]


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory, demo_model):
    """A random-weight tiny Llama with the demo's word-level tokenizer, two added special tokens and a
    ChatML template; its EOS stays '[EOS]', so the end-of-turn token is a different one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from tests.trials.conftest import tiny_config

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHATML
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(tokenizer), tokenizer))
    model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-chat")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_plain_prompts_become_a_user_turn_and_templated_ones_are_kept(chat_model):
    tokenizer = load_tokenizer(str(chat_model))
    chat = chat_format(tokenizer, "auto")
    wrapped = chat.wrap("the cat")
    assert wrapped == "<|im_start|>user the cat<|im_end|> <|im_start|>assistant "
    assert chat.wrap(wrapped) == wrapped  # not wrapped twice
    assert chat_format(tokenizer, False) is None and chat_format(tokenizer, True).wrap("a") == chat.wrap("a")


def test_true_without_a_template_is_an_error_naming_the_field(demo_model):
    with pytest.raises(ConfigError) as err:
        PPOTrainer(PPOConfig(model_path=str(demo_model), chat_template=True, num_iterations=1))
    assert [p.path for p in err.value.problems] == ["chat_template"]


def test_the_end_of_turn_token_ends_a_response_and_is_masked_like_eos(chat_model):
    tokenizer = load_tokenizer(str(chat_model))
    eos, eot = tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert eot != eos and stop_token_ids(tokenizer) == sorted([eos, eot])
    cat, dog = tokenizer.convert_tokens_to_ids(["cat", "dog"])
    responses = torch.tensor([[cat, eot, dog, dog], [cat, dog, eos, dog], [cat, dog, dog, dog]])
    mask = response_mask(responses, stop_token_ids(tokenizer))
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert decode(tokenizer, responses, mask) == ["cat", "cat dog", "cat dog dog dog"]


def test_a_run_generates_from_the_template_and_rewards_get_plain_text(chat_model, tmp_path):
    seen = tmp_path / "seen.jsonl"
    (tmp_path / "r.py").write_text(
        "import json\n"
        "def score(prompts, responses):\n"
        f"    with open({str(seen)!r}, 'a') as fh:\n"
        "        fh.write(json.dumps([prompts, responses]) + '\\n')\n"
        "    return [0.0] * len(responses)\n")
    (tmp_path / "p.txt").write_text("\n".join(PROMPTS * 4))
    config = PPOConfig(model_path=str(chat_model), reward=f"{tmp_path / 'r.py'}:score", prompts=str(tmp_path / "p.txt"),
                       num_eval_prompts=4, rollout_batch_size=4, mini_batch_size=4, response_length=8,
                       ppo_epochs=1, num_iterations=1, temperature=1.0)
    trainer = PPOTrainer(config)
    run = trainer.state
    assert run.generation_config.eos_token_id == run.stop_ids == stop_token_ids(run.tokenizer)
    enc, _, _ = _generate(run, ["the cat"])
    assert run.tokenizer.decode(enc["input_ids"][0]) == "<|im_start|> [UNK] the cat <|im_end|> <|im_start|> [UNK]"
    trainer.train()
    calls = [json.loads(line) for line in seen.read_text().splitlines()]
    assert all(p in PROMPTS for prompts, _ in calls for p in prompts)  # the prompt as the user wrote it
    texts = [r for _, responses in calls for r in responses]
    assert texts and not any("<|im" in r or "[EOS]" in r for r in texts)
