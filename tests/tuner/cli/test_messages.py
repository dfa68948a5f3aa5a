"""What `tuner run` says before its trials: the real folders, the spec's own words."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuner.cli._sweep import _preflight_message
from tuner.spec import parse_spec

SPEC = {"name": "m", "trial": {"model": "demo", "reward": "trials.demo:reward", "prompts": "demo"},
        "search_space": {"policy_lr": {"low": 1e-6, "high": 5e-5, "log": True}}, "budget": {"trials": 2}}


def test_the_demo_build_names_the_cache_that_ppo_tuner_cache_points_at(tmp_path, monkeypatch):
    monkeypatch.setenv("PPO_TUNER_CACHE", str(tmp_path / "cache"))  # empty: the demo model is not built there
    message = _preflight_message(parse_spec(SPEC))
    assert f"cached in {tmp_path / 'cache'})" in message and "~/.cache" not in message


def _summary(rows: list, flagged: list[int]):
    from tuner.sweep import SweepSummary

    return SweepSummary(name="s", sweep_dir=Path("sweeps/s"), counts={"COMPLETE": len(rows)}, best_number=None,
                        best_value=None, best_kl=None, wall_seconds=10.0, trial_compute_seconds=8.0, concurrency=2,
                        ran=len(rows), parent_run_id="p", trials=rows, overoptimized=flagged)


def _row(number: int, gold: float | None):
    from tuner.sweep import TrialRow

    return TrialRow(number=number, state="COMPLETE", value=0.1, kl_max=1.0, iterations=4, params={},
                    stop_reason="completed", gold=gold)


@pytest.mark.parametrize(("golds", "flagged", "line"), [
    ([0.1, 0.2], [], "over-optimization: none (no trial's training reward rose while its held-out reward fell)"),
    ([None, None], [], "over-optimization: not checked (no held-out reward: trial.eval_reward is not set)"),
    ([0.1, 0.2], [1], "over-optimization: in trial 1 the training reward rose while the held-out reward fell"),
])
def test_the_summary_says_which_trials_were_over_optimized_none_or_why_not_checked(capsys, golds, flagged, line):
    from tuner.cli._sweep import _print_summary

    _print_summary(_summary([_row(n, g) for n, g in enumerate(golds)], flagged))
    printed = [text for text in capsys.readouterr().out.splitlines() if text.startswith("over-optimization:")]
    assert len(printed) == 1 and printed[0].startswith(line), printed
