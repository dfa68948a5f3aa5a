"""Tiny models of the architectures people fine-tune (Llama, Qwen2, Mistral, GPT-NeoX), built from a
transformers config with random weights, saved with save_pretrained, loaded by path like a user's."""

from __future__ import annotations

from pathlib import Path

import pytest

ARCHITECTURES = ("llama", "qwen2", "mistral", "gpt_neox")


def tiny_config(kind: str, vocab: int, tokenizer):
    """About 20k parameters: width 32, 2 layers, 4 heads (2 key/value heads where the model has them).
    Weights are drawn 10x wider than transformers' default (std 0.2): with std 0.02 the frozen LM head of
    a width-32 model cannot move a logit by more than ~0.6, and a LoRA policy could barely learn."""
    from transformers import GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config

    ids = dict(vocab_size=vocab, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id, max_position_embeddings=128, initializer_range=0.2)
    if kind == "gpt_neox":
        return GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **ids)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[kind]
    return cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               intermediate_size=64, **ids)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, demo_model):
    """tiny_model(kind) -> the folder of a random-weight model of that architecture, with the demo's
    word-level tokenizer (Qwen2: a byte-level BPE of the same grammar, see trials.demo.byte_level_tokenizer)."""
    built: dict[str, Path] = {}

    def build(kind: str) -> Path:
        if kind not in built:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

            from trials.demo import byte_level_tokenizer

            tokenizer = byte_level_tokenizer() if kind == "qwen2" else AutoTokenizer.from_pretrained(demo_model)
            config = tiny_config(kind, len(tokenizer), tokenizer)
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
            model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id,
                                                       eos_token_id=tokenizer.eos_token_id)
            folder = tmp_path_factory.mktemp(f"tiny-{kind}")
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            built[kind] = folder
        return built[kind]

    return build
