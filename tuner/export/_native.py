"""Export to ppo-tuner's own formats: the engine's YAML config and a JSON record."""

from __future__ import annotations

import json
import math
from typing import Any

import yaml

from trials import PPOConfig, field_specs
from tuner.export._common import comment_lines, header


def export_yaml(config: PPOConfig, source: dict | None = None) -> tuple[str, list[str]]:
    """Every field as a flat mapping, runnable with `tuner train FILE`; provenance only as comments."""
    lines = comment_lines(header("ppo-tuner engine config; run it with `tuner train FILE`", source))
    for name, spec in field_specs().items():
        entry = yaml.safe_dump({name: getattr(config, name)}, default_flow_style=False, sort_keys=False,
                               width=1_000_000, allow_unicode=True).rstrip("\n")
        comment = spec.help + (f" [{spec.unit}]" if spec.unit else "")
        if "\n" in entry:
            lines += comment_lines([comment])
            lines.append(entry)
        else:
            lines.append(f"{entry}  # {' '.join(comment.split())}")
    return "\n".join(lines) + "\n", []


def export_json(config: PPOConfig, source: dict | None = None) -> tuple[str, list[str]]:
    """{"config": every field, "source": the provenance} (non-finite numbers become null)."""
    record = {"config": config.to_dict(), "source": _finite(source or {})}
    return json.dumps(record, indent=2, allow_nan=False, default=str) + "\n", []


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
