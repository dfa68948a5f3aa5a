"""Child process trees that die with the process that started them.

A child started with `start_new_session=True` leads a process group of its own; `stop_group` ends the
whole group (SIGTERM, then SIGKILL). Where the parent may be killed outright (SIGKILL, no handler
runs), `die_with_parent` (a preexec_fn) has the kernel kill the child with it; a child that starts
processes of its own calls `watch_parent()` instead, which kills its whole group once its parent is
gone. The module imports nothing of the project, so every package uses it: the engine's vLLM rollout
server (trials), the external trainers (tuner.trial) and `tuner ui`'s server.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time

__all__ = ["die_with_parent", "signal_group", "stop_group", "watch_parent"]

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child (preexec_fn): SIGKILL when the thread that started it dies (a parent killed outright)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """`sig` to the process group `pgid`; nothing when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the group that `proc` leads, SIGKILL after `grace` seconds; leaves nothing of it running."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    signal_group(proc.pid, signal.SIGKILL)  # the leader's children too, even when it exited by itself
    proc.wait()


def watch_parent(interval: float = 0.2) -> None:
    """In a process group leader: a thread that SIGKILLs the group once the parent is gone. Nothing in a
    process that leads no group (it would kill its parent's group)."""
    if os.getpgid(0) != os.getpid():
        return
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        signal_group(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
