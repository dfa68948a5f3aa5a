"""The `tuner` command. Each group of subcommands lives in its own module with `register(subparsers)`:
`_train` (train), `_spec` (validate, schema), `_sweep` (run, resume, list, status, export, ui) and
`_cluster` (submit, jobs, logs, cancel). `_table` renders trials in the terminal.

User mistakes (TunerError) become one line per problem on stderr and exit code 2, no traceback. A stopped
sweep exits 130 after Ctrl-C, 143 after SIGTERM (Kubernetes, systemd, `ray job stop`).
"""

from __future__ import annotations

import argparse
import sys

from trials import TunerError
from tuner.cli import _cluster, _spec, _sweep, _train

_COMMANDS = (_train, _spec, _sweep, _cluster)  # each adds its subcommands with register(subparsers)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints usage; keep it to one line
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tuner", description="Hyperparameter sweeps for PPO fine-tuning of language models.")
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

