"""Child process trees that die with the process that started them.

A child started with `start_new_session=True` leads a process group of its own; `stop_group` ends the
whole group (SIGTERM, then SIGKILL). Where the parent may be killed outright (SIGKILL, no handler
runs), `die_with_parent` (a preexec_fn) has the kernel kill the child with it; a child that starts
processes of its own calls `watch_parent()` instead, which kills its whole group once its parent is
gone. The module imports nothing of the project, so every package uses it: the engine's vLLM rollout
server (trials), the external trainers (tuner.trial) and `tuner ui`'s server.

A sweep that starts a local Ray does not start its trials' processes itself: Ray's workers do, and they
end only after Ray's shutdown returns (each notices its raylet is gone, and then a server it started
notices its parent is gone). `adopt_orphans` makes the sweep's process the one that such orphans are
re-parented to, and `end_descendants` waits for every process of its tree that was not there before
(`descendants`), and kills what is left: when a sweep returns, nothing it started runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import threading
import time

__all__ = ["adopt_orphans", "descendants", "die_with_parent", "end_descendants", "signal_group", "stop_group",
           "watch_parent"]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_PR_GET_CHILD_SUBREAPER = 37
_PROC = "/proc"


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


def adopt_orphans(on: bool = True) -> bool:
    """Make this process a child subreaper (`on`), or no longer one: while it is, a descendant whose
    parent dies is re-parented to it (not to init), so `descendants` still finds it. Whether it was one
    before (to put back); False too where the kernel offers no such thing (not Linux)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        was = ctypes.c_int(0)
        libc.prctl(_PR_GET_CHILD_SUBREAPER, ctypes.byref(was), 0, 0, 0)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)
        return bool(was.value)
    except OSError:
        return False


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time in clock ticks) of `pid`, None when it is gone."""
    try:
        with open(f"{_PROC}/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return int(fields[1]), fields[0], int(fields[19])


def descendants(root: int | None = None) -> set[tuple[int, int]]:
    """Every process below `root` (default: this one), as (pid, start time): a pid reused later by
    another process is another entry. Zombies included (they are reaped by `end_descendants`)."""
    root = os.getpid() if root is None else root
    children: dict[int, list[tuple[int, int]]] = {}
    try:
        pids = [int(name) for name in os.listdir(_PROC) if name.isdigit()]
    except OSError:
        return set()
    for pid in pids:
        stat = _stat(pid)
        if stat:
            children.setdefault(stat[0], []).append((pid, stat[2]))
    found: set[tuple[int, int]] = set()
    todo = [root]
    while todo:
        for entry in children.get(todo.pop(), ()):
            if entry not in found:
                found.add(entry)
                todo.append(entry[0])
    return found


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not this process's child (or reaped already)
        pass


def end_descendants(keep: set[tuple[int, int]], grace: float) -> list[int]:
    """Wait up to `grace` seconds for this process's descendants that are not in `keep` to exit, then
    SIGKILL those left (and wait up to 5 s more for them); reap the ones that became this process's
    zombies. The pids that were killed."""
    deadline, killed = time.monotonic() + grace, []
    while True:
        alive = _alive_beyond(keep)
        if not alive or (killed and time.monotonic() >= deadline):
            return killed
        if not killed and time.monotonic() >= deadline:
            for pid in alive:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + 5.0
        time.sleep(0.1)


def _alive_beyond(keep: set[tuple[int, int]]) -> list[int]:
    """This process's live descendants not in `keep`; its zombies among them are reaped."""
    alive = []
    for pid, started in sorted(descendants() - keep):
        stat = _stat(pid)
        if stat is None or stat[2] != started:
            continue
        if stat[1] == "Z":
            if stat[0] == os.getpid():
                _reap(pid)
            continue
        alive.append(pid)
    return alive
