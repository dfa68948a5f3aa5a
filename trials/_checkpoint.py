"""A run's checkpoint: everything the next iteration reads, so that a run restored from it continues as
the same run (the same numbers as one never stopped, on the CPU under the same seed).

One file, `CHECKPOINT_FILE` in the config's checkpoint_dir, holds: the trainable parameters of the policy
and the value model (under LoRA the adapters and the value head only: the frozen base is loaded again
from model_path), the optimizer's and the learning-rate schedule's states, the KL controller's
coefficient, the RNG states (torch's, CUDA's, the prompt order's generator and the prompts left in this
pass, Python's and NumPy's for rewards that sample), the metrics of every iteration so far, the
evaluation before any update, and a fingerprint of the config. It is written to a temporary file and
renamed over the previous one (atomic on POSIX), so a run killed while it saves leaves the previous
checkpoint whole; only the latest is kept. A checkpoint whose fingerprint is not the config's (another
config's, or another trial's) is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from trials._config import PPOConfig
    from trials._run import _Run

__all__ = ["CHECKPOINT_FILE", "Restored", "checkpoint_due", "checkpoint_path", "fingerprint", "load_checkpoint",
           "remove_checkpoint", "save_checkpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "trial_checkpoint.pt"
FORMAT = 1  # bumped when what the file holds changes: an older file is not loaded
# Fields that change where the run writes or how fast it runs, not its numbers: a run resumed with
# another value of these is the same run.
_NOT_THE_RUN = ("checkpoint_every", "checkpoint_dir", "output_dir", "save_merged", "num_threads", "vllm_python")


@dataclass
class Restored:
    """What a run resumed from its checkpoint has done already."""

    iteration: int  # the last iteration the checkpoint holds; the run continues at the next
    history: list[dict[str, float]]  # the metrics of iterations 1..iteration
    initial: dict[str, float]  # the evaluation before any update


def fingerprint(config: PPOConfig) -> str:
    """sha256 of the fields that decide the run's numbers (every field but `_NOT_THE_RUN`)."""
    fields = {k: v for k, v in sorted(config.to_dict().items()) if k not in _NOT_THE_RUN}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_path(config: PPOConfig) -> Path | None:
    return Path(config.checkpoint_dir) / CHECKPOINT_FILE if config.checkpoint_dir else None


def checkpoint_due(config: PPOConfig, iteration: int) -> bool:
    """Whether the run saves its checkpoint after `iteration` (never after its last: nothing would resume)."""
    return bool(config.checkpoint_dir and config.checkpoint_every and iteration % config.checkpoint_every == 0
                and iteration < config.num_iterations)


def save_checkpoint(run: _Run, iteration: int, initial: dict[str, float]) -> Path:
    """Write the run's state after `iteration` over the previous checkpoint, atomically."""
    path = checkpoint_path(run.config)
    assert path is not None, "save_checkpoint needs config.checkpoint_dir"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": FORMAT,
        "fingerprint": fingerprint(run.config),
        "iteration": iteration,
        "history": list(run.history),
        "initial": dict(initial),
        "policy": [p.detach().cpu() for p in run.policy_params],
        "value": [p.detach().cpu() for p in run.value_params],
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "kl_coef": run.kl_ctl.value,
        "rng": _rng_states(run),
        "order": list(run._order),
    }
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # the previous checkpoint stays whole until this rename
    _remove_partial(path)
    return path


def load_checkpoint(run: _Run) -> Restored | None:
    """Restore the run's state from its checkpoint, if it has one of this config; None (and the run
    starts at iteration 1) where there is none, or it is another config's, or unreadable."""
    path = checkpoint_path(run.config)
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # cut short or corrupted: the run starts again rather than failing
        log.warning("checkpoint %s is unreadable (%s): starting at iteration 1", path, exc)
        return None
    if state.get("format") != FORMAT or state.get("fingerprint") != fingerprint(run.config):
        log.warning("checkpoint %s is another config's (its fingerprint differs): not loaded, starting at "
                    "iteration 1; it is replaced at the next checkpoint", path)
        return None
    _copy_params(run.policy_params, state["policy"], "policy")
    _copy_params(run.value_params, state["value"], "value")
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.kl_ctl.value = float(state["kl_coef"])
    _set_rng_states(run, state["rng"])
    run._order = list(state["order"])
    run.history = list(state["history"])
    if run.vllm is not None:
        run.vllm.stale = True  # the server holds the initial weights: synced before the next rollout
    log.info("resumed from %s after iteration %d", path, state["iteration"])
    return Restored(iteration=int(state["iteration"]), history=list(state["history"]), initial=dict(state["initial"]))


def remove_checkpoint(config: PPOConfig) -> None:
    """Delete the run's checkpoint (its run finished: nothing will resume from it)."""
    path = checkpoint_path(config)
    if path is not None:
        path.unlink(missing_ok=True)
        _remove_partial(path)


def _remove_partial(path: Path) -> None:
    """Delete the temporary files of saves cut short (a process killed while it saved)."""
    for partial in path.parent.glob(f".{path.name}.*.tmp"):
        partial.unlink(missing_ok=True)


def _copy_params(params: list[torch.nn.Parameter], saved: list[torch.Tensor], what: str) -> None:
    shapes = [tuple(p.shape) for p in params]
    if shapes != [tuple(t.shape) for t in saved]:  # the fingerprint matched, so the model files changed
        raise RuntimeError(f"the checkpoint's {what} parameters do not fit the model loaded: was the model "
                           "at model_path replaced since it was saved?")
    with torch.no_grad():
        for p, t in zip(params, saved, strict=True):
            p.copy_(t.to(p.device, p.dtype))


def _rng_states(run: _Run) -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "prompts": run.prompt_gen.get_state(),
                              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        states["numpy"] = np.random.get_state()
    except ImportError:
        pass
    return states


def _set_rng_states(run: _Run, states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    run.prompt_gen.set_state(states["prompts"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    if "numpy" in states:
        import numpy as np

        np.random.set_state(states["numpy"])
