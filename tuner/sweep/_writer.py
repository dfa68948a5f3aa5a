"""The MLflow writer thread: a trial waits while the driver handles its result, so its metrics and
its run's closing are handed to one thread that makes the calls in order."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Writer"]


class Writer:
    """Calls run one at a time, in the order given, on a daemon thread."""

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...]]] = queue.Queue()
        self.error: BaseException | None = None
        # calls that raised (each is repaired from the study by `tuner sync` or a resume)
        self.failed = 0
        self.thread = threading.Thread(target=self._loop, name="ppo-tuner-mlflow-writer",
                                       daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.calls.put((fn, args))

    def flush(self) -> None:
        self.calls.join()
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _loop(self) -> None:
        while True:
            fn, args = self.calls.get()
            try:
                fn(*args)
            except BaseException as exc:  # raised by flush(); the sweep goes on past a failed write
                self.error = self.error or exc
                self.failed += 1
            finally:
                self.calls.task_done()
