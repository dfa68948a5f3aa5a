"""A trial's score and the scheduler's score: pure functions of what the trial reported.

The KL limit's rule itself lives in the engine (`trials.KLLimit`, `trials.passes_kl_limit`); here is
what the controller makes of it: a trial past the limit scores the worst possible value for the
scheduler, so that a run that drifted (and often scores high) never raises ASHA's bar for the others.
"""

from __future__ import annotations

import math

from trials import metrics as K
from tuner.trial._result import StopReason

__all__ = ["WORST", "Scorer", "kl_constraint", "overoptimized", "scheduler_score", "worst"]

WORST = 1e30  # magnitude of the worst possible scheduler score


def worst(direction: str) -> float:
    """The worst possible value in `direction` ('maximize' or 'minimize')."""
    return -WORST if direction == "maximize" else WORST


def scheduler_score(score: float, over_limit: bool, direction: str) -> float:
    """What the scheduler ranks: the score, or the worst value once past the KL limit or without a score."""
    return worst(direction) if over_limit or not math.isfinite(score) else score


def kl_constraint(kl_max: float, limit: float, stop_reason: str | None) -> float:
    """The study's "kl" constraint of a trial (> 0: infeasible): its largest KL minus the limit; at least
    1 for a trial the forecast stopped (`StopReason.KL_FORECAST`) before its KL passed the limit."""
    over = kl_max - limit if math.isfinite(kl_max) else math.inf
    return max(over, 0.0) + 1.0 if stop_reason == StopReason.KL_FORECAST else over


def overoptimized(evaluations: list[list[float]]) -> bool:
    """Whether a trial's training reward rose while its held-out reward fell (reward over-optimization,
    Gao et al. 2022): from the evaluation where the held-out reward peaked (the first, where it never rose
    after the start) to the last one, the training reward on the held-out prompts went up and the
    held-out reward went down. `evaluations`: [iteration, eval/scores, eval/gold_scores] from iteration 0."""
    points = [e for e in evaluations if len(e) == 3 and all(math.isfinite(v) for v in e[1:])]
    if len(points) < 2:
        return False
    peak = max(range(len(points)), key=lambda i: (points[i][2], -i))
    last = points[-1]
    return peak < len(points) - 1 and last[1] > points[peak][1] and last[2] < points[peak][2]


class Scorer:
    """The trial's score from its evaluations: the final one, the best one, or the mean of the last k."""

    def __init__(self, metric: str, direction: str, score: str, last_k: int, initial: float):
        self.metric, self.score, self.last_k = metric, score, last_k
        self.better = max if direction == "maximize" else min
        self.values: list[float] = [initial] if metric in K.EVALUATED and math.isfinite(initial) else []

    def update(self, metrics: dict[str, float]) -> float:
        if self.metric in metrics and math.isfinite(metrics[self.metric]):
            self.values.append(metrics[self.metric])
        if not self.values:
            return math.nan
        if self.score == "best":
            return self.better(self.values)
        if self.score == "mean_last":
            tail = self.values[-self.last_k:]
            return sum(tail) / len(tail)
        return self.values[-1]
