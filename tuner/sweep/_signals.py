"""SIGTERM stops a sweep as Ctrl-C does.

Kubernetes, systemd and `ray job stop` send SIGTERM. `ray.init` installs Ray's native failure-signal
handler, which answers SIGTERM with a stack dump and SIGABRT: a crash, though the study keeps what
finished. `stop_on_sigterm()`, called once Ray is up (and before, for the preflight), hands SIGTERM to
whatever handles SIGINT at that moment: during `Tuner.fit` that is Ray Tune's, which ends the run after
the current step, so the trials are stopped and recorded as on Ctrl-C; a second SIGTERM, like a second
Ctrl-C, raises KeyboardInterrupt at once. `stop_signal()` tells the CLI which signal stopped the sweep.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

__all__ = ["stop_on_sigterm", "stop_signal"]

_received: list[int] = []  # the stop signals received, in order


def stop_on_sigterm() -> None:
    """(Re)install the SIGTERM handler; only the main thread may (elsewhere: nothing is done)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def stop_signal() -> int | None:
    """The first stop signal received (signal.SIGTERM), or None."""
    return _received[0] if _received else None


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)  # Ray Tune's stop, or Python's default: KeyboardInterrupt
    else:  # SIGINT ignored or default: stop all the same
        raise KeyboardInterrupt
