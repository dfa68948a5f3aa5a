"""Stopping a run from its reports: the KL limit, and reporters chained into one.

A stopper has the reporter's signature, `(iteration, metrics) -> should_stop` (as Ray Tune's
`Stopper.__call__(trial_id, result)`), so the engine, `tuner train`, the sweep's trials and the
benchmark replay compose the same objects: `chain(KLLimit(15.0), progress.report)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from trials import metrics as K

__all__ = ["KLLimit", "ReportFn", "chain", "passes_kl_limit"]

ReportFn = Callable[[int, dict[str, float]], bool]


def passes_kl_limit(kl: float, limit: float) -> bool:
    """The KL limit's rule: objective/kl (nats, summed over the response) above the limit, or not finite."""
    return not math.isfinite(kl) or kl > limit


class KLLimit:
    """Stops a run in the iteration whose objective/kl passes `limit`; remembers what it saw."""

    def __init__(self, limit: float):
        if not limit > 0:
            raise ValueError(f"the KL limit must be > 0 nats, but got {limit=}")
        self.limit = float(limit)
        self.kl_max = -math.inf  # largest objective/kl reported so far (nats)
        self.kl_last = math.nan
        self.crossed_at: int | None = None  # the iteration that passed the limit
        self.kl_at_crossing = math.nan

    def __call__(self, iteration: int, metrics: dict[str, float]) -> bool:
        kl = float(metrics[K.KL])
        self.kl_last = kl
        self.kl_max = max(self.kl_max, kl) if math.isfinite(kl) else math.inf
        if self.crossed_at is None and passes_kl_limit(kl, self.limit):
            self.crossed_at, self.kl_at_crossing = iteration, kl
        return self.crossed_at is not None

    @property
    def stopped(self) -> bool:
        return self.crossed_at is not None

    def reason(self) -> str:
        """Why it stopped, in one line ("" while within the limit)."""
        if self.crossed_at is None:
            return ""
        return f"{K.KL} {self.kl_at_crossing:.1f} passed the limit {self.limit:g} at iteration {self.crossed_at}"


def chain(*reporters: ReportFn | None) -> ReportFn:
    """One reporter that calls each in order (every one sees every report) and stops when any asks to."""
    active = [r for r in reporters if r is not None]

    def report(iteration: int, metrics: dict[str, float]) -> bool:
        stops = [r(iteration, metrics) for r in active]
        return any(stops)

    return report
