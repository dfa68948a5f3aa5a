"""`export_config`: one entry point for every export format."""

from __future__ import annotations

from collections.abc import Callable, Collection
from typing import Any

from trials import ConfigError, PPOConfig, Problem
from tuner.export._native import export_json, export_yaml
from tuner.export._openrlhf import export_openrlhf
from tuner.export._trl import export_trl
from tuner.export._verl import export_verl

FORMATS = ("yaml", "json", "openrlhf", "verl", "trl")  # our engine's config

_EXPORTERS: dict[str, Callable[..., tuple[str, list[str]]]] = {
    "yaml": export_yaml,
    "json": export_json,
    "openrlhf": export_openrlhf,
    "verl": export_verl,
    "trl": export_trl,
}


def export_config(config: PPOConfig, fmt: str, *, source: dict | None = None,
                  mean_length: float | None = None) -> tuple[str, list[str]]:
    """Return (text, warnings): `config` in format `fmt`, and one warning per value the target cannot express.

    fmt is one of FORMATS: "yaml" (ppo-tuner's engine config, runnable with `tuner train FILE`), "json"
    ({"config": ..., "source": ...}), "openrlhf" (a bash script running OpenRLHF's PPO), "verl" (a bash
    script of Hydra overrides for verl's PPO) or "trl" (Python that builds trl 1.12's PPOConfig).
    `source` is optional provenance, e.g. {"sweep": name, "trial": number, "objective": value, "kl": value},
    written as header comments (a "source" key in json). `mean_length`: the exported trial's mean response length
    (tokens), where it was logged: verl and OpenRLHF take an adaptive kl_target per token, kl_target / it (else /
    response_length, the maximum). An unknown format or an impossible config is a
    ConfigError; a malformed `reward` (which the engine would refuse too) is trials.RewardError.
    """
    key = fmt.strip().lower() if isinstance(fmt, str) else fmt
    if key not in _EXPORTERS:
        raise ConfigError([Problem("--format", fmt, "is not an export format", f"use one of {', '.join(FORMATS)}")])
    problems = config.problems()
    if problems:
        raise ConfigError(problems)
    if key in LAUNCH_TARGETS:  # the exporters that convert units
        return _EXPORTERS[key](config, source, mean_length)
    return _EXPORTERS[key](config, source)


SEARCHED = ("yaml", "json")  # for an external engine's sweep: its searched values alone


def formats_for(engine: str) -> tuple[str, ...]:
    """The export formats that apply to a sweep of `engine` (trial.engine), its default first: our
    engine's config in every format; an external engine's own (`command`: your command line), or
    its searched values."""
    if engine == "ppo-tuner":
        return FORMATS
    return (engine, *SEARCHED)


def check_format(fmt: str, engine: str) -> str:
    """`fmt` as a format that applies to a sweep of `engine`; a ConfigError naming --format where
    it does not."""
    allowed = formats_for(engine)
    key = fmt.strip().lower()
    if key not in allowed:
        known = key in FORMATS or key == "command"
        why = (f"does not apply to a sweep of trial.engine {engine}" if known
               else "is not an export format")
        fix = f"use one of {', '.join(allowed)} (default {allowed[0]})"
        raise ConfigError([Problem("--format", fmt, why, fix)])
    return key


LAUNCH_TARGETS = {"openrlhf": export_openrlhf, "verl": export_verl, "trl": export_trl}


def engine_launch(config: PPOConfig, engine: str, fields: Collection[str] | None = None,
                  skip: Collection[str] = ()) -> tuple[Any, list[str]]:
    """`config`'s hyperparameters as `engine`'s launch arguments, through the same mapping as its export:
    verl Hydra overrides and OpenRLHF flags as argv words, TRL {"ppo": PPOConfig kwargs, "lora": LoraConfig
    kwargs}; and one warning per value the engine cannot express. The models, data and reward are not
    among them (the user's fixed arguments name them). `fields`: only these fields (None: every one); `skip`:
    the engine's names left out."""
    return LAUNCH_TARGETS[engine].launch(config, fields, skip)

