"""Stopping a run from its reports: the KL limit (with its optional forecast and grace), and
reporters chained into one.

A stopper has the reporter's signature, `(iteration, metrics) -> should_stop` (as Ray Tune's
`Stopper.__call__(trial_id, result)`), so the engine, `tuner train`, the sweep's trials and the
benchmark replay compose the same objects: `chain(KLLimit(15.0), progress.report)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from trials import metrics as K

__all__ = ["FORECAST_FLOOR", "FORECAST_WINDOW", "KLLimit", "ReportFn", "chain", "forecast_kl", "passes_kl_limit"]

ReportFn = Callable[[int, dict[str, float]], bool]


def passes_kl_limit(kl: float, limit: float) -> bool:
    """The KL limit's rule: objective/kl (nats, summed over the response) above the limit, or not finite."""
    return not math.isfinite(kl) or kl > limit


FORECAST_WINDOW = 3  # the forecast's line is fitted to this many of the last judged iterations
FORECAST_FLOOR = 0.5  # ... and is only drawn once objective/kl has reached this fraction of the limit


def forecast_kl(points: list[tuple[int, float]], at: int) -> float:
    """objective/kl at iteration `at` on the least-squares line through (iteration, kl) `points` (>= 2)."""
    n = len(points)
    mean_i = sum(i for i, _ in points) / n
    mean_kl = sum(kl for _, kl in points) / n
    spread = sum((i - mean_i) ** 2 for i, _ in points)
    slope = sum((i - mean_i) * (kl - mean_kl) for i, kl in points) / spread
    return mean_kl + slope * (at - mean_i)


class KLLimit:
    """Stops a run in the iteration whose objective/kl passes `limit`; remembers what it saw.

    `grace_iterations`: the first N iterations are not judged (a KL that spikes early and falls back is
    not stopped for it, and does not count in `kl_max`); a KL that is not finite stops the run anyway.
    `forecast` (needs `last_iteration`): also stop a run whose KL, at least FORECAST_FLOOR of the limit
    now, is on course to pass it by its last iteration: the line through its last FORECAST_WINDOW
    judged values, extended to `last_iteration`, passes the limit.
    """

    def __init__(self, limit: float, *, forecast: bool = False, last_iteration: int | None = None,
                 grace_iterations: int = 0, window: int = FORECAST_WINDOW, floor: float = FORECAST_FLOOR):
        if not limit > 0:
            raise ValueError(f"the KL limit must be > 0 nats, but got {limit=}")
        if forecast and (last_iteration is None or last_iteration < 1):
            raise ValueError(f"the KL forecast needs the run's last iteration, but got {last_iteration=}")
        if grace_iterations < 0 or window < 2:
            raise ValueError(f"grace_iterations must be >= 0 and window >= 2, but got {grace_iterations=}, {window=}")
        self.limit = float(limit)
        self.forecast, self.last_iteration, self.grace = forecast, last_iteration, grace_iterations
        self.window, self.floor = window, floor
        self.kl_max = -math.inf  # largest objective/kl judged so far (nats; after the grace iterations)
        self.kl_last = math.nan
        self.crossed_at: int | None = None  # the iteration that passed the limit
        self.kl_at_crossing = math.nan
        self.forecast_at: int | None = None  # the iteration whose forecast passed the limit
        self.kl_forecast = math.nan  # that forecast: objective/kl at last_iteration (nats)
        self._judged: list[tuple[int, float]] = []

    def __call__(self, iteration: int, metrics: dict[str, float]) -> bool:
        kl = float(metrics[K.KL])
        self.kl_last = kl
        if iteration <= self.grace and math.isfinite(kl) and not self.stopped:
            return False
        self.kl_max = max(self.kl_max, kl) if math.isfinite(kl) else math.inf
        self._judged = [*self._judged[1 - self.window:], (iteration, kl)]
        if self.stopped:
            return True
        if passes_kl_limit(kl, self.limit):
            self.crossed_at, self.kl_at_crossing = iteration, kl
        elif self.forecast and self._forecast_passes(iteration, kl):
            self.forecast_at = iteration
        return self.stopped

    def _forecast_passes(self, iteration: int, kl: float) -> bool:
        if len(self._judged) < 2 or iteration >= self.last_iteration or kl < self.floor * self.limit:
            return False
        self.kl_forecast = forecast_kl(self._judged, self.last_iteration)
        return passes_kl_limit(self.kl_forecast, self.limit)

    @property
    def stopped(self) -> bool:
        return self.crossed_at is not None or self.forecast_at is not None

    @property
    def forecast_stop(self) -> bool:
        """Whether the forecast, not a crossing, stopped the run."""
        return self.forecast_at is not None

    def reason(self) -> str:
        """Why it stopped, in one line ("" while within the limit)."""
        if self.forecast_at is not None:
            return (f"{K.KL} {self.kl_last:.1f} at iteration {self.forecast_at} is forecast to reach "
                    f"{self.kl_forecast:.1f} by iteration {self.last_iteration}, past the limit {self.limit:g}")
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
