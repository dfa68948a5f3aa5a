"""The reward: a Python callable named 'module:function', or a sequence-classification reward model.

Either way the result is checked: one finite float per response, or a RewardError that says which.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from trials._errors import MissingExtra, Problem, RewardError
from trials._refs import RewardRef, parse_reward

__all__ = ["RewardFunction"]

RewardCallable = Callable[[list[str], list[str]], Sequence[float]]


def _fail(value: str, message: str, fix: str, field: str = "reward") -> RewardError:
    return RewardError([Problem(field, value, message, fix)])


def _import_callable(spec: str, ref: RewardRef, field: str) -> RewardCallable:
    try:
        if ref.kind == "file":
            if not os.path.isfile(ref.target):
                raise _fail(spec, f"file {ref.target} does not exist", "give the path of the "
                            "Python file that defines the reward", field)
            loader = importlib.util.spec_from_file_location(f"_ppo_tuner_reward_{abs(hash(ref.target))}", ref.target)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            if os.getcwd() not in sys.path:
                sys.path.insert(0, os.getcwd())
            module = importlib.import_module(ref.target)
    except RewardError:
        raise
    except Exception as exc:  # the user's module failed to import: say why, in one line
        raise _fail(spec, f"cannot import {ref.target} ({type(exc).__name__}: {exc})",
                    "make the module importable (on PYTHONPATH or as a .py path) and free of "
                    "import errors", field) from None
    fn = getattr(module, ref.function, None)
    if not callable(fn):
        raise _fail(spec, f"{ref.target} has no callable named {ref.function}",
                    "name a function that takes (prompts, responses) and returns one float each", field)
    return fn


class RewardFunction:
    """Scores (prompts, responses) -> tensor of shape (B,), validated."""

    def __init__(self, spec: str, device: torch.device, dtype: torch.dtype = torch.float32, field: str = "reward"):
        self.spec, self.field = spec, field  # field: the config field that named it (reward, eval_reward)
        self.device = device
        self.dtype = dtype  # of a reward model's weights (frozen_dtype)
        ref = parse_reward(spec, field)
        if ref.kind == "model":
            if not os.path.isdir(spec):
                raise _fail(spec, "is neither 'module:function' nor a reward-model folder",
                            "write 'my_module:my_reward', 'path/to/file.py:my_reward', or the "
                            "folder of a reward model", field)
            self._fn = self._reward_model_fn(spec)
        else:
            self._fn = _import_callable(spec, ref, field)

    def _reward_model_fn(self, path: str) -> RewardCallable:
        from transformers import AutoTokenizer

        from trials._models import load_reward_model

        model = load_reward_model(path, self.dtype).to(self.device)
        tokenizer = AutoTokenizer.from_pretrained(path)
        tokenizer.padding_side = "right"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id

        @torch.no_grad()
        def score(prompts: list[str], responses: list[str]) -> list[float]:
            texts = [p + " " + r if p and r and not p.endswith(" ") else p + r
                     for p, r in zip(prompts, responses, strict=True)]
            enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True).to(self.device)
            return model(**enc).logits[:, 0].float().tolist()

        return score

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        try:
            out: Any = self._fn(list(prompts), list(responses))
        except MissingExtra as exc:
            raise _fail(self.spec, exc.message, exc.fix, self.field) from None
        except Exception as exc:
            raise _fail(self.spec, f"raised {type(exc).__name__}: {exc}",
                        "fix the reward function so it scores every (prompt, response) pair", self.field) from exc
        return torch.tensor(self._check(out, len(responses)), dtype=torch.float32, device=self.device)

    def _check(self, out: Any, n: int) -> list[float]:
        if isinstance(out, torch.Tensor):
            out = out.detach().float().flatten().tolist()
        try:
            values = [float(v) for v in out]
        except (TypeError, ValueError):
            raise _fail(self.spec, f"returned {type(out).__name__}, not a sequence of numbers",
                        "return a list with one float per response", self.field) from None
        if len(values) != n:
            raise _fail(self.spec, f"returned {len(values)} values for {n} responses",
                        "return exactly one float per response", self.field)
        bad = [v for v in values if not math.isfinite(v)]
        if bad:
            raise _fail(self.spec, f"returned a non-finite value ({bad[0]})", "return finite "
                        "floats (no NaN or inf)", self.field)
        return values
