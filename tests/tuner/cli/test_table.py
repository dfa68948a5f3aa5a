"""The terminal table: what its columns and titles say."""

from __future__ import annotations

import io

from rich.console import Console

import tuner.cli._table as table_module
from tuner.cli._table import LiveTable, render_rows
from tuner.trial._task import TrialTask


def _headers(rows: list[dict]) -> list[str]:
    return [str(c.header) for c in render_rows(rows, "t").columns]


def test_a_promotion_runs_first_column_is_the_run_and_the_next_the_trial_it_repeats():
    runs = [{"number": 0, "state": "COMPLETE", "label": "trial 4, seed 1"}]
    assert _headers(runs)[:2] == ["run", "repeats"]
    assert _headers([{"number": 4, "state": "COMPLETE"}])[:2] == ["trial", "state"]


def test_a_stage_is_announced_once_on_a_terminal(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(table_module, "console",
                        lambda stream=None: Console(file=out, force_terminal=True, width=200))
    live = LiveTable("sweep s")
    line = "promotion: the best 1 config x 2 fresh seeds, 4 iterations each (2 runs to do)"
    live.stage_started("promotion", line)
    live.trial_started(TrialTask(number=0, engine={"kl_coef": 0.05, "seed": 1}, params={}, kl_limit=15.0,
                                 objective={}, source=4))
    live.stop()
    assert out.getvalue().count(line) == 1
    assert "sweep s: promotion runs" in out.getvalue()


def test_on_a_pipe_each_trial_says_when_it_starts():
    out = io.StringIO()  # not a terminal: no live table, one line per event
    live = LiveTable("sweep s", stream=out)
    live.trial_started(TrialTask(number=3, engine={"kl_coef": 0.05}, params={"policy_lr": 3e-5, "ppo_epochs": 2},
                                 kl_limit=15.0, objective={}))
    assert out.getvalue() == "trial 3: started (policy_lr=3e-05, ppo_epochs=2)\n"
