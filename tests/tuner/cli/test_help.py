"""The command line itself: every option says what it does, `--version`, the exit codes documented."""

from __future__ import annotations

import argparse
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from tuner.cli import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_option_and_argument_has_a_help_text(command):
    parser = _subcommands()[command]
    missing = [a.dest for a in parser._actions if not (a.help and a.help.strip()) and a.help != argparse.SUPPRESS]
    assert not missing, f"tuner {command}: no help for {missing}"


def test_version():
    proc = subprocess.run([sys.executable, "-m", "tuner.cli", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0 and proc.stdout.startswith("tuner ") and proc.stdout.split()[1][0].isdigit()


def test_train_help_documents_its_exit_codes():
    from tuner.cli._train import EXIT_KL_LIMIT

    text = _subcommands()["train"].format_help()
    assert f"{EXIT_KL_LIMIT} the KL limit stopped it" in " ".join(text.split())


def test_an_evaluation_not_made_yet_is_said_in_words():
    from tuner.cli._train import _eval_text

    assert _eval_text(math.nan) == "not evaluated yet"
    assert _eval_text(0.1234) == "0.123"


def test_export_help_says_it_writes_the_promoted_answer():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    help_line = next(a.help for a in sub._choices_actions if a.dest == "export")
    assert help_line.startswith("write the sweep's answer: the promoted config with the best mean over fresh seeds")
