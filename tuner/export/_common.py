"""What every export shares: the list of settings being written, lost values, provenance, unit conversions.

An exporter fills an `Out` in the order the file will read: `set` writes one of our fields under the
target's names (its name table), `put` writes names given explicitly, `note` a comment, `lost` a value
the target cannot express (a comment where it would go and a warning for the caller). Renderers then
turn it into a bash array, Hydra overrides or Python keyword arguments.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trials import BUILTIN_MODELS, PPOConfig, is_builtin_model
from tuner.engines import flag_words, hydra_word

# Run plumbing of ppo-tuner, not hyperparameters: exports list them in one "not applicable" comment.
NOT_APPLICABLE = ("device", "precision", "num_threads", "output_dir", "save_merged", "eval_prompts", "num_eval_prompts",
                  "eval_interval", "eval_reward", "rollout_engine", "vllm_python", "vllm_gpu_memory_utilization",
                  "checkpoint_every", "checkpoint_dir")


@dataclass
class Out:
    """The settings of one export, in file order; `warnings` holds every value the target lost."""

    target: str  # the target's name as warnings say it, e.g. "OpenRLHF"
    names: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # our field -> the target's names
    items: list[tuple[str, Any, str]] = field(default_factory=list)  # (name, value, comment); name "" = comment line
    warnings: list[str] = field(default_factory=list)
    only: Collection[str] | None = None  # a launch: the fields it passes (None: every field, as an export)
    skip: Collection[str] = ()  # a launch: the target's names it leaves out
    mean_length: float | None = None  # tokens: the exported trial's mean response length, where it was logged

    def wanted(self, our_field: str) -> bool:
        return self.only is None or our_field in self.only

    def set(self, our_field: str, value: Any, comment: str = "") -> None:
        """Set the target's names for `our_field` (from its name table) to `value`."""
        self.put(self.names[our_field], value, comment, of=our_field)

    def put(self, names: Iterable[str], value: Any, comment: str = "", of: str = "") -> None:
        """Set each of the target's `names` to `value`; the comment goes next to the first. `of`: the field
        they carry (else the one whose name table holds the first name; none: a setting of its own)."""
        names = [n for n in names if n not in self.skip]
        of = of or next((f for f, ns in self.names.items() if names and names[0] in ns), "")
        if of and not self.wanted(of):
            return
        for i, name in enumerate(names):
            self.items.append((name, value, comment if i == 0 else ""))

    def note(self, text: str) -> None:
        self.items.append(("", None, text))

    def lost(self, name: str, value: Any, instead: str) -> None:
        """A value the target cannot express: a comment where it would go and a warning (none for a field a
        launch does not pass)."""
        if not self.wanted(name):
            return
        message = f"{name} = {value!r}: {self.target} {instead}"
        self.warnings.append(message)
        self.note(message)


def header(title: str, source: dict | None) -> list[str]:
    """Comment lines (without '#') that open every export: what it is and where it came from."""
    lines = [f"Exported by ppo-tuner: {title}"]
    if source:
        lines.append("source: " + ", ".join(f"{key}={_one_line(value)}" for key, value in source.items()))
    return lines


def not_applicable(config: PPOConfig, names: Iterable[str] = NOT_APPLICABLE) -> str:
    values = ", ".join(f"{name}={getattr(config, name)!r}" for name in names)
    return f"not applicable (ppo-tuner run plumbing, set these in the target's own way): {values}"


def comment_lines(lines: Iterable[str], indent: str = "") -> list[str]:
    return [f"{indent}# {_one_line(line)}".rstrip() for line in lines]


def _one_line(value: Any) -> str:
    return " ".join(str(value).split())


# -- what only ppo-tuner has ---------------------------------------------------------------------

