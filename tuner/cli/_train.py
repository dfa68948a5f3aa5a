"""`tuner train CONFIG.yaml`: one PPO run from an engine config file, with a progress bar."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

from trials import ConfigError, KLLimit, Problem, TunerError, chain, looked_in, path_fields
from trials import metrics as K
from tuner.cli._config_file import load_config_file

EXIT_KL_LIMIT = 3  # `tuner train` exit code: the KL limit (--kl-limit) stopped the run before its last iteration
NOT_EVALUATED = "not evaluated yet"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="run one PPO training from an engine config file",
                       description="Run one PPO training from a YAML file of engine fields (see configs/).",
                       epilog=f"exit codes: 0 the run finished; {EXIT_KL_LIMIT} the KL limit stopped it (the "
                              "summary says at which iteration); 2 a bad config or argument (nothing is run); "
                              "130 interrupted.")
    p.add_argument("config", help="YAML file: a mapping of engine config fields")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override one field (YAML value), e.g. --set policy_lr=3e-5; repeatable")
    p.add_argument("--save", metavar="DIR", help="save the final policy here with save_pretrained")
    p.add_argument("--kl-limit", type=_nats, metavar="NATS",
                   help="stop when objective/kl (nats, summed over the response) passes this")
    p.add_argument("--quiet", action="store_true", help="no progress bar; print only the summary")
    p.set_defaults(func=run)


def _nats(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0 or not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a positive number of nats, got {text!r}; "
                                         "the guidance keeps KL below 15-20")
    return value


def _eval_text(value: float, fmt: str = ".3f") -> str:
    return format(value, fmt) if math.isfinite(value) else NOT_EVALUATED


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError([Problem("--set", item, "is not FIELD=VALUE", "write e.g. --set policy_lr=3e-5")])
        out[key.strip()] = yaml.safe_load(raw) if raw else None
    return out


class _Progress:
    """A tqdm bar with reward, eval, KL and beta (a reporter that never asks to stop)."""

    def __init__(self, total: int, quiet: bool, initial_eval: float = math.nan):
        from tqdm import tqdm

        self.eval = initial_eval  # the last evaluation, the one before any update at first
        self.evaluated = False  # whether the run evaluated since it started
        self.bar = tqdm(total=total, unit="it", disable=quiet, dynamic_ncols=True, file=sys.stderr)

    def report(self, iteration: int, metrics: dict[str, float]) -> bool:
        if K.EVAL_SCORES in metrics:
            self.eval, self.evaluated = metrics[K.EVAL_SCORES], True
        self.bar.set_postfix({"reward": f"{metrics[K.SCORES]:.3f}", "eval": _eval_text(self.eval),
                              "kl": f"{metrics[K.KL]:.2f}", "beta": f"{metrics[K.KL_COEF]:.3g}"}, refresh=False)
        self.bar.update(1)
        return False


def _with_folder(error: TunerError, config: str, overridden: set[str]) -> TunerError:
    """`error` with the folder that a relative path from the config file was looked for in."""
    folder = str(Path(config).resolve().parent)
    paths = set(path_fields()) - overridden  # a --set value is used as given, not resolved
    problems = [Problem(p.path, p.value, p.message + (looked_in(p.path, p.value, folder, "the config's folder")
                                                      if p.path in paths else ""), p.fix) for p in error.problems]
    return type(error)(problems) if problems else error


def run(args: argparse.Namespace) -> int:
    overrides = _parse_overrides(args.overrides)
    if args.save:
        overrides["output_dir"] = args.save
    config = load_config_file(args.config, overrides)
    for warning in config.warnings():
        print(f"warning: {warning}", file=sys.stderr)
    from trials import (
        PPOTrainer,  # torch and transformers load only once the config is known to be good
    )

    try:
        trainer = PPOTrainer(config)  # every input is loaded and checked before the bar appears
    except TunerError as exc:
        raise _with_folder(exc, args.config, set(overrides)) from None
    progress = _Progress(config.num_iterations, args.quiet, trainer.initial_eval())  # train() reuses it
    limit = KLLimit(args.kl_limit) if args.kl_limit is not None else None
    try:
        result = trainer.train(chain(limit, progress.report))
    finally:
        progress.bar.close()
    m = result.metrics
    print(f"iterations: {result.iterations}/{config.num_iterations}"
          + (f" (stopped: {limit.reason()})" if limit is not None and limit.stopped else ""))
    last_eval = progress.eval if progress.evaluated else math.nan
    print(f"eval/scores: {_eval_text(result.initial_eval, '.4f')} at start -> {_eval_text(last_eval, '.4f')} at end")
    print(f"objective/kl: {m[K.KL]:.2f} nats (final), objective/kl_coef: {m[K.KL_COEF]:.4g}")
    secs = [h[K.ITERATION_SECONDS] for h in result.history]
    print(f"seconds per iteration: {sum(secs) / len(secs):.2f}")
    if result.output_dir:
        print(f"saved the policy to {result.output_dir}")
    return EXIT_KL_LIMIT if limit is not None and limit.stopped else 0
