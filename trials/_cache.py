"""ppo-tuner's model cache (PPO_TUNER_CACHE, default ~/.cache/ppo-tuner) and the atomic build of one
folder in it: the demo model and the built-in models are built this way on first use."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["build_cached", "cache_root"]

log = logging.getLogger(__name__)


def cache_root() -> Path:
    root = os.environ.get("PPO_TUNER_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "ppo-tuner")
    return Path(root)


def build_cached(target: Path, build: Callable[[Path], None], force: bool = False) -> Path:
    """`target`, built by `build(tmp)` into a fresh folder beside it and renamed into place (atomic: a
    concurrent builder's identical result may already be there) unless its config.json exists."""
    if (target / "config.json").is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        build(tmp)
        if force and target.exists():
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built %s in %.1f s", target, time.perf_counter() - started)
    return target