def check_demo(out: Out, name: str, value: str | None) -> None:
    """Warn about the built-in demo prompts and the built-in model names, which exist only inside ppo-tuner."""
    if value == "demo" and name == "prompts":
        out.lost(name, value, "cannot load ppo-tuner's built-in demo prompts; give a prompt file")
    elif is_builtin_model(value):
        out.lost(name, value, f"cannot load ppo-tuner's built-in model name ({BUILTIN_MODELS[value]}); give a "
                              "Hugging Face model name or the folder ppo-tuner built it into")


# -- unit conversions ----------------------------------------------------------------------------

def optimizer_steps(config: PPOConfig) -> int:
    """Optimizer steps of the whole run: iterations x epochs x mini-batches."""
    return config.num_iterations * config.ppo_epochs * config.num_mini_batches


def warmup_ratio(config: PPOConfig) -> float:
    """warmup_steps as a fraction of all optimizer steps, such that ceil(total * ratio) == warmup_steps."""
    total = optimizer_steps(config)
    ratio = min(config.warmup_steps / total, 1.0)
    while ratio > 0 and math.ceil(total * ratio) > config.warmup_steps:
        ratio = math.nextafter(ratio, 0.0)
    return ratio


def warmup_iterations(config: PPOConfig) -> tuple[int, bool]:
    """warmup_steps (optimizer steps) in PPO iterations, for targets that step the schedule once per
    iteration; and whether the conversion is exact."""
    per_iteration = config.ppo_epochs * config.num_mini_batches
    if config.warmup_steps == 0:
        return 0, True
    iterations = max(1, math.floor(config.warmup_steps / per_iteration + 0.5))
    return iterations, iterations * per_iteration == config.warmup_steps


def per_token_kl_target(config: PPOConfig, mean_length: float | None = None) -> float:
    """Our kl_target (nats summed over the response) per response token, for targets whose adaptive controller
    compares its target with the per-token KL averaged over each response, then over the batch (verl's
    apply_kl_penalty, OpenRLHF's experience maker): kl_target / mean_length, the mean response length where one
    was logged, else / response_length, the maximum. With the maximum the controller holds the summed KL near
    kl_target x mean length / response_length, below kl_target once responses end early; with the mean it holds
    the per-token mean x mean length near kl_target, which is the summed KL when every response has the mean
    length (see tuner.engines.Units for the error otherwise)."""
    return config.kl_target / (mean_length or config.response_length)


def micro(config: PPOConfig) -> int:
    return config.micro_batch_size or config.mini_batch_size


def lora_alpha_int(config: PPOConfig) -> int:
    """lora_alpha for targets that take an integer: rounded, at least 1."""
    return max(1, round(config.lora_alpha))


def lora_targets(config: PPOConfig) -> str | list[str]:
    """lora_target_modules as peft takes it: the string 'all-linear', or a list of module names."""
    if config.lora_target_modules.strip() == "all-linear":
        return "all-linear"
    return [name.strip() for name in config.lora_target_modules.split(",") if name.strip()]


# -- rendering -----------------------------------------------------------------------------------

def launch_args(out: Out, style: str) -> list[str]:
    """The settings of `out` as a trainer's argv tail (what render_bash_array writes, unquoted)."""
    words: list[str] = []
    for name, value, _ in out.items:
        if name:
            words += flag_words(name, value) if style == "flag" else [hydra_word(name, value)]
    return words


def render_bash_array(out: Out, array: str, style: str) -> list[str]:
    """Lines of `array=( ... )`: style "flag" writes `--name value`, style "hydra" writes `name=value`.
    A value of True with style "flag" writes the bare flag (argparse store_true)."""
    lines = [f"{array}=("]
    for name, value, comment in out.items:
        if not name:
            lines += comment_lines([comment], "  ")
            continue
        words = flag_words(name, value) if style == "flag" else [hydra_word(name, value)]
        lines.append("  " + " ".join(shlex.quote(w) for w in words) + (f"  # {_one_line(comment)}" if comment else ""))
    lines.append(")")
    return lines
