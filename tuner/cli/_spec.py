"""`tuner validate SPEC` and `tuner schema`: check a sweep spec, and describe the spec format."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import yaml

from trials import TunerError


def register(subparsers: argparse._SubParsersAction) -> None:
    validate = subparsers.add_parser(
        "validate", help="check a sweep spec and print it with every default filled in",
        description="Check a sweep spec. Prints the resolved spec (YAML) on stdout, ending with a "
                    "comment that gives the memory model's prediction of a trial's peak at the "
                    "space's extremes (for verl, OpenRLHF and TRL: the argv of one sampled trial, "
                    "one argument a line), and warnings on stderr; "
                    "exit code 2 and one line per problem when it is wrong.")
    validate.add_argument("spec", type=Path, help="the sweep spec (YAML)")
    validate.add_argument("--address", help="check it as it runs on this Ray cluster (as tuner run --address; "
                                            "'auto' as tuner submit runs it), in place of ray.address")
    validate.set_defaults(func=_validate)

    schema = subparsers.add_parser(
        "schema", help="write the JSON Schema of sweep specs (for editor completion)",
        description="Write the JSON Schema of sweep specs, with a description of every key.")
    schema.add_argument("-o", "--output", type=Path, help="write to this file instead of stdout")
    schema.set_defaults(func=_schema)


def _validate(args: argparse.Namespace) -> int:
    from tuner.spec import load_spec

    spec = load_spec(args.spec, ray_address=args.address)
    for line in spec.warnings():
        sys.stderr.write(f"warning: {line}\n")
    sys.stdout.write(yaml.safe_dump(spec.resolved(), sort_keys=False, default_flow_style=False, width=100))
    sys.stdout.write(f"# {_memory_line(spec)}\n")  # a YAML comment: the output stays the resolved spec
    sys.stdout.writelines(f"# {line}\n" for line in _launch_lines(spec))
    return 0


def _launch_lines(spec) -> list[str]:
    """For an external engine: the argv trial 0 launches (its sampled values named), one argument a line."""
    import optuna

    from tuner.spec import make_sampler, sample_params, trial_config
    from tuner.sweep import trial_folder
    from tuner.trial import launch_argv

    if spec.trial.engine in ("ppo-tuner", "command"):
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=spec.directions(), sampler=make_sampler(spec))
    params = sample_params(study.ask(), spec)
    config = trial_config(spec, params).to_dict()
    ext = spec.launch()
    argv = launch_argv(spec.trial.engine, ext["command"], config, trial_folder(spec, 0), number=0, fields=ext["fields"])
    sampled = ", ".join(f"{name}={value!r}" for name, value in params.items()) or "none"
    lines: list[str] = []
    for arg in argv:  # a flag and its values on one line
        if lines and lines[-1].startswith("--") and not arg.startswith("--"):
            lines[-1] += f" {shlex.quote(arg)}"
        else:
            lines.append(shlex.quote(arg))
    rest = ("its launcher builds TRL's PPOConfig from the trial's whole config" if spec.trial.engine == "trl"
            else f"each other key is {spec.trial.engine}'s own default or trial.command's")
    return [f"launch of trial 0 (sampled: {sampled}); {rest}:", *(f"  {line}" for line in lines)]


def _memory_line(spec) -> str:
    """The memory model's prediction of a trial's peak at the extremes of the space, against the budget."""
    from tuner.spec import extreme_configs
    from tuner.trial import MemoryCheck

    if spec.trial.engine != "ppo-tuner":
        return f"memory: not predicted for engine {spec.trial.engine} (the trainer's own)"
    res = spec.resources
    check = MemoryCheck(res.trial_memory_gb or 0.0, res.gpus_per_trial)
    try:
        predicted = sorted(((check.predict_gb(c), c) for c in [spec.base, *extreme_configs(spec)]), key=lambda p: p[0])
    except TunerError as exc:
        return f"memory: not predicted here ({exc.lines()[0]})"
    (low, _), (high, largest) = predicted[0], predicted[-1]
    where = "GPU" if check.device == "cuda" else "CPU"
    text = (f"memory: a trial's predicted peak on a {where} is {low:.2f}-{high:.2f} GiB over the space's extremes "
            f"(largest: rollout {largest.rollout_batch_size}, mini-batch {largest.mini_batch_size}, response "
            f"{largest.response_length} tokens, lora_rank {largest.lora_rank})")
    if res.trial_memory_gb:
        over = sum(p > res.trial_memory_gb for p, _ in predicted[1:])
        text += (f"; {over} of {len(predicted) - 1} extreme configs exceed "
                 f"resources.trial_memory_gb {res.trial_memory_gb:g}")
    return text


def _schema(args: argparse.Namespace) -> int:
    from tuner.spec import SweepSpec

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", **SweepSpec.model_json_schema()}
    text = json.dumps(schema, indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise TunerError(f"{args.output}: cannot be written ({exc.strerror or type(exc).__name__})") from None
    return 0
