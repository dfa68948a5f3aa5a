"""Shared fixtures: the demo model (built once per machine, cached) and small real HF models."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"  # README "Install": vLLM rollouts (optional)
needs_vllm = pytest.mark.skipif(not VLLM_PYTHON.exists(), reason="no .venv-vllm: make it as README 'Install' says "
                                "(vLLM rollouts) to run the vLLM server tests")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the system's pick, released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def demo_model() -> Path:
    from trials.demo import build_demo_model

    return build_demo_model()


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory, demo_model) -> Path:
    """A real sequence-classification reward model (GPT-2 with a score head) on the demo tokenizer."""
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2ForSequenceClassification

    folder = tmp_path_factory.mktemp("reward-model")
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                        num_labels=1, pad_token_id=tokenizer.pad_token_id)
    GPT2ForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, demo_model) -> Path:
    """A random-weight Llama on the demo tokenizer, wide enough for vLLM's CPU attention (head size 32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, intermediate_size=128, bos_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         max_position_embeddings=128, initializer_range=0.2)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config = GenerationConfig(pad_token_id=tokenizer.pad_token_id,
                                               eos_token_id=tokenizer.eos_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def run_cli(capsys):
    """Run `tuner ...` in process; returns (exit code, stdout, stderr)."""
    from tuner.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([str(a) for a in argv])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture
def reward_module(tmp_path, monkeypatch):
    """Write a reward module into tmp_path and make it importable; returns its folder."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)

    def write(name: str, body: str) -> str:
        (tmp_path / f"{name}.py").write_text(body)
        sys.modules.pop(name, None)
        return name

    return write


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL 15 on 127.0.0.1 (skipped where its server binaries are not installed)."""
    from tests.pg import PrivatePostgres, available

    if not available():
        pytest.skip("needs PostgreSQL server binaries (/usr/lib/postgresql/15/bin) and runuser")
    server = PrivatePostgres().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def compose_cluster():
    """docker/compose.yaml's services as local processes on loopback: PostgreSQL, MLflow, a Ray head and
    a Ray worker (tests/compose_cluster.py); skipped where this machine cannot run them."""
    from tests.cluster_helpers import start_cluster

    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()
