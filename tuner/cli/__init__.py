"""The `tuner` command. Each group of subcommands lives in its own module with `register(subparsers)`:
`_train` (train), `_spec` (validate, schema), `_sweep` (run, resume, sync, list, status), `_inspect`
(diagnose, export, ui, dashboard) and `_cluster` (submit, jobs, logs, cancel). `_table` renders
trials in the terminal.

Exit codes: 0 done; 1 the sweep itself stopped on an error (what finished is kept); 2 a user mistake
(TunerError: one line per problem on stderr, no traceback, nothing written); 3 `tuner train` was
stopped by its KL limit; 130 interrupted by Ctrl-C, 143 stopped by SIGTERM (Kubernetes, systemd,
`ray job stop`): a sweep then continues with `tuner resume`.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from trials import TunerError
from tuner.cli import _cluster, _inspect, _spec, _sweep, _train

_COMMANDS = (_train, _spec, _sweep, _inspect, _cluster)  # each adds its subcommands with register(subparsers)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints usage; keep it to one line
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def _version() -> str:
    try:
        return version("ppo-tuner")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tuner", description="Hyperparameter sweeps for PPO fine-tuning of language models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}",
                        help="print ppo-tuner's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for module in _COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TunerError as exc:
        for line in exc.lines():
            sys.stderr.write(f"error: {line}\n")
        return 2
    except KeyboardInterrupt:  # Ctrl-C twice, or SIGTERM outside a sweep's trials
        sys.stderr.write("interrupted\n")
        return _sweep.stopped_code()

