"""Where Ray's own log records of a sweep go: a file in the sweep's folder, not the terminal."""

from __future__ import annotations

import logging
from pathlib import Path

__all__ = ["RAY_LOG", "route_ray_logs"]

RAY_LOG = "ray.log"  # in the sweep's folder: what Ray Tune and Ray Train log
RAY_LOGGERS = ("ray.tune", "ray.train")


def route_ray_logs(path: Path) -> None:
    """Ray Tune's and Ray Train's log records go to `path` (the sweep's ray.log), not the terminal:
    a failed trial's traceback (`ERROR tune_controller ...`) is there, and its error in its table
    row, its study record and its trainer.log. A later sweep in this process takes them over."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in RAY_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(old)
            old.close()
        logger.addHandler(handler)
        logger.propagate = False  # Ray's own handler on "ray" writes to the terminal
