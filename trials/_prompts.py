"""Prompt files: JSONL ({"prompt": ...} per line, or a JSON string per line), plain text (one per
line), or 'demo'. Malformed files fail with the line number before any model is loaded."""

from __future__ import annotations

import json
import os
import random

from trials._errors import ConfigError, Problem

__all__ = ["load_prompts", "split_prompts"]


def _fail(field: str, value: str, message: str, fix: str) -> ConfigError:
    return ConfigError([Problem(field, value, message, fix)])


def load_prompts(source: str, field: str = "prompts") -> list[str]:
    if source == "demo":
        from trials.demo import demo_prompts

        return demo_prompts()
    if not os.path.isfile(source):
        raise _fail(field, source, "no such file", "give a .jsonl or .txt file of prompts, or 'demo'")
    try:
        with open(source, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except UnicodeDecodeError:
        raise _fail(field, source, "is not UTF-8 text", "save the prompts as UTF-8 .jsonl or .txt") from None
    prompts = _parse_jsonl(lines, source, field) if source.endswith(".jsonl") else [ln for ln in lines if ln.strip()]
    if not prompts:
        raise _fail(field, source, "holds no prompts", "put one prompt per line")
    return prompts


def _parse_jsonl(lines: list[str], source: str, field: str) -> list[str]:
    prompts = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _fail(field, source, f"line {number} is not valid JSON ({exc.msg})",
                        'write one JSON object per line, like {"prompt": "..."}') from None
        if isinstance(item, dict):
            item = item.get("prompt")
        if not isinstance(item, str) or not item:
            raise _fail(field, source, f"line {number} has no non-empty string 'prompt'",
                        'write one JSON object per line, like {"prompt": "..."}')
        prompts.append(item)
    return prompts


def split_prompts(train: list[str], eval_source: str | None, num_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """(train, eval): the eval file's prompts, or `num_eval` held out of the training prompts."""
    if eval_source is not None:
        return train, load_prompts(eval_source, "eval_prompts")
    if len(train) <= num_eval:
        raise _fail("num_eval_prompts", num_eval,
                    f"holds out all {len(train)} training prompts for evaluation",
                    "give eval_prompts, or more prompts, or a smaller num_eval_prompts")
    shuffled = list(train)
    random.Random(seed).shuffle(shuffled)
    return shuffled[num_eval:], shuffled[:num_eval]
