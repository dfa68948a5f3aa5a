"""The `tuner` command. Each subcommand lives in its own module with `register(subparsers)`.

User mistakes (TunerError) become one line per problem on stderr and exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from trials import TunerError

# module name under tuner/ -> its subcommands are added by module.register(subparsers)
_COMMAND_MODULES = ["_cmd_train", "_cmd_spec", "_cmd_sweep", "_cmd_cluster"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse's default prints usage; keep it to one line
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="tuner", description="Hyperparameter sweeps for PPO fine-tuning of language models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"tuner.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"tuner.{name}":
                continue  # a command module not written yet
            raise
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
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
