"""What a running sweep tells those who watch it, as records.

`run_sweep(spec, callbacks)` tells every `SweepCallback` what the sweep is doing before its first
trial (`phase`) and when a later stage starts (`stage_started`), hands it the trial's task when it
starts, each iteration's `TrialReport`, and the `Outcome` the searcher recorded when it ends.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuner.trial import Outcome, TrialReport, TrialTask

__all__ = ["SweepCallback", "tell"]


class SweepCallback:
    """Watches a sweep; override what you need. Called in the driver, in order, one at a time."""

    def phase(self, message: str) -> None:
        """What the sweep is doing before its trials run (opening the study, starting Ray), in words."""

    def stage_started(self, stage: str, title: str) -> None:
        """A later stage of the sweep starts (stage: "promotion"): the trials told from now on are its runs,
        numbered in a study of their own (`TrialTask.source` names the search trial each repeats)."""

    def trial_started(self, task: TrialTask) -> None:
        """A trial's first attempt started on a worker."""

    def trial_reported(self, number: int, iteration: int, report: TrialReport) -> None:
        """A trial reported an iteration (a `TrialReport`)."""

    def trial_ended(self, outcome: Outcome) -> None:
        """A trial ended, and the study holds its outcome."""


def tell(callbacks: Sequence[SweepCallback], message: str) -> None:
    """Tell every callback what the sweep is doing (`phase`)."""
    for callback in callbacks:
        callback.phase(message)
