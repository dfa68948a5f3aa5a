"""Chat templates: plain prompts become a user turn of the tokenizer's template (with the generation
prompt), and the template's end-of-turn token ends a response as the EOS token does.

Everything is read from the tokenizer and the model's generation config; no token is named here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from trials._errors import ConfigError, Problem

__all__ = ["ChatFormat", "chat_format", "stop_token_ids"]

_MARK = "PPO_TUNER_TURN_MARK"  # rendered in place of a message, to find what the template puts around it


def _specials(tokenizer: Any) -> list[str]:
    """The special and added tokens' strings (what a template's markers are made of)."""
    added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]
    return [t for t in {*tokenizer.all_special_tokens, *added} if t]


def _render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


class ChatFormat:
    """Wraps plain prompts in the tokenizer's chat template; a prompt holding the template's user-turn
    marker (e.g. '<|im_start|>user') is taken as already templated and kept as written."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        prefix = _render(tokenizer, [{"role": "user", "content": _MARK}], False).split(_MARK)[0]
        found = [prefix.rfind(t) for t in _specials(tokenizer) if t in prefix]
        self.opener = (prefix[max(found):] if found else prefix).strip()  # the user turn's marker

    def templated(self, prompt: str) -> bool:
        return bool(self.opener) and self.opener in prompt

    def wrap(self, prompt: str) -> str:
        if self.templated(prompt):
            return prompt
        return _render(self.tokenizer, [{"role": "user", "content": prompt}], True)

    def end_of_turn(self) -> int | None:
        """The id of the first special token the template writes after an assistant message."""
        text = _render(self.tokenizer, [{"role": "user", "content": "hi"},
                                        {"role": "assistant", "content": _MARK}], False)
        after = text.split(_MARK, 1)[1]
        found = sorted((after.find(t), -len(t), t) for t in _specials(self.tokenizer) if t in after)
        return self.tokenizer.convert_tokens_to_ids(found[0][2]) if found else None


def chat_format(tokenizer: Any, mode: str | bool, field: str = "chat_template") -> ChatFormat | None:
    """The format prompts get under `chat_template` (auto: where the tokenizer has a template)."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode is True and not has_template:
        raise ConfigError([Problem(field, True, "the model's tokenizer has no chat template",
                                   "use chat_template: auto or false, or a model whose tokenizer has one")])
    return ChatFormat(tokenizer) if mode is not False and has_template else None


def _ids(value: int | Iterable[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def stop_token_ids(tokenizer: Any, generation_config: Any = None) -> list[int]:
    """The tokens that end a response: the tokenizer's EOS, the model's generation-config EOS ids, and
    the chat template's end-of-turn token where the tokenizer has a template."""
    ids = _ids(tokenizer.eos_token_id) + _ids(getattr(generation_config, "eos_token_id", None))
    if getattr(tokenizer, "chat_template", None):
        ids += _ids(ChatFormat(tokenizer).end_of_turn())
    return sorted(set(ids))
