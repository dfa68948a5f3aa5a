"""The live table of trials in the terminal, and the end-of-sweep summary."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from ray.tune import Callback
from rich.console import Console
from rich.live import Live
from rich.table import Table

from trials import metrics as K
from tuner.sweep._searcher import StudySearcher

__all__ = ["LiveTable", "render_rows"]


def _f(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def render_rows(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("trial", "state", "iter", "reward", "eval", "score", "KL", "KL max", "beta", "stop"):
        table.add_column(column, justify="right" if column not in ("state", "stop") else "left")
    for r in sorted(rows, key=lambda r: r["number"]):
        table.add_row(str(r["number"]), r["state"], str(r.get("iteration", "-")), _f(r.get("reward")),
                      _f(r.get("eval")), _f(r.get("score")), _f(r.get("kl"), ".2f"), _f(r.get("kl_max"), ".2f"),
                      _f(r.get("beta"), ".3g"), r.get("stop", ""))
    return table


class LiveTable(Callback):
    """Trials' state, iteration, reward, KL and beta while the sweep runs; also times each trial."""

    def __getstate__(self) -> dict:
        return {}  # Ray pickles callbacks into its experiment state; these hold live handles

    def __init__(self, searcher: StudySearcher, title: str, stream: Any = None):
        self.searcher, self.title = searcher, title
        self.console = Console(file=stream or sys.stderr)
        self.rows: dict[str, dict[str, Any]] = {}
        self.started: dict[str, float] = {}
        self.wall: dict[str, float] = {}  # ray trial id -> seconds from start to end
        self.compute: dict[str, float] = {}  # ray trial id -> sum of iteration seconds
        self.live = Live(console=self.console, refresh_per_second=2, auto_refresh=False) if self.console.is_terminal else None

    def _show(self, final_line: str | None = None) -> None:
        if self.live is not None:
            self.live.update(render_rows(list(self.rows.values()), self.title), refresh=True)
        elif final_line:
            self.console.print(final_line, highlight=False)

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if self.live is not None and not self.live.is_started:
            self.live.start()
        self.started.setdefault(trial.trial_id, time.perf_counter())
        engine = trial.config["engine"]
        self.rows[trial.trial_id] = {"number": trial.config["number"], "state": "RUNNING", "beta": engine["kl_coef"]}
        self._show()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        row = self.rows.setdefault(trial.trial_id, {"number": trial.config.get("number"), "state": "RUNNING"})
        if "error" in result:
            return
        self.compute[trial.trial_id] = self.compute.get(trial.trial_id, 0.0) + result.get(K.ITERATION_SECONDS, 0.0)
        row.update(iteration=result.get("training_iteration"), reward=result.get(K.SCORES), kl=result.get(K.KL),
                   kl_max=result.get("kl_max"), beta=result.get(K.KL_COEF), score=result.get("objective"),
                   eval=result.get(K.EVAL_SCORES, row.get("eval")))
        self._show()

    def _finish(self, trial: Any, fallback: str) -> None:
        self.wall[trial.trial_id] = time.perf_counter() - self.started.get(trial.trial_id, time.perf_counter())
        row = self.rows.setdefault(trial.trial_id, {"number": trial.config.get("number")})
        outcome = self.searcher.outcomes.get(trial.trial_id)
        row["state"] = outcome.state if outcome else fallback
        row["stop"] = outcome.stop_reason if outcome else fallback.lower()
        self._show(f"trial {row['number']}: {row['state']:<10} iter {row.get('iteration', '-')}  "
                   f"score {_f(row.get('score'))}  KL max {_f(row.get('kl_max'), '.2f')}  ({row['stop']})")

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "COMPLETE")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._finish(trial, "FAIL")

    def stop(self) -> None:
        if self.live is not None and self.live.is_started:
            self.live.stop()
