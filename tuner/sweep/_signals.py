"""SIGTERM stops a sweep as Ctrl-C does.

Kubernetes, systemd and `ray job stop` send SIGTERM. `ray.init` installs Ray's native failure-signal
handler, which answers SIGTERM with a stack dump and SIGABRT: a crash, though the study keeps what
finished. `stop_on_sigterm()`, called once Ray is up (and before, for the preflight), hands SIGTERM to
whatever handles SIGINT at that moment: during `Tuner.fit` that is Ray Tune's, which ends the run after
the current step, so the trials are stopped and recorded as on Ctrl-C; a second SIGTERM, like a second
Ctrl-C, raises KeyboardInterrupt at once. `stops_noted()`, around a whole sweep, covers the time outside
Ray Tune's fit (Ray starting, between the search and the promotion, the summary being written): a
first stop there is noted, not raised, so no further trials start and the sweep ends as stopped, with
what ran recorded; a second one raises KeyboardInterrupt. `stop_signal()` tells the CLI which signal
stopped the sweep;
`noting_tune_stops()`, around each `Tuner.fit`, notes the Ctrl-C that Ray Tune's handler took, so that a
sweep stopped after its search's last trial does not go on to its promotion runs.
`before_tune_stop(action)`, from inside the fit, runs `action` first when the stop comes: the trials
learn of it at once (no trainer starts after it), not only when Ray Tune stops each of them after
its current step.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

__all__ = ["before_tune_stop", "noting_tune_stops", "stop_on_sigterm", "stop_signal", "stops_noted"]

_received: list[int] = []  # the stop signals received, in order


def stop_on_sigterm() -> None:
    """(Re)install the SIGTERM handler; only the main thread may (elsewhere: nothing is done)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def stop_signal() -> int | None:
    """The first stop signal received (signal.SIGTERM), or None."""
    return _received[0] if _received else None


@contextmanager
def stops_noted() -> Iterator[None]:
    """Around a whole sweep (main thread; elsewhere nothing is done): a first Ctrl-C or SIGTERM that
    comes outside Ray Tune's fit is noted (`stop_signal()`), not raised; a second raises
    KeyboardInterrupt. Inside a fit, Ray Tune's handler sits above this one and puts it back after a
    stop. The stops noted before are forgotten on entry; the handler found is put back on exit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, _note_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _note_stop(signum: int, frame: FrameType | None) -> None:
    """SIGINT outside a fit (see stops_noted): the first is noted, a second raises."""
    first = not _received
    _received.append(signum)
    if not first:
        raise KeyboardInterrupt


@contextmanager
def noting_tune_stops() -> Iterator[None]:
    """Around `Tuner.fit` (main thread): Ray Tune installs its SIGINT handler for the fit; on a Ctrl-C it
    ends the fit and puts back the handler it found, while a fit that ends by itself leaves its handler
    in place. So: the handler found again after the fit means a stop (noted as SIGINT unless a SIGTERM
    came first); Tune's still there is put back to what it was."""
    watch = threading.current_thread() is threading.main_thread() and not int(
        os.environ.get("TUNE_DISABLE_SIGINT_HANDLER", "0"))
    before = signal.getsignal(signal.SIGINT) if watch else None
    try:
        yield
    finally:
        if watch:
            if signal.getsignal(signal.SIGINT) is before:
                if not _received:
                    _received.append(signal.SIGINT)
            else:
                signal.signal(signal.SIGINT, before)


def before_tune_stop(action: Callable[[], None]) -> None:
    """Inside `Tuner.fit` (main thread, once Ray Tune's SIGINT handler is in place: a Tune
    callback's setup): on Ctrl-C (or SIGTERM, which goes the same way), run `action`, then Ray
    Tune's handler as before. `action` runs in a signal handler: it must only start something (a
    thread), never wait."""
    if threading.current_thread() is not threading.main_thread():
        return
    tune_handler = signal.getsignal(signal.SIGINT)
    if not callable(tune_handler):
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        if not _received:  # a Ctrl-C (a SIGTERM was noted by its own handler)
            _received.append(signum)
        try:
            action()
        finally:
            tune_handler(signum, frame)  # Ray Tune's: ends the fit, puts back the handler it found

    signal.signal(signal.SIGINT, handler)
    if _received:  # the stop came before this fit could take it: it ends at once
        handler(signal.SIGINT, None)


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    handler = signal.getsignal(signal.SIGINT)
    if handler is _note_stop:  # outside a fit: the first is noted, a second raises
        _note_stop(signum, frame)
        return
    _received.append(signum)
    if callable(handler):
        handler(signal.SIGINT, frame)  # Ray Tune's stop, or Python's default: KeyboardInterrupt
    else:  # SIGINT ignored or default: stop all the same
        raise KeyboardInterrupt
