"""Riding through an outage of the study database.

The driver is the only writer of the study. While the database is unreachable (a restart, a failover,
a dropped network), `HeldWrites` holds the driver's study writes in order and retries them with backoff,
so the trials keep running and their results are written, once and in order, when the database is back.
Only connection errors are held (`is_connection_error`); any other error is raised at once. An outage
longer than the spec's `storage_outage` stops the sweep as Ctrl-C does (`StudyOutage`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from tuner.sweep._study import is_connection_error, scrub

__all__ = ["HeldWrites", "StudyOutage", "Unavailable"]

log = logging.getLogger(__name__)
T = TypeVar("T")
FIRST_RETRY = 0.5  # seconds after the first failure; doubled after each failure,
LAST_RETRY = 8.0  # up to this


class StudyOutage(Exception):
    """The study database stayed unreachable longer than the spec's storage_outage."""


class Unavailable(Exception):
    """The study database cannot be reached now (its outage is within the window): try again later."""


class HeldWrites:
    """The driver's study writes, applied in the order given; held while the database is unreachable."""

    def __init__(self, window: float, url: str = "", clock: Callable[[], float] = time.monotonic):
        self.window, self.url, self.clock = window, url, clock
        self.pending: deque[Callable[[], Any]] = deque()
        self.since: float | None = None  # when the current outage began (its first failed call)
        self.reason = ""  # its last error, one line
        self.next_try = 0.0
        self.failures = 0  # failed calls in this outage
        self.outages = 0  # outages ridden through so far

    @property
    def expired(self) -> bool:
        """Whether the current outage has lasted longer than the window."""
        return self.since is not None and self.clock() - self.since > self.window

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Apply `fn(*args, **kwargs)` now, or after the writes held before it."""
        self.pending.append(lambda: fn(*args, **kwargs))
        self.drain()

    def drain(self, force: bool = False) -> bool:
        """Apply the held writes (unless the next retry is not due yet); whether none is left held."""
        if not self.pending:
            return True
        if not force and self.clock() < self.next_try:
            return False
        while self.pending:
            try:
                self.pending[0]()
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                self.failed(exc)
                return False
            self.pending.popleft()
        self._recovered()
        return True

    def call(self, fn: Callable[[], T]) -> T:
        """`fn()` when nothing is held and the database answers; else raises Unavailable."""
        if not self.drain():
            raise Unavailable(self.reason)
        try:
            result = fn()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            self.failed(exc)
            raise Unavailable(self.reason) from None
        self._recovered()
        return result

    def wait(self, fn: Callable[[], T] | None = None) -> T | None:
        """Block until the held writes are applied (then `fn()`, retried likewise); StudyOutage past the window."""
        while True:
            try:
                if self.drain(force=True):
                    return fn() if fn is not None else None
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                self.failed(exc)
            if self.expired:
                raise StudyOutage(self.describe())
            time.sleep(max(0.0, min(self.next_try, self.since + self.window + 0.01) - self.clock()))

    def failed(self, exc: BaseException) -> None:
        now = self.clock()
        self.reason = scrub(_one_line(exc), self.url)
        if self.since is None:
            self.since = now
            log.warning("the study database is unreachable (%s); holding the study's writes and retrying for up "
                        "to %.0f s", self.reason, self.window)
        self.failures += 1
        self.next_try = now + min(LAST_RETRY, FIRST_RETRY * 2 ** (self.failures - 1))

    def _recovered(self) -> None:
        if self.since is not None:
            log.warning("the study database is back after %.1f s; the held writes are written",
                        self.clock() - self.since)
            self.outages += 1
        self.since, self.failures, self.next_try = None, 0, 0.0

    def describe(self) -> str:
        """One line naming the outage."""
        lasted = self.clock() - self.since if self.since is not None else 0.0
        return (f"the study database has been unreachable for {lasted:.0f} s, longer than storage_outage "
                f"({self.window:g} s): {self.reason}")


def _one_line(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None and not is_connection_error(cause, chain=False):
        cause = cause.__cause__ or cause.__context__
    text = str(getattr(cause or exc, "orig", None) or cause or exc).strip()
    return (text.splitlines() or [type(exc).__name__])[0][:200]
