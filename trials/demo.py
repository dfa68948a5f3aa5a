"""The built-in demo task, made locally with no downloads.

A tiny GPT-2-style model (about 0.24M parameters) and a word-level tokenizer, trained briefly (SFT)
on sentences from a small grammar, saved with `save_pretrained` and cached; it loads through the same
`from_pretrained` path as any user's model. The reward counts "positive" adjectives, which the
grammar makes rare: raising it moves the policy away from its SFT distribution, so aggressive
settings (high learning rate, tiny beta) drive the KL to the reference far past 15 nats.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from trials._cache import build_cached, cache_root

__all__ = ["POSITIVE", "RANGES_NOTE", "build_demo_model", "byte_level_tokenizer", "demo_cache_dir", "demo_prompts",
           "gold_reward", "reward",
           "sentence"]

log = logging.getLogger(__name__)

# why the demo's search space lies outside the ranges the guidance documents for LLMs
RANGES_NOTE = "the demo model is tiny and learns at rates outside the ranges documented for LLMs"
_VERSION = "v2"  # bump when the grammar, the model or the SFT recipe changes
DETERMINERS = ["the", "a", "one", "every"]
NOUNS = ["cat", "dog", "bird", "fox", "child", "farmer", "teacher", "robot", "horse", "sailor", "baker", "owl"]
VERBS = ["sees", "likes", "follows", "finds", "watches", "helps", "meets", "greets"]
NEUTRAL = ["small", "old", "quiet", "brown", "tall", "young", "slow", "red", "grey", "busy"]
POSITIVE = ["happy", "bright", "kind", "brave", "lovely", "cheerful"]
PLACES = ["near the river", "in the garden", "at the market", "by the school", "on the hill", "in the forest"]
P_ADJECTIVE = 0.7  # chance a noun gets an adjective
P_POSITIVE = 0.2  # chance an adjective is a positive one


def _adjective(rng: random.Random) -> list[str]:
    if rng.random() >= P_ADJECTIVE:
        return []
    return [rng.choice(POSITIVE if rng.random() < P_POSITIVE else NEUTRAL)]


def sentence(rng: random.Random) -> str:
    """One sentence of the grammar, e.g. 'the old fox greets a kind baker near the river .'"""
    words = [rng.choice(DETERMINERS), *_adjective(rng), rng.choice(NOUNS), rng.choice(VERBS),
             rng.choice(DETERMINERS), *_adjective(rng), rng.choice(NOUNS)]
    if rng.random() < 0.4:
        words += rng.choice(PLACES).split()
    return " ".join([*words, "."])


def _vocabulary() -> list[str]:
    words = DETERMINERS + NOUNS + VERBS + NEUTRAL + POSITIVE + ["."]
    words += sorted({w for place in PLACES for w in place.split()} - set(words))
    return ["[PAD]", "[UNK]", "[EOS]", *words]


def reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The fraction of response words that are positive adjectives, in [0, 1] (the SFT model: about 0.03)."""
    positive = set(POSITIVE)
    scores = []
    for response in responses:
        words = response.split()
        scores.append(sum(w in positive for w in words) / max(len(words), 1))
    return scores


def gold_reward(prompts: list[str], responses: list[str]) -> list[float]:
    """The demo's held-out reward, in [0, 1]: positive adjectives count only where the grammar puts an
    adjective (right before a noun), each once per response. A policy that learns the intended thing
    raises both rewards; one that strings positive words together raises `reward` and not this one."""
    positive, nouns = set(POSITIVE), set(NOUNS)
    scores = []
    for response in responses:
        words = response.split()
        placed = {a for a, b in zip(words, words[1:], strict=False) if a in positive and b in nouns}
        scores.append(len(placed) / max(len(words), 1))
    return scores


def demo_prompts(n: int = 640, seed: int = 1234) -> list[str]:
    """Openings of fresh sentences (1 to 4 words), which the model continues."""
    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        words = sentence(rng).split()
        prompts.append(" ".join(words[: rng.randint(1, 4)]))
    return prompts


def byte_level_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer of the grammar (every word becomes one token, like 'Ġhappy'; about
    200 tokens), the kind Qwen2 and Llama 3 use. Needed for a model of type qwen2: transformers 5 loads
    any tokenizer saved next to one as a Qwen2Tokenizer, which garbles the demo's word-level one."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["[PAD]", "[UNK]", "[EOS]"],
                                  initial_alphabet=[])
    rng = random.Random(0)
    backend.train_from_iterator([sentence(rng) for _ in range(2000)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                   eos_token="[EOS]", bos_token="[EOS]")


def demo_cache_dir() -> Path:
    return cache_root() / f"demo-model-{_VERSION}"


def demo_model_built() -> bool:
    """Whether the demo model is in the cache (else the first use builds it)."""
    return (demo_cache_dir() / "config.json").is_file()


def build_demo_model(force: bool = False) -> Path:
    """The demo model's folder, built (a few seconds on a CPU) on first use and cached after."""
    return build_cached(demo_cache_dir(), _build, force)


def _build(folder: Path, steps: int = 250, seed: int = 0) -> None:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(_vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                        eos_token="[EOS]", bos_token="[EOS]")
    config = GPT2Config(vocab_size=len(vocab), n_positions=128, n_embd=96, n_layer=2, n_head=4,
                        bos_token_id=vocab["[EOS]"], eos_token_id=vocab["[EOS]"], pad_token_id=vocab["[PAD]"])
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.loss_type = "ForCausalLM"  # transformers warns once about loss_type=None otherwise
    rng = random.Random(seed)
    stream = tokenizer(" ".join(sentence(rng) for _ in range(6000)))["input_ids"]
    data = torch.tensor(stream)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    window, batch = 32, 32
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for step in range(steps):
        starts = torch.randint(0, len(data) - window - 1, (batch,), generator=gen)
        x = torch.stack([data[s: s + window] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        for group in optimizer.param_groups:  # linear decay to 10%
            group["lr"] = 3e-3 * (1 - 0.9 * (step + 1) / steps)
    log.info("demo SFT: final loss %.3f", loss.item())
    model.generation_config = GenerationConfig(pad_token_id=vocab["[PAD]"], eos_token_id=vocab["[EOS]"],
                                               bos_token_id=vocab["[EOS]"])
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards": a bar for a one-file, 1 MB model
    try:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    finally:
        hf_logging.enable_progress_bar()
