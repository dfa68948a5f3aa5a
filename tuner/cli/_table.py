"""Trials in the terminal: the live table while a sweep runs, and the table of a study's trials."""

from __future__ import annotations

import math
import sys
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from trials import metrics as K
from tuner.sweep import PromotedConfig, SweepCallback, TrialRow
from tuner.trial import Outcome, State, TrialReport, TrialTask

__all__ = ["LiveTable", "console", "render_promotion", "render_rows", "row_of"]

PIPE_WIDTH = 200  # columns of a table written to a pipe or a file: wide enough that no column is cut


def console(stream: Any = None) -> Console:
    """A console on `stream` (stdout by default): a terminal's own width, or PIPE_WIDTH for a pipe or a
    file (rich would cut tables at 80 columns there)."""
    out = Console(file=stream or sys.stdout)
    if not out.is_terminal:
        out.width = PIPE_WIDTH
    return out


def _f(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def row_of(t: TrialRow) -> dict[str, Any]:
    """A study's trial as a table row."""
    return {"number": t.number, "state": t.state, "iteration": t.iterations if t.iterations is not None else "-",
            "score": t.value, "kl": t.kl_final, "kl_max": t.kl_max, "beta": t.beta, "stop": t.stop_reason,
            "reward": t.reward, "eval": t.eval, "gold": t.gold, "flag": "over-opt" if t.overoptimized else ""}


def render_rows(rows: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title, title_justify="left")
    labels = any("label" in r for r in rows)
    # a held-out reward: its column, and the flag in the stop column
    gold = any(r.get("gold") is not None for r in rows)
    # a later stage's rows are runs, each repeating a search trial (its label: "trial 4, seed 1")
    columns = ("run" if labels else "trial", *(("repeats",) if labels else ()), "state", "iter", "reward", "eval",
               *(("held-out",) if gold else ()), "score", "KL", "KL max", "beta", "stop")
    for column in columns:
        table.add_column(column, justify="right" if column not in ("state", "stop") else "left")
    for r in sorted(rows, key=lambda r: r["number"]):
        stop = r.get("stop", "") + (f" ({r['flag']})" if r.get("flag") else "")
        table.add_row(str(r["number"]), *((r.get("label", ""),) if labels else ()), r["state"],
                      str(r.get("iteration", "-")), _f(r.get("reward")), _f(r.get("eval")),
                      *((_f(r.get("gold")),) if gold else ()), _f(r.get("score")),
                      _f(r.get("kl"), ".2f"), _f(r.get("kl_max"), ".2f"), _f(r.get("beta"), ".3g"), stop)
    return table


def _moved(config: PromotedConfig) -> str:
    if config.rank is None:
        return "-"
    step = config.search_rank - config.rank
    return f"{config.rank} ({'up ' + str(step) if step > 0 else 'down ' + str(-step) if step < 0 else 'same'})"


def render_promotion(configs: list[PromotedConfig], title: str) -> Table:
    """The promoted configs: their rank in the search and in promotion, mean, spread and KL over seeds."""
    table = Table(title=title, title_justify="left")
    for column in ("trial", "search rank", "search score", "promotion rank", "mean", "spread",
                   "KL max", "seeds", "verdict"):
        table.add_column(column, justify="left" if column in ("seeds", "verdict") else "right")
    for c in configs:
        seeds = " ".join(f"{r.seed}:{_f(r.value)}" + ("" if r.feasible else f" {r.state}") for r in c.runs)
        table.add_row(str(c.source), str(c.search_rank), _f(c.search_value), _moved(c), _f(c.mean), _f(c.spread),
                      _f(c.kl_max, ".2f"), seeds or "-", c.verdict)
    return table


class LiveTable(SweepCallback):
    """Trials' state, iteration, reward, KL and beta while the sweep runs (a redrawn table on a
    terminal; elsewhere one line as each trial starts and one as it ends)."""

    def __init__(self, title: str, stream: Any = None):
        self.title = self.name = title
        self.console = console(stream or sys.stderr)
        self.rows: dict[int, dict[str, Any]] = {}  # trial number -> its row
        # what the rows are: the search's trials, or (after stage_started) a later stage's runs
        self.stage = "trial"
        self.live = (Live(console=self.console, refresh_per_second=2, auto_refresh=False)
                     if self.console.is_terminal else None)

    def _show(self, final_line: str | None = None) -> None:
        if self.live is not None:
            self.live.update(render_rows(list(self.rows.values()), self.title), refresh=True)
        elif final_line:
            self.console.print(final_line, highlight=False)

    def phase(self, message: str) -> None:
        self.console.print(f"{message} ...", highlight=False)

    def stage_started(self, stage: str, title: str) -> None:
        self.stop()  # the search's table stays on the screen as it ended
        self.live = (Live(console=self.console, refresh_per_second=2, auto_refresh=False)
                     if self.console.is_terminal else None)
        # the line says what the stage does; its table's title only what its rows are (not the line again)
        self.title, self.rows, self.stage = f"{self.name}: {stage} runs", {}, stage
        self.console.print(f"{title} ...", highlight=False)

    def trial_started(self, task: TrialTask) -> None:
        if self.live is not None and not self.live.is_started:
            self.live.start()
        self.rows[task.number] = {"number": task.number, "state": State.RUNNING,
                                  "beta": task.engine["kl_coef"]}
        if task.source is not None:
            self.rows[task.number]["label"] = f"trial {task.source}, seed {task.engine.get('seed')}"
        if self.live is None:  # a pipe: say that it started (its first report may be many seconds away)
            label = f" ({self.rows[task.number]['label']})" if task.source is not None else ""
            values = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in task.params.items())
            self.console.print(f"{self.stage} {task.number}{label}: started" + (f" ({values})" if values else ""),
                               highlight=False)
        self._show()

    def trial_reported(self, number: int, iteration: int, report: TrialReport) -> None:
        row = self.rows.setdefault(number, {"number": number, "state": State.RUNNING})
        m = report.metrics
        row.update(iteration=iteration, reward=m.get(K.SCORES), kl=m.get(K.KL), kl_max=report.kl_max,
                   beta=m.get(K.KL_COEF), score=report.objective,
                   eval=m.get(K.EVAL_SCORES, row.get("eval", report.initial_eval)))
        if K.EVAL_GOLD in m or math.isfinite(report.initial_gold):
            row["gold"] = m.get(K.EVAL_GOLD, row.get("gold", report.initial_gold))
        self._show()

    def trial_ended(self, outcome: Outcome) -> None:
        row = self.rows.setdefault(outcome.number, {"number": outcome.number})
        row["state"], row["stop"] = outcome.state, outcome.stop_reason
        if outcome.iterations is not None:  # the iterations the study records, as the summary has
            row["iteration"] = outcome.iterations
        label = f" ({row['label']})" if "label" in row else ""
        self._show(f"{self.stage} {row['number']}{label}: {row['state']:<10} iter {row.get('iteration', '-')}  "
                   f"score {_f(row.get('score'))}  KL max {_f(row.get('kl_max'), '.2f')}  ({row['stop']})")

    def stop(self) -> None:
        if self.live is not None and self.live.is_started:
            self.live.stop()
